"""The SPOCO loss terms from per-image sums: the definitions and constants shared by every
backend and by the oracle, and the one assembly (:func:`assemble`).

A backend (:mod:`.fused_sums`, :mod:`.torch_sums`) reduces the pixels of a batch into a
:class:`Sums` in the padded per-image cluster layout (slot ``k`` of image ``b`` is one
cluster or anchor; unused slots carry label −1); :func:`assemble` turns those sums into
the six terms, which are differentiable through the sums.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: The terms of SPOCOLoss, in the order of Eq. 5 and 8.
TERMS = ("pull", "push", "reg", "instance", "unlabeled_push", "consistency")


def kernel_sigma2(delta_v: float, t: float) -> float:
    """σ² of Eq. 3 such that φ = t exactly at distance δ_v: ``σ² = −δ_v² / (2 ln t)``."""
    return -delta_v**2 / (2 * math.log(t))


def log_soft_mask(e: torch.Tensor, anchor: torch.Tensor, sigma2: float) -> torch.Tensor:
    """``log S(i) = −‖e_i − a‖² / 2σ²`` (Eq. 3), finite where ``S`` itself underflows."""
    return -((e - anchor) ** 2).sum(1) / (2 * sigma2)


def soft_mask(e: torch.Tensor, anchor: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Eq. 3: ``S(i) = exp(−‖e_i − a‖² / 2σ²)`` for pixel embeddings ``e (N, D)`` (or any
    layout whose dim 1 is the embedding axis, with ``anchor`` broadcast against it)."""
    return torch.exp(log_soft_mask(e, anchor, sigma2))


class Sums(NamedTuple):
    """Per-image sums of one loss call (C cluster slots, K consistency anchors).

    labels : (B, C) int64 label of each slot, −1 for slots an image does not use
    means, counts : (B, C, D) cluster means, (B, C) cluster sizes
    pull : (B, C) ``Σ_{i∈k} [‖μ_k − e_i‖ − δ_v]₊²``
    inst : Dice: ``(Σ w S_k I_k, Σ w S_k²)``; BCE: ``(Σ w BCE(S_k, I_k),)`` each (B, C)
    n_counted : (B,) pixels that count (not ``ignore_index``); needed by the BCE instance loss only
    upush, n_unlabeled : (B, C) ``Σ_{i∈U} [δ_d − ‖μ_k − e_i‖]₊²`` and (B,) ``|U|`` (sparse), or None
    cons, cons_ok : ``(Σ w S^f S^g, Σ w (S^f)², Σ w (S^g)²)`` each (B, K) and (B, K) bool
        (anchors drawn), or None (no consistency term)
    """
    labels: torch.Tensor
    means: torch.Tensor
    counts: torch.Tensor
    pull: torch.Tensor
    inst: tuple
    n_counted: torch.Tensor | None
    upush: torch.Tensor | None = None
    n_unlabeled: torch.Tensor | None = None
    cons: tuple | None = None
    cons_ok: torch.Tensor | None = None


def assemble(s: Sums, *, delta_d: float, instance_loss: str = "dice", dice: str = "per_object") -> dict:
    """The six terms (0-d tensors, :data:`TERMS`) from the sums of a batch.

    Each term is the mean over the images in which it *exists*, and 0 when it exists in
    none: pull and reg with ≥ 1 cluster, push with ≥ 2, instance with ≥ 1 object
    (label > 0), unlabeled push with ≥ 1 object and ≥ 1 unlabeled pixel, consistency with
    ≥ 1 unlabeled pixel.
    """
    cluster, obj = s.labels >= 0, s.labels > 0
    n_cl, n_obj = cluster.sum(1), obj.sum(1)
    zero = s.means.new_zeros(())
    terms = {"pull": batch_mean(masked_mean(s.pull / s.counts.clamp(min=1), cluster), n_cl >= 1),
             "push": batch_mean(push_per_image(s.means, cluster, delta_d), n_cl >= 2),
             "reg": batch_mean(masked_mean(safe_norm(s.means, -1), cluster), n_cl >= 1)}
    if instance_loss == "bce":
        inst = masked_mean(s.inst[0] / s.n_counted.clamp(min=1)[:, None], obj)
    else:
        inst = dice_per_image(s.inst[0], s.inst[1], s.counts, obj, dice)
    terms["instance"] = batch_mean(inst, n_obj >= 1)
    if s.upush is not None:
        up = s.upush / s.n_unlabeled.clamp(min=1)[:, None]
        terms["unlabeled_push"] = batch_mean(masked_mean(up, obj), (n_obj >= 1) & (s.n_unlabeled >= 1))
    else:
        terms["unlabeled_push"] = zero
    if s.cons is not None:
        cross, sq_f, sq_g = s.cons
        terms["consistency"] = batch_mean(dice_per_image(cross, sq_f, sq_g, s.cons_ok, dice), s.n_unlabeled >= 1)
    else:
        terms["consistency"] = zero
    return terms


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``values (B, C)`` over ``mask``; 0 where the mask is empty."""
    return torch.where(mask, values, 0).sum(1) / mask.sum(1).clamp(min=1)


def batch_mean(per_image: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Mean over the images where the term exists; 0 if it exists in none."""
    return torch.where(exists, per_image, 0).sum() / exists.sum().clamp(min=1)


