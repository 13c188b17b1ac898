"""The mutex watershed (Wolf et al., 2018) on grids, embeddings and graphs.

Processing order, shared by every form: edges by priority descending, ties by
edge id ascending. On a grid the edge id is ``channel * N + pixel`` (channel
major, then pixel in C order); on a graph the attractive edges come first
(ids ``0..E-1``), then the mutex edges (``E..E+M-1``). The result is therefore
deterministic and identical for every thread count.

All functions return integer labels ``1..K`` numbered in order of first
appearance (C order); masked pixels are 0.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from .._labels import compact_ids, label_array
from .._validation import (as_numpy, float_array, int_arg, is_int, mask_array, offsets_array,
                           positive_float, positive_int_tuple, threads_arg)

__all__ = ["mutex_watershed", "mutex_watershed_graph", "mutex_watershed_embeddings",
           "embedding_affinities", "remove_small_segments"]

_MAX_NODES = 2**31 - 1  # node ids are 31-bit in the core (csrc/core/union_find.hpp)


def _grid(spatial: tuple, offsets, n_attractive, name_offsets="offsets"):
    ndim = len(spatial)
    if not 1 <= ndim <= 3:
        raise ValueError(f"only 1 to 3 spatial dimensions are supported, got {ndim}")
    o = offsets_array(offsets, ndim, name_offsets)
    if n_attractive is None:
        raise ValueError("n_attractive is required with explicit offsets")
    n_attractive = int_arg(n_attractive, "n_attractive", 0, len(o))
    if int(np.prod(spatial)) > _MAX_NODES:
        raise ValueError(f"the grid has {int(np.prod(spatial))} pixels; one mutex watershed handles < 2^31 "
                         "(use block-wise clustering for larger volumes)")
    shape3 = (1,) * (3 - ndim) + tuple(int(s) for s in spatial)
    off3 = np.zeros((len(o), 3), dtype=np.int64)
    # |offset| >= size links nothing along that axis; clipping keeps it so and
    # keeps the core's index arithmetic far from overflow.
    size = np.asarray(spatial, dtype=np.int64)
    off3[:, 3 - ndim:] = np.clip(o, -size, size)
    return shape3, off3, int(n_attractive)


def _strides3(strides, ndim):
    if strides is None:
        return (1, 1, 1)
    return (1,) * (3 - ndim) + positive_int_tuple(strides, ndim, "strides")


def _seed(seed) -> int:
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed) % 2**64


def mutex_watershed(affinities, offsets, n_attractive, *, strides=None, randomize_strides=False,
                    seed=0, mask=None, threads=None) -> np.ndarray:
    """Mutex watershed on grid affinities.

    Parameters
    ----------
    affinities : array (C, *spatial), float32 or float64
        ``affinities[c, p]`` weighs the edge from pixel ``p`` to ``p + offsets[c]``.
        Attractive channels (the first ``n_attractive``): high = merge.
        Repulsive channels: high = split.
    offsets : (C, ndim) integers, nonzero.
    n_attractive : int, number of leading attractive channels.
    strides : int or ndim ints, optional
        Keep only every ``strides``-th repulsive edge along each axis (pixels whose
        coordinates are multiples of the stride); with ``randomize_strides`` keep
        each repulsive edge with probability ``1 / prod(strides)`` instead, drawn
        from a hash of ``(seed, edge id)`` (no global random state is touched).
    mask : bool array (*spatial), optional. Pixels outside are labelled 0 and
        their edges are dropped.
    threads : int, optional (default: the CPUs available). Threads for edge
        enumeration, sorting and the pass over the sorted edges (one stripe of the grid
        per thread; when the threads get less than 3/4 of their time on a core, e.g.
        beside another busy process, the rest of the pass runs on one). The result does
        not depend on it.

    Returns
    -------
    labels : int64 array (*spatial), segments 1..K, 0 where masked.
    """
    a = float_array(affinities, "affinities")
    if a.ndim < 2:
        raise ValueError(f"affinities must have shape (C, *spatial), got {a.shape}")
    spatial = a.shape[1:]
    shape3, off3, n_att = _grid(spatial, offsets, n_attractive)
    if len(off3) != a.shape[0]:
        raise ValueError(f"affinities has {a.shape[0]} channels but {len(off3)} offsets were given")
    return grid_mws(a, shape3, off3, n_att, strides=strides, randomize_strides=randomize_strides, seed=seed,
                    mask=mask, threads=threads)


def grid_mws(a: np.ndarray, shape3, off3, n_att: int, *, strides=None, randomize_strides=False, seed=0, mask=None,
             threads=None) -> np.ndarray:
    """:func:`mutex_watershed` on affinities ``a (C, *spatial)`` (finite float array) and the
    grid ``_grid`` returned (shape3, off3, n_att), already checked: no second conversion."""
    spatial = a.shape[1:]
    m = mask_array(mask, spatial)
    labels = _core.mws_grid(a.reshape(a.shape[0], -1), shape3, off3, n_att, _strides3(strides, len(spatial)),
                            bool(randomize_strides), _seed(seed), None if m is None else m.ravel(),
                            threads_arg(threads))
    return labels.reshape(spatial)


def mutex_watershed_embeddings(emb, offsets, n_attractive, *, delta_d=2.0, strides=None,
                               randomize_strides=False, seed=0, mask=None, threads=None) -> np.ndarray:
    """Mutex watershed directly on embeddings ``emb (D, *spatial)``.

    Edge priorities are Eq. 12 of the paper:
    ``w = 1 - max((2 delta_d - |e_i - e_j|) / (2 delta_d), 0)^2``, attractive priority
    ``1 - w``, repulsive priority ``w``, computed once per existing edge (in parallel
    with ``threads``) into a buffer of one float per edge that is freed before the
    pass over the sorted edges. Same result as :func:`mutex_watershed` on
    :func:`embedding_affinities`. Other arguments as in :func:`mutex_watershed`.
    """
    e = float_array(emb, "emb")
    if e.ndim < 2:
        raise ValueError(f"emb must have shape (D, *spatial), got {e.shape}")
    spatial = e.shape[1:]
    shape3, off3, n_att = _grid(spatial, offsets, n_attractive)
    m = mask_array(mask, spatial)
    labels = _core.mws_embeddings(e.reshape(e.shape[0], -1), shape3, off3, n_att,
                                  positive_float(delta_d, "delta_d"), _strides3(strides, len(spatial)),
                                  bool(randomize_strides), _seed(seed), None if m is None else m.ravel(),
                                  threads_arg(threads))
    return labels.reshape(spatial)


def embedding_affinities(emb, offsets, n_attractive, *, delta_d=2.0, threads=None) -> np.ndarray:
    """Eq. 12 affinities of embeddings ``emb (D, *spatial)`` as ``(C, *spatial)``.

    Attractive channels hold ``1 - w`` (high = merge), repulsive channels ``w``
    (high = split); entries whose offset leaves the grid are 0. CPU only; for CUDA
    tensors use :func:`spoco.ops.embedding_affinities`.
    """
    e = float_array(emb, "emb")
    if e.ndim < 2:
        raise ValueError(f"emb must have shape (D, *spatial), got {e.shape}")
    spatial = e.shape[1:]
    shape3, off3, n_att = _grid(spatial, offsets, n_attractive)
    out = _core.embedding_affinities(e.reshape(e.shape[0], -1), shape3, off3, n_att,
                                     positive_float(delta_d, "delta_d"), threads_arg(threads))
    return out.reshape((len(off3),) + spatial)


def _edge_list(uvs, name, n_nodes):
    a = as_numpy(uvs, name)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (E, 2), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.min() < 0 or a.max() >= n_nodes:
        raise ValueError(f"{name} holds node ids outside [0, {n_nodes})")
    return a


def _weights(w, name, n, dtype):
    a = as_numpy(w, name)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return float_array(a, name, dtype=dtype)


def mutex_watershed_graph(n_nodes, uvs, weights, mutex_uvs, mutex_weights, *, threads=None) -> np.ndarray:
    """Mutex watershed on a graph.

    Parameters
    ----------
    n_nodes : int
    uvs : (E, 2) int, attractive edges; weights : (E,) float, their priorities.
    mutex_uvs : (M, 2) int, repulsive edges; mutex_weights : (M,) float.

    Returns
    -------
    labels : int64 (n_nodes,), clusters 1..K in order of first appearance.
    """
    if not is_int(n_nodes) or n_nodes < 0:
        raise ValueError(f"n_nodes must be a non-negative integer, got {n_nodes!r}")
    if n_nodes > _MAX_NODES:
        raise ValueError("n_nodes must be < 2^31")
    uv = _edge_list(uvs, "uvs", n_nodes)
    muv = _edge_list(mutex_uvs, "mutex_uvs", n_nodes)
    w_arr, mw_arr = as_numpy(weights, "weights"), as_numpy(mutex_weights, "mutex_weights")
    dtype = np.float64 if np.float64 in (w_arr.dtype, mw_arr.dtype) else np.float32
    w = _weights(w_arr, "weights", len(uv), dtype)
    mw = _weights(mw_arr, "mutex_weights", len(muv), dtype)
    return _core.mws_graph(int(n_nodes), uv, w, muv, mw, threads_arg(threads))


def remove_small_segments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set segments with fewer than ``min_size`` pixels to 0 and relabel 1..K
    (keeping the order of the surviving ids)."""
    if min_size <= 1:
        return labels
    labels = compact_ids(label_array(labels, "labels"))  # one table entry per id: tables no larger than the image
    sizes = np.bincount(labels.ravel(), minlength=1)  # (entry 0 even for an empty image)
    keep = sizes >= min_size
    keep[0] = False
    new_id = np.zeros(len(sizes), dtype=labels.dtype)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return new_id[labels, ...]  # (the ellipsis keeps 0-D labels an array)
