"""Tests of the mutex watershed (spoco.clustering) against a pure-Python oracle.

Contract (spoco/clustering/mws.py): edges by priority descending, ties by edge id
ascending (grid: ``c * N + p``; graph: attractive ``0..E-1`` then mutex
``E..E+M-1``), -0.0 == +0.0; labels 1..K in order of first appearance, 0 masked.
Random tests use the ``rng`` fixture; its seed is printed in failure reports and
in assertion messages (rerun with ``SPOCO_TEST_SEED=<seed>``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
import torch

import spoco
import spoco.ops
from spoco.clustering import (cluster, default_offsets, embedding_affinities, mutex_watershed,
                              mutex_watershed_embeddings, mutex_watershed_graph, remove_small_segments)
from spoco.ops import reference
from tests._helpers import mws_degenerate
from tests._helpers import mws_oracle as oracle

HELPERS_DIR = os.path.dirname(mws_degenerate.__file__)
F32, F64 = np.float32, np.float64


# ---------------------------------------------------------------------------- helpers

def check_labels(labels, shape, ctx=""):
    """int64 labels of the given shape, numbered 1..K in order of first appearance (0 allowed)."""
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64, f"{type(labels)} {labels.dtype}; {ctx}"
    assert labels.shape == tuple(shape), f"{labels.shape} != {shape}; {ctx}"
    nz = labels.ravel()[labels.ravel() != 0]
    assert (nz >= 1).all(), f"negative labels; {ctx}"
    running_max = np.maximum.accumulate(np.r_[0, nz])[:-1]
    assert (nz <= running_max + 1).all(), f"labels not numbered by first appearance: {labels}; {ctx}"


def assert_labels_equal(got, want, ctx=""):
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}; {ctx}"
    assert oracle.same_partition(got, want), f"different partition; {ctx}\ngot:\n{got}\nwant:\n{want}"
    np.testing.assert_array_equal(got, want, err_msg=f"same partition, different numbering; {ctx}")


def random_offsets(rng, shape, n):
    """n nonzero offsets: short ones, ones up to (and past) the grid size, long axis-aligned ones."""
    ndim = len(shape)
    out = []
    while len(out) < n:
        kind = rng.integers(3)
        if kind == 0:
            o = rng.integers(-1, 2, ndim)
        elif kind == 1:
            o = np.array([rng.integers(-s - 1, s + 2) for s in shape])
        else:
            o = np.zeros(ndim, dtype=np.int64)
            ax = rng.integers(ndim)
            o[ax] = rng.choice([-1, 1]) * rng.integers(1, shape[ax] + 3)
        if o.any():
            out.append(o)
    return np.array(out, dtype=np.int64)


def random_values(rng, size, dtype, tied):
    """Priorities: continuous, or from a tiny set so that the tie rule decides (with -0.0 and +0.0)."""
    if tied:
        v = rng.choice(np.array([-0.0, 0.0, 0.5, 1.0]), size)
    else:
        v = rng.random(size)
    return np.asarray(v, dtype=dtype)


def random_grid_case(rng, ndim, max_side=7):
    shape = tuple(int(s) for s in rng.integers(1, max_side + 1, ndim))
    n_channels = int(rng.integers(1, 7))
    case = dict(
        shape=shape,
        offsets=random_offsets(rng, shape, n_channels),
        n_attractive=int(rng.integers(0, n_channels + 1)),
        dtype=F32 if rng.random() < 0.5 else F64,
        tied=bool(rng.random() < 0.6),
        strides=None,
        mask=None,
    )
    r = rng.random()
    if r < 0.25:
        case["strides"] = tuple(int(s) for s in rng.integers(1, 4, ndim))
    elif r < 0.35:
        case["strides"] = int(rng.integers(1, 4))
    if rng.random() < 0.35:
        case["mask"] = rng.random(shape) < 0.75
    return case


def describe(seed, /, **kw):
    parts = [f"seed={seed} (SPOCO_TEST_SEED={seed})"]
    for k, v in kw.items():
        if isinstance(v, np.ndarray) and v.size > 12:
            v = f"array{v.shape}"
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def observe_random_keep(shape, n_channels, n_attractive, strides, seed):
    """Which repulsive edges ``randomize_strides`` keeps, read off MWS outputs.

    Probe for channel c (same grid, so the same edge ids ``c * N + p``): channel 0
    is attractive with priority 0.5 along one axis, channel c repulsive with
    priority 1 along the same axis, channels in between repulsive with priority 0
    (processed after every merge). Every line along the axis is a path, so pixel p
    and its neighbour end in different segments exactly when the repulsive edge
    from p was kept. Probing with +1 and -1 covers every source pixel; sources seen
    by both probes must agree (the choice depends on the edge id only).
    """
    ndim = len(shape)
    keep = np.ones((n_channels,) + shape, bool)
    axes = [a for a, s in enumerate(shape) if s >= 2]
    if not axes:
        return keep  # no edges at all
    ax = axes[0]
    for c in range(max(n_attractive, 1), n_channels):
        seen = np.zeros(shape, bool)
        for sign in (1, -1):
            offs = np.zeros((c + 1, ndim), dtype=np.int64)
            offs[:, ax] = sign
            aff = np.zeros((c + 1,) + shape)
            aff[0] = 0.5
            aff[c] = 1.0
            lab = mutex_watershed(aff, offs, 1, strides=strides, randomize_strides=True, seed=seed)
            src = [slice(None)] * ndim
            dst = [slice(None)] * ndim
            src[ax] = slice(0, shape[ax] - 1) if sign == 1 else slice(1, shape[ax])
            dst[ax] = slice(1, shape[ax]) if sign == 1 else slice(0, shape[ax] - 1)
            src, dst = tuple(src), tuple(dst)
            cut = lab[src] != lab[dst]
            both = seen[src]
            assert np.array_equal(keep[c][src][both], cut[both]), \
                f"randomized strides: the same edge id is kept by one probe and dropped by the other (seed={seed})"
            keep[c][src] = cut
            seen[src] = True
    return keep


def grid_edges_np(affinities, offsets, n_attractive, mask=None):
    """Vectorised edge list of the grid form (no strides): u, v, priority, id, attractive."""
    shape = affinities.shape[1:]
    n = int(np.prod(shape))
    coords = np.indices(shape).reshape(len(shape), -1)
    bounds = np.array(shape)[:, None]
    us, vs, ps, ids, att = [], [], [], [], []
    m = None if mask is None else mask.ravel()
    for c, off in enumerate(np.asarray(offsets)):
        q = coords + off[:, None]
        ok = np.all((q >= 0) & (q < bounds), axis=0)
        u = np.flatnonzero(ok)
        v = np.ravel_multi_index(q[:, ok], shape) if u.size else u
        if m is not None:
            fg = m[u] & m[v]
            u, v = u[fg], v[fg]
        us.append(u)
        vs.append(v)
        ps.append(affinities[c].ravel()[u].astype(np.float64))
        ids.append(c * n + u)
        att.append(np.full(u.size, c < n_attractive))
    return (np.concatenate(us), np.concatenate(vs), np.concatenate(ps), np.concatenate(ids),
            np.concatenate(att))


def check_mws_invariants(labels, u, v, prio, ids, attractive, ctx=""):
    """Properties every MWS result has, checked vectorised.

    1. An attractive edge between two different final segments was rejected
       because of a mutex, so a repulsive edge between the same two segments comes
       earlier in the processing order (higher priority, or equal priority and
       lower edge id).
    2. Every segment is connected by attractive edges inside it.
    3. A repulsive edge inside a segment came after its two ends were joined:
       they are connected by attractive edges inside the segment processed
       earlier. (Inside a final segment no attractive edge is ever rejected, so
       the cluster of a pixel at any time is its component under the earlier
       inside attractive edges; a repulsive edge between two such clusters would
       have kept them apart forever.) 1 catches over-splitting, 3 over-merging.
    """
    lab = labels.ravel()
    n = lab.size
    order = np.lexsort((ids, -(prio + 0.0)))  # + 0.0: -0.0 -> +0.0
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    la, lb = lab[u], lab[v]
    assert ((la != 0) & (lb != 0)).all(), f"edge touching a masked pixel survived; {ctx}"
    cross = la != lb
    big = int(lab.max()) + 1
    pair = np.minimum(la, lb) * big + np.maximum(la, lb)
    rep = cross & ~attractive
    rep_pair, rep_rank = pair[rep], rank[rep]
    srt = np.lexsort((rep_rank, rep_pair))
    rep_pair, rep_rank = rep_pair[srt], rep_rank[srt]
    first = np.r_[True, rep_pair[1:] != rep_pair[:-1]] if rep_pair.size else np.zeros(0, bool)
    uniq_pair, min_rank = rep_pair[first], rep_rank[first]
    att = cross & attractive
    a_pair, a_rank = pair[att], rank[att]
    idx = np.searchsorted(uniq_pair, a_pair)
    found = idx < len(uniq_pair)
    found[found] = uniq_pair[idx[found]] == a_pair[found]
    assert found.all(), (f"{(~found).sum()} attractive edges join two segments that no repulsive edge "
                         f"separates; {ctx}")
    early = min_rank[idx] < a_rank
    assert early.all(), (f"{(~early).sum()} attractive edges between different segments came before "
                         f"every repulsive edge between them; {ctx}")
    inner = attractive & ~cross
    graph = scipy.sparse.coo_matrix((np.ones(inner.sum()), (u[inner], v[inner])), shape=(n, n))
    _, comp = scipy.sparse.csgraph.connected_components(graph, directed=False)
    fg = lab != 0
    k = int(lab.max())
    n_fg_components = len(np.unique(comp[fg])) if fg.any() else 0
    assert n_fg_components == k, f"{n_fg_components} attractive components for {k} segments; {ctx}"
    sel = np.flatnonzero(~cross)
    sel = sel[np.argsort(rank[sel])]
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    n_bad = 0
    for a, b, is_att in zip(u[sel].tolist(), v[sel].tolist(), attractive[sel].tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            if is_att:
                parent[ra] = rb
            else:
                n_bad += 1
    assert n_bad == 0, (f"{n_bad} repulsive edges inside segments came before their ends were joined "
                        f"(over-merged segments); {ctx}")


def run_grid_threads_1_and_2(case, aff, **kw):
    """mutex_watershed with threads=1 and threads=2 (must agree)."""
    args = (aff, case["offsets"], case["n_attractive"])
    a = mutex_watershed(*args, threads=1, **kw)
    b = mutex_watershed(*args, threads=2, **kw)
    np.testing.assert_array_equal(a, b, err_msg="threads=1 and threads=2 differ")
    return a


# ---------------------------------------------------------------------------- random vs oracle

@pytest.mark.parametrize("ndim,i", [(1, i) for i in range(40)] + [(2, i) for i in range(160)]
                         + [(3, i) for i in range(100)])
def test_grid_random_vs_oracle(rng, seed, ndim, i):
    case = random_grid_case(rng, ndim, max_side=15 if ndim == 1 else 7)
    aff = random_values(rng, (len(case["offsets"]),) + case["shape"], case["dtype"], case["tied"])
    ctx = describe(seed, **{k: v for k, v in case.items()})
    got = run_grid_threads_1_and_2(case, aff, strides=case["strides"], mask=case["mask"])
    want = oracle.mws_grid(aff, case["offsets"], case["n_attractive"], case["strides"], case["mask"])
    check_labels(got, case["shape"], ctx)
    assert_labels_equal(got, want, ctx)


@pytest.mark.parametrize("ndim,i", [(2, i) for i in range(40)] + [(3, i) for i in range(25)])
def test_grid_random_strides_vs_oracle(rng, seed, ndim, i):
    """randomize_strides: the result equals the oracle on the repulsive edges that
    the probes of observe_random_keep show to be kept."""
    case = random_grid_case(rng, ndim)
    case["strides"] = tuple(int(s) for s in rng.integers(1, 4, ndim))
    stride_seed = int(rng.integers(0, 2**63))
    aff = random_values(rng, (len(case["offsets"]),) + case["shape"], case["dtype"], case["tied"])
    ctx = describe(seed, stride_seed=stride_seed, **case)
    got = run_grid_threads_1_and_2(case, aff, strides=case["strides"], randomize_strides=True, seed=stride_seed,
                             mask=case["mask"])
    keep = observe_random_keep(case["shape"], len(case["offsets"]), case["n_attractive"], case["strides"],
                               stride_seed)
    want = oracle.mws_grid(aff, case["offsets"], case["n_attractive"], mask=case["mask"], keep=keep)
    check_labels(got, case["shape"], ctx)
    assert_labels_equal(got, want, ctx)


@pytest.mark.parametrize("i", range(40))
def test_graph_long_mutex_lists_vs_oracle(rng, seed, i):
    """Most mutexes come first, between few groups of nodes, so that clusters collect
    long mutex lists (many chunks) before merging: merges splice long lists onto long and
    short ones, and checks scan them. Attractive edges then join nodes of the same group
    mostly, sometimes across groups (refused or not, as the lists say)."""
    n = int(rng.integers(40, 120))
    group = rng.integers(0, int(rng.integers(2, 6)), n)
    n_mutex = int(rng.integers(5 * n, 15 * n))
    muvs = rng.integers(0, n, (n_mutex, 2))
    muvs = muvs[group[muvs[:, 0]] != group[muvs[:, 1]]]
    n_edges = int(rng.integers(2 * n, 6 * n))
    uvs = rng.integers(0, n, (n_edges, 2))
    cross = group[uvs[:, 0]] != group[uvs[:, 1]]
    uvs = uvs[~cross | (rng.random(n_edges) < 0.2)]
    tied = bool(rng.random() < 0.3)
    mw = np.asarray(0.5 + 0.5 * random_values(rng, len(muvs), F32, tied), dtype=F32)  # mostly above w
    w = np.asarray(0.6 * random_values(rng, len(uvs), F32, tied), dtype=F32)
    ctx = describe(seed, n_nodes=n, uvs=uvs, weights=w, mutex_uvs=muvs, mutex_weights=mw)
    got = mutex_watershed_graph(n, uvs, w, muvs, mw, threads=1)
    np.testing.assert_array_equal(got, mutex_watershed_graph(n, uvs, w, muvs, mw, threads=2), err_msg=ctx)
    check_labels(got, (n,), ctx)
    assert_labels_equal(got, oracle.mws_graph(n, uvs, w, muvs, mw), ctx)


@pytest.mark.parametrize("i", range(150))
def test_graph_random_vs_oracle(rng, seed, i):
    n = int(rng.integers(1, 30))
    n_edges, n_mutex = int(rng.integers(0, 3 * n + 1)), int(rng.integers(0, 3 * n + 1))
    dtypes = [(F32, F32), (F64, F64), (F32, F64), (F64, F32)][int(rng.integers(4))]
    tied = bool(rng.random() < 0.6)
    uvs = rng.integers(0, n, (n_edges, 2))
    muvs = rng.integers(0, n, (n_mutex, 2))
    w = random_values(rng, n_edges, dtypes[0], tied)
    mw = random_values(rng, n_mutex, dtypes[1], tied)
    ctx = describe(seed, n_nodes=n, uvs=uvs, weights=w, mutex_uvs=muvs, mutex_weights=mw)
    got = mutex_watershed_graph(n, uvs, w, muvs, mw, threads=1)
    np.testing.assert_array_equal(got, mutex_watershed_graph(n, uvs, w, muvs, mw, threads=2), err_msg=ctx)
    want = oracle.mws_graph(n, uvs, w, muvs, mw)
    check_labels(got, (n,), ctx)
    assert_labels_equal(got, want, ctx)


@pytest.mark.parametrize("ndim,i", [(1, i) for i in range(10)] + [(2, i) for i in range(30)]
                         + [(3, i) for i in range(20)])
def test_embeddings_random_vs_grid_and_oracle(rng, seed, ndim, i):
    """Embedding form == grid form on embedding_affinities (exactly) == oracle."""
    case = random_grid_case(rng, ndim)
    d = int(rng.integers(1, 4))
    if case["tied"]:  # few distinct embeddings -> many equal distances
        emb = rng.integers(0, 3, (d,) + case["shape"]).astype(case["dtype"])
    else:
        emb = (rng.standard_normal((d,) + case["shape"]) * 2).astype(case["dtype"])
    delta_d = float(rng.choice([0.5, 1.0, 2.0, 1.7]))
    randomize = bool(rng.random() < 0.3) and case["strides"] is not None
    kw = dict(strides=case["strides"], randomize_strides=randomize, seed=int(rng.integers(0, 1000)),
              mask=case["mask"])
    ctx = describe(seed, delta_d=delta_d, emb=emb, **{**case, **kw})
    aff = embedding_affinities(emb, case["offsets"], case["n_attractive"], delta_d=delta_d)
    assert aff.dtype == emb.dtype and aff.shape == (len(case["offsets"]),) + case["shape"], ctx
    from_emb = mutex_watershed_embeddings(emb, case["offsets"], case["n_attractive"], delta_d=delta_d, **kw)
    from_aff = mutex_watershed(aff, case["offsets"], case["n_attractive"], **kw)
    check_labels(from_emb, case["shape"], ctx)
    assert_labels_equal(from_emb, from_aff, ctx)
    if not randomize:
        want = oracle.mws_grid(aff, case["offsets"], case["n_attractive"], case["strides"], case["mask"])
        assert_labels_equal(from_emb, want, ctx)


# ---------------------------------------------------------------------------- threads

def parallel_graph_case(rng):
    """A random graph of a few hundred nodes with one of several weight regimes."""
    n = int(rng.integers(100, 400))
    n_edges, n_mutex = int(rng.integers(2 * n, 6 * n)), int(rng.integers(0, 6 * n))
    regime = ["continuous", "tied", "saturated", "all_equal", "attractive_first"][int(rng.integers(5))]
    if regime == "continuous":
        w, mw = rng.random(n_edges), rng.random(n_mutex)
    elif regime == "tied":
        w, mw = rng.choice([0.0, 0.5, 1.0], n_edges), rng.choice([0.0, 0.5, 1.0], n_mutex)
    elif regime == "saturated":  # Eq. 12 far apart: attractive 0, repulsive 1
        w, mw = (rng.random(n_edges) < 0.7).astype(F64), (rng.random(n_mutex) < 0.7).astype(F64)
    elif regime == "all_equal":  # the tie rule alone orders everything
        w, mw = np.full(n_edges, 0.5), np.full(n_mutex, 0.5)
    else:
        w, mw = rng.random(n_edges) * 0.5 + 0.5, rng.random(n_mutex) * 0.5
    # local edges, so that clusters grow and filtering has something to drop
    u = rng.integers(0, n, n_edges)
    uvs = np.stack([u, np.clip(u + rng.integers(-3, 4, n_edges), 0, n - 1)], 1)
    mu = rng.integers(0, n, n_mutex)
    muvs = np.stack([mu, np.clip(mu + rng.integers(-12, 13, n_mutex), 0, n - 1)], 1)
    return n, uvs, w.astype(F32), muvs, mw.astype(F32), regime


def test_threads_equal_sequential_on_many_graphs(rng, seed):
    """500 random graphs with ties, saturated and all-equal weights: bit-identical
    labels for 2, 3 and 4 threads (parallel sort), every 10th against the oracle."""
    for i in range(500):
        n, uvs, w, muvs, mw, regime = parallel_graph_case(rng)
        ctx = describe(seed, graph=i, regime=regime, n_nodes=n, n_edges=len(w), n_mutex=len(mw))
        want = mutex_watershed_graph(n, uvs, w, muvs, mw, threads=1)
        for t in (2, 3, 4):
            np.testing.assert_array_equal(mutex_watershed_graph(n, uvs, w, muvs, mw, threads=t), want,
                                          err_msg=f"threads={t}; {ctx}")
        if i % 10 == 0:
            assert_labels_equal(want, oracle.mws_graph(n, uvs, w, muvs, mw), ctx)


@pytest.mark.parametrize("i", range(40))
def test_threads_equal_sequential_on_grids(rng, seed, i):
    """Grids of 10^3 - 10^5 edges with degenerate offsets (repeated, past the grid,
    diagonal) and tied or saturated Eq. 12 weights: threads 2 and 3 == threads 1."""
    ndim = int(rng.integers(2, 4))
    shape = tuple(int(s) for s in rng.integers(8, 40 if ndim == 2 else 14, ndim))
    offs, n_att = default_offsets(ndim)
    extra = random_offsets(rng, shape, int(rng.integers(1, 4)))
    offs = np.concatenate([offs[:n_att], offs[n_att:], extra, offs[n_att:n_att + 1]])  # a repeated offset
    emb = rng.integers(0, 3, (2,) + shape).astype(F32) if rng.random() < 0.5 else \
        rng.standard_normal((4,) + shape).astype(F32) * 2
    ctx = describe(seed, shape=shape, offsets=offs, n_attractive=n_att)
    want = mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.0, threads=1)
    for t in (2, 3):
        np.testing.assert_array_equal(mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.0, threads=t), want,
                                      err_msg=f"threads={t}; {ctx}")
    aff = embedding_affinities(emb, offs, n_att, delta_d=1.0)
    np.testing.assert_array_equal(mutex_watershed(aff, offs, n_att, threads=2), want, err_msg=ctx)


# ---------------------------------------------------------------------------- hand cases

def test_inherited_mutex_chain_graph():
    # a-b merge (0.9), mutex a-c (0.7) now separates {a,b} and c, so b-c (0.5) is rejected
    labels = mutex_watershed_graph(3, [[0, 1], [1, 2]], [0.9, 0.5], [[0, 2]], [0.7])
    assert_labels_equal(labels, np.array([1, 1, 2]))
    # mutex first (0.95): inherited by the merged cluster
    labels = mutex_watershed_graph(3, [[0, 1], [1, 2]], [0.9, 0.5], [[0, 2]], [0.95])
    assert_labels_equal(labels, np.array([1, 1, 2]))
    # without the mutex everything merges
    labels = mutex_watershed_graph(3, [[0, 1], [1, 2]], [0.9, 0.5], [[0, 2]], [0.1])
    assert_labels_equal(labels, np.array([1, 1, 1]))


def test_inherited_mutex_both_sides():
    # mutex a-d first, then a-b and c-d merge; b-c must see the mutex through both merges
    labels = mutex_watershed_graph(4, [[0, 1], [2, 3], [1, 2]], [0.8, 0.7, 0.6], [[0, 3]], [0.9])
    assert_labels_equal(labels, np.array([1, 1, 2, 2]))
    # longer chain: mutex 0-7, merges build {0..3} and {4..7} pairwise, the bridge 3-4 is rejected
    uvs = [[0, 1], [2, 3], [4, 5], [6, 7], [1, 2], [5, 6], [3, 4]]
    labels = mutex_watershed_graph(8, uvs, [0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.6], [[7, 0]], [0.9])
    assert_labels_equal(labels, np.array([1, 1, 1, 1, 2, 2, 2, 2]))


def test_inherited_mutex_chain_grid():
    # 1D grid a b c: attractive offset +1, repulsive offset +2 (a-c)
    aff = np.array([[0.9, 0.5, 0.0], [0.7, 0.0, 0.0]])
    assert_labels_equal(mutex_watershed(aff, [[1], [2]], 1), np.array([1, 1, 2]))
    aff[1, 0] = 0.4  # mutex after both merges: no effect
    assert_labels_equal(mutex_watershed(aff, [[1], [2]], 1), np.array([1, 1, 1]))


def test_tie_rule_graph_edge_ids():
    # equal attractive priorities: the lower edge id merges first, the other is blocked by mutex 0-2
    labels = mutex_watershed_graph(3, [[0, 1], [1, 2]], [0.5, 0.5], [[0, 2]], [1.0])
    assert_labels_equal(labels, np.array([1, 1, 2]))
    labels = mutex_watershed_graph(3, [[1, 2], [0, 1]], [0.5, 0.5], [[0, 2]], [1.0])
    assert_labels_equal(labels, np.array([1, 2, 2]))
    # attractive and mutex edge tied: attractive ids come first, so they merge
    labels = mutex_watershed_graph(2, [[0, 1]], [0.5], [[0, 1]], [0.5])
    assert_labels_equal(labels, np.array([1, 1]))


def test_tie_rule_grid_channel_then_pixel():
    # 1D a b c; repulsive a-c (1.0); attractive b->c (channel 0, id 1) and b->a (channel 1, id 3+1) tied
    aff = np.array([[0.0, 0.5, 0.0], [0.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert_labels_equal(mutex_watershed(aff, [[1], [-1], [2]], 2), np.array([1, 2, 2]))
    assert_labels_equal(mutex_watershed(aff, [[-1], [1], [2]], 2), np.array([1, 1, 2]))
    # same channel: pixel order decides. offset -1: b->a (id 1) before c->b (id 2)
    aff = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    assert_labels_equal(mutex_watershed(aff, [[-1], [2]], 1), np.array([1, 1, 2]))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_negative_zero_ties_positive_zero(dtype):
    # attractive -0.0 (id 0) vs mutex +0.0 (id 1): tie -> attractive first -> merge
    w, mw = np.array([-0.0], dtype), np.array([0.0], dtype)
    assert_labels_equal(mutex_watershed_graph(2, [[0, 1]], w, [[0, 1]], mw), np.array([1, 1]))
    assert_labels_equal(mutex_watershed_graph(2, [[0, 1]], -w, [[0, 1]], -mw), np.array([1, 1]))
    # two attractive edges tied at +-0: edge id order, so 0-1 merges and 1-2 is blocked by mutex 0-2
    # (if -0.0 sorted below +0.0, the +0.0 edge would go first and the answer would flip)
    w = np.array([-0.0, 0.0], dtype)
    assert_labels_equal(mutex_watershed_graph(3, [[0, 1], [1, 2]], w, [[0, 2]], np.array([1.0], dtype)),
                        np.array([1, 1, 2]))
    w = np.array([-0.0, 0.0], dtype)
    assert_labels_equal(mutex_watershed_graph(3, [[1, 2], [0, 1]], w, [[0, 2]], np.array([1.0], dtype)),
                        np.array([1, 2, 2]))
    # grid: attractive -0.0 vs repulsive +0.0 on the same pixel pair
    aff = np.array([[-0.0, -0.0], [0.0, 0.0]], dtype)
    assert_labels_equal(mutex_watershed(aff, [[1], [1]], 1), np.array([1, 1]))
    # grid: (0->1) = -0.0 has id 0, (1->2) = +0.0 id 1; mutex 0-2 first -> 0-1 merges, 1-2 blocked
    aff = np.array([[-0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype)
    assert_labels_equal(mutex_watershed(aff, [[1], [2]], 1), np.array([1, 1, 2]))


def test_no_wrap_around_2d():
    rows = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    for off in ([0, 1], [0, -1], [0, 2], [0, -2]):
        # in flat index, (y, 2) + 1 = (y + 1, 0): must not be an edge
        assert_labels_equal(mutex_watershed(np.ones((1, 3, 3)), [off], 1), rows if abs(off[1]) == 1 else
                            np.array([[1, 2, 1], [3, 4, 3], [5, 6, 5]]))
    cols = np.array([[1, 2, 3]] * 3)
    assert_labels_equal(mutex_watershed(np.ones((1, 3, 3)), [[1, 0]], 1), cols)
    # diagonal offsets must not wrap either
    assert_labels_equal(mutex_watershed(np.ones((1, 2, 2)), [[1, 1]], 1), np.array([[1, 2], [3, 1]]))
    assert_labels_equal(mutex_watershed(np.ones((1, 2, 2)), [[1, -1]], 1), np.array([[1, 2], [2, 3]]))
    # a repulsive edge that would wrap (0,1)->(1,0) must not separate the attractive diagonal pair
    aff = np.array([[0.5] * 4, [1.0] * 4]).reshape(2, 2, 2)
    assert_labels_equal(mutex_watershed(aff, [[1, -1], [0, 1]], 1), np.array([[1, 2], [2, 3]]))


def test_no_wrap_around_3d():
    # x offset in 3D: rows of x only
    labels = mutex_watershed(np.ones((1, 2, 2, 3)), [[0, 0, 1]], 1)
    assert_labels_equal(labels, np.arange(1, 5).repeat(3).reshape(2, 2, 3))
    # y offset: (z, Y-1, x) + (0, 1, 0) must not reach (z + 1, 0, x)
    labels = mutex_watershed(np.ones((1, 2, 2, 2)), [[0, 1, 0]], 1)
    assert_labels_equal(labels, np.array([[[1, 2], [1, 2]], [[3, 4], [3, 4]]]))
    labels = mutex_watershed(np.ones((1, 2, 2, 2)), [[0, -1, 0]], 1)
    assert_labels_equal(labels, np.array([[[1, 2], [1, 2]], [[3, 4], [3, 4]]]))
    labels = mutex_watershed(np.ones((1, 2, 2, 2)), [[0, 1, -1]], 1)
    assert_labels_equal(labels, np.array([[[1, 2], [2, 3]], [[4, 5], [5, 6]]]))


def test_regular_strides_hand():
    # 1D chain; repulsive +1 edges (priority 1) only from pixels 0, 2, 4 -> cuts after 0, 2, 4
    aff = np.array([[0.5] * 6, [1.0] * 6])
    assert_labels_equal(mutex_watershed(aff, [[1], [1]], 1, strides=2), np.array([1, 2, 2, 3, 3, 4]))
    assert_labels_equal(mutex_watershed(aff, [[1], [1]], 1, strides=(3,)), np.array([1, 2, 2, 2, 3, 3]))
    assert_labels_equal(mutex_watershed(aff, [[1], [1]], 1), np.arange(1, 7))
    # 2D: cuts along x after pixels whose (y, x) are multiples of (2, 3)
    shape = (5, 7)
    aff = np.stack([np.full(shape, 0.5), np.full(shape, 1.0)])
    labels = mutex_watershed(aff, [[0, 1], [0, 1]], 1, strides=(2, 3))
    ys, xs = np.nonzero(labels[:, :-1] != labels[:, 1:])
    cut = np.zeros((5, 6), bool)
    cut[ys, xs] = True
    want = np.zeros((5, 6), bool)
    want[::2, ::3] = True
    np.testing.assert_array_equal(cut, want)
    # strides act on the source pixel: with offset -1 the cut is before pixels at multiples of 3
    labels = mutex_watershed(aff, [[0, -1], [0, -1]], 1, strides=(2, 3))
    cut = labels[:, 1:] != labels[:, :-1]  # cut[y, x - 1]: edge from (y, x) to (y, x - 1)
    want = np.zeros((5, 6), bool)
    want[::2, 2::3] = True
    np.testing.assert_array_equal(cut, want)


def test_strides_do_not_touch_attractive_edges(rng, seed):
    shape = (9, 11)
    offs = np.array([[0, 1], [1, 0], [2, 3], [-3, 1]])
    aff = rng.random((4,) + shape)
    ref = mutex_watershed(aff, offs, 4)
    for kw in (dict(strides=3), dict(strides=(2, 5)), dict(strides=4, randomize_strides=True, seed=7)):
        np.testing.assert_array_equal(mutex_watershed(aff, offs, 4, **kw), ref, err_msg=f"{kw}, seed={seed}")
    # only attractive channels: connected components of all edges
    u, v, *_ = grid_edges_np(aff, offs, 4)
    n = int(np.prod(shape))
    _, comp = scipy.sparse.csgraph.connected_components(
        scipy.sparse.coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)
    assert oracle.same_partition(ref.ravel() + 0, comp + 1)


def test_mask_hand():
    # attractive 4-neighbourhood, masked middle column: left and right columns stay apart
    mask = np.ones((3, 3), bool)
    mask[:, 1] = False
    labels = mutex_watershed(np.ones((2, 3, 3)), [[0, 1], [1, 0]], 2, mask=mask)
    assert_labels_equal(labels, np.array([[1, 0, 2], [1, 0, 2], [1, 0, 2]]))
    # 1D fg bg fg: no merge through the masked pixel
    assert_labels_equal(mutex_watershed(np.ones((1, 3)), [[1]], 1, mask=[True, False, True]), np.array([1, 0, 2]))
    # integer and torch masks behave like boolean ones
    assert_labels_equal(mutex_watershed(np.ones((1, 3)), [[1]], 1, mask=np.array([3, 0, 1])), np.array([1, 0, 2]))
    assert_labels_equal(mutex_watershed(np.ones((1, 3)), [[1]], 1, mask=torch.tensor([True, False, True])),
                        np.array([1, 0, 2]))
    # mask together with mutexes: edges into the masked pixel are dropped
    aff = np.array([[0.5, 0.5, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]])  # attractive +1, repulsive +2
    labels = mutex_watershed(aff, [[1], [2]], 1, mask=[True, True, True, False])
    assert_labels_equal(labels, np.array([1, 1, 2, 0]))


def test_all_weights_tied(rng, seed):
    shape = (6, 7)
    offs = np.array([[0, 1], [1, 0], [0, 3], [3, 0], [2, 2]])
    for value in (0.5, 0.0, -0.0, 1.0):
        aff = np.full((5,) + shape, value)
        # attractive ids precede repulsive ones: every attractive edge merges before any mutex
        labels = mutex_watershed(aff, offs, 2)
        assert_labels_equal(labels, np.ones(shape, np.int64))
        assert_labels_equal(labels, oracle.mws_grid(aff, offs, 2))
    w = np.full(10, 0.25)
    uvs = np.array([[i, i + 1] for i in range(10)]) % 10
    assert_labels_equal(mutex_watershed_graph(10, uvs, w, uvs[::-1], w), np.ones(10, np.int64))


def test_single_pixel():
    assert_labels_equal(mutex_watershed(np.ones((2, 1, 1)), [[0, 1], [1, 0]], 1), np.array([[1]]))
    assert_labels_equal(mutex_watershed(np.ones((1, 1)), [[1]], 0), np.array([1]))
    assert_labels_equal(mutex_watershed_embeddings(np.ones((3, 1, 1, 1)), -np.eye(3, dtype=int), 3),
                        np.array([[[1]]]))
    assert_labels_equal(mutex_watershed_graph(1, [], [], [], []), np.array([1]))


def test_only_attractive_channels(rng, seed):
    shape = (8, 9)
    offs = np.array([[0, 2], [3, -1]])
    aff = rng.random((2,) + shape)
    labels = mutex_watershed(aff, offs, 2)
    u, v, *_ = grid_edges_np(aff, offs, 2)
    n = int(np.prod(shape))
    _, comp = scipy.sparse.csgraph.connected_components(
        scipy.sparse.coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)
    assert oracle.same_partition(labels, comp + 1), f"seed={seed}"
    check_labels(labels, shape)


def test_only_repulsive_channels(rng, seed):
    for shape in ((5,), (4, 6), (2, 3, 4)):
        offs = -np.eye(len(shape), dtype=np.int64)
        aff = rng.random((len(shape),) + shape)
        want = np.arange(1, int(np.prod(shape)) + 1).reshape(shape)
        assert_labels_equal(mutex_watershed(aff, offs, 0), want, f"seed={seed}")
        assert_labels_equal(mutex_watershed_embeddings(aff, offs, 0), want, f"seed={seed}")
    assert_labels_equal(mutex_watershed_graph(3, [], [], [[0, 1], [1, 2]], [0.3, 0.2]), np.array([1, 2, 3]))


def test_labels_first_appearance_order():
    # roots of the union-find do not decide the numbering: first appearance in C order does
    labels = mutex_watershed(np.ones((1, 2, 3)), [[1, -1]], 1)  # (0,1)-(1,0), (0,2)-(1,1)
    assert_labels_equal(labels, np.array([[1, 2, 3], [2, 3, 4]]))
    labels = mutex_watershed(np.ones((1, 2, 3)), [[-1, 1]], 1)  # (1,0)-(0,1), (1,1)-(0,2)
    assert_labels_equal(labels, np.array([[1, 2, 3], [2, 3, 4]]))
    labels = mutex_watershed_graph(5, [[4, 0], [3, 1]], [1.0, 1.0], [], [])
    assert_labels_equal(labels, np.array([1, 2, 3, 2, 1]))


def test_non_contiguous_and_torch_inputs(rng, seed):
    aff = rng.random((3, 10, 12))
    offs = [[0, 1], [1, 0], [2, -3]]
    view = aff[:, ::-1, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(mutex_watershed(view, offs, 2), mutex_watershed(view.copy(), offs, 2))
    np.testing.assert_array_equal(mutex_watershed(torch.from_numpy(aff), offs, 2), mutex_watershed(aff, offs, 2))
    emb = rng.random((5, 6, 2)).transpose(2, 0, 1)
    np.testing.assert_array_equal(mutex_watershed_embeddings(emb, offs, 2),
                                  mutex_watershed_embeddings(emb.copy(), offs, 2))


# ---------------------------------------------------------------------------- randomized strides

def test_random_strides_fraction_and_seeds(seed):
    shape = (64, 64)
    s = seed % 2**63
    keep = observe_random_keep(shape, 2, 1, (2, 2), s)[1]
    frac = keep.mean()
    n = keep.size
    sd = np.sqrt(0.25 * 0.75 / n)
    assert abs(frac - 0.25) < 6 * sd, f"kept fraction {frac} for strides (2, 2); seed={s}"
    keep3 = observe_random_keep(shape, 2, 1, (3, 1), s)[1]
    assert abs(keep3.mean() - 1 / 3) < 6 * np.sqrt(2 / 9 / n), f"kept {keep3.mean()} for (3, 1); seed={s}"
    # deterministic for a seed, different for other seeds
    np.testing.assert_array_equal(observe_random_keep(shape, 2, 1, (2, 2), s)[1], keep)
    other = observe_random_keep(shape, 2, 1, (2, 2), (s + 1) % 2**63)[1]
    assert not np.array_equal(other, keep), f"seeds {s} and {s + 1} keep the same edges"
    # not the regular pattern
    regular = np.zeros(shape, bool)
    regular[::2, ::2] = True
    assert not np.array_equal(keep, regular)


def test_random_strides_deterministic_and_thread_independent(rng, seed):
    shape = (16, 32, 32)
    offs, n_att = default_offsets(3)
    aff = rng.random((len(offs),) + shape).astype(F32)
    kw = dict(strides=(1, 2, 2), randomize_strides=True)
    a = mutex_watershed(aff, offs, n_att, seed=11, threads=1, **kw)
    np.testing.assert_array_equal(a, mutex_watershed(aff, offs, n_att, seed=11, threads=2, **kw),
                                  err_msg=f"seed={seed}")
    np.testing.assert_array_equal(a, mutex_watershed(aff, offs, n_att, seed=11, threads=3, **kw),
                                  err_msg=f"seed={seed}")
    np.testing.assert_array_equal(a, mutex_watershed(aff, offs, n_att, seed=11, **kw), err_msg=f"seed={seed}")
    b = mutex_watershed(aff, offs, n_att, seed=12, threads=2, **kw)
    assert not np.array_equal(a, b), f"seeds 11 and 12 give the same result; seed={seed}"
    emb = rng.random((2,) + shape).astype(F32)
    e1 = mutex_watershed_embeddings(emb, offs, n_att, seed=5, threads=1, **kw)
    np.testing.assert_array_equal(e1, mutex_watershed_embeddings(emb, offs, n_att, seed=5, threads=2, **kw))


# ---------------------------------------------------------------------------- large inputs

@pytest.mark.parametrize("shape,dtype,tied,masked", [
    ((64, 64), F32, False, False),
    ((64, 64), F64, True, True),
    ((64, 64), F32, True, False),
    ((16, 32, 32), F32, False, False),
    ((16, 32, 32), F64, True, True),
])
def test_large_invariants_and_threads(rng, seed, shape, dtype, tied, masked):
    ndim = len(shape)
    offs, n_att = default_offsets(ndim)
    offs = np.concatenate([offs[:n_att], random_offsets(rng, shape, 2), offs[n_att:], random_offsets(rng, shape, 3)])
    n_att += 2
    if tied:
        aff = rng.choice(np.array([0.0, 0.25, 0.5, 0.75, 1.0, -0.0]), (len(offs),) + shape).astype(dtype)
    else:
        # attractive channels in [0.5, 1) so that segments are larger than single pixels
        aff = rng.random((len(offs),) + shape).astype(dtype)
        aff[:n_att] = aff[:n_att] * 0.5 + 0.5
    mask = rng.random(shape) < 0.9 if masked else None
    ctx = describe(seed, shape=shape, dtype=dtype, tied=tied, masked=masked, offsets=offs)
    labels = mutex_watershed(aff, offs, n_att, mask=mask, threads=1)
    check_labels(labels, shape, ctx)
    for t in (2, 3, None):
        np.testing.assert_array_equal(mutex_watershed(aff, offs, n_att, mask=mask, threads=t), labels,
                                      err_msg=f"threads={t}; {ctx}")
    if masked:
        assert (labels[~mask] == 0).all() and (labels[mask] > 0).all(), ctx
    assert 1 < labels.max() < labels.size, ctx
    check_mws_invariants(labels, *grid_edges_np(aff, offs, n_att, mask), ctx=ctx)


def test_large_graph_invariants(rng, seed):
    n = 3000
    uvs = rng.integers(0, n, (4 * n, 2))
    muvs = rng.integers(0, n, (4 * n, 2))
    w = rng.choice([0.1, 0.5, 0.9], 4 * n)
    mw = rng.choice([0.1, 0.5, 0.9], 4 * n)
    labels = mutex_watershed_graph(n, uvs, w, muvs, mw, threads=1)
    ctx = describe(seed)
    np.testing.assert_array_equal(labels, mutex_watershed_graph(n, uvs, w, muvs, mw, threads=2), err_msg=ctx)
    check_labels(labels, (n,), ctx)
    u = np.r_[uvs[:, 0], muvs[:, 0]]
    v = np.r_[uvs[:, 1], muvs[:, 1]]
    check_mws_invariants(labels, u, v, np.r_[w, mw], np.arange(8 * n), np.r_[np.ones(4 * n, bool),
                                                                              np.zeros(4 * n, bool)], ctx)


def test_medium_grid_vs_oracle(rng, seed):
    shape = (20, 24)
    offs = np.array([[0, -1], [-1, 0], [0, -3], [-3, 0], [-2, 5], [0, -9]])
    aff = rng.random((6,) + shape).astype(F32)
    aff = np.round(aff * 8) / 8  # ties
    got = mutex_watershed(aff, offs, 2, threads=2)
    assert_labels_equal(got, oracle.mws_grid(aff, offs, 2), describe(seed))


# ---------------------------------------------------------------------------- embeddings / affinities

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("i", range(6))
def test_embedding_affinities_vs_reference_and_op(rng, seed, dtype, i):
    ndim = 2 + i % 2
    shape = tuple(int(s) for s in rng.integers(1, 9, ndim))
    d = int(rng.integers(1, 5))
    emb = (rng.standard_normal((d,) + shape) * rng.choice([0.3, 1.0, 3.0])).astype(dtype)
    # the reference slices need |offset| <= size (see test_reference_offsets_larger_than_grid)
    offs = np.array([[int(rng.integers(-s, s + 1)) for s in shape] for _ in range(5)])
    offs = offs[offs.any(axis=1)]
    if len(offs) == 0:
        offs = -np.eye(ndim, dtype=np.int64)
    n_att = int(rng.integers(0, len(offs) + 1))
    delta_d = float(rng.choice([0.5, 1.0, 2.0]))
    ctx = describe(seed, shape=shape, offsets=offs, n_attractive=n_att, delta_d=delta_d)
    got = embedding_affinities(emb, offs, n_att, delta_d=delta_d)
    assert got.dtype == dtype and got.shape == (len(offs),) + shape, ctx
    ref = reference.embedding_affinities(torch.from_numpy(emb), offs.tolist(), n_att, delta_d).numpy()
    atol = 1e-6 if dtype == F32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg=ctx)
    assert ((got >= 0) & (got <= 1)).all(), ctx
    op = spoco.ops.embedding_affinities(torch.from_numpy(emb), offs.ravel().tolist(), ndim, n_att, delta_d)
    assert op.dtype == torch.from_numpy(emb).dtype, ctx
    np.testing.assert_array_equal(op.numpy(), got, err_msg=ctx)
    np.testing.assert_array_equal(embedding_affinities(emb, offs, n_att, delta_d=delta_d, threads=1), got)


def test_embedding_affinities_values_hand():
    # distances 0, 1, 4 with delta_d = 1 (2 delta_d = 2): w = 1 - max((2 - d)/2, 0)^2 = 0, 0.75, 1
    emb = np.array([[[0.0, 0.0, 1.0, 5.0]]])
    aff = embedding_affinities(emb, [[0, 1], [0, 1]], 1, delta_d=1.0)
    np.testing.assert_allclose(aff[0, 0], [1.0, 0.25, 0.0, 0.0])  # attractive 1 - w; last leaves the grid
    np.testing.assert_allclose(aff[1, 0], [0.0, 0.75, 1.0, 0.0])  # repulsive w


def test_embedding_affinities_opcheck(rng):
    emb = torch.from_numpy(rng.standard_normal((3, 5, 6)).astype(F32))
    offs = [0, -1, -1, 0, 0, -3, 2, 2]
    torch.library.opcheck(spoco.ops.embedding_affinities, (emb, offs, 2, 2, 2.0))
    emb3 = torch.from_numpy(rng.standard_normal((2, 3, 4, 5)))
    torch.library.opcheck(spoco.ops.embedding_affinities, (emb3, [0, 0, -1, 0, -1, 0, -2, 0, 0], 3, 1, 1.5))


def test_reference_offsets_larger_than_grid():
    """spoco.ops.reference.embedding_affinities: an offset beyond the grid gives a zero channel
    (its docstring: 0 where p + offsets[c] leaves the grid), like the core."""
    emb = torch.arange(6.0).reshape(1, 2, 3)
    offs = [[0, 1], [0, 5], [-4, 0]]
    ref = reference.embedding_affinities(emb, offs, 1, 2.0)
    np.testing.assert_array_equal(ref[1:].numpy(), 0)
    np.testing.assert_allclose(ref.numpy(), embedding_affinities(emb.numpy(), offs, 1, delta_d=2.0), atol=1e-6)


def test_embeddings_large_vs_grid(rng, seed):
    shape = (16, 32, 32)
    offs, n_att = default_offsets(3)
    emb = rng.standard_normal((4,) + shape).astype(F32)
    aff = embedding_affinities(emb, offs, n_att, delta_d=1.5)
    for kw in (dict(), dict(strides=(1, 3, 3)), dict(strides=(2, 2, 2), randomize_strides=True, seed=3),
               dict(mask=rng.random(shape) < 0.8)):
        a = mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.5, threads=2, **kw)
        np.testing.assert_array_equal(a, mutex_watershed(aff, offs, n_att, threads=1, **kw),
                                      err_msg=f"{kw}; seed={seed}")


# ---------------------------------------------------------------------------- cluster

def test_cluster_default_offsets_numpy_and_torch(rng, seed):
    for shape in ((20, 24), (6, 10, 12)):
        emb = rng.standard_normal((3,) + shape).astype(F32)
        offs, n_att = default_offsets(len(shape))
        want = mutex_watershed_embeddings(emb, offs, n_att, delta_d=0.7)
        got = cluster(emb, delta_d=0.7)
        check_labels(got, shape)
        np.testing.assert_array_equal(got, want, err_msg=f"seed={seed}")
        np.testing.assert_array_equal(cluster(torch.from_numpy(emb), delta_d=0.7), want, err_msg=f"seed={seed}")
        np.testing.assert_array_equal(cluster(torch.from_numpy(emb).half(), delta_d=0.7),
                                      cluster(emb.astype(np.float16).astype(F32), delta_d=0.7))
    assert default_offsets(2)[0].shape == (8, 2) and default_offsets(2)[1] == 2
    assert default_offsets(3)[0].shape == (12, 3) and default_offsets(3)[1] == 3


def test_cluster_bfloat16_cpu_tensor(rng):
    """Half-precision tensors are clustered as float32 (float16 works through numpy; the CUDA
    path converts bfloat16 too), so a bfloat16 CPU tensor must work the same way."""
    emb = torch.from_numpy(rng.standard_normal((2, 8, 9)).astype(F32)).bfloat16()
    np.testing.assert_array_equal(cluster(emb), cluster(emb.float()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cluster_cuda_matches_cpu(rng, seed):
    for shape in ((40, 48), (8, 24, 24)):
        emb = torch.from_numpy(rng.standard_normal((3,) + shape).astype(F32))
        offs, n_att = default_offsets(len(shape))
        flat = offs.ravel().tolist()
        np.testing.assert_array_equal(
            spoco.ops.embedding_affinities(emb.cuda(), flat, len(shape), n_att, 1.0).cpu().numpy(),
            spoco.ops.embedding_affinities(emb, flat, len(shape), n_att, 1.0).numpy(), err_msg=f"seed={seed}")
        np.testing.assert_array_equal(cluster(emb.cuda(), delta_d=1.0), cluster(emb, delta_d=1.0),
                                      err_msg=f"seed={seed}")


def test_cluster_passes_options(rng, seed):
    shape = (12, 14)
    emb = rng.standard_normal((2,) + shape)
    offs = [[0, 1], [1, 0], [0, 4], [4, 0]]
    mask = rng.random(shape) < 0.7
    for kw in (dict(offsets=offs, n_attractive=2), dict(offsets=offs, n_attractive=2, mask=mask),
               dict(strides=(2, 3)), dict(strides=2, randomize_strides=True, seed=9), dict(mask=mask, threads=1)):
        mws_kw = dict(kw)
        o = mws_kw.pop("offsets", None)
        n = mws_kw.pop("n_attractive", None)
        if o is None:
            o, n = default_offsets(2)
        np.testing.assert_array_equal(cluster(emb, delta_d=1.0, **kw),
                                      mutex_watershed_embeddings(emb, o, n, delta_d=1.0, **mws_kw),
                                      err_msg=f"{kw}; seed={seed}")


def test_cluster_min_size(rng, seed):
    # piecewise-constant embeddings: 5x5 blocks with random ids plus isolated single pixels
    ids = np.kron(rng.integers(0, 6, (6, 6)), np.ones((5, 5), np.int64))
    ys, xs = rng.integers(0, 30, 20), rng.integers(0, 30, 20)
    ids[ys, xs] = 100 + np.arange(20)
    emb = np.stack([ids * 3.0, np.zeros(ids.shape)]).astype(F32)
    emb += rng.standard_normal(emb.shape).astype(F32) * 0.01
    base = cluster(emb, delta_d=0.5)
    sizes = np.bincount(base.ravel())
    assert (sizes[1:] < 5).any() and (sizes[1:] >= 5).any(), f"need small and large segments; seed={seed}"
    for min_size in (0, 1):
        np.testing.assert_array_equal(cluster(emb, delta_d=0.5, min_size=min_size), base)
    got = cluster(emb, delta_d=0.5, min_size=5)
    check_labels(got, base.shape)
    small = sizes[base] < 5
    assert (got[small] == 0).all() and (got[~small] > 0).all(), f"seed={seed}"
    assert oracle.same_partition(np.where(small, 0, base), got), f"seed={seed}"
    np.testing.assert_array_equal(got, remove_small_segments(base, 5))
    # all segments small -> all zero; min_size above the image size
    assert (cluster(emb, delta_d=0.5, min_size=10**6) == 0).all()


def test_remove_small_segments_hand():
    labels = np.array([[1, 1, 2], [3, 3, 3], [0, 4, 4]])
    np.testing.assert_array_equal(remove_small_segments(labels, 2), [[1, 1, 0], [2, 2, 2], [0, 3, 3]])
    np.testing.assert_array_equal(remove_small_segments(labels, 3), [[0, 0, 0], [1, 1, 1], [0, 0, 0]])


# ---------------------------------------------------------------------------- bad inputs

AFF = np.random.default_rng(0).random((2, 4, 5)).astype(F32)
EMB = np.random.default_rng(1).random((3, 4, 5)).astype(F32)
OFFS = [[0, 1], [2, 0]]
E2 = np.zeros((0, 2), dtype=np.int64)


def _mws(aff=AFF, offsets=OFFS, n_attractive=1, **kw):
    return lambda: mutex_watershed(aff, offsets, n_attractive, **kw)


def _mwse(emb=EMB, offsets=OFFS, n_attractive=1, **kw):
    return lambda: mutex_watershed_embeddings(emb, offsets, n_attractive, **kw)


def _affs(emb=EMB, offsets=OFFS, n_attractive=1, **kw):
    return lambda: embedding_affinities(emb, offsets, n_attractive, **kw)


def _cl(emb=EMB, **kw):
    return lambda: cluster(emb, **kw)


def _graph(n=3, uvs=((0, 1), (1, 2)), w=(0.5, 0.5), muvs=((0, 2),), mw=(0.7,), **kw):
    return lambda: mutex_watershed_graph(n, np.asarray(uvs), np.asarray(w), np.asarray(muvs), np.asarray(mw), **kw)


BAD_INPUTS = {
    # offsets
    "grid_offset_too_long": (_mws(offsets=[[0, 1, 0], [2, 0, 0]]), ValueError, "offsets"),
    "grid_offset_too_short": (_mws(offsets=[[1], [2]]), ValueError, "offsets"),
    "grid_zero_offset": (_mws(offsets=[[0, 1], [0, 0]]), ValueError, "offsets"),
    "grid_float_offset": (_mws(offsets=[[0, 1.5], [2, 0]]), TypeError, "offsets"),
    "grid_ragged_offsets": (_mws(offsets=[[0, 1], [2]]), (TypeError, ValueError), "offsets"),
    "grid_no_offsets": (_mws(offsets=[]), ValueError, "offsets"),
    "grid_1d_offsets": (_mws(offsets=[1, 2]), ValueError, "offsets"),
    # affinities
    "grid_int_affinities": (_mws(aff=np.ones((2, 4, 5), np.int64)), TypeError, "affinities"),
    "grid_bool_affinities": (_mws(aff=np.ones((2, 4, 5), bool)), TypeError, "affinities"),
    "grid_complex_affinities": (_mws(aff=AFF.astype(np.complex64)), TypeError, "affinities"),
    "grid_channels_mismatch": (_mws(aff=np.ones((3, 4, 5), F32)), ValueError, "affinities"),
    "grid_nan": (_mws(aff=np.where(np.arange(20).reshape(4, 5) == 7, np.nan, AFF)), ValueError, "affinities"),
    "grid_inf": (_mws(aff=np.where(np.arange(20).reshape(4, 5) == 3, np.inf, AFF)), ValueError, "affinities"),
    "grid_neg_inf": (_mws(aff=np.where(np.arange(20).reshape(4, 5) == 3, -np.inf, AFF)), ValueError,
                     "affinities"),
    "grid_no_spatial_axes": (_mws(aff=np.ones(2, F32), offsets=[[1], [2]]), ValueError, "affinities"),
    "grid_empty": (_mws(aff=np.ones((2, 0, 5), F32)), ValueError, "affinities"),
    "grid_empty_channels": (_mws(aff=np.ones((0, 4, 5), F32)), ValueError, "affinities|offsets"),
    "grid_4_spatial_axes": (_mws(aff=np.ones((1, 2, 2, 2, 2), F32), offsets=[[0, 0, 0, 1]]), ValueError,
                            "dimensions"),
    # mask
    "grid_mask_shape": (_mws(mask=np.ones((5, 4), bool)), ValueError, "mask"),
    "grid_mask_with_channel_axis": (_mws(mask=np.ones((1, 4, 5), bool)), ValueError, "mask"),
    "grid_mask_float": (_mws(mask=np.ones((4, 5))), TypeError, "mask"),
    # n_attractive
    "grid_n_attractive_negative": (_mws(n_attractive=-1), ValueError, "n_attractive"),
    "grid_n_attractive_too_large": (_mws(n_attractive=3), ValueError, "n_attractive"),
    "grid_n_attractive_none": (_mws(n_attractive=None), ValueError, "n_attractive"),
    "grid_n_attractive_fractional": (_mws(n_attractive=1.5), (TypeError, ValueError), "n_attractive"),
    "grid_n_attractive_string": (_mws(n_attractive="a"), (TypeError, ValueError), "n_attractive"),
    # strides, seed, threads
    "grid_strides_zero": (_mws(strides=0), ValueError, "strides"),
    "grid_strides_negative": (_mws(strides=(1, -2)), ValueError, "strides"),
    "grid_strides_wrong_length": (_mws(strides=(1, 2, 3)), ValueError, "strides"),
    "grid_strides_too_short": (_mws(strides=(2,)), ValueError, "strides"),
    "grid_strides_float": (_mws(strides=2.0), (TypeError, ValueError), "strides"),
    "grid_strides_float_tuple": (_mws(strides=(2.0, 1.0)), (TypeError, ValueError), "strides"),
    "grid_strides_random_zero": (_mws(strides=(0, 2), randomize_strides=True), ValueError, "strides"),
    "grid_seed_negative": (_mws(seed=-1), ValueError, "seed"),
    "grid_seed_float": (_mws(seed=1.5), ValueError, "seed"),
    "grid_threads_zero": (_mws(threads=0), ValueError, "threads"),
    "grid_threads_float": (_mws(threads=1.5), ValueError, "threads"),
    # embedding form
    "emb_int": (_mwse(emb=np.ones((3, 4, 5), np.int32)), TypeError, "emb"),
    "emb_complex": (_mwse(emb=EMB.astype(np.complex128)), TypeError, "emb"),
    "emb_nan": (_mwse(emb=np.where(np.arange(20).reshape(4, 5) == 0, np.nan, EMB)), ValueError, "emb"),
    "emb_inf": (_mwse(emb=np.where(np.arange(20).reshape(4, 5) == 0, np.inf, EMB)), ValueError, "emb"),
    "emb_empty_channels": (_mwse(emb=np.ones((0, 4, 5), F32)), ValueError, "emb"),
    "emb_empty_spatial": (_mwse(emb=np.ones((3, 4, 0), F32)), ValueError, "emb"),
    "emb_no_spatial_axes": (_mwse(emb=np.ones(3, F32), offsets=[[1]]), ValueError, "emb"),
    "emb_offset_length": (_mwse(offsets=[[0, 1, 1]]), ValueError, "offsets"),
    "emb_zero_offset": (_mwse(offsets=[[0, 0]]), ValueError, "offsets"),
    "emb_n_attractive": (_mwse(n_attractive=3), ValueError, "n_attractive"),
    "emb_delta_d_zero": (_mwse(delta_d=0), ValueError, "delta_d"),
    "emb_delta_d_negative": (_mwse(delta_d=-1.0), ValueError, "delta_d"),
    "emb_delta_d_nan": (_mwse(delta_d=float("nan")), ValueError, "delta_d"),
    "emb_delta_d_inf": (_mwse(delta_d=float("inf")), ValueError, "delta_d"),
    "emb_mask_shape": (_mwse(mask=np.ones((4, 4), bool)), ValueError, "mask"),
    "emb_strides": (_mwse(strides=(0, 1)), ValueError, "strides"),
    "affs_int": (_affs(emb=np.ones((3, 4, 5), np.int64)), TypeError, "emb"),
    "affs_nan": (_affs(emb=np.full((3, 4, 5), np.nan)), ValueError, "emb"),
    "affs_offsets": (_affs(offsets=[[1]]), ValueError, "offsets"),
    "affs_n_attractive": (_affs(n_attractive=-2), ValueError, "n_attractive"),
    "affs_delta_d": (_affs(delta_d=0.0), ValueError, "delta_d"),
    # cluster
    "cluster_method": (_cl(method="watershed"), ValueError, "method"),
    "cluster_method_case": (_cl(method="MWS"), ValueError, "method"),
    "cluster_min_size_negative": (_cl(min_size=-1), ValueError, "min_size"),
    "cluster_min_size_float": (_cl(min_size=2.5), ValueError, "min_size"),
    "cluster_delta_d": (_cl(delta_d=-2.0), ValueError, "delta_d"),
    "cluster_no_spatial_axes": (_cl(emb=np.ones(3, F32)), ValueError, "emb"),
    "cluster_empty": (_cl(emb=np.ones((2, 0, 4), F32)), ValueError, "emb"),
    "cluster_int": (_cl(emb=np.ones((2, 3, 4), np.int64)), TypeError, "emb"),
    "cluster_complex": (_cl(emb=np.ones((2, 3, 4), np.complex64)), TypeError, "emb"),
    "cluster_nan_torch": (_cl(emb=torch.full((2, 3, 4), float("nan"))), ValueError, "emb"),
    "cluster_int_torch": (_cl(emb=torch.ones((2, 3, 4), dtype=torch.int32)), TypeError, "emb"),
    "cluster_mask_shape": (_cl(mask=np.ones((5, 4), bool)), ValueError, "mask"),
    "cluster_offsets": (_cl(offsets=[[1, 0, 0]], n_attractive=1), ValueError, "offsets"),
    "cluster_n_attractive": (_cl(offsets=[[1, 0]], n_attractive=2), ValueError, "n_attractive"),
    "cluster_n_attractive_missing": (_cl(offsets=[[1, 0]]), ValueError, "n_attractive"),
    "cluster_strides": (_cl(strides=-1), ValueError, "strides"),
    # graph
    "graph_n_nodes_negative": (_graph(n=-1), ValueError, "n_nodes"),
    "graph_n_nodes_float": (_graph(n=3.0), ValueError, "n_nodes"),
    "graph_uvs_out_of_range": (_graph(uvs=((0, 1), (1, 3))), ValueError, "uvs"),
    "graph_uvs_negative": (_graph(uvs=((0, 1), (-1, 2))), ValueError, "uvs"),
    "graph_mutex_uvs_out_of_range": (_graph(muvs=((0, 3),)), ValueError, "mutex_uvs"),
    "graph_mutex_uvs_negative": (_graph(muvs=((-3, 0),)), ValueError, "mutex_uvs"),
    "graph_uvs_shape": (_graph(uvs=((0, 1, 2), (1, 2, 0))), ValueError, "uvs"),
    "graph_uvs_1d": (_graph(uvs=(0, 1, 1, 2)), ValueError, "uvs"),
    "graph_uvs_float": (_graph(uvs=((0.0, 1.0), (1.0, 2.0))), TypeError, "uvs"),
    "graph_mutex_uvs_shape": (_graph(muvs=((0,),)), ValueError, "mutex_uvs"),
    "graph_weights_too_short": (_graph(w=(0.5,)), ValueError, "^weights"),
    "graph_weights_too_long": (_graph(w=(0.5, 0.5, 0.5)), ValueError, "^weights"),
    "graph_weights_2d": (_graph(w=((0.5,), (0.5,))), ValueError, "^weights"),
    "graph_weights_int": (_graph(w=(1, 2)), TypeError, "^weights"),
    "graph_weights_nan": (_graph(w=(0.5, float("nan"))), ValueError, "^weights"),
    "graph_mutex_weights_mismatch": (_graph(mw=(0.5, 0.5)), ValueError, "mutex_weights"),
    "graph_mutex_weights_inf": (_graph(mw=(float("inf"),)), ValueError, "mutex_weights"),
    "graph_weights_without_edges": (_graph(uvs=E2, w=(0.5,)), ValueError, "^weights"),
    "graph_edges_on_empty_graph": (_graph(n=0), ValueError, "uvs"),
    "graph_threads": (_graph(threads=-1), ValueError, "threads"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs(name):
    fn, exc, match = BAD_INPUTS[name]
    with pytest.raises(exc, match=match):
        fn()


def test_op_bad_inputs():
    op = spoco.ops.embedding_affinities
    with pytest.raises(TypeError, match="emb"):
        op(torch.ones((2, 3, 3), dtype=torch.int64), [0, 1], 2, 1, 1.0)
    with pytest.raises(ValueError, match="emb"):
        op(torch.ones((2, 3, 3)), [0, 0, 1], 3, 1, 1.0)
    with pytest.raises(ValueError, match="offsets"):
        op(torch.ones((2, 3, 3)), [0, 1, 1], 2, 1, 1.0)
    with pytest.raises(ValueError, match="offsets"):
        op(torch.ones((2, 3, 3)), [], 2, 0, 1.0)


# ---------------------------------------------------------------------------- degenerate inputs

@pytest.fixture(scope="session")
def degenerate_run():
    """Run every degenerate case in child processes (a crash ends a child; the next
    child resumes after the crashed case). Returns ({name: 'ok' | 'crashed' | 'error'}, log)."""
    names = list(mws_degenerate.CASES)
    status, log = {}, []
    while names:
        proc = subprocess.run([sys.executable, os.path.join(HELPERS_DIR, "mws_degenerate.py"), *names],
                              capture_output=True, text=True, timeout=300, cwd=HELPERS_DIR)
        started = [line[6:] for line in proc.stdout.splitlines() if line.startswith("START ")]
        status.update({line[3:]: "ok" for line in proc.stdout.splitlines() if line.startswith("OK ")})
        if proc.returncode == 0:
            break
        last = started[-1] if started else names[0]
        status[last] = "crashed" if proc.returncode < 0 else "error"
        err = [line for line in proc.stderr.splitlines() if not line.startswith(("enum ", "same ", "sort ", "labels "))]
        log.append(f"{last}: exit code {proc.returncode}; " + "\n".join(err[-5:]))
        names = names[names.index(last) + 1:]
    return status, log


def test_degenerate_inputs_do_not_crash(degenerate_run):
    status, log = degenerate_run
    bad = [n for n in mws_degenerate.CASES if status.get(n) != "ok"]
    assert not bad, ("degenerate inputs that killed the interpreter (exit -11 = SIGSEGV) or raised; "
                     "reproduce one with: python tests/_helpers/mws_degenerate.py NAME\n" + "\n".join(log))


@pytest.mark.parametrize("name", list(mws_degenerate.CASES))
def test_degenerate_inputs(name, degenerate_run):
    status, _ = degenerate_run
    if status.get(name) == "crashed":
        pytest.skip("crashes the interpreter (see test_degenerate_inputs_do_not_crash)")
    fn, expected = mws_degenerate.CASES[name]
    got = fn()
    assert np.asarray(got).shape == np.asarray(expected).shape, name
    np.testing.assert_array_equal(got, expected, err_msg=name)
    if np.issubdtype(np.asarray(got).dtype, np.integer):
        check_labels(got, np.asarray(expected).shape, name)


# ------------------------------------------------------------ the parallel loop on stripes

def striped_grid_case(rng):
    """A grid large enough (>= 4096 pixels) and offsets short enough along its longest
    axis for the loop to run on 2+ stripes (mutex_watershed_parallel.hpp), with ties,
    saturated or all-equal weights, masks and strides."""
    ndim = int(rng.integers(2, 4))
    shape = (tuple(int(s) for s in rng.integers(64, 160, 2)) if ndim == 2 else
             (int(rng.integers(4, 12)),) + tuple(int(s) for s in rng.integers(24, 56, 2)))
    n_channels = int(rng.integers(2, 9))
    reach = int(rng.integers(1, 6))
    offs = [rng.integers(-1, 2, ndim) for _ in range(ndim)]
    offs += [rng.integers(-reach, reach + 1, ndim) for _ in range(n_channels)]
    offs = np.array([o for o in offs if o.any()] or [np.eye(ndim, dtype=np.int64)[0]], dtype=np.int64)
    n_att = int(rng.integers(1, len(offs) + 1))
    regime = ["continuous", "tied", "saturated", "all_equal"][int(rng.integers(4))]
    size = (len(offs),) + shape
    if regime == "continuous":
        aff = rng.random(size)
    elif regime == "tied":
        aff = rng.choice([0.0, 0.5, 1.0], size)
    elif regime == "saturated":
        aff = (rng.random(size) < 0.8).astype(F64)
    else:
        aff = np.full(size, 0.5)
    kw = {}
    if rng.random() < 0.3:
        kw["mask"] = rng.random(shape) < 0.8
    if rng.random() < 0.3:
        kw["strides"] = int(rng.integers(2, 4))
    return aff.astype(F32), offs, n_att, regime, kw


@pytest.mark.parametrize("i", range(60))
def test_parallel_stripes_equal_sequential(rng, seed, i):
    """Grids that the loop splits into stripes: bit-identical labels for 2, 3, 4 and 8
    threads (cross edges, spanning clusters, deferred edges, many batches); every
    6th case against the oracle too."""
    aff, offs, n_att, regime, kw = striped_grid_case(rng)
    ctx = describe(seed, shape=aff.shape[1:], offsets=offs, n_attractive=n_att, regime=regime, **kw)
    want = mutex_watershed(aff, offs, n_att, threads=1, **kw)
    for t in (2, 3, 4, 8):
        np.testing.assert_array_equal(mutex_watershed(aff, offs, n_att, threads=t, **kw), want,
                                      err_msg=f"threads={t}; {ctx}")
    if i % 6 == 0:
        assert_labels_equal(want, oracle.mws_grid(aff, offs, n_att, kw.get("strides"), kw.get("mask")), ctx)


@pytest.fixture
def handover_after():
    """Set the batch after which every loop on stripes hands over to the sequential loop
    (``spoco._core._set_mws_handover_after``); restored to automatic afterwards."""
    yield spoco._core._set_mws_handover_after
    spoco._core._set_mws_handover_after(0)


@pytest.mark.parametrize("i", range(30))
def test_handover_to_sequential_loop_is_exact(rng, seed, i, handover_after):
    """The loop on stripes stopped after batch k (what it does when its threads do not get
    their cores) and finished by the sequential loop: the labels of 1 thread, for early,
    middle and late k (past the last batch: no hand-over), 2, 3 and 4 threads."""
    aff, offs, n_att, regime, kw = striped_grid_case(rng)
    ctx = describe(seed, shape=aff.shape[1:], offsets=offs, n_attractive=n_att, regime=regime, **kw)
    want = mutex_watershed(aff, offs, n_att, threads=1, **kw)
    for k in (1, 2, int(rng.integers(3, 40)), 10**6):
        handover_after(k)
        for t in (2, 3, 4):
            np.testing.assert_array_equal(mutex_watershed(aff, offs, n_att, threads=t, **kw), want,
                                          err_msg=f"hand-over after batch {k}, threads={t}; {ctx}")


def test_handover_on_embeddings(rng, seed, handover_after):
    """Hand-over inside the embeddings → labels path (Eq. 12 weights computed in C++),
    2D and 3D synthetic embeddings."""
    from spoco.data.synthetic import random_instances, synthetic_embeddings
    for shape in ((200, 180), (8, 120, 70)):
        labels = random_instances(shape, 25, rng=int(rng.integers(2**31)))
        emb = np.ascontiguousarray(synthetic_embeddings(labels, 8, delta_d=1.5, rng=int(rng.integers(2**31))),
                                   dtype=F32)
        offs, n_att = default_offsets(len(shape))
        want = mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.5, threads=1)
        for k in (1, 5, 17):
            handover_after(k)
            before = spoco._core._mws_handovers()
            np.testing.assert_array_equal(mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.5, threads=2), want,
                                          err_msg=f"hand-over after batch {k}; {describe(seed, shape=shape)}")
            assert spoco._core._mws_handovers() == before + 1, f"no hand-over after batch {k}"


def test_handover_beside_a_busy_process():
    """Two threads while another process keeps a core busy: whether the loop hands over
    (its threads' CPU time below 3/4 of the wall time) depends on the machine's cores and
    load; the labels must not."""
    offs, n_att = default_offsets(2)
    aff = np.random.default_rng(1).random((len(offs), 400, 400)).astype(F32)
    want = mutex_watershed(aff, offs, n_att, threads=1)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(3):
            np.testing.assert_array_equal(mutex_watershed(aff, offs, n_att, threads=2), want)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("i", range(6))
def test_parallel_stripes_on_synthetic_embeddings(rng, seed, i):
    """The realistic case: Eq. 12 weights of noisy synthetic embeddings of touching
    objects and background, default offsets (27 pixels), 2D and 3D: 2, 3 and 4 threads
    give the labels of 1 thread."""
    from spoco.data.synthetic import random_instances, synthetic_embeddings
    shape = (int(rng.integers(160, 240)), int(rng.integers(160, 240))) if i % 2 == 0 else \
        (int(rng.integers(6, 12)), int(rng.integers(112, 140)), int(rng.integers(60, 90)))
    labels = random_instances(shape, int(rng.integers(10, 40)), rng=int(rng.integers(2**31)))
    emb = np.ascontiguousarray(synthetic_embeddings(labels, 8, delta_d=1.5, rng=int(rng.integers(2**31))),
                               dtype=F32)
    offs, n_att = default_offsets(len(shape))
    ctx = describe(seed, shape=shape)
    want = mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.5, threads=1)
    for t in (2, 3, 4):
        np.testing.assert_array_equal(mutex_watershed_embeddings(emb, offs, n_att, delta_d=1.5, threads=t), want,
                                      err_msg=f"threads={t}; {ctx}")


def test_parallel_loop_without_its_threads():
    """When OpenMP cannot give the loop a thread per stripe (a thread limit, nesting),
    it runs the sequential loop: the same labels, no hang."""
    code = (
        "import numpy as np; from spoco.clustering import default_offsets, mutex_watershed\n"
        "rng = np.random.default_rng(0); offs, na = default_offsets(2)\n"
        "aff = rng.random((len(offs), 160, 160)).astype(np.float32)\n"
        "print(int(np.array_equal(mutex_watershed(aff, offs, na, threads=4), mutex_watershed(aff, offs, na, threads=1))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("threads", [1, 2])
def test_huge_page_storage_changes_nothing(rng, seed, monkeypatch, threads):
    """Arrays of 2 MiB or more (union-find, mutex lists, chunk blocks) are advised to use
    transparent huge pages unless SPOCO_HUGE_PAGES=0: only speed may differ, never labels.
    Sizes chosen so that both kinds of storage pass the 2 MiB mark (graph: the union-find
    of 600 k nodes; grid: the list headers of 300x300 nodes)."""
    ctx = f"seed {seed}, threads {threads}"
    n_nodes, n_edges = 600_000, 60_000
    uvs = rng.integers(0, 3000, (n_edges, 2))  # few nodes carry edges: a small oracle graph
    muvs = rng.integers(0, 3000, (n_edges, 2))
    w = rng.integers(0, 50, n_edges).astype(F32) / 50  # ties
    mw = rng.integers(0, 50, n_edges).astype(F32) / 50
    offs, na = default_offsets(2)
    aff = rng.random((len(offs), 300, 300)).astype(F32)
    aff[:, ::3] = 1.0  # saturated rows, as Eq. 12 gives
    results = {}
    for value in ("0", "1"):
        monkeypatch.setenv("SPOCO_HUGE_PAGES", value)
        results[value] = (mutex_watershed_graph(n_nodes, uvs, w, muvs, mw, threads=threads),
                          mutex_watershed(aff, offs, na, threads=threads))
    np.testing.assert_array_equal(results["0"][0], results["1"][0], err_msg=ctx)
    np.testing.assert_array_equal(results["0"][1], results["1"][1], err_msg=ctx)
    ref = oracle.mws_graph(3000, uvs, w, muvs, mw)
    assert oracle.same_partition(results["1"][0][:3000], ref), ctx
