"""``spoco::anchor_pixel_sums``: per-anchor sums over every pixel of one anchor x pixel
term (soft masks of Eq. 3–4, unlabeled push of Eq. 6, consistency of Eq. 7), with its
backward as its own op.

Layouts: ``emb (B, D, N)``, ``anchors (B, K, D)``, ``slot (B, N)`` int64, ``weight (B, N)``
pixel weights (0 = ignored), ``n_valid (B,)`` int64 (anchors ``k >= n_valid[b]`` of image
b are skipped and give 0). CPU: ``spoco._core.loss_anchor_pixel``; CUDA:
``spoco._cuda.loss_anchor_pixel``. :func:`spoco.ops.pixel_terms` runs these terms
fused on the CPU and through this op on CUDA.
"""
from __future__ import annotations

import torch

from ._kernel import check_dims, check_emb, check_like, contiguous, gradient_buffer, launch

#: Kernel ids of the anchor x pixel terms (the contract with csrc/core/loss_terms.hpp).
TERMS = {"soft_mask": 0, "unlabeled_push": 1, "consistency": 2}
#: Outputs per term: soft mask (Σ w S I, Σ w S²), unlabeled push (Σ u hinge²),
#: consistency (Σ w S^f S^g, Σ w (S^f)², Σ w (S^g)²).
N_OUTPUTS = {0: 2, 1: 1, 2: 3}


def _check(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid):
    if term not in N_OUTPUTS:
        raise ValueError(f"term must be one of {sorted(N_OUTPUTS)}, got {term}")
    check_emb("emb", emb)
    B, D, N = check_dims(emb)
    check_emb("anchors", anchors)
    K = anchors.shape[1]
    check_like("anchors", anchors, (B, K, D), emb.dtype, emb.device)
    if term == TERMS["consistency"]:
        if anchors_g is None or emb_g is None:
            raise ValueError("the consistency term needs anchors_g and emb_g")
        check_like("emb_g", emb_g, (B, D, N), emb.dtype, emb.device)
        check_like("anchors_g", anchors_g, (B, K, D), emb.dtype, emb.device)
    if term == TERMS["soft_mask"] and slot is None:
        raise ValueError("the soft-mask term needs slot")
    check_like("slot", slot, (B, N), torch.int64, emb.device)
    check_like("weight", weight, (B, N), emb.dtype, emb.device)
    check_like("n_valid", n_valid, (B,), torch.int64, emb.device)
    return B, D, N, K


def _fields(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta) -> dict:
    """The LossCall fields shared by the forward and the backward."""
    B, D, N, K = _check(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid)
    return dict(term=term, emb=emb.contiguous(), anchors=anchors.contiguous(), emb_g=contiguous(emb_g),
                anchors_g=contiguous(anchors_g), slot=contiguous(slot), weight=contiguous(weight),
                n_valid=contiguous(n_valid), B=B, D=D, N=N, K=K, h=float(h), delta=float(delta))


@torch.library.custom_op("spoco::anchor_pixel_sums", mutates_args=())
def anchor_pixel_sums(term: int, anchors: torch.Tensor, emb: torch.Tensor, anchors_g: torch.Tensor | None,
                      emb_g: torch.Tensor | None, slot: torch.Tensor | None, weight: torch.Tensor | None,
                      n_valid: torch.Tensor, h: float, delta: float) -> torch.Tensor:
    """Per-anchor sums over every pixel of one anchor x pixel term, ``(n_out, B, K)``.

    ``term`` is a value of :data:`TERMS` (outputs in :data:`N_OUTPUTS`); ``h = 1/(2σ²)``
    of the kernel ``S(i) = exp(−h‖e_i − a‖²)``; ``delta`` the unlabeled-push margin.
    """
    return anchor_pixel_forward(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)


def anchor_pixel_forward(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta) -> torch.Tensor:
    """The body of :func:`anchor_pixel_sums`, callable inside other ops without dispatch."""
    fields = _fields(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)
    B, D, N, K = fields["B"], fields["D"], fields["N"], fields["K"]
    out = emb.new_zeros((N_OUTPUTS[term], B, K))
    if K:
        launch("anchor_pixel", emb, scratch_dims=("anchor_pixel", B, D, N, K), out=out, **fields)
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
    fields = _fields(term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta)
    B, D, N, K = fields["B"], fields["D"], fields["N"], fields["K"]
    check_like("grad", grad, (N_OUTPUTS[term], B, K), emb.dtype, emb.device)
    grad_anchors, grad_emb = anchors.new_zeros(anchors.shape), (gradient_buffer(emb, emb.shape) if K
                                                                else emb.new_zeros(emb.shape))
    if K:
        launch("anchor_pixel", emb, scratch_dims=("anchor_pixel_backward", B, D, N, K), backward=True,
               grad_out=grad.contiguous(), grad_emb=grad_emb, grad_anchors=grad_anchors, **fields)
    return grad_anchors, grad_emb


@anchor_pixel_sums_backward.register_fake
def _(grad, term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta):
    return anchors.new_empty(anchors.shape), emb.new_empty(emb.shape)


def _setup(ctx, inputs, output):
    term, anchors, emb, anchors_g, emb_g, slot, weight, n_valid, h, delta = inputs
    ctx.save_for_backward(anchors, emb, anchors_g, emb_g, slot, weight, n_valid)
    ctx.term, ctx.h, ctx.delta = term, h, delta


def _backward(ctx, grad):
    anchors, emb, anchors_g, emb_g, slot, weight, n_valid = ctx.saved_tensors
    grad_anchors, grad_emb = anchor_pixel_sums_backward(grad, ctx.term, anchors, emb, anchors_g, emb_g, slot, weight,
                                                        n_valid, ctx.h, ctx.delta)
    return None, grad_anchors, grad_emb, None, None, None, None, None, None, None


anchor_pixel_sums.register_autograd(_backward, setup_context=_setup)
