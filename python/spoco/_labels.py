"""Checks for integer label images (instance and semantic labels).

Kept apart from ``_validation`` (embeddings, masks, offsets) so that each file
holds one idea; errors name the argument and say what was expected.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_numpy

_INT64_MAX = np.iinfo(np.int64).max


BACKGROUND_SCRIBBLE = -2
"""Value of painted background pixels in the label tensors of a training batch
(:class:`spoco.data.InstanceDataset` with ``background_label``). The SPOCO loss sees
them as unlabeled (0); the foreground head as background."""


def label_array(x, name: str, shape: tuple | None = None) -> np.ndarray:
    """C-contiguous int64 copy/view of a label image with non-negative labels.

    Accepts any integer numpy array or torch tensor (not bool, not float). With
    ``shape`` given, the array must have exactly that shape.
    """
    a = as_numpy(x, name)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label array, got dtype {a.dtype}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if a.size:
        if np.issubdtype(a.dtype, np.signedinteger):
            lo = a.min()
            if lo < 0:
                raise ValueError(f"{name} must hold non-negative labels, found {int(lo)}")
        elif a.dtype == np.uint64:
            hi = a.max()
            if hi > _INT64_MAX:
                raise ValueError(f"{name} holds label {int(hi)}; labels must be < 2**63")
    return np.asarray(a, dtype=np.int64, order="C")  # (np.ascontiguousarray would make 0-D arrays 1-D)


def pairs_at_step(labels: np.ndarray, step: int = 1) -> np.ndarray:
    """Unique pairs ``(P, 2)`` (a < b, ``labels``' dtype) of different non-zero labels found
    ``step`` pixels apart along some axis (``step`` 1: segments that touch).

    Pairs are deduplicated as rows, never as ``a * n + b`` keys, so ids up to the dtype's
    maximum cannot overflow."""
    labels = np.asarray(labels)
    parts = []
    for axis in range(labels.ndim):
        moved = np.moveaxis(labels, axis, 0)
        if step >= moved.shape[0]:
            continue
        a, b = moved[:-step].ravel(), moved[step:].ravel()
        sel = (a != b) & (a > 0) & (b > 0)
        parts.append(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], axis=1))
    if not parts:
        return np.zeros((0, 2), labels.dtype)
    return np.unique(np.concatenate(parts), axis=0)


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` (non-negative integers) with ids small enough to index a table of one
    entry per id (``np.bincount``, lookup tables of size ``max + 1``).

    Returned unchanged when the largest id is below the number of pixels, so such a
    table is never larger than the image; otherwise the ids are renumbered 1..K in
    ascending order (0 stays 0), which keeps the objects, their order and every
    result that depends only on the partition. Huge ids are legal labels: without
    this an id like 2**40 asks for terabytes, and ``np.bincount`` of 2**63 - 1
    overflows inside NumPy and corrupts memory.
    """
    if labels.size == 0 or int(labels.max()) < labels.size:
        return labels
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] != 0:
        inverse += 1  # in place: a 0-D array stays an array
    return inverse


def label_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ground-truth / prediction pair of label images (same shape)."""
    g = label_array(gt, "gt")
    p = label_array(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same shape, got gt {g.shape} and pred {p.shape}")
    return g, p
