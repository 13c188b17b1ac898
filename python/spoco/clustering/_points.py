"""Shared machinery of the point-cloud clustering methods (HDBSCAN, mean-shift
and its variants): pixels as points, the regions clustered separately
(foreground mask x semantic classes), subsampling, and the final labelling.

Labelling convention (the same as the mutex watershed): int64 labels of the
spatial shape, 0 = background / masked / discarded, objects 1..K. With a
semantic image the objects of each class are numbered in turn, classes in
ascending order, so ids never collide across classes; within a class objects
are numbered in order of first appearance (C order).
"""
from __future__ import annotations

import numbers

import numpy as np

from .._labels import label_array
from .._validation import as_numpy, float_array, mask_array

#: Default cap on the pixels a point-cloud method is fitted on (per region).
DEFAULT_MAX_POINTS = 20_000

_CHUNK = 1 << 22  # entries of a (points x centres) distance block


def check_int(x, name: str, low: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {x!r}")
    return int(x)


def pixel_points(emb, name: str = "emb"):
    """``(spatial, X)``: ``emb (D, *spatial)`` as C-contiguous points ``X (N, D)``."""
    e = float_array(as_numpy(emb, name), name)
    if not 2 <= e.ndim <= 4:
        raise ValueError(f"{name} must have shape (D, *spatial) with 1 to 3 spatial axes, "
                         f"e.g. (D, H, W) or (D, Z, Y, X); got shape {e.shape}")
    spatial = e.shape[1:]
    return spatial, np.ascontiguousarray(e.reshape(e.shape[0], -1).T)


def regions(spatial, mask=None, semantic=None):
    """Flat pixel indices of every region clustered on its own.

    ``mask`` (nonzero = foreground) restricts all regions; ``semantic`` (integer
    classes, 0 = background, not clustered) splits them by class, in ascending
    class order. Returns a list of sorted int64 index arrays (maybe empty).
    """
    m = mask_array(mask, spatial)
    fg = None if m is None else m.reshape(-1).astype(bool)
    if semantic is None:
        return [np.arange(int(np.prod(spatial)), dtype=np.int64) if fg is None else np.flatnonzero(fg)]
    s = label_array(semantic, "semantic", tuple(spatial)).reshape(-1)
    idx = np.flatnonzero(s if fg is None else (s != 0) & fg)
    cls = s[idx]
    order = np.argsort(cls, kind="stable")  # pixels stay in C order within a class
    bounds = np.flatnonzero(np.diff(cls[order])) + 1
    return [idx[part] for part in np.split(order, bounds)] if len(idx) else []


def subsample(n: int, max_points: int, rng) -> np.ndarray | None:
    """Sorted indices of ``max_points`` of ``n`` points drawn uniformly without
    replacement, or None when ``n <= max_points`` (fit on everything)."""
    if n <= max_points:
        return None
    return np.sort(rng.choice(n, size=max_points, replace=False))


def nearest(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of every point, in chunks."""
    c = centres.astype(np.float64)
    cc = (c * c).sum(1)
    out = np.empty(len(X), dtype=np.int64)
    step = max(1, _CHUNK // max(1, len(c)))
    for lo in range(0, len(X), step):
        x = X[lo:lo + step].astype(np.float64)
        out[lo:lo + step] = np.argmin(cc[None, :] - 2.0 * (x @ c.T), axis=1)
    return out


def number_objects(local: np.ndarray, min_size: int) -> np.ndarray:
    """Local cluster ids (0 = none) -> 0..k by first appearance, dropping
    clusters with fewer than ``min_size`` pixels."""
    if len(local) == 0:
        return local.astype(np.int64)
    u, first, inv, sizes = np.unique(local, return_index=True, return_inverse=True, return_counts=True)
    keep = (u != 0) & (sizes >= max(min_size, 1))
    rank = np.zeros(len(u), dtype=np.int64)
    kept = np.flatnonzero(keep)
    rank[kept[np.argsort(first[kept], kind="stable")]] = np.arange(1, len(kept) + 1)
    return rank[inv.reshape(-1)]


def segment(spatial, mask, semantic, min_size: int, cluster_region) -> np.ndarray:
    """Run ``cluster_region(idx) -> local ids (len(idx),)`` on every region (a
    Python loop over the semantic classes, nothing finer) and assemble int64
    labels of shape ``spatial`` (see the module docstring)."""
    labels = np.zeros(int(np.prod(spatial)), dtype=np.int64)
    offset = 0
    for idx in regions(spatial, mask, semantic):
        if len(idx) == 0:
            continue
        local = number_objects(np.asarray(cluster_region(idx)), min_size)
        labels[idx] = np.where(local > 0, local + offset, 0)
        offset += int(local.max(initial=0))
    return labels.reshape(spatial)
