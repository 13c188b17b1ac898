"""Per-image intensity normalisation, shared by training and prediction so both see
the same input distribution."""
from __future__ import annotations

import numpy as np

# A few million samples pin percentiles down to well below 1% of the range.
_MAX_SAMPLES = 1 << 22


def percentile_range(image, low: float = 1.0, high: float = 99.8):
    """Per-channel ``(lo, hi)`` intensity percentiles of a channels-first image
    ``(C, *spatial)``, estimated on a strided subsample when the image is large (so
    lazily loaded volumes are read only partly). Returns two float32 arrays ``(C,)``."""
    n_spatial = int(np.prod(image.shape[1:]))
    step = 1
    while n_spatial // step ** (image.ndim - 1) > _MAX_SAMPLES:
        step += 1
    sample = np.asarray(image[(slice(None),) + (slice(None, None, step),) * (image.ndim - 1)], dtype=np.float32)
    flat = sample.reshape(sample.shape[0], -1)
    lo, hi = np.percentile(flat, [low, high], axis=1)
    return lo.astype(np.float32), hi.astype(np.float32)


def normalize(image, lo=None, hi=None) -> np.ndarray:
    """Map each channel of ``(C, *spatial)`` so that its ``lo``/``hi`` percentiles
    become 0 and 1 (float32); ranges are computed with :func:`percentile_range` when
    not given. Constant channels become 0."""
    if lo is None or hi is None:
        lo, hi = percentile_range(image)
    image = np.asarray(image, dtype=np.float32)
    shape = (-1,) + (1,) * (image.ndim - 1)
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    return (image - lo.reshape(shape)) / scale.reshape(shape)
