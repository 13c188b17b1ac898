"""``spoco::pixel_terms``: every per-pixel reduction of one SPOCO loss call (cluster means,
pull, instance soft masks, unlabeled push, consistency), with a one-pass fused backward.

CPU: one C++ call each way (``spoco._core.loss_pixel_terms``). CUDA: composed of the
single-term ops :func:`~spoco.ops.segment_sum`, :func:`~spoco.ops.pull_sums` and
:func:`~spoco.ops.anchor_pixel_sums` (:func:`_composed_forward`,
:func:`_composed_backward`), which compute the same values. Why no fused CUDA kernel:
on the GPU the single-term kernels are each one pass over the pixels with per-block
reductions, so fusing them saves launches and re-reads of ``emb`` but not a change of
complexity, and a fused kernel has not yet been validated on a GPU; the composed path
is tested against the same direct formulas as the CPU kernel (tests/ops).
"""
from __future__ import annotations

import torch

from ._kernel import BLOCK_PIXELS, check_dims, check_emb, check_like, contiguous, gradient_buffer, launch
from .anchor_pixel_sums import TERMS, anchor_pixel_forward, anchor_pixel_sums_backward
from .pull_sums import pull_sums, pull_sums_backward
from .segment_sum import segment_sum, segment_sum_backward


