"""``spoco::pull_sums``: the pull hinge of Eq. 1 summed per cluster slot, with its
backward as its own op.

Layouts: ``emb (B, D, N)``, ``means (B, C, D)``, ``slot (B, N)`` int64. CPU:
``spoco._core.loss_pull_sums``; CUDA: ``spoco._cuda.loss_pull_sums``.
"""
from __future__ import annotations

import torch

from ._kernel import check_dims, check_emb, check_like, gradient_buffer, launch


def _check(emb, means, slot):
    check_emb("emb", emb)
    B, D, N = check_dims(emb)
    check_emb("means", means)
    if means.shape[0] != B or means.shape[2] != D or means.dtype != emb.dtype or means.device != emb.device:
        raise ValueError(f"means must have shape (B, C, D) = ({B}, C, {D}) with the dtype and device of emb, "
                         f"got {tuple(means.shape)} {means.dtype} on {means.device}")
    check_like("slot", slot, (B, N), torch.int64, emb.device)
    return B, D, N, means.shape[1]


@torch.library.custom_op("spoco::pull_sums", mutates_args=())
def pull_sums(emb: torch.Tensor, means: torch.Tensor, slot: torch.Tensor, delta_v: float) -> torch.Tensor:
    """Pull (Eq. 1) summed per slot: ``(B, C)`` ``Σ_{i ∈ k} [‖μ_k − e_i‖ − δ_v]₊²``."""
    B, D, N, C = _check(emb, means, slot)
    pull = emb.new_zeros((B, C))
    if C:
        emb, means, slot = emb.contiguous(), means.contiguous(), slot.contiguous()
        launch("pull_sums", emb, scratch_dims=("pull_sums", B, D, N, C), emb=emb, means=means, slot=slot,
               B=B, D=D, N=N, C=C, delta_v=float(delta_v), pull=pull)
    return pull


@pull_sums.register_fake
def _(emb, means, slot, delta_v):
    return emb.new_empty((emb.shape[0], means.shape[1]))


@torch.library.custom_op("spoco::pull_sums_backward", mutates_args=())
def pull_sums_backward(grad: torch.Tensor, emb: torch.Tensor, means: torch.Tensor, slot: torch.Tensor,
                       delta_v: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_emb (B, D, N), grad_means (B, C, D))`` of :func:`pull_sums` for ``grad (B, C)``."""
    B, D, N, C = _check(emb, means, slot)
    check_like("grad", grad, (B, C), emb.dtype, emb.device)
    grad_emb = gradient_buffer(emb, (B, D, N)) if C else emb.new_zeros((B, D, N))
    grad_means = means.new_zeros((B, C, D))
    if C:
        emb, means, slot, grad = emb.contiguous(), means.contiguous(), slot.contiguous(), grad.contiguous()
        launch("pull_sums", emb, scratch_dims=("pull_sums_backward", B, D, N, C), backward=True, emb=emb,
               means=means, slot=slot, B=B, D=D, N=N, C=C, delta_v=float(delta_v), grad_pull=grad,
               grad_emb=grad_emb, grad_means=grad_means)
    return grad_emb, grad_means


@pull_sums_backward.register_fake
def _(grad, emb, means, slot, delta_v):
    return emb.new_empty(emb.shape), means.new_empty(means.shape)


def _setup(ctx, inputs, output):
    emb, means, slot, delta_v = inputs
    ctx.save_for_backward(emb, means, slot)
    ctx.delta_v = delta_v


def _backward(ctx, grad):
    emb, means, slot = ctx.saved_tensors
    grad_emb, grad_means = pull_sums_backward(grad, emb, means, slot, ctx.delta_v)
    return grad_emb, grad_means, None, None


pull_sums.register_autograd(_backward, setup_context=_setup)
