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

A loss call uses three ops: :func:`cluster_slots` (labels to per-image slots, random
instance anchors, input checks; the one host synchronisation), :func:`consistency_anchors`
and :func:`pixel_terms` (every per-pixel sum, one gradient of f). The single-term ops
(:func:`segment_sum`, :func:`pull_sums`, :func:`anchor_pixel_sums`) are its building
blocks on CUDA.

The CPU reductions are deterministic and independent of the number of threads.
On CUDA they use one atomic per (block, anchor), or a fixed-order two-pass
reduction when ``torch.are_deterministic_algorithms_enabled()``.
"""
from __future__ import annotations

import torch

from .. import _core
from . import anchors as _anchors
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


# ------------------------------------------------------- all pixel reductions of a loss call
def _pixels_at(emb: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Embeddings ``(B, K, D)`` of the pixels ``pix (B, K)`` of ``emb (B, D, N)``."""
    B, D = emb.shape[:2]
    return emb.gather(2, pix[:, None, :].expand(B, D, pix.shape[1])).transpose(1, 2).contiguous()


def _check_pixel_terms(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons) -> tuple[int, int, int, int]:
    _check_emb("emb", emb)
    B, D, N = _check_dims(emb)
    _check_like("slot", slot, (B, N), torch.int64, emb.device)
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    _check_like("inst_pix", inst_pix, (B, n_slots), torch.int64, emb.device)
    if len({cons_pix is None, emb_g is None, n_cons is None}) != 1:
        raise ValueError("cons_pix, emb_g and n_cons must be given together (the consistency term)")
    if cons_pix is None:
        return B, D, N, 0
    # pixel index values are not checked here (no host synchronisation): the kernels and torch's gather do
    if cons_pix.dtype != torch.int64 or cons_pix.dim() != 2 or cons_pix.shape[0] != B or cons_pix.device != emb.device:
        raise ValueError(f"cons_pix must be an int64 (B, K) tensor of pixel indices in [0, {N}) on {emb.device}")
    _check_like("emb_g", emb_g, (B, D, N), emb.dtype, emb.device)
    _check_like("n_cons", n_cons, (B,), torch.int64, emb.device)
    return B, D, N, cons_pix.shape[1]


def _pixel_terms_shapes(emb, n_slots, unlabeled_push, K):
    """Shapes of the float outputs of :func:`pixel_terms` (its last output, ``up_active``, is
    ``(B, C or 0, ceil(N / BLOCK_PIXELS))`` uint8)."""
    B, D = emb.shape[:2]
    C = n_slots
    return [(B, C, D), (B, C), (B, C), (2, B, C), (1, B, C if unlabeled_push else 0), (3, B, K)]


#: Pixels per block of the CPU pass (the granularity of ``up_active``).
BLOCK_PIXELS = int(_core.loss_block_pixels)