def pixels_at(emb: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Embeddings ``(B, K, D)`` of the pixels ``pix (B, K)`` of ``emb (B, D, N)``."""
    B, D = emb.shape[:2]
    return emb.gather(2, pix[:, None, :].expand(B, D, pix.shape[1])).transpose(1, 2).contiguous()


def _check(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons) -> tuple[int, int, int, int]:
    check_emb("emb", emb)
    B, D, N = check_dims(emb)
    check_like("slot", slot, (B, N), torch.int64, emb.device)
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    check_like("inst_pix", inst_pix, (B, n_slots), torch.int64, emb.device)
    if len({cons_pix is None, emb_g is None, n_cons is None}) != 1:
        raise ValueError("cons_pix, emb_g and n_cons must be given together (the consistency term)")
    if cons_pix is None:
        return B, D, N, 0
    # pixel index values are not checked here (no host synchronisation): the kernels and torch's gather do
    if cons_pix.dtype != torch.int64 or cons_pix.dim() != 2 or cons_pix.shape[0] != B or cons_pix.device != emb.device:
        raise ValueError(f"cons_pix must be an int64 (B, K) tensor of pixel indices in [0, {N}) on {emb.device}")
    check_like("emb_g", emb_g, (B, D, N), emb.dtype, emb.device)
    check_like("n_cons", n_cons, (B,), torch.int64, emb.device)
    return B, D, N, cons_pix.shape[1]


def _shapes(emb, n_slots, unlabeled_push, K):
    """Shapes of the float outputs ``means, counts, pull, inst, upush, cons``."""
    B, D = emb.shape[:2]
    C = n_slots
    return [(B, C, D), (B, C), (B, C), (2, B, C), (1, B, C if unlabeled_push else 0), (3, B, K)]


def _active_shape(emb, n_slots, unlabeled_push):
    B, _, N = emb.shape
    return (B, n_slots if unlabeled_push else 0, -(-N // BLOCK_PIXELS))


@torch.library.custom_op("spoco::pixel_terms", mutates_args=())
def pixel_terms(emb: torch.Tensor, slot: torch.Tensor, n_slots: int, inst_pix: torch.Tensor | None,
                unlabeled_push: bool, cons_pix: torch.Tensor | None, emb_g: torch.Tensor | None,
                n_cons: torch.Tensor | None, h: float, delta_v: float, delta_d: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor]:
    """Every per-pixel reduction of one loss call.

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
    """
    B, D, N, K = _check(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons)
    if emb.device.type != "cpu":
        return _composed_forward(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v,
                                 delta_d)
    means, counts, pull, inst, upush, cons = (emb.new_zeros(s) for s in _shapes(emb, n_slots, unlabeled_push, K))
    active = torch.zeros(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8, device=emb.device)
    launch("pixel_terms", emb, emb=emb.contiguous(), emb_g=contiguous(emb_g), slot=slot.contiguous(),
           inst_pix=contiguous(inst_pix), unlabeled_push=bool(unlabeled_push), cons_pix=contiguous(cons_pix),
           n_cons=contiguous(n_cons), B=B, D=D, N=N, C=n_slots, K=K, h=float(h), delta_v=float(delta_v),
           delta_d=float(delta_d), means=means, counts=counts, pull=pull, inst=inst, upush=upush, cons=cons,
           up_active=active if unlabeled_push else None)
    return means, counts, pull, inst, upush, cons, active


@pixel_terms.register_fake
def _(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    K = cons_pix.shape[1] if cons_pix is not None else 0
    return (*(emb.new_empty(shape) for shape in _shapes(emb, n_slots, unlabeled_push, K)),
            emb.new_empty(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8))


@torch.library.custom_op("spoco::pixel_terms_backward", mutates_args=())
def pixel_terms_backward(grad_means: torch.Tensor, grad_pull: torch.Tensor, grad_inst: torch.Tensor,
                         grad_up: torch.Tensor, grad_cons: torch.Tensor, emb: torch.Tensor, slot: torch.Tensor,
                         means: torch.Tensor, counts: torch.Tensor, up_active: torch.Tensor,
                         inst_pix: torch.Tensor | None, unlabeled_push: bool, cons_pix: torch.Tensor | None,
                         emb_g: torch.Tensor | None, n_cons: torch.Tensor | None, h: float, delta_v: float,
                         delta_d: float) -> torch.Tensor:
    """Gradient ``(B, D, N)`` of :func:`pixel_terms` with respect to ``emb`` for the upstream
    gradients of its outputs ``means``, ``pull``, ``inst``, ``upush`` and ``cons`` (``means``,
    ``counts`` and ``up_active`` are the forward's outputs). On the CPU one compute pass plus
    one memory-bound pass write the gradient."""
    C = means.shape[1]
    B, D, N, K = _check(emb, slot, C, inst_pix, cons_pix, emb_g, n_cons)
    shapes = _shapes(emb, C, unlabeled_push, K)
    grads = (grad_means, grad_pull, grad_inst, grad_up, grad_cons)
    for name, x, shape in zip(("grad_means", "grad_pull", "grad_inst", "grad_up", "grad_cons"), grads,
                              [shapes[0]] + shapes[2:]):
        check_like(name, x, shape, emb.dtype, emb.device)
    check_like("means", means, shapes[0], emb.dtype, emb.device)
    check_like("counts", counts, shapes[1], emb.dtype, emb.device)
    check_like("up_active", up_active, _active_shape(emb, C, unlabeled_push), torch.uint8, emb.device)
    if emb.device.type != "cpu":
        return _composed_backward(*grads, emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons,
                                  h, delta_v, delta_d)
    grad_emb = gradient_buffer(emb, (B, D, N))
    launch("pixel_terms", emb, backward=True, emb=emb.contiguous(), emb_g=contiguous(emb_g), slot=slot.contiguous(),
           inst_pix=contiguous(inst_pix), unlabeled_push=bool(unlabeled_push), cons_pix=contiguous(cons_pix),
           n_cons=contiguous(n_cons), B=B, D=D, N=N, C=C, K=K, h=float(h), delta_v=float(delta_v),
           delta_d=float(delta_d), means=means.contiguous(), counts=counts.contiguous(),
           grad_means=grad_means.contiguous(), grad_pull=grad_pull.contiguous(), grad_inst=grad_inst.contiguous(),
           grad_upush=grad_up.contiguous(), grad_cons=grad_cons.contiguous(), grad_emb=grad_emb,
           up_active=up_active.contiguous() if unlabeled_push else None)
    return grad_emb


@pixel_terms_backward.register_fake
def _(grad_means, grad_pull, grad_inst, grad_up, grad_cons, emb, slot, means, counts, up_active, inst_pix,
      unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    return emb.new_empty(emb.shape)


# ------------------------------------------------------------------ CUDA: composed of single-term ops
def _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_d):
    """{name: args of anchor_pixel_sums}: the anchor x pixel terms of :func:`pixel_terms`."""
    C = means.shape[1]
    rank = torch.arange(1, C + 1, device=emb.device)
    n_obj = torch.where(counts > 0, rank, 0).amax(1) if C > 0 else slot.new_zeros(slot.shape[0])
    weight = ((slot >= 0) & (slot <= C)).to(emb.dtype)
    inst_a = means if inst_pix is None else pixels_at(emb, inst_pix)
    terms = {"inst": (TERMS["soft_mask"], inst_a.contiguous(), emb, None, None, slot, weight, n_obj, h, 0.0)}
    if unlabeled_push:
        terms["up"] = (TERMS["unlabeled_push"], means.contiguous(), emb, None, None, None, (slot == C).to(emb.dtype),
                       n_obj, 0.0, delta_d)
    if cons_pix is not None:
        terms["cons"] = (TERMS["consistency"], pixels_at(emb, cons_pix), emb, pixels_at(emb_g, cons_pix), emb_g,
                         None, weight, n_cons, h, 0.0)
    return terms


def _composed_forward(emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    """:func:`pixel_terms` from the single-term ops (the CUDA implementation; any device)."""
    B, D, N, K = _check(emb, slot, n_slots, inst_pix, cons_pix, emb_g, n_cons)
    sums, counts = segment_sum(emb, slot, n_slots)
    means = sums / counts.clamp(min=1)[:, :, None]
    pull = pull_sums(emb, means, slot, delta_v)
    terms = _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_d)
    shapes = _shapes(emb, n_slots, unlabeled_push, K)
    outs = {name: anchor_pixel_forward(*args) for name, args in terms.items()}
    return (means, counts, pull, outs["inst"], outs.get("up", emb.new_zeros(shapes[4])),
            outs.get("cons", emb.new_zeros(shapes[5])),
            torch.ones(_active_shape(emb, n_slots, unlabeled_push), dtype=torch.uint8, device=emb.device))


def _composed_backward(grad_means, grad_pull, grad_inst, grad_up, grad_cons, emb, slot, means, counts, inst_pix,
                       unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d):
    """:func:`pixel_terms_backward` from the single-term ops (the CUDA implementation; any device)."""
    B, D, N = emb.shape
    terms = _composed_terms(emb, slot, means, counts, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_d)
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


# ------------------------------------------------------------------ autograd
def _setup(ctx, inputs, output):
    emb, slot, n_slots, inst_pix, unlabeled_push, cons_pix, emb_g, n_cons, h, delta_v, delta_d = inputs
    ctx.save_for_backward(emb, slot, output[0], output[1], output[6], inst_pix, cons_pix, emb_g, n_cons)
    ctx.args = (unlabeled_push, h, delta_v, delta_d)


def _backward(ctx, grad_means, grad_counts, grad_pull, grad_inst, grad_up, grad_cons, grad_active):
    emb, slot, means, counts, up_active, inst_pix, cons_pix, emb_g, n_cons = ctx.saved_tensors
    unlabeled_push, h, delta_v, delta_d = ctx.args
    K = cons_pix.shape[1] if cons_pix is not None else 0
    shapes = _shapes(emb, means.shape[1], unlabeled_push, K)
    grads = [emb.new_zeros(shape) if g is None else g
             for g, shape in zip((grad_means, grad_pull, grad_inst, grad_up, grad_cons), [shapes[0]] + shapes[2:])]
    grad_emb = pixel_terms_backward(*grads, emb, slot, means, counts, up_active, inst_pix, unlabeled_push, cons_pix,
                                    emb_g, n_cons, h, delta_v, delta_d)
    return (grad_emb,) + (None,) * 10


pixel_terms.register_autograd(_backward, setup_context=_setup)
