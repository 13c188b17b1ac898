"""A slow, obviously-correct mutex watershed: the oracle of tests/clustering/test_mws.py.

Written for clarity only: an explicit edge list, Python's sort, a union-find
without tricks and a dict of sets of mutex partners keyed by cluster root.

Processing order (the contract of spoco.clustering): priority descending, ties by
edge id ascending; -0.0 and +0.0 are the same priority.
"""
from __future__ import annotations

import numpy as np


def _priority(x) -> float:
    x = float(x)
    return 0.0 if x == 0.0 else x  # -0.0 -> +0.0


def mws_edges(n_nodes: int, edges) -> np.ndarray:
    """Mutex watershed on explicit edges ``(priority, edge_id, u, v, attractive)``.

    Returns the cluster root of every node (not yet relabelled).
    """
    order = sorted(edges, key=lambda e: (-_priority(e[0]), e[1]))
    parent = list(range(n_nodes))
    mutex = {i: set() for i in range(n_nodes)}  # root -> roots it must never join

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for _, _, u, v, attractive in order:
        ru, rv = find(u), find(v)
        if ru == rv:
            continue
        if attractive:
            if rv in mutex[ru]:
                continue
            parent[rv] = ru
            for w in mutex.pop(rv):  # ru inherits rv's mutexes
                mutex[w].discard(rv)
                mutex[w].add(ru)
                mutex[ru].add(w)
        else:
            mutex[ru].add(rv)
            mutex[rv].add(ru)
    return np.array([find(i) for i in range(n_nodes)], dtype=np.int64)


def relabel_first_appearance(roots, foreground=None) -> np.ndarray:
    """Labels 1..K in order of first appearance (C order); 0 where not foreground."""
    roots = np.asarray(roots).ravel()
    fg = np.ones(roots.shape, bool) if foreground is None else np.asarray(foreground, bool).ravel()
    out = np.zeros(roots.shape, dtype=np.int64)
    new = {}
    for i, r in enumerate(roots):
        if fg[i]:
            if r not in new:
                new[r] = len(new) + 1
            out[i] = new[r]
    return out


def grid_edge_list(affinities, offsets, n_attractive, strides=None, mask=None, keep=None):
    """All edges of the grid form as ``(priority, edge_id, u, v, attractive)``.

    ``keep`` (bool, ``(C, *spatial)``), if given, selects the repulsive edges
    explicitly (e.g. the ones picked by randomized strides); otherwise ``strides``
    keeps repulsive edges whose source pixel coordinates are multiples of it.
    """
    affinities = np.asarray(affinities)
    shape = affinities.shape[1:]
    n = int(np.prod(shape))
    if strides is not None and np.isscalar(strides):
        strides = (strides,) * len(shape)
    edges = []
    for c, off in enumerate(np.asarray(offsets, dtype=np.int64).tolist()):
        attractive = c < n_attractive
        for p in np.ndindex(*shape):
            q = tuple(pi + oi for pi, oi in zip(p, off))
            if not all(0 <= qi < si for qi, si in zip(q, shape)):
                continue  # leaves the grid: no edge (no wrap-around)
            if mask is not None and not (mask[p] and mask[q]):
                continue
            if not attractive:
                if keep is not None and not keep[(c,) + p]:
                    continue
                if keep is None and strides is not None and any(pi % si for pi, si in zip(p, strides)):
                    continue
            u = int(np.ravel_multi_index(p, shape))
            v = int(np.ravel_multi_index(q, shape))
            edges.append((affinities[(c,) + p], c * n + u, u, v, attractive))
    return edges


def mws_grid(affinities, offsets, n_attractive, strides=None, mask=None, keep=None) -> np.ndarray:
    """Oracle of ``spoco.clustering.mutex_watershed`` (regular strides or explicit ``keep``)."""
    affinities = np.asarray(affinities)
    shape = affinities.shape[1:]
    edges = grid_edge_list(affinities, offsets, n_attractive, strides, mask, keep)
    roots = mws_edges(int(np.prod(shape)), edges)
    return relabel_first_appearance(roots, mask).reshape(shape)


def mws_graph(n_nodes, uvs, weights, mutex_uvs, mutex_weights) -> np.ndarray:
    """Oracle of ``spoco.clustering.mutex_watershed_graph``: attractive ids 0..E-1, mutex ids E..E+M-1."""
    uvs = np.asarray(uvs, dtype=np.int64).reshape(-1, 2)
    mutex_uvs = np.asarray(mutex_uvs, dtype=np.int64).reshape(-1, 2)
    n_edges = len(uvs)
    edges = [(w, i, int(u), int(v), True) for i, ((u, v), w) in enumerate(zip(uvs, weights))]
    edges += [(w, n_edges + j, int(u), int(v), False) for j, ((u, v), w) in enumerate(zip(mutex_uvs, mutex_weights))]
    return relabel_first_appearance(mws_edges(int(n_nodes), edges))


def same_partition(a, b) -> bool:
    """Whether labelings ``a`` and ``b`` are the same partition up to relabelling,
    label 0 (background) corresponding only to label 0."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        return False
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = {(x, y) for x, y in zip(a.tolist(), b.tolist())}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))
