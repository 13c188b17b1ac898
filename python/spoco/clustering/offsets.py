"""Offset patterns of the long-range affinity graph (paper, appendix A.4)."""
from __future__ import annotations

import numpy as np

DEFAULT_LONG_RANGE = (3, 9, 27)


def default_offsets(ndim: int, long_range=DEFAULT_LONG_RANGE) -> tuple[np.ndarray, int]:
    """Nearest-neighbour attractive offsets, then repulsive ones at each distance.

    Returns ``(offsets, n_attractive)``: ``offsets`` has shape
    ``(ndim * (1 + len(long_range)), ndim)``; the first ``ndim`` rows are the
    attractive unit offsets ``-e_k``, followed by ``-r * e_k`` for every ``r`` in
    ``long_range`` and every axis ``k``. (Negative offsets link each pixel to an
    earlier neighbour; the sign does not change the graph.)
    """
    eye = -np.eye(ndim, dtype=np.int64)
    rows = [eye] + [r * eye for r in long_range]
    return np.concatenate(rows), ndim
