"""HDBSCAN clustering of pixel embeddings (paper Sec. 3.3, appendix A.4), with
the ``hdbscan`` package: ``min_cluster_size = min_size``,
``cluster_selection_epsilon = δ_v``."""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from .._validation import positive_float, threads_arg
from ._points import DEFAULT_MAX_POINTS, check_int, pixel_points, segment, subsample

__all__ = ["hdbscan_clustering"]


def _hdbscan_region(X, *, min_size, min_samples, epsilon, max_points, rng, threads):
    import hdbscan  # the package, imported lazily: importing it is slow

    sample = subsample(len(X), max_points, rng)
    fit = X if sample is None else X[sample]
    # min_size counts pixels of the whole region: scale it to the sample.
    mcs = max(2, math.ceil(min_size * len(fit) / len(X)))
    if len(fit) <= mcs:
        return np.zeros(len(X), dtype=np.int64)
    ms = None if min_samples is None else min(min_samples, len(fit) - 1)
    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_epsilon=epsilon,
                            core_dist_n_jobs=threads)
    labels = model.fit_predict(fit).astype(np.int64) + 1  # noise (-1) -> 0
    if sample is None:
        return labels
    rest = np.ones(len(X), dtype=bool)
    rest[sample] = False
    out = np.empty(len(X), dtype=np.int64)
    out[sample] = labels
    _, j = cKDTree(fit).query(X[rest], k=1, workers=threads)
    out[rest] = labels[j]
    return out


def hdbscan_clustering(emb, *, delta_v: float = 0.5, min_size: int = 0, min_samples=None, mask=None,
                       semantic=None, max_points: int = DEFAULT_MAX_POINTS, seed: int = 0,
                       threads=None) -> np.ndarray:
    """HDBSCAN on the embeddings.

    Parameters
    ----------
    emb : (D, *spatial) float array or tensor; 2D (D, H, W) or 3D (D, Z, Y, X).
    delta_v : ``cluster_selection_epsilon``: clusters closer than this are not
        split further (the pull margin of Eq. 1).
    min_size : ``min_cluster_size`` in pixels (at least 2), and clusters with
        fewer pixels become 0 in the output. The paper uses 200 (CVPPP) and 600
        (Ovules).
    min_samples : HDBSCAN's ``min_samples`` (default: ``min_cluster_size``),
        used as given on the fitted points.
    mask : (*spatial) bool/int, optional. Only foreground pixels are clustered.
    semantic : (*spatial) int, optional. Each class > 0 is clustered on its own;
        class 0 is background.
    max_points : HDBSCAN is fitted on at most this many pixels per region,
        drawn uniformly at random (``seed``), with ``min_cluster_size`` scaled by
        the sampled fraction; every other pixel gets the label of its nearest
        fitted pixel. With fewer pixels than this, all are used.
    seed : int, seed of the subsampling.
    threads : int, optional. Workers for core distances and nearest neighbours.

    Returns
    -------
    labels : int64 (*spatial): 0 = background/masked/HDBSCAN noise, objects 1..K.
    A region with no more fitted pixels than ``min_cluster_size`` is all noise.
    """
    spatial, X = pixel_points(emb)
    eps = positive_float(delta_v, "delta_v")
    min_size = check_int(min_size, "min_size")
    if min_samples is not None:
        min_samples = check_int(min_samples, "min_samples", 1)
    max_points = check_int(max_points, "max_points", 2)
    rng = np.random.default_rng(check_int(seed, "seed"))
    workers = threads_arg(threads) or -1
    return segment(spatial, mask, semantic, min_size,
                   lambda idx: _hdbscan_region(X[idx], min_size=min_size, min_samples=min_samples, epsilon=eps,
                                               max_points=max_points, rng=rng, threads=workers))
