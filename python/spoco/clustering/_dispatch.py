"""``spoco.cluster`` for the methods other than the mutex watershed, and the
per-class (semantic) form of the mutex watershed."""
from __future__ import annotations

import numpy as np

from .._validation import as_numpy, is_tensor
from ._points import DEFAULT_MAX_POINTS, segment
from .consistency import consistency_clustering
from .hdbscan import hdbscan_clustering
from .meanshift import meanshift_clustering
from .meanshift_merge import meanshift_merge_clustering

POINT_METHODS = ("hdbscan", "meanshift", "consistency", "meanshift_merge")

# Keyword arguments of cluster() that only some methods use (None = not given).
_ONLY_FOR = {
    "offsets": ("mws",), "n_attractive": ("mws",), "strides": ("mws",), "randomize_strides": ("mws",),
    "emb_g": ("consistency",), "iou_threshold": ("consistency",), "n_anchors": ("consistency",),
    "min_samples": ("hdbscan",), "max_points": POINT_METHODS,
}


def check_method_args(method: str, **given) -> None:
    """Refuse arguments that the chosen method would silently ignore."""
    for name, value in given.items():
        if value is not None and value is not False and method not in _ONLY_FOR.get(name, (method,)):
            users = " or ".join(repr(m) for m in _ONLY_FOR[name])
            raise ValueError(f"{name} is only used by method={users}, not by method={method!r}")
    if method == "consistency" and given.get("emb_g") is None:
        raise ValueError("method 'consistency' needs emb_g, the g-embeddings (D_g, *spatial) of the same image")


def cluster_points(emb, method: str, *, delta_v, delta_d, mask, semantic, min_size, seed, threads, emb_g,
                   iou_threshold, n_anchors, min_samples, max_points) -> np.ndarray:
    common = dict(delta_v=delta_v, mask=mask, semantic=semantic, min_size=min_size, seed=seed, threads=threads,
                  max_points=DEFAULT_MAX_POINTS if max_points is None else max_points)
    if method == "hdbscan":
        return hdbscan_clustering(emb, min_samples=min_samples, **common)
    if method == "meanshift":
        return meanshift_clustering(emb, **common)
    if method == "meanshift_merge":
        return meanshift_merge_clustering(emb, delta_d=delta_d, **common)
    return consistency_clustering(emb, emb_g, iou_threshold=0.6 if iou_threshold is None else iou_threshold,
                                  n_anchors=10 if n_anchors is None else n_anchors, **common)


def per_class(emb, mask, semantic, min_size: int, run) -> np.ndarray:
    """``run(region_mask) -> labels (*spatial)`` once per semantic class (> 0)
    inside ``mask``; ids offset class by class (see spoco.clustering._points)."""
    spatial = tuple(emb.shape[1:]) if is_tensor(emb) else np.shape(as_numpy(emb, "emb"))[1:]
    n = int(np.prod(spatial))

    def region(idx):
        m = np.zeros(n, dtype=bool)
        m[idx] = True
        return np.asarray(run(m.reshape(spatial))).reshape(-1)[idx]

    return segment(spatial, mask, semantic, min_size, region)
