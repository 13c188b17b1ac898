"""``spoco::segment_sum``: per-slot sums of pixel embeddings and pixel counts (the cluster
means of the pull, push and regulariser terms), with its backward as its own op.

Layouts: ``emb (B, D, N)``, ``slot (B, N)`` int64 (the slot of a pixel; anything outside
``[0, C)`` = none). CPU: ``spoco._core.loss_segment_sum`` (OpenMP, deterministic);
CUDA: ``spoco._cuda.loss_segment_sum``.
"""
from __future__ import annotations

import torch

from ._kernel import check_dims, check_emb, check_like, launch


@torch.library.custom_op("spoco::segment_sum", mutates_args=())
def segment_sum(emb: torch.Tensor, slot: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot sums ``(B, C, D)`` of the embeddings ``emb (B, D, N)`` and pixel counts ``(B, C)``."""
    check_emb("emb", emb)
    B, D, N = check_dims(emb)
    check_like("slot", slot, (B, N), torch.int64, emb.device)
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    emb, slot = emb.contiguous(), slot.contiguous()
    sums = emb.new_zeros((B, n_slots, D))
    counts = emb.new_zeros((B, n_slots))
    if n_slots:
        launch("segment_sum", emb, scratch_dims=("segment_sum", B, D, N, n_slots), emb=emb, slot=slot,
               B=B, D=D, N=N, C=n_slots, sums=sums, counts=counts)
    return sums, counts


@segment_sum.register_fake
def _(emb, slot, n_slots):
    B, D, N = emb.shape
    return emb.new_empty((B, n_slots, D)), emb.new_empty((B, n_slots))


@torch.library.custom_op("spoco::segment_sum_backward", mutates_args=())
def segment_sum_backward(grad_sums: torch.Tensor, slot: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Gradient ``(B, D, N)`` of :func:`segment_sum`: each pixel gets its slot's ``grad_sums (B, C, D)``."""
    check_emb("grad_sums", grad_sums)
    B, C, D = grad_sums.shape
    check_like("slot", slot, (B, n_pixels), torch.int64, grad_sums.device)
    grad_sums, slot = grad_sums.contiguous(), slot.contiguous()
    grad_emb = grad_sums.new_empty((B, D, n_pixels))  # every element is written on both devices
    launch("segment_sum_backward", grad_emb, scratch_dims=("segment_sum", B, D, n_pixels, C), grad_sums=grad_sums,
           slot=slot, B=B, D=D, N=n_pixels, C=C, grad_emb=grad_emb)
    return grad_emb


@segment_sum_backward.register_fake
def _(grad_sums, slot, n_pixels):
    B, C, D = grad_sums.shape
    return grad_sums.new_empty((B, D, n_pixels))


def _setup(ctx, inputs, output):
    emb, slot, n_slots = inputs
    ctx.save_for_backward(slot)
    ctx.n_pixels = emb.shape[2]


def _backward(ctx, grad_sums, grad_counts):
    (slot,) = ctx.saved_tensors
    return segment_sum_backward(grad_sums, slot, ctx.n_pixels), None, None


segment_sum.register_autograd(_backward, setup_context=_setup)
