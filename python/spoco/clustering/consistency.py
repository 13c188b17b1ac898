"""Consistency clustering (paper appendix A.4, Algorithm 1).

Mean-shift on the f-embeddings (bandwidth δ_v) proposes objects S_k. For each,
M anchor pixels are drawn from S_k; each anchor's g-embedding a selects the
δ_v-ball ``Ŝ = {i : ‖g_i − a‖ < δ_v}`` in the g-embeddings. S_k is kept iff the
median over its anchors of IoU(Ŝ, S_k) exceeds t_IoU; otherwise its pixels
become background (0). Real objects stay consistent between f and g; spurious
mean-shift clusters (boundaries, background texture) do not.
"""
from __future__ import annotations

import numpy as np

from .._validation import positive_float, threads_arg
from ._points import DEFAULT_MAX_POINTS, check_int, nearest, pixel_points, segment, subsample
from .meanshift import mean_shift

__all__ = ["consistency_clustering", "consistent_clusters"]

_CHUNK = 1 << 22  # entries of an (anchors x pixels) block


#: The most anchors per cluster: 10**4 draws already fix the median IoU to about 1 % of
#: its spread, and each anchor costs a pass over the region's pixels.
MAX_ANCHORS = 10_000


def consistent_clusters(g, labels, *, delta_v: float, iou_threshold: float, n_anchors: int, rng) -> np.ndarray:
    """Algorithm 1 on points: which clusters to keep.

    Parameters
    ----------
    g : (n, D_g) g-embeddings of the pixels.
    labels : (n,) int, cluster ids 0..K (0 = none, never kept).
    Returns
    -------
    keep : (K + 1,) bool, ``keep[k]`` iff median IoU of cluster k > iou_threshold.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k_max = int(labels.max(initial=0))
    keep = np.zeros(k_max + 1, dtype=bool)
    sizes = np.bincount(labels, minlength=k_max + 1)
    clusters = np.flatnonzero(sizes)
    clusters = clusters[clusters > 0]
    if len(clusters) == 0:
        return keep
    # M anchors per cluster, uniform over its pixels (with replacement).
    by_label = np.argsort(labels, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    owner = np.repeat(clusters, n_anchors)
    pick = by_label[starts[owner] + (rng.random(len(owner)) * sizes[owner]).astype(np.int64)]
    gf = np.ascontiguousarray(g, dtype=np.float64)
    gg = (gf * gf).sum(1)
    anchors = gf[pick]
    iou = np.empty(len(owner))
    r2 = delta_v * delta_v
    step = max(1, _CHUNK // len(gf))
    for lo in range(0, len(owner), step):
        a, k = anchors[lo:lo + step], owner[lo:lo + step]
        ball = ((a * a).sum(1)[:, None] - 2.0 * (a @ gf.T) + gg[None, :]) < r2
        inter = (ball & (labels[None, :] == k[:, None])).sum(1)
        iou[lo:lo + step] = inter / (ball.sum(1) + sizes[k] - inter)
    keep[clusters] = np.median(iou.reshape(len(clusters), n_anchors), axis=1) > iou_threshold
    return keep


def _consistency_region(X, G, *, bandwidth, iou_threshold, n_anchors, max_points, rng, threads):
    sample = subsample(len(X), max_points, rng)
    fit = slice(None) if sample is None else sample
    centres, fit_labels = mean_shift(X[fit], bandwidth, threads=threads)
    labels = (fit_labels if sample is None else nearest(X, centres)) + 1
    # The IoUs are measured on the fitted pixels (all pixels when not subsampled).
    keep = consistent_clusters(G[fit], labels[fit], delta_v=bandwidth, iou_threshold=iou_threshold,
                               n_anchors=n_anchors, rng=rng)
    keep = np.r_[keep, np.zeros(len(centres) + 1 - len(keep), dtype=bool)]
    return np.where(keep[labels], labels, 0)


def consistency_clustering(emb, emb_g, *, delta_v: float = 0.5, iou_threshold: float = 0.6, n_anchors: int = 10,
                           mask=None, semantic=None, min_size: int = 0, max_points: int = DEFAULT_MAX_POINTS,
                           seed: int = 0, threads=None) -> np.ndarray:
    """Consistency clustering (Algorithm 1).

    Parameters
    ----------
    emb : (D, *spatial) f-embeddings; 2D (D, H, W) or 3D (D, Z, Y, X).
    emb_g : (D_g, *spatial) g-embeddings of the same image (the EMA network on
        another augmentation of the input), same spatial shape.
    delta_v : mean-shift bandwidth and radius of the anchor balls in g.
    iou_threshold : t_IoU (paper: 0.6); a cluster is kept iff its median IoU > t_IoU.
    n_anchors : M, anchors drawn per cluster (uniformly, with replacement), at most
        :data:`MAX_ANCHORS`.
    mask, semantic, min_size : as in :func:`spoco.clustering.meanshift_clustering`.
    max_points : the mean-shift is fitted on at most this many pixels per region
        (uniform sample, ``seed``); every pixel gets the nearest mode, and anchors
        and IoUs are taken on the fitted pixels -- on all pixels when the region
        has at most ``max_points``.
    seed : int, seed of subsampling and anchors.
    threads : int, optional. Workers of the mean-shift neighbour searches.

    Returns
    -------
    labels : int64 (*spatial): 0 = background/masked/discarded, objects 1..K.
    """
    spatial, X = pixel_points(emb, "emb")
    if emb_g is None:
        raise ValueError("method 'consistency' needs emb_g, the g-embeddings (D_g, *spatial) of the same image")
    spatial_g, G = pixel_points(emb_g, "emb_g")
    if spatial_g != spatial:
        raise ValueError(f"emb_g must have the spatial shape of emb {tuple(spatial)}, got {tuple(spatial_g)}")
    bw = positive_float(delta_v, "delta_v")
    t = float(iou_threshold)
    if not 0.0 <= t < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
    n_anchors = check_int(n_anchors, "n_anchors", 1)
    if n_anchors > MAX_ANCHORS:
        raise ValueError(f"n_anchors must be at most {MAX_ANCHORS} (each anchor costs a pass over the region's "
                         f"pixels; the paper uses 10), got {n_anchors}")
    max_points = check_int(max_points, "max_points", 1)
    rng = np.random.default_rng(check_int(seed, "seed"))
    return segment(spatial, mask, semantic, check_int(min_size, "min_size"),
                   lambda idx: _consistency_region(X[idx], G[idx], bandwidth=bw, iou_threshold=t,
                                                   n_anchors=n_anchors, max_points=max_points, rng=rng,
                                                   threads=threads_arg(threads) or None))
