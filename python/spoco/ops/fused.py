"""Fused SPOCO loss reductions as torch custom ops (``SPOCOLoss(backend="fused")``).

Each op is a ``torch.library.custom_op`` in the ``spoco`` namespace with a fake
(meta) implementation and, where it has a gradient, ``register_autograd`` whose
backward is its own custom op. CPU tensors go to ``spoco._core`` (OpenMP),
CUDA tensors to ``spoco._cuda``; every tensor is checked here (dtype, device,
shape, contiguity) before a raw pointer crosses. Kernels accept float32 and
float64 and accumulate in at least float32 (CPU partial sums in float64).

Layouts, as in :mod:`spoco.ops.loss`: embeddings ``(B, D, N)``, anchors/means
``(B, K, D)``, ``slot (B, N)`` int64 (the object slot of a pixel; anything outside
``[0, K)`` = none), ``weight (B, N)`` pixel weights (0 = ignored), ``n_valid (B,)``
int64 (anchors ``k >= n_valid[b]`` of image b are skipped and give 0).

The CPU reductions are deterministic and independent of the number of threads.
On CUDA they use one atomic per (block, anchor), or a fixed-order two-pass
reduction when ``torch.are_deterministic_algorithms_enabled()``.
"""
from __future__ import annotations

import torch

from .. import _core
from .._cuda_loader import cuda_module

#: Kernel ids of the anchor x pixel terms (the contract with csrc/core/loss_terms.hpp).
TERMS = {"soft_mask": 0, "unlabeled_push": 1, "consistency": 2}
N_OUTPUTS = {0: 2, 1: 1, 2: 3}
MAX_DIM = 64


# --------------------------------------------------------------------------- checks
def _check_emb(name: str, x: torch.Tensor, ndim: int = 3) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {x.device}")


def _check_like(name: str, x: torch.Tensor | None, shape: tuple, dtype, device) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the embeddings are on {device}")


def _check_dims(emb: torch.Tensor) -> tuple[int, int, int]:
    B, D, N = emb.shape
    if B < 1 or N < 1:
        raise ValueError(f"embeddings must have B >= 1 images and N >= 1 pixels, got shape {tuple(emb.shape)}")
    if not 1 <= D <= MAX_DIM:
        raise ValueError(f"the fused kernels support 1 <= D <= {MAX_DIM} embedding channels, got D = {D}")
    return B, D, N


def _threads() -> int:
    """CPU kernels use as many OpenMP threads as torch's intra-op pool (``torch.set_num_threads``)."""
    return max(1, torch.get_num_threads())


def _ptr(x: torch.Tensor | None) -> int:
    return 0 if x is None else x.data_ptr()


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _contig(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


def _cuda_call(dev: torch.device, op: str, dims: tuple, launcher: str, *args) -> None:
    """Call the ``spoco._cuda`` launcher ``loss_<launcher>`` on ``dev``'s current stream.

    ``dims = (B, D, N, K, element size)`` size the scratch memory of ``op``, taken from
    torch's allocator (stream-ordered, so freeing it right after the asynchronous launch
    is safe). Deterministic mode = ``torch.are_deterministic_algorithms_enabled()``.
    """
    module = cuda_module()
    deterministic = bool(torch.are_deterministic_algorithms_enabled())
    nbytes = module.loss_scratch_bytes(op, *dims, deterministic)
    with torch.cuda.device(dev):
        scratch = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=dev)
        stream = torch.cuda.current_stream(dev).cuda_stream
        getattr(module, f"loss_{launcher}")(*args, scratch.data_ptr(), nbytes, deterministic, dev.index, stream)


