"""Checks for integer label images (instance and semantic labels).

Kept apart from ``_validation`` (embeddings, masks, offsets) so that each file
holds one idea; errors name the argument and say what was expected.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_numpy

_INT64_MAX = np.iinfo(np.int64).max


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
    return np.ascontiguousarray(a, dtype=np.int64)


def label_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ground-truth / prediction pair of label images (same shape)."""
    g = label_array(gt, "gt")
    p = label_array(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same shape, got gt {g.shape} and pred {p.shape}")
    return g, p
