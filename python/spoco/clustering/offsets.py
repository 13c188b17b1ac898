"""Offset patterns of the long-range affinity graph (paper, appendix A.4)."""
from __future__ import annotations

import numpy as np

DEFAULT_LONG_RANGE = (3, 9, 27)


def default_offsets(ndim: int, long_range=DEFAULT_LONG_RANGE, voxel_size=None) -> tuple[np.ndarray, int]:
    """Nearest-neighbour attractive offsets, then repulsive ones at each distance.

    Returns ``(offsets, n_attractive)``: ``offsets`` has shape
    ``(ndim * (1 + len(long_range)), ndim)``; the first ``ndim`` rows are the
    attractive unit offsets ``-e_k``, followed by ``-r * e_k`` for every ``r`` in
    ``long_range`` and every axis ``k``. (Negative offsets link each pixel to an
    earlier neighbour; the sign does not change the graph.)

    ``voxel_size`` (one per axis, e.g. from OME-Zarr metadata) makes the repulsive
    offsets reach the same physical distance along every axis: ``r`` counts voxels of
    the finest axis, and along an axis with ``s`` times larger voxels the offset is
    ``round(r / s)`` voxels. Offsets that shrink to 1 (the attractive neighbour) or
    repeat a shorter one are dropped, so fewer rows are returned.
    """
    eye = -np.eye(ndim, dtype=np.int64)
    if voxel_size is None:
        rows = [eye] + [r * eye for r in long_range]
        return np.concatenate(rows), ndim
    voxel = np.asarray(voxel_size, dtype=float)
    if voxel.shape != (ndim,) or not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
        raise ValueError(f"voxel_size must be {ndim} positive numbers, got {voxel_size!r}")
    ratio = voxel / voxel.min()
    rows, seen = [eye], [{1} for _ in range(ndim)]
    for r in long_range:  # the order of the isotropic pattern (edge order breaks ties)
        for axis in range(ndim):
            steps = max(1, int(round(r / ratio[axis])))
            if steps not in seen[axis]:
                seen[axis].add(steps)
                rows.append(steps * eye[axis:axis + 1])
    return np.concatenate(rows), ndim
