"""Mean-shift clustering of pixel embeddings (paper Sec. 3.3, appendix A.4),
bandwidth = the pull margin δ_v.

:func:`mean_shift` is the algorithm of ``sklearn.cluster.MeanShift(bandwidth,
bin_seeding=True, cluster_all=True)`` -- flat kernel, seeds on a grid of cell
size ``bandwidth``, near-duplicate modes suppressed greedily by support --
with the windows of all seeds found at once in a k-d tree (scikit-learn moves one
seed at a time).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .._validation import positive_float, threads_arg
from ._points import DEFAULT_MAX_POINTS, check_int, nearest, pixel_points, segment, subsample

__all__ = ["mean_shift", "meanshift_clustering"]

def _window_means(tree, X, means, bandwidth, workers):
    """Mean of the points within the flat kernel around each of ``means`` and
    how many there are (distance <= bandwidth), from a k-d tree of ``X``.
    (scipy returns one index list per seed; turning them into one array is the
    only per-seed Python step.)"""
    nb = tree.query_ball_point(means, bandwidth, workers=workers, return_sorted=False)
    cnt = np.fromiter(map(len, nb), dtype=np.int64, count=len(nb))
    out = np.zeros_like(means)
    hit = cnt > 0
    if hit.any():
        flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in nb[hit]])
        starts = np.r_[0, np.cumsum(cnt[hit])[:-1]]
        out[hit] = np.add.reduceat(X[flat], starts, axis=0) / cnt[hit, None]
    return out, cnt


def _bin_seeds(X, bandwidth, min_bin_freq):
    bins, freq = np.unique(np.round(X / bandwidth), axis=0, return_counts=True)
    seeds = bins[freq >= min_bin_freq] * bandwidth
    return X.copy() if len(seeds) == len(X) else seeds


def mean_shift(points, bandwidth: float, *, max_iter: int = 300, min_bin_freq: int = 1, threads=None):
    """Flat-kernel mean-shift with bin seeding.

    Parameters
    ----------
    points : (n, D) float array.
    bandwidth : kernel radius; points at distance <= bandwidth are in the window.
    max_iter : iterations per seed at most.
    min_bin_freq : grid cells with fewer points give no seed.
    threads : workers of the k-d tree queries (default: all cores).

    Returns
    -------
    centres : (K, D) float64 modes, by decreasing support.
    labels : (n,) int64 index of the nearest centre of every point.

    Notes
    -----
    Every seed moves to the mean of its window until it moves by at most
    ``1e-3 * bandwidth``; converged seeds with a non-empty window become modes,
    sorted by the number of points in their window (ties: by coordinates, both
    descending), and a mode within ``bandwidth`` of a better one is dropped.
    The suppression is greedy and sequential (a loop over the modes).
    """
    X = np.ascontiguousarray(points, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"points must have shape (n, D) with n >= 1, got {X.shape}")
    bw2, stop = bandwidth * bandwidth, 1e-3 * bandwidth
    tree = cKDTree(X)
    workers = -1 if threads is None else int(threads)
    means = _bin_seeds(X, bandwidth, min_bin_freq)
    support = np.zeros(len(means), dtype=np.int64)
    active = np.arange(len(means))
    for it in range(max_iter + 1):
        if len(active) == 0:
            break
        new, cnt = _window_means(tree, X, means[active], bandwidth, workers)
        support[active] = cnt
        moved = np.sqrt(((new - means[active]) ** 2).sum(1))
        means[active[cnt > 0]] = new[cnt > 0]
        done = (cnt == 0) | (moved <= stop) | (it == max_iter)
        active = active[~done]
    centres, support = means[support > 0], support[support > 0]
    if len(centres) == 0:
        raise ValueError("mean_shift: no seed has a point within the bandwidth")
    centres, first = np.unique(centres, axis=0, return_index=True)
    support = support[first]
    order = np.lexsort(tuple(centres[:, ::-1].T) + (support,))[::-1]
    centres = centres[order]
    unique = np.ones(len(centres), dtype=bool)
    for i in range(len(centres)):
        if unique[i]:
            unique[((centres - centres[i]) ** 2).sum(1) <= bw2] = False
            unique[i] = True
    centres = centres[unique]
    return centres, nearest(X, centres)


def meanshift_labels(X, bandwidth, max_points, rng, threads=None):
    """Mean-shift of the points ``X (n, D)`` fitted on at most ``max_points`` of
    them; returns (centres, labels 1..K of every point)."""
    sample = subsample(len(X), max_points, rng)
    centres, labels = mean_shift(X if sample is None else X[sample], bandwidth, threads=threads)
    if sample is not None:
        labels = nearest(X, centres)
    return centres, labels + 1


def meanshift_clustering(emb, *, delta_v: float = 0.5, mask=None, semantic=None, min_size: int = 0,
                         max_points: int = DEFAULT_MAX_POINTS, seed: int = 0, threads=None) -> np.ndarray:
    """Mean-shift on the embeddings, bandwidth ``delta_v``.

    Parameters
    ----------
    emb : (D, *spatial) float array or tensor; 2D (D, H, W) or 3D (D, Z, Y, X).
    delta_v : bandwidth (the pull margin of Eq. 1).
    mask : (*spatial) bool/int, optional. Only foreground pixels are clustered.
    semantic : (*spatial) int, optional. Each class > 0 is clustered on its own;
        class 0 is background.
    min_size : clusters with fewer pixels become 0.
    max_points : the mean-shift is fitted on at most this many pixels of each
        region, drawn uniformly at random (``seed``); every pixel then gets the
        nearest mode. With fewer pixels than this, all of them are used.
    seed : int, seed of the subsampling.
    threads : int, optional. Workers of the neighbour searches.

    Returns
    -------
    labels : int64 (*spatial): 0 = background/masked, objects 1..K.
    """
    spatial, X = pixel_points(emb)
    bw = positive_float(delta_v, "delta_v")
    max_points = check_int(max_points, "max_points", 1)
    rng = np.random.default_rng(check_int(seed, "seed"))
    return segment(spatial, mask, semantic, check_int(min_size, "min_size"),
                   lambda idx: meanshift_labels(X[idx], bw, max_points, rng, threads_arg(threads) or None)[1])
