"""Per-image intensity normalisation, shared by training (:class:`InstanceDataset`)
and prediction (:func:`spoco.predict.predict`) so both see the same input distribution."""
from __future__ import annotations

import numpy as np

# A few million samples pin percentiles down to well below 1% of the range.
_MAX_SAMPLES = 1 << 22


def percentile_range(image, low: float = 1.0, high: float = 99.8):
    """Per-channel ``(lo, hi)`` intensity percentiles of a channels-first image
    ``(C, *spatial)``, estimated on a strided subsample when the image has more than
    ~4 million pixels (so lazily loaded volumes are read only partly). Returns two
    float32 arrays ``(C,)``."""
    n_spatial = int(np.prod(image.shape[1:]))
    step = 1
    while n_spatial // step ** (len(image.shape) - 1) > _MAX_SAMPLES:
        step += 1
    sample = np.asarray(image[(slice(None),) + (slice(None, None, step),) * (len(image.shape) - 1)],
                        dtype=np.float32)
    lo, hi = np.percentile(sample.reshape(sample.shape[0], -1), [low, high], axis=1)
    return lo.astype(np.float32), hi.astype(np.float32)


def normalize_image(image, *, low: float = 1.0, high: float = 99.8, lo=None, hi=None) -> np.ndarray:
    """Robust per-channel normalisation of a channels-first image ``(C, *spatial)``:
    percentile ``low`` maps to 0 and ``high`` to 1 (outliers such as hot pixels do
    not set the scale), float32. Given ``lo``/``hi`` (per-channel values, e.g. from
    :func:`percentile_range` of a whole volume) are used instead of this image's
    percentiles, which is how tiles of one volume are normalised alike. A constant
    channel becomes 0."""
    if lo is None or hi is None:
        lo, hi = percentile_range(image, low, high)
    x = np.asarray(image, dtype=np.float32)
    shape = (-1,) + (1,) * (x.ndim - 1)
    lo = np.asarray(lo, np.float32).reshape(shape)
    hi = np.asarray(hi, np.float32).reshape(shape)
    return ((x - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)
