"""The naive baseline of ``bench_loss.py``: the SPOCO loss written the way the paper's
reference code does it, with Python loops over images, instances and anchors and
one-hot ``(C, D, N)`` tensors for the cluster statistics.

Semantics follow :func:`spoco.ops.reference.spoco_loss` (sparse mode, random anchors,
per-object Dice); anchors come from the same per-pixel keys, so the value matches
the other backends. Only for benchmarking.
"""
from __future__ import annotations

import torch

from spoco.loss.reference import consistency_anchors, kernel_sigma2, pick


def _dice(s, i):
    return 1 - 2 * (s * i).sum() / ((s * s).sum() + (i * i).sum())


def naive_spoco_loss(f, target, g, keys, *, delta_v=0.5, delta_d=2.0, t=0.9, max_anchors=20, coverage_stop=0.05):
    """Sparse-mode SPOCO loss of ``f, g (B, D, *spatial)``, ``target (B, *spatial)`` (0 = unlabeled)."""
    B, D = f.shape[:2]
    sigma2 = kernel_sigma2(delta_v, t)
    per_term = {k: [] for k in ("pull", "push", "reg", "instance", "unlabeled_push", "consistency")}
    for b in range(B):
        e = f[b].reshape(D, -1)  # (D, N)
        lab = target[b].reshape(-1)
        ids = torch.unique(lab[lab > 0])
        C = len(ids)
        unlabeled = lab == 0
        if C:
            onehot = (lab[None, :] == ids[:, None]).to(e.dtype)  # (C, N)
            masked = e[None] * onehot[:, None, :]  # (C, D, N): the authors' expand-and-mask means
            counts = onehot.sum(1)
            mu = masked.sum(2) / counts[:, None]  # (C, D)
            dist = torch.linalg.vector_norm(e[None] - mu[:, :, None], dim=1)  # (C, N), via a (C, D, N) difference
            pull = ((dist - delta_v).clamp(min=0) ** 2 * onehot).sum(1) / counts
            per_term["pull"].append(pull.mean())
            per_term["reg"].append(torch.linalg.vector_norm(mu, dim=1).mean())
            if C > 1:
                pair = torch.linalg.vector_norm(mu[:, None] - mu[None], dim=2)
                hinge = (2 * delta_d - pair).clamp(min=0) ** 2 * (1 - torch.eye(C, dtype=e.dtype, device=e.device))
                per_term["push"].append(hinge.sum() / (C * (C - 1)))
            inst = []
            for k in range(C):  # one soft mask per instance over the whole image
                a = e[:, pick(torch.nonzero(onehot[k] > 0)[:, 0], keys[b])]
                s = torch.exp(-((e - a[:, None]) ** 2).sum(0) / (2 * sigma2))
                inst.append(_dice(s, onehot[k]))
            per_term["instance"].append(torch.stack(inst).mean())
            if unlabeled.any():
                e_u = e[:, unlabeled]
                up = [((delta_d - torch.linalg.vector_norm(e_u - mu[k][:, None], dim=0)).clamp(min=0) ** 2).mean()
                      for k in range(C)]
                per_term["unlabeled_push"].append(torch.stack(up).mean())
        if unlabeled.any():
            ef, eg = f[b].detach().reshape(D, -1), g[b].reshape(D, -1)
            cons = []
            for p in consistency_anchors(ef, eg, unlabeled, keys[b], max_anchors, delta_v, coverage_stop):
                sf = torch.exp(-((e - e[:, p:p + 1]) ** 2).sum(0) / (2 * sigma2))
                sg = torch.exp(-((eg - eg[:, p:p + 1]) ** 2).sum(0) / (2 * sigma2))
                cons.append(_dice(sf, sg))
            per_term["consistency"].append(torch.stack(cons).mean())
    weights = dict(pull=1.0, push=1.0, reg=0.001, instance=1.0, unlabeled_push=1.0, consistency=1.0)
    return sum(w * (torch.stack(per_term[k]).mean() if per_term[k] else f.new_zeros(())) for k, w in weights.items())
