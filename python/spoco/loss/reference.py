"""Reference SPOCO objective (Sec. 3.1–3.2): plain loops over images, clusters and
anchors that read like the paper's equations. Slow, memory-hungry, and the oracle
that every backend of :class:`spoco.SPOCOLoss` and every kernel is tested against.
Imported by the tests and ``SPOCOLoss(backend="reference")`` only.

Randomness enters only through ``keys`` (one uniform float64 per pixel): the
anchor drawn from a set of pixels is the one with the largest key (ties: lowest
index), as in :mod:`spoco.ops`.
"""
from __future__ import annotations

import math

import torch

from .terms import TERMS, kernel_sigma2, log_soft_mask, soft_mask

def dice_loss(s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 − 2 Σ s·i / (Σ s² + Σ i²)`` (Eq. 4, 7)."""
    return 1 - 2 * (s * i).sum() / ((s * s).sum() + (i * i).sum())


def bce_loss(log_s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy ``−[I log S + (1 − I) log(1 − S)]`` from ``log S`` (as the
    other backends: ``log S`` of a far pixel is finite where ``S`` underflows, whose ``1/S``
    would make the gradient infinite), logs clamped at −100 with gradient 0 where clamped.
    Each log only sees values where it is finite: a log's infinite slope at 0 times the
    clamp's zero slope would be NaN."""
    log_s_in = torch.where(i > 0, log_s, 0).clamp(min=-100)  # log S where I = 1
    one_minus_s = torch.where(i > 0, 1, -torch.expm1(log_s))  # 1 − S where I = 0
    ok = one_minus_s > math.exp(-100)
    log_1ms = torch.where(ok, torch.log(torch.where(ok, one_minus_s, 1)), -100.0)
    return -(i * log_s_in + (1 - i) * log_1ms).mean()


def pick(pixels: torch.Tensor, keys: torch.Tensor) -> int:
    """The pixel of ``pixels`` (indices) with the largest key: a uniform draw."""
    return int(pixels[torch.argmax(keys[pixels])])


def consistency_anchors(e_f, e_g, unlabeled, keys, max_anchors: int, delta_v: float, coverage_stop: float) -> list:
    """Anchors of Eq. 7 in one image, ``e_f``/``e_g`` of shape ``(D, N)``.

    Each anchor is drawn uniformly among the still-uncovered unlabeled pixels; a
    pixel is covered once it lies within δ_v of an anchor in f or in g. Stops when
    fewer than ``coverage_stop · |U|`` pixels (or none) remain uncovered, or after K.
    """
    uncovered = unlabeled.clone()
    n_u = int(unlabeled.sum())
    anchors = []
    for _ in range(max_anchors):
        left = int(uncovered.sum())
        if left == 0 or left < coverage_stop * n_u:
            break
        p = pick(torch.nonzero(uncovered)[:, 0], keys)
        anchors.append(p)
        near_f = ((e_f - e_f[:, p:p + 1]) ** 2).sum(0) <= delta_v**2
        near_g = ((e_g - e_g[:, p:p + 1]) ** 2).sum(0) <= delta_v**2
        uncovered &= ~(near_f | near_g)
    return anchors


def _mean(values, like):
    return torch.stack(values).mean() if values else like.new_zeros(())


def spoco_loss(f, target, g=None, *, keys, sparse=False, ignore_index=-1, delta_v=0.5, delta_d=2.0,
               kernel_threshold=0.9, pull_weight=1.0, push_weight=1.0, reg_weight=0.001, instance_weight=1.0,
               unlabeled_push_weight=1.0, consistency_weight=1.0, anchor="random", instance_loss="dice",
               dice="per_object", max_anchors=20, coverage_stop=0.05):
    """SPOCO loss (Eq. 5, 8), computed image by image and object by object.

    Same arguments and semantics as :class:`spoco.SPOCOLoss` (inputs assumed valid),
    plus ``keys (B, N)`` float64. Returns ``(total, terms)`` where ``terms`` maps
    each name in :data:`TERMS` to its batch value: the mean over the images in
    which the term exists (0 when it exists in none).
    """
    B, D = f.shape[:2]
    sigma2 = kernel_sigma2(delta_v, kernel_threshold)
    per_image = {name: [] for name in TERMS}
    for b in range(B):
        e = f[b].reshape(D, -1).T  # (N, D)
        lab = target[b].reshape(-1)
        counted = lab != ignore_index
        in_cluster = counted & (lab > 0) if sparse else counted
        clusters = torch.unique(lab[in_cluster]).tolist()
        objects = [k for k in clusters if k > 0]
        mu = {k: e[lab == k].mean(0) for k in clusters}

        if clusters:
            # Eq. 1, pull
            pulls = [((torch.linalg.vector_norm(mu[k] - e[lab == k], dim=1) - delta_v).clamp(min=0) ** 2).mean()
                     for k in clusters]
            per_image["pull"].append(torch.stack(pulls).mean())
            # regularizer
            per_image["reg"].append(torch.stack([torch.linalg.vector_norm(mu[k]) for k in clusters]).mean())
        if len(clusters) >= 2:
            # Eq. 2, push over ordered pairs k != l
            C = len(clusters)
            push = sum((2 * delta_d - torch.linalg.vector_norm(mu[k] - mu[l])).clamp(min=0) ** 2
                       for k in clusters for l in clusters if k != l)
            per_image["push"].append(push / (C * (C - 1)))

        e_c, lab_c = e[counted], lab[counted]  # soft masks span every counted pixel
        if objects:
            # Eq. 3-4, instance term
            masks, truths = [], []  # masks: S, or log S for BCE (exact where S underflows)
            for k in objects:
                if anchor == "mean":
                    a = mu[k]
                else:
                    a = e[pick(torch.nonzero(lab == k)[:, 0], keys[b])]
                masks.append(log_soft_mask(e_c, a, sigma2) if instance_loss == "bce" else soft_mask(e_c, a, sigma2))
                truths.append((lab_c == k).to(e.dtype))
            if instance_loss == "bce":
                inst = torch.stack([bce_loss(log_s, i) for log_s, i in zip(masks, truths)]).mean()
            elif dice == "pooled":
                inst = dice_loss(torch.cat(masks), torch.cat(truths))
            else:
                inst = torch.stack([dice_loss(s, i) for s, i in zip(masks, truths)]).mean()
            per_image["instance"].append(inst)

        unlabeled = counted & (lab == 0)
        if sparse and objects and bool(unlabeled.any()):
            # Eq. 6, unlabeled push
            e_u = e[unlabeled]
            pushes = [((delta_d - torch.linalg.vector_norm(mu[k] - e_u, dim=1)).clamp(min=0) ** 2).mean()
                      for k in objects]
            per_image["unlabeled_push"].append(torch.stack(pushes).mean())

        if sparse and g is not None and bool(unlabeled.any()):
            # Eq. 7, consistency; g is a constant
            ef = f[b].detach().reshape(D, -1)
            eg = g[b].detach().reshape(D, -1)
            ps = consistency_anchors(ef, eg, unlabeled, keys[b], max_anchors, delta_v, coverage_stop)
            eg_c = eg.T[counted]
            sf = [soft_mask(e_c, e[p], sigma2) for p in ps]
            sg = [soft_mask(eg_c, eg[:, p], sigma2) for p in ps]
            if dice == "pooled":
                cons = dice_loss(torch.cat(sf), torch.cat(sg))
            else:
                cons = torch.stack([dice_loss(s, t) for s, t in zip(sf, sg)]).mean()
            per_image["consistency"].append(cons)

    terms = {name: _mean(vals, f) for name, vals in per_image.items()}
    weights = dict(pull=pull_weight, push=push_weight, reg=reg_weight, instance=instance_weight,
                   unlabeled_push=unlabeled_push_weight, consistency=consistency_weight)
    total = sum(weights[name] * terms[name] for name in TERMS)
    return total, terms