def _active_shape(emb, n_slots, unlabeled_push):
    B, _, N = emb.shape
    return (B, n_slots if unlabeled_push else 0, -(-N // BLOCK_PIXELS))


@torch.library.custom_op("spoco::pixel_terms", mutates_args=())
def pixel_terms(emb: torch.Tensor, slot: torch.Tensor, n_slots: int, inst_pix: torch.Tensor | None,
                unlabeled_push: bool, cons_pix: torch.Tensor | None, emb_g: torch.Tensor | None,
                n_cons: torch.Tensor | None, h: float, delta_v: float, delta_d: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor]:
    """Every per-pixel reduction of one loss call, with a one-pass fused backward.

    Parameters
    ----------
    emb : (B, D, N) pixel embeddings f
    slot : (B, N) int64: ``[0, C)`` the pixel's cluster (``C = n_slots``), ``C`` counted but in
        no cluster (the unlabeled region of the sparse mode), anything else ignored (weight 0)
    inst_pix : (B, C) int64 pixel of each cluster's instance anchor (Eq. 3), or None: the means
    unlabeled_push : compute Eq. 6 between the means and the pixels of slot C
    cons_pix, emb_g, n_cons : consistency anchor pixels (B, K) (the same pixel in f and g), the
        g-embeddings (a constant) and (B,) anchors in use, or all None (no Eq. 7)
    h : 1/(2σ²); delta_v, delta_d : pull and push margins

    Returns
    -------
    means : (B, C, D) cluster sums / max(size, 1);  counts : (B, C) cluster sizes
    pull : (B, C) ``Σ_{i∈k} [‖μ_k − e_i‖ − δ_v]₊²``
    inst : (2, B, C) ``Σ w S_k I_k``, ``Σ w S_k²`` (w = 1 for counted pixels)
    upush : (1, B, C) ``Σ_{i: slot C} [δ_d − ‖μ_k − e_i‖]₊²`` (or (1, B, 0))
    cons : (3, B, K) ``Σ w S^f S^g``, ``Σ w (S^f)²``, ``Σ w (S^g)²`` (or (3, B, 0))
    up_active : (B, C, ceil(N / BLOCK_PIXELS)) uint8 (or (B, 0, ...)): 1 where a mean has a non-zero
        unlabeled-push hinge on some pixel of a block of BLOCK_PIXELS pixels (all 1 off the CPU);
        no gradient. The backward skips the other (mean, block) pairs, whose gradient is 0
        exactly: most of them once the unlabeled pixels lie beyond δ_d.

    Slots after the last non-empty slot of an image give 0 in pull, inst and upush. The
    gradient flows to ``emb`` only, through all outputs but ``counts``: through the means
    to every pixel of a cluster, and through anchors taken at pixels to those pixels.
    On the CPU both directions are one C++ call (:func:`_core.loss_pixel_terms`); the
    backward writes the one ``(B, D, N)`` gradient in one compute pass plus one
    memory-bound pass. Elsewhere (CUDA) they are composed of the single-term ops
    (:func:`_pixel_terms_composed`), which compute the same values.
    """
    B, D, N, K = _check_pixel_terms(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons)
    if emb.device.type != "cpu":
        return _pixel_terms_composed(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h,
                                     delta_v, delta_d)
    outs = [emb.new_zeros(shape) for shape in _pixel_terms_shapes(emb, n_slots, unlabeled_push, K)]
    active = torch.zeros(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8, device=emb.device)
    ts = [_contig(x) for x in (emb, emb_g, slot, inst_pix, cons_pix, n_cons)]
    _core.loss_pixel_terms(False, _dtype(emb), *map(_ptr, ts[:4]), bool(unlabeled_push), _ptr(ts[4]), _ptr(ts[5]),
                           B, D, N, n_slots, K, float(h), float(delta_v), float(delta_d), outs[0].data_ptr(),
                           outs[1].data_ptr(), [o.data_ptr() for o in outs[2:]] + [_ptr(active if unlabeled_push
                                                                                        else None)], _threads())
    return (*outs, active)


@pixel_terms.register_fake
def _(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    K = cons_pix.shape[1] if cons_pix is not None else 0
    return (*(emb.new_empty(shape) for shape in _pixel_terms_shapes(emb, n_slots, unlabeled_push, K)),
            emb.new_empty(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8))


def _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_d):
    """{name: args of the single-term op}: the anchor x pixel terms of :func:`pixel_terms`."""
    C = means.shape[1]
    rank = torch.arange(1, C + 1, device=emb.device)
    n_obj = torch.where(counts > 0, rank, 0).amax(1) if C > 0 else slot.new_zeros(slot.shape[0])
    weight = ((slot >= 0) & (slot <= C)).to(emb.dtype)
    inst_a = means if inst_pix is None else _pixels_at(emb, inst_pix)
    terms = {"inst": (TERMS["soft_mask"], inst_a.contiguous(), emb, None, None, slot, weight, n_obj, h, 0.0)}
    if unlabeled_push:
        terms["up"] = (TERMS["unlabeled_push"], means.contiguous(), emb, None, None, None, (slot == C).to(emb.dtype),
                       n_obj, 0.0, delta_d)
    if cons_pix is not None:
        terms["cons"] = (TERMS["consistency"], _pixels_at(emb, cons_pix), emb, _pixels_at(emb_g, cons_pix), emb_g,
                         None, weight, n_cons, h, 0.0)
    return terms, n_obj


def _pixel_terms_composed(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v,
                          delta_d):
    """:func:`pixel_terms` from the single-term ops (the CUDA implementation; any device)."""
    B, D, N, K = _check_pixel_terms(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons)
    sums, counts = segment_sum(emb, slot, n_slots)
    means = sums / counts.clamp(min=1)[:, :, None]
    pull = pull_sums(emb, means, slot, delta_v)
    terms, _ = _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_d)
    shapes = _pixel_terms_shapes(emb, n_slots, unlabeled_push, K)
    outs = {name: _anchor_pixel_forward(*args) for name, args in terms.items()}
    return (means, counts, pull, outs["inst"], outs.get("up", emb.new_zeros(shapes[4])),
            outs.get("cons", emb.new_zeros(shapes[5])),
            torch.ones(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8, device=emb.device))


@torch.library.custom_op("spoco::pixel_terms_backward", mutates_args=())
def pixel_terms_backward(grad_means: torch.Tensor, grad_pull: torch.Tensor, grad_inst: torch.Tensor,
                         grad_up: torch.Tensor, grad_cons: torch.Tensor, emb: torch.Tensor, slot: torch.Tensor,
                         means: torch.Tensor, counts: torch.Tensor, up_active: torch.Tensor,
                         inst_pix: torch.Tensor | None, unlabeled_push: bool, cons_pix: torch.Tensor | None,
                         emb_g: torch.Tensor | None, n_cons: torch.Tensor | None, h: float, delta_v: float,
                         delta_d: float) -> torch.Tensor:
    """Gradient ``(B, D, N)`` of :func:`pixel_terms` with respect to ``emb`` for the upstream
    gradients of its outputs ``means``, ``pull``, ``inst``, ``upush`` and ``cons`` (``means``,
    ``counts`` and ``up_active`` are the forward's outputs)."""
    C = means.shape[1]
    B, D, N, K = _check_pixel_terms(emb, slot, C, inst_pix, cons_pix, emb_g, n_cons)
    shapes = _pixel_terms_shapes(emb, C, unlabeled_push, K)
    grads = (grad_means, grad_pull, grad_inst, grad_up, grad_cons)
    for name, x, shape in zip(("grad_means", "grad_pull", "grad_inst", "grad_up", "grad_cons"), grads,
                              [shapes[0]] + shapes[2:]):
        _check_like(name, x, shape, emb.dtype, emb.device)
    _check_like("means", means, shapes[0], emb.dtype, emb.device)
    _check_like("counts", counts, shapes[1], emb.dtype, emb.device)
    _check_like("up_active", up_active, _active_shape(emb, C, unlabeled_push), torch.uint8, emb.device)
    if emb.device.type != "cpu":
        return _pixel_terms_backward_composed(*grads, emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix,
                                              emb_g, n_cons, h, delta_v, delta_d)
    grad_emb = emb.new_empty((B, D, N))
    ts = [_contig(x) for x in (emb, emb_g, slot, inst_pix, cons_pix, n_cons, means, counts) + grads]
    _core.loss_pixel_terms(True, _dtype(emb), *map(_ptr, ts[:4]), bool(unlabeled_push), _ptr(ts[4]), _ptr(ts[5]),
                           B, D, N, C, K, float(h), float(delta_v), float(delta_d), ts[6].data_ptr(),
                           ts[7].data_ptr(), [x.data_ptr() for x in ts[8:]] + [grad_emb.data_ptr()]
                           + [_ptr(up_active.contiguous() if unlabeled_push else None)], _threads())
    return grad_emb


@pixel_terms_backward.register_fake
def _(grad_means, grad_pull, grad_inst, grad_up, grad_cons, emb, slot, means, counts, up_active, inst_pix,
      unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    return emb.new_empty(emb.shape)


def _pixel_terms_backward_composed(grad_means, grad_pull, grad_inst, grad_up, grad_cons, emb, slot, means, counts,
                                   inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    """:func:`pixel_terms_backward` from the single-term ops (the CUDA implementation; any device)."""
    B, D, N = emb.shape
    terms, n_obj = _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h,
                                   delta_d)
    grads = {"inst": grad_inst, "up": grad_up, "cons": grad_cons}
    grad_emb, grad_mu = pull_sums_backward(grad_pull, emb, means, slot, delta_v)
    grad_mu = grad_mu + grad_means
    grad_a = {}
    for name, args in terms.items():
        grad_a[name], g = anchor_pixel_sums_backward(grads[name], *args)
        grad_emb = grad_emb + g
    if "up" in grad_a:
        grad_mu = grad_mu + grad_a["up"]
    if inst_pix is None:
        grad_mu = grad_mu + grad_a["inst"]
    grad_emb = grad_emb + segment_sum_backward(grad_mu / counts.clamp(min=1)[:, :, None], slot, N)
    for pix, name in ((inst_pix, "inst"), (cons_pix, "cons")):
        if pix is not None:  # anchors taken at pixels: their gradient lands on those pixels
            grad_emb.scatter_add_(2, pix[:, None, :].expand(B, D, pix.shape[1]), grad_a[name].transpose(1, 2))
    return grad_emb


def _pixel_terms_setup(ctx, inputs, output):
    emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d = inputs
    ctx.save_for_backward(emb, slot, output[0], output[1], output[6], inst_pix, cons_pix, emb_g, n_cons)
    ctx.args = (unlabeled_push, h, delta_v, delta_d)


def _pixel_terms_backward(ctx, grad_means, grad_counts, grad_pull, grad_inst, grad_up, grad_cons, grad_active):
    emb, slot, means, counts, up_active, inst_pix, cons_pix, emb_g, n_cons = ctx.saved_tensors
    unlabeled_push, h, delta_v, delta_d = ctx.args
    K = cons_pix.shape[1] if cons_pix is not None else 0
    shapes = _pixel_terms_shapes(emb, means.shape[1], unlabeled_push, K)
    grads = [emb.new_zeros(shape) if g is None else g
             for g, shape in zip((grad_means, grad_pull, grad_inst, grad_up, grad_cons), [shapes[0]] + shapes[2:])]
    grad_emb = pixel_terms_backward(*grads, emb, slot, means, counts, up_active, inst_pix, unlabeled_push, cons_pix,
                                    emb_g, n_cons, h, delta_v, delta_d)
    return (grad_emb,) + (None,) * 10


pixel_terms.register_autograd(_pixel_terms_backward, setup_context=_pixel_terms_setup)


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


def _raise_on_checks(f_bad: bool, g_bad: bool, negative: bool) -> None:
    if f_bad:
        raise ValueError("f contains NaN or infinite values")
    if g_bad:
        raise ValueError("g contains NaN or infinite values")
    if negative:
        raise ValueError("target contains negative labels other than ignore_index")


@torch.library.custom_op("spoco::cluster_slots", mutates_args=())
def cluster_slots(target: torch.Tensor, f: torch.Tensor, g: torch.Tensor | None, ignore_index: int, sparse: bool,
                  keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image cluster slots of the labels, random instance anchors, and the input checks of a loss call.

    Parameters
    ----------
    target : (B, N) int64 labels; ``ignore_index`` = no term; in ``sparse`` mode 0 = unlabeled
    f, g : (B, D, N) embeddings, only checked for NaN/inf (g may be None)
    keys : (B, N) float64 uniform keys, or None (no anchors)

    Returns
    -------
    slot : (B, N) int64, the slot ``0..C-1`` of each pixel's cluster (clusters of an image in
        ascending label order), C for counted pixels in no cluster (sparse: label 0), −1 for
        ignored pixels
    labels : (B, C) int64, the label of each slot, −1 for slots an image does not use
    pix : (B, C) int64, the pixel of largest key of each cluster (ties: the lowest index), a
        uniform draw (:func:`spoco.ops.anchors.random_instance_anchors`); arbitrary for unused
        slots; (B, 0) without keys

    C, the most clusters of an image (at least 1), depends on the data: the op's one host
    synchronisation (its fake implementation gives C as an unbacked size, so
    ``torch.compile(fullgraph=True)`` traces through it). Raises ``ValueError`` for
    non-finite embeddings or negative labels other than ``ignore_index``. On the CPU one
    C++ pass per image (:func:`_core.loss_cluster_slots`); elsewhere torch ops
    (:func:`_cluster_slots_torch`).
    """
    B, N = target.shape
    if target.dtype != torch.int64:
        raise TypeError(f"target must have dtype torch.int64, got {target.dtype}")
    _check_like("keys", keys, (B, N), torch.float64, target.device)
    if target.device.type != "cpu":
        return _cluster_slots_torch(target, f, g, ignore_index, sparse, keys)
    f_bad, g_bad = bool(_not_finite(f, target.device)), bool(_not_finite(g, target.device))
    _raise_on_checks(f_bad, g_bad, False)
    target, keys = target.contiguous(), _contig(keys)
    slot = torch.empty((B, N), dtype=torch.int64)
    C, negative, labels, pix = _core.loss_cluster_slots(target.data_ptr(), _ptr(keys), B, N, int(ignore_index),
                                                        bool(sparse), slot.data_ptr(), _threads())
    _raise_on_checks(False, False, negative)
    labels = torch.tensor(labels, dtype=torch.int64).reshape(B, C)
    pix = torch.tensor(pix, dtype=torch.int64).reshape(B, C) if keys is not None else target.new_empty((B, 0))
    return slot, labels, pix


def _cluster_slots_torch(target, f, g, ignore_index, sparse, keys):
    """:func:`cluster_slots` with torch ops (one ``torch.unique``; the CUDA implementation)."""
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
    _raise_on_checks(*host[:3])
    n_slots = int(host[3])
    C = max(n_slots, 1)  # at least one (possibly unused) slot: no shape downstream is ever empty
    # pixels in no cluster go to slot C (also when there is no cluster at all: n_slots = 0 < C = 1)
    slot = torch.where(seg_ok, seg_slot, C)[inv]
    labels = target.new_full((B, C + 1), -1).scatter_(1, slot, target)[:, :C]
    pix = _anchors.random_instance_anchors(slot, keys, C) if keys is not None else target.new_empty((B, 0))
    slot = torch.where(counted, slot, -1)
    return slot.contiguous(), labels.contiguous(), pix


@cluster_slots.register_fake
def _(target, f, g, ignore_index, sparse, keys=None):
    C = torch.library.get_ctx().new_dynamic_size(min=1)
    B = target.shape[0]
    return target.new_empty(target.shape), target.new_empty((B, C)), target.new_empty((B, C if keys is not None else 0))