# --------------------------------------------------------------- segment sums (means)
@torch.library.custom_op("spoco::segment_sum", mutates_args=())
def segment_sum(emb: torch.Tensor, slot: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot sums ``(B, C, D)`` of the embeddings ``emb (B, D, N)`` and pixel counts ``(B, C)``."""
    _check_emb("emb", emb)
    B, D, N = _check_dims(emb)
    _check_like("slot", slot, (B, N), torch.int64, emb.device)
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    emb, slot = emb.contiguous(), slot.contiguous()
    sums = emb.new_zeros((B, n_slots, D))
    counts = emb.new_zeros((B, n_slots))
    if n_slots == 0:
        return sums, counts
    args = (_dtype(emb), emb.data_ptr(), slot.data_ptr(), B, D, N, n_slots, sums.data_ptr(), counts.data_ptr())
    if emb.device.type == "cpu":
        _core.loss_segment_sum(*args, _threads())
    else:
        _cuda_call(emb.device, "segment_sum", (B, D, N, n_slots, emb.element_size()), "segment_sum", *args)
    return sums, counts


@segment_sum.register_fake
def _(emb, slot, n_slots):
    B, D, N = emb.shape
    return emb.new_empty((B, n_slots, D)), emb.new_empty((B, n_slots))


@torch.library.custom_op("spoco::segment_sum_backward", mutates_args=())
def segment_sum_backward(grad_sums: torch.Tensor, slot: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Gradient ``(B, D, N)`` of :func:`segment_sum`: each pixel gets its slot's ``grad_sums (B, C, D)``."""
    _check_emb("grad_sums", grad_sums)
    B, C, D = grad_sums.shape
    _check_like("slot", slot, (B, n_pixels), torch.int64, grad_sums.device)
    grad_sums, slot = grad_sums.contiguous(), slot.contiguous()
    out = grad_sums.new_empty((B, D, n_pixels))
    args = (_dtype(out), grad_sums.data_ptr(), slot.data_ptr(), B, D, n_pixels, C, out.data_ptr())
    if out.device.type == "cpu":
        _core.loss_segment_sum_backward(*args, _threads())
    else:
        _cuda_call(out.device, "segment_sum", (B, D, n_pixels, C, out.element_size()), "segment_sum_backward", *args)
    return out


@segment_sum_backward.register_fake
def _(grad_sums, slot, n_pixels):
    B, C, D = grad_sums.shape
    return grad_sums.new_empty((B, D, n_pixels))


def _segment_sum_setup(ctx, inputs, output):
    emb, slot, n_slots = inputs
    ctx.save_for_backward(slot)
    ctx.n_pixels = emb.shape[2]


def _segment_sum_backward(ctx, grad_sums, grad_counts):
    (slot,) = ctx.saved_tensors
    return segment_sum_backward(grad_sums, slot, ctx.n_pixels), None, None


segment_sum.register_autograd(_segment_sum_backward, setup_context=_segment_sum_setup)


# ----------------------------------------------------------------------- pull (Eq. 1)
def _check_pull(emb, means, slot):
    _check_emb("emb", emb)
    B, D, N = _check_dims(emb)
    _check_emb("means", means)
    if means.shape[0] != B or means.shape[2] != D or means.dtype != emb.dtype or means.device != emb.device:
        raise ValueError(f"means must have shape (B, C, D) = ({B}, C, {D}) with the dtype and device of emb, "
                         f"got {tuple(means.shape)} {means.dtype} on {means.device}")
    _check_like("slot", slot, (B, N), torch.int64, emb.device)
    return B, D, N, means.shape[1]


@torch.library.custom_op("spoco::pull_sums", mutates_args=())
def pull_sums(emb: torch.Tensor, means: torch.Tensor, slot: torch.Tensor, delta_v: float) -> torch.Tensor:
    """Pull (Eq. 1) summed per slot: ``(B, C)`` ``Σ_{i ∈ k} [‖μ_k − e_i‖ − δ_v]₊²``."""
    B, D, N, C = _check_pull(emb, means, slot)
    out = emb.new_zeros((B, C))
    if C == 0:
        return out
    emb, means, slot = emb.contiguous(), means.contiguous(), slot.contiguous()
    args = (_dtype(emb), emb.data_ptr(), means.data_ptr(), slot.data_ptr(), B, D, N, C, float(delta_v),
            out.data_ptr(), 0, 0, 0)
    if emb.device.type == "cpu":
        _core.loss_pull_sums(*args, _threads())
    else:
        _cuda_call(emb.device, "pull_sums", (B, D, N, C, emb.element_size()), "pull_sums", *args)
    return out


@pull_sums.register_fake
def _(emb, means, slot, delta_v):
    return emb.new_empty((emb.shape[0], means.shape[1]))


@torch.library.custom_op("spoco::pull_sums_backward", mutates_args=())
def pull_sums_backward(grad: torch.Tensor, emb: torch.Tensor, means: torch.Tensor, slot: torch.Tensor,
                       delta_v: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_emb (B, D, N), grad_means (B, C, D))`` of :func:`pull_sums` for ``grad (B, C)``."""
    B, D, N, C = _check_pull(emb, means, slot)
    _check_like("grad", grad, (B, C), emb.dtype, emb.device)
    grad_emb = emb.new_empty((B, D, N)) if emb.device.type == "cpu" and C > 0 else emb.new_zeros((B, D, N))
    grad_means = means.new_zeros((B, C, D))
    if C == 0:
        return grad_emb, grad_means
    emb, means, slot, grad = emb.contiguous(), means.contiguous(), slot.contiguous(), grad.contiguous()
    args = (_dtype(emb), emb.data_ptr(), means.data_ptr(), slot.data_ptr(), B, D, N, C, float(delta_v), 0,
            grad.data_ptr(), grad_emb.data_ptr(), grad_means.data_ptr())
    if emb.device.type == "cpu":
        _core.loss_pull_sums(*args, _threads())
    else:
        _cuda_call(emb.device, "pull_sums_backward", (B, D, N, C, emb.element_size()), "pull_sums", *args)
    return grad_emb, grad_means


@pull_sums_backward.register_fake
def _(grad, emb, means, slot, delta_v):
    return emb.new_empty(emb.shape), means.new_empty(means.shape)


def _pull_setup(ctx, inputs, output):
    emb, means, slot, delta_v = inputs
    ctx.save_for_backward(emb, means, slot)
    ctx.delta_v = delta_v


def _pull_backward(ctx, grad):
    emb, means, slot = ctx.saved_tensors
    grad_emb, grad_means = pull_sums_backward(grad, emb, means, slot, ctx.delta_v)
    return grad_emb, grad_means, None, None


pull_sums.register_autograd(_pull_backward, setup_context=_pull_setup)


# ------------------------------------------------------------ anchor x pixel reductions
def _check_anchor_pixel(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid):
    if term not in N_OUTPUTS:
        raise ValueError(f"term must be one of {sorted(N_OUTPUTS)}, got {term}")
    _check_emb("emb", emb)
    B, D, N = _check_dims(emb)
    _check_emb("anchors", anchors)
    K = anchors.shape[1]
    _check_like("anchors", anchors, (B, K, D), emb.dtype, emb.device)
    if term == TERMS["consistency"]:
        if anchors_g is None or emb_g is None:
            raise ValueError("the consistency term needs anchors_g and emb_g")
        _check_like("emb_g", emb_g, (B, D, N), emb.dtype, emb.device)
        _check_like("anchors_g", anchors_g, (B, K, D), emb.dtype, emb.device)
    if term == TERMS["soft_mask"] and slot is None:
        raise ValueError("the soft-mask term needs slot")
    _check_like("slot", slot, (B, N), torch.int64, emb.device)
    _check_like("weight", weight, (B, N), emb.dtype, emb.device)
    _check_like("n_valid", n_valid, (B,), torch.int64, emb.device)
    return B, D, N, K


def _anchor_pixel_args(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta):
    B, D, N, K = _check_anchor_pixel(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid)
    ts = [_contig(x) for x in (emb, anchors, emb_g, anchors_g, slot, weight, n_valid)]
    return ts, (_ptr(ts[0]), _ptr(ts[1]), _ptr(ts[2]), _ptr(ts[3]), _ptr(ts[4]), _ptr(ts[5]), _ptr(ts[6]),
                B, D, N, K, float(h), float(delta))


@torch.library.custom_op("spoco::anchor_pixel_sums", mutates_args=())
def anchor_pixel_sums(term: int, anchors: torch.Tensor, emb: torch.Tensor, anchors_g: torch.Tensor | None,
                      emb_g: torch.Tensor | None, slot: torch.Tensor | None, weight: torch.Tensor | None,
                      n_valid: torch.Tensor, h: float, delta: float) -> torch.Tensor:
    """Per-anchor sums over every pixel of one anchor x pixel term, ``(n_out, B, K)``.

    ``term`` is a value of :data:`TERMS`; ``h = 1/(2σ²)``; ``delta`` the unlabeled-push
    margin. See :func:`soft_mask_sums`, :func:`unlabeled_push_sums` and
    :func:`consistency_sums` for the outputs of each term.
    """
    return _anchor_pixel_forward(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)


def _anchor_pixel_forward(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta):
    ts, args = _anchor_pixel_args(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)
    B, K = anchors.shape[:2]
    out = emb.new_zeros((N_OUTPUTS[term], B, K))
    if K == 0:
        return out
    if emb.device.type == "cpu":
        _core.loss_anchor_pixel(term, False, _dtype(emb), *args, out.data_ptr(), 0, 0, 0, _threads())
    else:
        _cuda_call(emb.device, "anchor_pixel", (B, emb.shape[1], emb.shape[2], K, emb.element_size()),
                   "anchor_pixel", term, False, _dtype(emb), *args, out.data_ptr(), 0, 0, 0)
    return out


@anchor_pixel_sums.register_fake
def _(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta):
    return emb.new_empty((N_OUTPUTS[term], anchors.shape[0], anchors.shape[1]))


@torch.library.custom_op("spoco::anchor_pixel_sums_backward", mutates_args=())
def anchor_pixel_sums_backward(grad: torch.Tensor, term: int, anchors: torch.Tensor, emb: torch.Tensor,
                               anchors_g: torch.Tensor | None, emb_g: torch.Tensor | None, slot: torch.Tensor | None,
                               weight: torch.Tensor | None, n_valid: torch.Tensor, h: float,
                               delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_anchors (B, K, D), grad_emb (B, D, N))`` of :func:`anchor_pixel_sums`
    for ``grad (n_out, B, K)``; the g-embeddings and weights get none."""
    ts, args = _anchor_pixel_args(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)
    B, K = anchors.shape[:2]
    _check_like("grad", grad, (N_OUTPUTS[term], B, K), emb.dtype, emb.device)
    grad = grad.contiguous()
    grad_anchors = anchors.new_zeros(anchors.shape)
    # the CPU kernel writes every pixel's gradient; the CUDA one accumulates into zeros
    grad_emb = emb.new_empty(emb.shape) if emb.device.type == "cpu" else emb.new_zeros(emb.shape)
    if K == 0:
        return grad_anchors, grad_emb
    if emb.device.type == "cpu":
        _core.loss_anchor_pixel(term, True, _dtype(emb), *args, 0, grad.data_ptr(), grad_emb.data_ptr(),
                                grad_anchors.data_ptr(), _threads())
    else:
        _cuda_call(emb.device, "anchor_pixel_backward", (B, emb.shape[1], emb.shape[2], K, emb.element_size()),
                   "anchor_pixel", term, True, _dtype(emb), *args, 0, grad.data_ptr(), grad_emb.data_ptr(),
                   grad_anchors.data_ptr())
    return grad_anchors, grad_emb


@anchor_pixel_sums_backward.register_fake
def _(grad, term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta):
    return anchors.new_empty(anchors.shape), emb.new_empty(emb.shape)


def _anchor_pixel_setup(ctx, inputs, output):
    term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta = inputs
    ctx.save_for_backward(anchors, emb, anchors_g, emb_g, slot, weight, n_valid)
    ctx.term, ctx.h, ctx.delta = term, h, delta


def _anchor_pixel_backward(ctx, grad):
    anchors, emb, anchors_g, emb_g, slot, weight, n_valid = ctx.saved_tensors
    grad_anchors, grad_emb = anchor_pixel_sums_backward(grad, ctx.term, anchors, emb, anchors_g, emb_g, slot, weight,
                                                        n_valid, ctx.h, ctx.delta)
    return None, grad_anchors, grad_emb, None, None, None, None, None, None, None


anchor_pixel_sums.register_autograd(_anchor_pixel_backward, setup_context=_anchor_pixel_setup)


def _all_valid(anchors: torch.Tensor) -> torch.Tensor:
    return torch.full((anchors.shape[0],), anchors.shape[1], dtype=torch.int64, device=anchors.device)


def soft_mask_sums(anchors, emb, slot, weight, sigma2: float, n_valid=None):
    """Dice sums of the soft masks S_k (Eq. 3) against the object masks I_k (Eq. 4).

    Parameters
    ----------
    anchors : (B, C, D) anchors a_k (anchor k belongs to object slot k)
    emb : (B, D, N) pixel embeddings
    slot : (B, N) int64 object slot of each pixel
    weight : (B, N) pixel weights (0 = ignored) or None
    sigma2 : σ² of ``S_k(i) = exp(−‖e_i − a_k‖² / 2σ²)``
    n_valid : (B,) int64 slots in use per image, or None (all C)

    Returns
    -------
    inter : (B, C) ``Σ_i w_i S_k(i) I_k(i)``;  sq : (B, C) ``Σ_i w_i S_k(i)²``
    """
    n_valid = _all_valid(anchors) if n_valid is None else n_valid
    out = anchor_pixel_sums(TERMS["soft_mask"], anchors.contiguous(), emb.contiguous(), None, None, slot, weight,
                            n_valid, 0.5 / sigma2, 0.0)
    return out[0], out[1]


def unlabeled_push_sums(means, emb, unlabeled, delta_d: float, n_valid=None):
    """Unlabeled push (Eq. 6) summed over pixels: ``(B, C)`` ``Σ_i u_i [δ_d − ‖μ_k − e_i‖]₊²``
    for ``means (B, C, D)``, ``emb (B, D, N)`` and the unlabeled weights ``u (B, N)``."""
    n_valid = _all_valid(means) if n_valid is None else n_valid
    return anchor_pixel_sums(TERMS["unlabeled_push"], means.contiguous(), emb.contiguous(), None, None, None,
                             unlabeled, n_valid, 0.0, delta_d)[0]


def consistency_sums(anchors_f, emb_f, anchors_g, emb_g, weight, sigma2: float, n_valid=None):
    """Dice sums between S^f_k and S^g_k (Eq. 7): ``cross, sq_f, sq_g`` each ``(B, K)``
    (``Σ w S^f S^g``, ``Σ w (S^f)²``, ``Σ w (S^g)²``); g is a constant (no gradient)."""
    n_valid = _all_valid(anchors_f) if n_valid is None else n_valid
    out = anchor_pixel_sums(TERMS["consistency"], anchors_f.contiguous(), emb_f.contiguous(),
                            anchors_g.detach().contiguous(), emb_g.detach().contiguous(), None, weight, n_valid,
                            0.5 / sigma2, 0.0)
    return out[0], out[1], out[2].detach()


# ----------------------------------------------- all anchor x pixel terms of a loss call
def _pixels_at(emb: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Embeddings ``(B, K, D)`` of the pixels ``pix (B, K)`` of ``emb (B, D, N)``."""
    B, D = emb.shape[:2]
    return emb.gather(2, pix[:, None, :].expand(B, D, pix.shape[1])).transpose(1, 2).contiguous()


def _check_terms(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons):
    if (anchors is None) == (inst_pix is None):
        raise ValueError("give exactly one of anchors and inst_pix (the instance anchors)")
    if (means is None) != (unlabeled is None):
        raise ValueError("means and unlabeled must be given together (the unlabeled push)")
    if len({cons_pix is None, emb_g is None, n_cons is None}) != 1:
        raise ValueError("cons_pix, emb_g and n_cons must be given together (the consistency term)")
    B, N = emb.shape[0], emb.shape[2]
    for name, pix in (("inst_pix", inst_pix), ("cons_pix", cons_pix)):
        if pix is not None:
            # values are not checked here (no host synchronisation): torch's gather and scatter check them
            if pix.dtype != torch.int64 or pix.dim() != 2 or pix.shape[0] != B or pix.device != emb.device:
                raise ValueError(f"{name} must be an int64 (B, K) tensor of pixel indices in [0, {N}) "
                                 f"on {emb.device}")


def _terms_list(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, slot, weight, n_obj, n_cons, h, delta_d):
    """(term, anchors, anchors_g, emb_g, slot, weight, n_valid, h, delta) of each present term."""
    a = anchors if anchors is not None else _pixels_at(emb, inst_pix)
    terms = [(TERMS["soft_mask"], a, None, None, slot, weight, n_obj, h, 0.0)]
    if means is not None:
        terms.append((TERMS["unlabeled_push"], means, None, None, None, unlabeled, n_obj, 0.0, delta_d))
    if cons_pix is not None:
        terms.append((TERMS["consistency"], _pixels_at(emb, cons_pix), _pixels_at(emb_g, cons_pix), emb_g, None,
                      weight, n_cons, h, 0.0))
    return terms


@torch.library.custom_op("spoco::anchor_pixel_terms", mutates_args=())
def anchor_pixel_terms(emb: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, n_obj: torch.Tensor,
                       anchors: torch.Tensor | None, inst_pix: torch.Tensor | None, means: torch.Tensor | None,
                       unlabeled: torch.Tensor | None, cons_pix: torch.Tensor | None, emb_g: torch.Tensor | None,
                       n_cons: torch.Tensor | None, h: float, delta_d: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every anchor x pixel reduction of one loss call, with one fused backward pass.

    Parameters
    ----------
    emb : (B, D, N) pixel embeddings; slot : (B, N) object slots; weight : (B, N) pixel weights
    n_obj : (B,) int64 slots in use
    anchors, inst_pix : the instance anchors (Eq. 3), either as embeddings (B, C, D) (e.g. the
        means) or as pixel indices (B, C) into emb (random anchors); exactly one is given
    means, unlabeled : (B, C, D) cluster means and (B, N) unlabeled weights, or None (no Eq. 6)
    cons_pix, emb_g, n_cons : consistency anchor pixels (B, K) (the same pixel in f and g), the
        g-embeddings and (B,) anchors in use, or all None (no Eq. 7)
    h : 1/(2σ²); delta_d : unlabeled-push margin

    Returns
    -------
    inst : (2, B, C) ``Σ w S I``, ``Σ w S²``;  upush : (1, B, C) (or (1, B, 0));
    cons : (3, B, K) ``Σ w S^f S^g``, ``Σ w (S^f)²``, ``Σ w (S^g)²`` (or (3, B, 0))

    The backward (:func:`anchor_pixel_terms_backward`) visits each pixel block once for
    all terms and returns one ``(B, D, N)`` gradient, into which the gradients of the
    anchors given as pixels are added in place (no gather backward, no extra full-size tensor).
    """
    _check_emb("emb", emb)
    _check_terms(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons)
    B = emb.shape[0]
    outs = {t[0]: _anchor_pixel_forward(t[0], t[1], emb, *t[2:])
            for t in _terms_list(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, slot, weight, n_obj,
                                 n_cons, h, delta_d)}
    up = outs.get(TERMS["unlabeled_push"], emb.new_zeros((1, B, 0)))
    cons = outs.get(TERMS["consistency"], emb.new_zeros((3, B, 0)))
    return outs[TERMS["soft_mask"]], up, cons


@anchor_pixel_terms.register_fake
def _(emb, slot, weight, n_obj, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons, h, delta_d):
    B = emb.shape[0]
    C = anchors.shape[1] if anchors is not None else inst_pix.shape[1]
    return (emb.new_empty((2, B, C)), emb.new_empty((1, B, C if means is not None else 0)),
            emb.new_empty((3, B, cons_pix.shape[1] if cons_pix is not None else 0)))


@torch.library.custom_op("spoco::anchor_pixel_terms_backward", mutates_args=())
def anchor_pixel_terms_backward(grad_inst: torch.Tensor, grad_up: torch.Tensor, grad_cons: torch.Tensor,
                                emb: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, n_obj: torch.Tensor,
                                anchors: torch.Tensor | None, inst_pix: torch.Tensor | None,
                                means: torch.Tensor | None, unlabeled: torch.Tensor | None,
                                cons_pix: torch.Tensor | None, emb_g: torch.Tensor | None,
                                n_cons: torch.Tensor | None, h: float, delta_d: float
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_emb (B, D, N), grad_anchors, grad_means)`` of :func:`anchor_pixel_terms`.

    Anchors given as pixels add their gradient into ``grad_emb``; ``grad_anchors`` is then
    empty ``(B, 0, D)``, as is ``grad_means`` without the unlabeled push.
    """
    _check_emb("emb", emb)
    B, D, N = _check_dims(emb)
    _check_terms(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons)
    emb = emb.contiguous()
    terms = _terms_list(emb, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, slot, weight, n_obj, n_cons, h,
                        delta_d)
    grads = {TERMS["soft_mask"]: grad_inst, TERMS["unlabeled_push"]: grad_up, TERMS["consistency"]: grad_cons}
    cpu = emb.device.type == "cpu"
    grad_emb = emb.new_empty((B, D, N)) if cpu else emb.new_zeros((B, D, N))
    outs = {}
    keep = []  # contiguous copies must outlive the kernel call
    ptrs, ids, Ks, hs, deltas = [], [], [], [], []
    for term, a, ag, eg, sl, w, nv, hh, dd in terms:
        ts, args = _anchor_pixel_args(term, a, emb, ag, eg, sl, w, nv, hh, dd)
        grad = grads[term]
        _check_like("grad", grad, (N_OUTPUTS[term], B, a.shape[1]), emb.dtype, emb.device)
        grad = grad.contiguous()
        ga = a.new_zeros(a.shape)
        outs[term] = ga
        keep += ts + [grad]
        if cpu:
            ids.append(term)
            ptrs += [args[1], args[3], args[2], args[4], args[5], args[6], grad.data_ptr(), ga.data_ptr()]
            Ks.append(a.shape[1])
            hs.append(float(hh))
            deltas.append(float(dd))
        elif a.shape[1] > 0:  # CUDA: one launch per term, each adding to grad_emb
            _cuda_call(emb.device, "anchor_pixel_backward", (B, D, N, a.shape[1], emb.element_size()),
                       "anchor_pixel", term, True, _dtype(emb), *args, 0, grad.data_ptr(), grad_emb.data_ptr(),
                       ga.data_ptr())
    if cpu:
        _core.loss_anchor_terms_backward(_dtype(emb), ids, ptrs, Ks, hs, deltas, emb.data_ptr(), B, D, N,
                                         grad_emb.data_ptr(), _threads())
    for pix, term in ((inst_pix, TERMS["soft_mask"]), (cons_pix, TERMS["consistency"])):
        if pix is not None:  # anchors taken at pixels: their gradient lands on those pixels
            grad_emb.scatter_add_(2, pix[:, None, :].expand(B, D, pix.shape[1]), outs[term].transpose(1, 2))
    grad_anchors = outs[TERMS["soft_mask"]] if anchors is not None else emb.new_zeros((B, 0, D))
    return grad_emb, grad_anchors, outs.get(TERMS["unlabeled_push"], emb.new_zeros((B, 0, D)))


@anchor_pixel_terms_backward.register_fake
def _(grad_inst, grad_up, grad_cons, emb, slot, weight, n_obj, anchors, inst_pix, means, unlabeled, cons_pix, emb_g,
      n_cons, h, delta_d):
    B, D = emb.shape[:2]
    return (emb.new_empty(emb.shape), anchors.new_empty(anchors.shape) if anchors is not None
            else emb.new_empty((B, 0, D)), means.new_empty(means.shape) if means is not None
            else emb.new_empty((B, 0, D)))


def _anchor_terms_setup(ctx, inputs, output):
    emb, slot, weight, n_obj, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons, h, delta_d = inputs
    ctx.save_for_backward(emb, slot, weight, n_obj, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons)
    ctx.h, ctx.delta_d = h, delta_d


def _anchor_terms_backward(ctx, grad_inst, grad_up, grad_cons):
    emb, slot, weight, n_obj, anchors, inst_pix, means, unlabeled, cons_pix, emb_g, n_cons = ctx.saved_tensors
    B = emb.shape[0]
    C = anchors.shape[1] if anchors is not None else inst_pix.shape[1]
    K = cons_pix.shape[1] if cons_pix is not None else 0
    zeros = lambda g, shape: emb.new_zeros(shape) if g is None else g  # noqa: E731  (unused outputs)
    grad_inst = zeros(grad_inst, (2, B, C))
    grad_up = zeros(grad_up, (1, B, C if means is not None else 0))
    grad_cons = zeros(grad_cons, (3, B, K))
    g_emb, g_a, g_m = anchor_pixel_terms_backward(grad_inst, grad_up, grad_cons, emb, slot, weight, n_obj, anchors,
                                                  inst_pix, means, unlabeled, cons_pix, emb_g, n_cons, ctx.h,
                                                  ctx.delta_d)
    return (g_emb, None, None, None, g_a if anchors is not None else None, None,
            g_m if means is not None else None, None, None, None, None, None, None)


anchor_pixel_terms.register_autograd(_anchor_terms_backward, setup_context=_anchor_terms_setup)


# ------------------------------------------------------------- consistency anchors (Eq. 7)
@torch.library.custom_op("spoco::consistency_anchors", mutates_args=())
def consistency_anchors(emb_f: torch.Tensor, emb_g: torch.Tensor, unlabeled: torch.Tensor, keys: torch.Tensor,
                        max_anchors: int, delta_v: float, coverage_stop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage-driven anchors of Eq. 7: ``pix (B, K)`` int64 and ``valid (B, K)`` bool.

    Same rule as :func:`spoco.ops.anchors.consistency_anchors` (largest key among the
    still-uncovered unlabeled pixels; covered = within δ_v in f or in g) with exact
    squared distances; no host synchronisation.
    """
    _check_emb("emb_f", emb_f)
    B, D, N = _check_dims(emb_f)
    _check_like("emb_g", emb_g, (B, D, N), emb_f.dtype, emb_f.device)
    _check_like("unlabeled", unlabeled, (B, N), torch.bool, emb_f.device)
    _check_like("keys", keys, (B, N), torch.float64, emb_f.device)
    if max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    ts = [x.detach().contiguous() for x in (emb_f, emb_g, unlabeled, keys)]
    pix = torch.zeros((B, max_anchors), dtype=torch.int64, device=emb_f.device)
    valid = torch.zeros((B, max_anchors), dtype=torch.bool, device=emb_f.device)
    args = (_dtype(emb_f), *(t.data_ptr() for t in ts), B, D, N, max_anchors, float(delta_v), float(coverage_stop),
            pix.data_ptr(), valid.data_ptr())
    if emb_f.device.type == "cpu":
        _core.loss_consistency_anchors(*args, _threads())
    else:
        _cuda_call(emb_f.device, "consistency_anchors", (B, D, N, max_anchors, emb_f.element_size()),
                   "consistency_anchors", *args)
    return pix, valid


@consistency_anchors.register_fake
def _(emb_f, emb_g, unlabeled, keys, max_anchors, delta_v, coverage_stop):
    B = emb_f.shape[0]
    return (emb_f.new_empty((B, max_anchors), dtype=torch.int64),
            emb_f.new_empty((B, max_anchors), dtype=torch.bool))


# ------------------------------------------------------------------ cluster slots
def _not_finite(x: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """0-d bool on ``device``: x has a NaN or infinite value (one pass in ``_core`` for CPU tensors)."""
    if x is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        x = x.detach().contiguous()
        return torch.tensor(not _core.loss_all_finite(_dtype(x), x.data_ptr(), x.numel(), _threads()))
    return (~torch.isfinite(x)).any()


@torch.library.custom_op("spoco::cluster_slots", mutates_args=())
def cluster_slots(target: torch.Tensor, f: torch.Tensor, g: torch.Tensor | None, ignore_index: int,
                  sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image cluster slots of the labels, and the input value checks of a loss call.

    Parameters
    ----------
    target : (B, N) int64 labels; ``ignore_index`` = no term; in ``sparse`` mode 0 = unlabeled
    f, g : (B, D, N) embeddings, only checked for NaN/inf (g may be None)

    Returns
    -------
    slot : (B, N) int64, the slot ``0..C-1`` of each pixel's cluster (clusters of an image in
        ascending label order), or C for pixels in no cluster
    labels : (B, C) int64, the label of each slot, −1 for slots an image does not use

    C, the most clusters of an image (at least 1), depends on the data: the op's one host
    synchronisation (its fake implementation gives C as an unbacked size, so
    ``torch.compile(fullgraph=True)`` traces through it). Raises ``ValueError`` for
    non-finite embeddings or negative labels other than ``ignore_index``.
    """
    B, N = target.shape
    counted = target != ignore_index
    in_cluster = counted & (target > 0) if sparse else counted & (target >= 0)
    img = torch.arange(B, device=target.device)[:, None]
    key = torch.where(in_cluster, target * B + img, -1)
    uniq, inv = torch.unique(key, return_inverse=True)
    seg_ok = uniq >= 0
    seg_img = uniq.remainder(B)
    rank = ((seg_img[:, None] == torch.arange(B, device=target.device)) & seg_ok[:, None]).long().cumsum(0)
    seg_slot = rank.gather(1, seg_img[:, None])[:, 0] - 1
    host = torch.stack([_not_finite(f, target.device), _not_finite(g, target.device), ((target < 0) & counted).any(),
                        rank[-1].max()]).tolist()  # the one host synchronisation
    if host[0]:
        raise ValueError("f contains NaN or infinite values")
    if host[1]:
        raise ValueError("g contains NaN or infinite values")
    if host[2]:
        raise ValueError("target contains negative labels other than ignore_index")
    n_slots = int(host[3])
    C = max(n_slots, 1)  # at least one (possibly unused) slot: no shape downstream is ever empty
    slot = torch.where(seg_ok, seg_slot, n_slots)[inv]
    labels = target.new_full((B, C + 1), -1).scatter_(1, slot, target)[:, :C]
    slot = torch.where(slot == n_slots, C, slot)
    return slot.contiguous(), labels.contiguous()


@cluster_slots.register_fake
def _(target, f, g, ignore_index, sparse):
    C = torch.library.get_ctx().new_dynamic_size(min=1)
    return target.new_empty(target.shape), target.new_empty((target.shape[0], C))
