"""Mean-shift followed by merging of clusters whose mean embeddings are closer
than δ_d, the push hinge of Eq. 2 (paper Sec. 4.2, the Cityscapes inference)."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._validation import positive_float, threads_arg
from ._points import DEFAULT_MAX_POINTS, check_int, pixel_points, segment
from .meanshift import meanshift_labels

__all__ = ["meanshift_merge_clustering", "merge_close_clusters"]


def merge_close_clusters(X, labels, delta_d: float) -> np.ndarray:
    """Merge clusters whose mean embeddings are closer than ``delta_d``.

    Parameters
    ----------
    X : (n, D) embeddings; labels : (n,) int, clusters 1..K (0 = none, left alone).

    Returns
    -------
    (n,) int64 labels 0..K' where every pair of clusters with
    ``‖μ_k − μ_l‖ < delta_d`` -- and so, transitively, every chain of such pairs --
    is one cluster. Means are those of the input clusters (computed once).
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max(initial=0))
    if k < 2:
        return labels
    sizes = np.bincount(labels, minlength=k + 1)[1:]
    sums = np.stack([np.bincount(labels, weights=X[:, d], minlength=k + 1)[1:] for d in range(X.shape[1])], 1)
    present = np.flatnonzero(sizes)
    mu = sums[present] / sizes[present, None]
    d2 = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    i, j = np.nonzero(d2 < delta_d * delta_d)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(mu), len(mu)))
    _, comp = connected_components(graph, directed=False)
    lut = np.zeros(k + 1, dtype=np.int64)
    lut[present + 1] = comp + 1
    return lut[labels]


def meanshift_merge_clustering(emb, *, delta_v: float = 0.5, delta_d: float = 2.0, mask=None, semantic=None,
                               min_size: int = 0, max_points: int = DEFAULT_MAX_POINTS, seed: int = 0,
                               threads=None) -> np.ndarray:
    """Mean-shift (bandwidth ``delta_v``), then merge clusters whose mean
    embeddings (over all their pixels) are closer than ``delta_d``.

    Other parameters and the subsampling rule as in
    :func:`spoco.clustering.meanshift_clustering`; ``min_size`` applies after the
    merge. Returns int64 labels (*spatial): 0 = background/masked, objects 1..K.
    """
    spatial, X = pixel_points(emb)
    bw = positive_float(delta_v, "delta_v")
    dd = positive_float(delta_d, "delta_d")
    max_points = check_int(max_points, "max_points", 1)
    rng = np.random.default_rng(check_int(seed, "seed"))
    workers = threads_arg(threads) or None

    def region(idx):
        x = X[idx]
        return merge_close_clusters(x, meanshift_labels(x, bw, max_points, rng, workers)[1], dd)

    return segment(spatial, mask, semantic, check_int(min_size, "min_size"), region)
