"""Post-processing of mutex-watershed segmentations of networks trained without a
background class (sparse labels): merging over-segmented objects, finding the
background, removing small segments.

A network trained on sparse (positive-unlabeled) labels embeds the background
like one more object, often as several nearby clusters; weakly trained embeddings
also split objects. All functions take labels ``(*spatial)`` with 0 = nothing and
segments 1..K, and embeddings ``(D, *spatial)``; they run in a few vectorised
passes over the pixels (no loop over segments).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .._labels import compact_ids, label_array, pairs_at_step
from .._validation import float_array
from .mws import remove_small_segments

BACKGROUND_MODES = ("none", "largest", "embedding")


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Map the non-zero ids to 1..K in ascending order (0 stays 0)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(np.shape(labels)).astype(np.int64)
    if not (ids.size and ids[0] == 0):
        out += 1  # in place: a 0-D array stays an array
    return out


def segment_means(labels: np.ndarray, emb: np.ndarray):
    """Sizes ``(K+1,)`` and mean embeddings ``(K+1, D)`` of segments 0..K (row 0: label 0;
    rows of empty ids are 0)."""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    sizes = np.bincount(flat, minlength=n)
    sums = np.stack([np.bincount(flat, weights=channel.ravel(), minlength=n) for channel in emb], axis=1)
    return sizes, sums / np.maximum(sizes, 1)[:, None]


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique pairs ``(P, 2)`` (a < b) of non-zero segments that touch along an axis."""
    return pairs_at_step(labels, 1)


def merge_close_segments(labels, emb, distance: float) -> np.ndarray:
    """Merge touching segments whose mean embeddings are closer than ``distance``
    (transitively), and relabel 1..K."""
    labels, emb = _check(labels, emb)
    if distance <= 0 or labels.max(initial=0) < 2:
        return labels
    labels = compact_ids(labels)  # the tables below have one row per id
    _, means = segment_means(labels, emb)
    pairs = adjacent_pairs(labels)
    close = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1) < distance
    n = len(means)
    graph = sparse.coo_matrix((np.ones(int(close.sum())), (pairs[close, 0], pairs[close, 1])), shape=(n, n))
    _, component = csgraph.connected_components(graph, directed=False)
    component[0] = -1  # keep 0 apart from every segment
    return relabel_consecutive(np.where(labels > 0, component[labels] + 1, 0))


def remove_background(labels, emb=None, *, mode: str = "largest", radius: float = 2.0) -> np.ndarray:
    """Set the background segments to 0 and relabel 1..K.

    ``mode="largest"``: the largest segment is the background (the authors'
    practice). ``"embedding"``: the largest segment and every segment whose mean
    embedding lies within ``radius`` of the largest one's mean (background split
    into several segments with nearly the same embedding). ``"none"``: unchanged.
    """
    if mode not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {mode!r}")
    if mode == "none":
        return label_array(labels, "labels")
    if mode == "embedding":
        labels, emb = _check(labels, emb)
    else:
        labels = label_array(labels, "labels")
    if labels.max(initial=0) < 1:
        return labels
    labels = compact_ids(labels)  # the tables below have one entry per id
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    background = np.zeros(len(sizes), dtype=bool)
    background[largest] = True
    if mode == "embedding":
        _, means = segment_means(labels, emb)
        background |= (np.linalg.norm(means - means[largest], axis=1) < radius) & (sizes > 0)
    background[0] = True
    return relabel_consecutive(np.where(background[labels], 0, labels))


def postprocess(labels, emb=None, *, merge_distance: float = 0.0, background: str = "none",
                background_radius: float = 2.0, min_size: int = 0) -> np.ndarray:
    """Merge close touching segments, remove the background, drop segments smaller
    than ``min_size`` pixels, in that order; returns labels 1..K (int64)."""
    if merge_distance > 0:
        labels = merge_close_segments(labels, emb, merge_distance)
    labels = remove_background(labels, emb, mode=background, radius=background_radius)
    return relabel_consecutive(remove_small_segments(labels, int(min_size)))


def _check(labels, emb):
    labels = label_array(labels, "labels")
    if emb is None:
        raise ValueError("emb is required (the segments' mean embeddings are used)")
    emb = float_array(emb, "emb")
    if emb.ndim != labels.ndim + 1 or emb.shape[1:] != labels.shape:
        raise ValueError(f"emb must have shape (D, *labels.shape) = (D, {', '.join(map(str, labels.shape))}), "
                         f"got {emb.shape}")
    return labels, emb


def segment(emb, *, method: str = "mws", background: str = "none", merge_distance: float = 0.0,
            background_radius: float = 2.0, min_size: int = 0, foreground: bool = False,
            foreground_threshold: float = 0.5, **cluster_kwargs) -> np.ndarray:
    """Instances from embeddings ``(D, *spatial)``: :func:`spoco.cluster` followed by
    :func:`postprocess` (merging, background removal, size filter). Returns int64
    labels ``(*spatial)``, 0 = background, objects 1..K.

    ``foreground=True``: the last channel of ``emb`` is a foreground probability (the
    output of :func:`spoco.predict.predict` for a network with a foreground head); only
    pixels above ``foreground_threshold`` are clustered, with the other channels."""
    return segment_variants(emb, [merge_distance], method=method, background=background,
                            background_radius=background_radius, min_size=min_size, foreground=foreground,
                            foreground_threshold=foreground_threshold, **cluster_kwargs)[0]


def segment_variants(emb, merge_distances, *, method: str = "mws", background: str = "none",
                     background_radius: float = 2.0, min_size: int = 0, foreground: bool = False,
                     foreground_threshold: float = 0.5, **cluster_kwargs) -> list:
    """``[segment(emb, merge_distance=m, ...) for m in merge_distances]`` with one
    clustering for all (the merge distance only changes the post-processing); other
    arguments as in :func:`segment`."""
    from . import cluster

    if foreground:
        if "mask" in cluster_kwargs:
            raise ValueError("give either foreground=True or a mask, not both")
        emb = emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
        if emb.shape[0] < 2:
            raise ValueError(f"foreground=True needs emb with D + 1 >= 2 channels, got shape {emb.shape}")
        cluster_kwargs["mask"] = emb[-1] > float(foreground_threshold)
        emb = emb[:-1]
    labels = cluster(emb, method, **cluster_kwargs)
    if any(m > 0 for m in merge_distances) or background == "embedding":
        emb = emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
    return [postprocess(labels, emb, merge_distance=m, background=background, background_radius=background_radius,
                        min_size=min_size) for m in merge_distances]
