"""Layers to arrays: training pairs from painted labels, validation crops around
them, and a score that asks only about the painted objects. numpy only: no napari,
no Qt, no torch."""
from __future__ import annotations

import numpy as np

from .. import metrics
from ..data.normalize import percentile_range


def channels_first(data, rgb: bool = False) -> np.ndarray:
    """An image layer's data as ``(C, *spatial)``: RGB(A) layers keep their colour
    channels (moved first), grey images get one channel. Multiscale data: the full
    resolution level."""
    if isinstance(data, (list, tuple)):  # napari multiscale: level 0 is the full resolution
        data = data[0]
    data = np.asarray(data)
    return np.moveaxis(data, -1, 0) if rgb else data[None]


def painted_pairs(image: np.ndarray, labels, ndim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs ``[(image (C, *spatial), labels (*spatial))]`` for a network of
    ``ndim`` spatial axes. A 2D network on a 3D stack trains on the slices in which
    something is painted; otherwise the whole image is one pair."""
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        raise ValueError(f"the labels layer has shape {labels.shape}, the image {image.shape[1:]}: "
                         "paint on a labels layer of the image's size")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    spatial = labels.ndim
    if spatial == ndim:
        pairs = [(image, labels)]
    elif spatial == 3 and ndim == 2:
        pairs = [(image[:, z], labels[z]) for z in range(labels.shape[0]) if labels[z].any()]
    else:
        raise ValueError(f"a {ndim}D network cannot train on a {spatial}D image")
    if not any(lab.any() for _, lab in pairs):
        raise ValueError("no object is painted: paint some objects (label > 0) in the labels layer first")
    return pairs


def validation_crops(pairs, margin) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """``[(image crop, labels crop, norm_range)]``: each pair cut to the box around its
    painted objects plus ``margin`` pixels per axis (validation predicts and segments
    only there, so a large image costs what its painted part costs). ``norm_range``
    holds the whole image's intensity percentiles, so a crop is normalised as training
    normalised the whole image."""
    crops = []
    for image, labels in pairs:
        where = np.nonzero(labels)
        if not where[0].size:
            continue
        box = tuple(slice(max(int(w.min()) - m, 0), min(int(w.max()) + 1 + m, s))
                    for w, m, s in zip(where, margin, labels.shape))
        crops.append((image[(slice(None),) + box], labels[box], percentile_range(image)))
    return crops


def sparse_scores(painted, segmentation) -> dict:
    """Scores of a segmentation against labels in which only some objects are painted.

    The unpainted objects are unknown, so a segment counts only where it lies mostly
    (at least half of its pixels) on painted objects; the others (unpainted objects,
    background) are left out. The kept segments are then scored against the painted
    objects with :func:`spoco.metrics.evaluate` (AP@0.5, SBD, ...): a network that
    splits, merges or misses painted objects scores low, one that also finds the
    unpainted ones is not punished for it."""
    painted, segmentation = np.asarray(painted), np.asarray(segmentation)
    seg = segmentation.ravel().astype(np.int64)
    n = int(seg.max(initial=0)) + 1
    size = np.bincount(seg, minlength=n)
    on_painted = np.bincount(seg, weights=(painted.ravel() > 0), minlength=n)
    keep = on_painted >= 0.5 * np.maximum(size, 1)
    keep[0] = False
    kept = np.where(keep[segmentation], segmentation, 0)
    return metrics.evaluate(painted, kept)

