"""``spoco::cluster_slots``: labels to per-image cluster slots, the random instance
anchors (Eq. 3) and the input checks of one loss call: the loss's one host synchronisation.

CPU: one C++ pass per image (``spoco._core.loss_cluster_slots``). CUDA: torch ops
(:func:`cluster_slots_torch`: one sort-based ``torch.unique``); a CUDA kernel would
replace a single library sort, so none is written.
"""
from __future__ import annotations

import torch

from ._kernel import check_like, launch


def not_finite(x: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """0-d bool on ``device``: x has a NaN or infinite value (one pass in ``_core`` for CPU tensors)."""
    if x is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        x = x.detach().contiguous()
        return torch.tensor(not launch("all_finite", x, x=x, n=x.numel()))
    return (~torch.isfinite(x)).any()


def raise_on_checks(f_bad: bool, g_bad: bool, negative: bool) -> None:
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
        uniform draw; arbitrary for unused slots; (B, 0) without keys

    C, the most clusters of an image (at least 1), depends on the data: the op's one host
    synchronisation (its fake implementation gives C as an unbacked size, so
    ``torch.compile(fullgraph=True)`` traces through it). Raises ``ValueError`` for
    non-finite embeddings or negative labels other than ``ignore_index``.
    """
    B, N = target.shape
    if target.dtype != torch.int64:
        raise TypeError(f"target must have dtype torch.int64, got {target.dtype}")
    check_like("keys", keys, (B, N), torch.float64, target.device)
    if target.device.type != "cpu":
        return cluster_slots_torch(target, f, g, ignore_index, sparse, keys)
    raise_on_checks(bool(not_finite(f, target.device)), bool(not_finite(g, target.device)), False)
    target = target.contiguous()
    keys = None if keys is None else keys.contiguous()
    slot = torch.empty((B, N), dtype=torch.int64)
    C, negative, labels, pix = launch("cluster_slots", f, target=target, keys=keys, B=B, N=N,
                                      ignore_index=int(ignore_index), sparse=bool(sparse), slot=slot)
    raise_on_checks(False, False, negative)
    labels = torch.tensor(labels, dtype=torch.int64).reshape(B, C)
    pix = torch.tensor(pix, dtype=torch.int64).reshape(B, C) if keys is not None else target.new_empty((B, 0))
    return slot, labels, pix


@cluster_slots.register_fake
def _(target, f, g, ignore_index, sparse, keys=None):
    C = torch.library.get_ctx().new_dynamic_size(min=1)
    B = target.shape[0]
    return target.new_empty(target.shape), target.new_empty((B, C)), target.new_empty((B, C if keys is not None else 0))


def cluster_slots_torch(target, f, g, ignore_index, sparse, keys):
    """:func:`cluster_slots` with torch ops (the CUDA implementation; any device)."""
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
    host = torch.stack([not_finite(f, target.device), not_finite(g, target.device), ((target < 0) & counted).any(),
                        rank[-1].max()]).tolist()  # the one host synchronisation
    raise_on_checks(*host[:3])
    C = max(int(host[3]), 1)  # at least one (possibly unused) slot: no shape downstream is ever empty
    # pixels in no cluster go to slot C (also when there is no cluster at all)
    slot = torch.where(seg_ok, seg_slot, C)[inv]
    labels = target.new_full((B, C + 1), -1).scatter_(1, slot, target)[:, :C]
    pix = random_instance_anchors(slot, keys, C) if keys is not None else target.new_empty((B, 0))
    slot = torch.where(counted, slot, -1)
    return slot.contiguous(), labels.contiguous(), pix


@torch.no_grad()
def random_instance_anchors(slot: torch.Tensor, keys: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Pixel index ``(B, C)`` of the largest key in every slot (ties: the lowest index), a
    uniform draw, for ``slot (B, N)`` int64 (``n_slots`` = no cluster) and ``keys (B, N)``
    float64; arbitrary for empty slots."""
    B, N = slot.shape
    best = keys.new_full((B, n_slots + 1), -1.0).scatter_reduce_(1, slot, keys, "amax")
    is_best = keys == best.gather(1, slot)
    pix = torch.arange(N, device=slot.device).expand(B, N)
    cand = torch.where(is_best, pix, N)
    first = torch.full((B, n_slots + 1), N, dtype=torch.int64, device=slot.device)
    first.scatter_reduce_(1, slot, cand, "amin")
    return first[:, :n_slots].clamp(max=N - 1)