def dice_per_image(cross, sq_a, sq_b, mask, mode) -> torch.Tensor:
    """Per-image Dice loss ``1 − 2Σcross / (Σsq_a + Σsq_b)``: the mean over the ``mask``
    entries (``"per_object"``) or one Dice of the pooled sums (``"pooled"``)."""
    if mode == "pooled":
        num = torch.where(mask, cross, 0).sum(1)
        den = torch.where(mask, sq_a + sq_b, 0).sum(1)
        return torch.where(mask.any(1), 1 - 2 * num / den.clamp(min=1e-30), 0)
    return masked_mean(1 - 2 * cross / (sq_a + sq_b).clamp(min=1e-30), mask)


def safe_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Euclidean norm with gradient 0 (not NaN) at the origin."""
    sq = x.square().sum(dim)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, 1).sqrt(), 0)


def push_per_image(means: torch.Tensor, valid: torch.Tensor, delta_d: float) -> torch.Tensor:
    """Push (Eq. 2) per image, ``Σ_{k≠l} [2δ_d − ‖μ_k − μ_l‖]₊² / (C(C−1))`` over the valid
    means ``(B, C, D)``; 0 for images with fewer than two clusters. Eager: :class:`_Push`
    (less memory); under ``torch.compile`` plain autograd (inductor plans its buffers, and
    the Function's batched matrix product cannot be lowered with a data-dependent C)."""
    if torch.compiler.is_compiling():
        _, _, hinge, scale = _push_hinge(means, valid, delta_d)
        return hinge.square().sum((1, 2)) * scale
    return _Push.apply(means, valid, float(delta_d))


def _push_hinge(means, valid, delta_d):
    """Pairwise distances ``(B, C, C)`` (direct differences: accurate for nearby means), the
    mask of distinct valid pairs, the hinge ``[2δ_d − d]₊`` on them and ``1 / (n(n − 1))``."""
    C = means.shape[1]
    dist = torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist")
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(C, dtype=torch.bool, device=means.device)
    hinge = torch.where(pair, (2 * delta_d - dist).clamp(min=0), 0)
    n = valid.sum(1).to(means.dtype)
    return dist, pair, hinge, 1 / (n * (n - 1)).clamp(min=1)


class _Push(torch.autograd.Function):
    """The push hinge with one saved ``(B, C, C)`` tensor: ``coef = [2δ_d − d_kl]₊ / d_kl``.

    Autograd through ``cdist``, the hinge and the mask would keep four ``(B, C, C)``
    tensors for the backward (10 MB each at 800 objects in a batch of 4), more than the
    fused kernels' own memory. ``d_kl = 0`` gets gradient 0.
    """

    @staticmethod
    def forward(ctx, means, valid, delta_d):
        dist, _, hinge, scale = _push_hinge(means, valid, delta_d)
        out = hinge.square().sum((1, 2)) * scale
        ctx.save_for_backward(torch.where(dist > 0, hinge / dist, 0), means, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        coef, means, scale = ctx.saved_tensors
        # d/dμ_k of Σ_{k≠l} h_kl² (h symmetric) = −4 Σ_l (h_kl / d_kl)(μ_k − μ_l)
        coef = coef * (grad * scale)[:, None, None]
        grad_means = -4 * (coef.sum(2, keepdim=True) * means - torch.bmm(coef, means))
        return grad_means, None, None
