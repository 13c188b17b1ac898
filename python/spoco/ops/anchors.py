"""Anchor selection for the instance (Eq. 3) and consistency (Eq. 7) terms.

Both draw from one tensor of per-pixel random ``keys`` (uniform in [0, 1), float64):
the anchor of a set of pixels is the pixel of the set with the largest key (ties:
lowest pixel index), which is a uniform draw from the set. Selection runs without
gradients and without host synchronisation; :mod:`spoco.ops.reference.loss` makes
the same choices with plain loops.
"""
from __future__ import annotations

import torch

from .loss import Pixels


@torch.no_grad()
def random_instance_anchors(slot: torch.Tensor, keys: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Pixel index of a uniformly drawn anchor in every cluster slot (``anchor="random"``).

    Parameters
    ----------
    slot : (B, N) int64 cluster slot per pixel, ``n_slots`` = no cluster
    keys : (B, N) float64 uniform random keys
    n_slots : int, C

    Returns
    -------
    (B, C) int64 pixel indices (arbitrary for empty slots).
    """
    B, N = slot.shape
    best = keys.new_full((B, n_slots + 1), -1.0).scatter_reduce_(1, slot, keys, "amax")
    is_best = keys == best.gather(1, slot)
    pix = torch.arange(N, device=slot.device).expand(B, N)
    cand = torch.where(is_best, pix, N)
    first = torch.full((B, n_slots + 1), N, dtype=torch.int64, device=slot.device)
    first.scatter_reduce_(1, slot, cand, "amin")
    return first[:, :n_slots].clamp(max=N - 1)


@torch.no_grad()
def consistency_anchors(emb_f: torch.Tensor, emb_g: torch.Tensor, unlabeled: torch.Tensor, keys: torch.Tensor,
                        max_anchors: int, delta_v: float, coverage_stop: float, *, pixels: Pixels | None = None,
                        pixels_g: Pixels | None = None):
    """Coverage-driven anchors in the unlabeled region U (Eq. 7).

    Pixel i is *covered* by anchor p once ``‖e^f_i − e^f_p‖ ≤ δ_v`` **or**
    ``‖e^g_i − e^g_p‖ ≤ δ_v``, i.e. it lies in the union of the δ_v-balls of the
    anchor in f and in g (``U ≈ ∪_k S^f_k ∪ S^g_k``). Each next anchor is uniform
    among the still-uncovered pixels of U; an image stops drawing once fewer than
    ``coverage_stop · |U|`` of its U pixels are uncovered (or none is), or after
    ``max_anchors``.

    Parameters
    ----------
    emb_f, emb_g : (B, D, N) embeddings (used without gradients)
    unlabeled : (B, N) bool, the region U
    keys : (B, N) float64 uniform random keys
    max_anchors : int, K
    delta_v : float
    coverage_stop : float in [0, 1)
    pixels, pixels_g : optional shared :class:`~spoco.ops.loss.Pixels` of ``emb_f``, ``emb_g``

    Returns
    -------
    pix : (B, K) int64 anchor pixel indices
    valid : (B, K) bool, which anchors were drawn (a prefix of each row)
    """
    B, D, N = emb_f.shape
    px_f = pixels if pixels is not None else Pixels(emb_f)
    px_g = pixels_g if pixels_g is not None else Pixels(emb_g)
    free = torch.where(unlabeled, keys, -1.0)  # keys of uncovered pixels, −1 once covered
    thr = coverage_stop * unlabeled.sum(1).to(torch.float64)
    done = torch.zeros(B, dtype=torch.bool, device=emb_f.device)
    pix = torch.zeros((B, max_anchors), dtype=torch.int64, device=emb_f.device)
    valid = torch.zeros((B, max_anchors), dtype=torch.bool, device=emb_f.device)
    r2 = delta_v * delta_v

    def near(px, p):
        a = px.e.gather(2, p[:, None, None].expand(B, D, 1)).transpose(1, 2)  # (B, 1, D)
        return px.sq_dist(a)[:, 0] <= r2

    for k in range(max_anchors):
        left = (free >= 0).sum(1)
        done |= (left < thr) | (left == 0)
        p = free.argmax(1)
        pix[:, k] = p
        valid[:, k] = ~done
        free.masked_fill_((near(px_f, p) | near(px_g, p)) & ~done[:, None], -1.0)
    return pix, valid
