"""Degenerate inputs of the mutex watershed that must not crash.

``CASES`` maps a name to ``(thunk, expected)``. test_mws.py runs every thunk in a
child process first (``python tests/_helpers/mws_degenerate.py``), so that a segfault is
reported as a failed test naming the case instead of killing the test session,
and then checks the results in-process for the cases that did not crash.
"""
from __future__ import annotations

import sys

import numpy as np

from spoco.clustering import (cluster, embedding_affinities, mutex_watershed, mutex_watershed_embeddings,
                              mutex_watershed_graph)

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max
ROWS_3x3 = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]])
E2 = np.zeros((0, 2), dtype=np.int64)


def _ones(*shape):
    return np.ones(shape, dtype=np.float32)


def _rows_with_huge(off, **kw):
    # attractive (0, 1) merges rows; the second (repulsive) channel has no edges at all
    return lambda: mutex_watershed(_ones(2, 3, 3), np.array([[0, 1], off], dtype=np.int64), 1, **kw)


def _emb_rows_with_huge(off, **kw):
    emb = np.zeros((2, 3, 3))
    return lambda: mutex_watershed_embeddings(emb, np.array([[0, 1], off], dtype=np.int64), 1, **kw)


def _affinities_with_huge(off, n_attractive=1):
    # channel 1 leaves the grid everywhere: 0 (the repulsive w of a self-edge is 0 too; the
    # attractive 1 - w of a self-edge would be 1)
    emb = np.arange(9.0).reshape(1, 3, 3)
    return lambda: embedding_affinities(emb, np.array([[0, 1], off], dtype=np.int64), n_attractive)[1]


CASES = {
    "grid_1x1": (lambda: mutex_watershed(_ones(1, 1, 1), [[0, 1]], 1), np.array([[1]])),
    "grid_1x1_repulsive": (lambda: mutex_watershed(_ones(2, 1, 1), [[1, 0], [0, 1]], 0), np.array([[1]])),
    "grid_1d_single_pixel": (lambda: mutex_watershed(_ones(1, 1), [[1]], 1), np.array([1])),
    "grid_3d_single_pixel": (lambda: mutex_watershed(_ones(3, 1, 1, 1), -np.eye(3, dtype=int), 3),
                             np.array([[[1]]])),
    "grid_1x1_mask_false": (lambda: mutex_watershed(_ones(1, 1, 1), [[0, 1]], 1, mask=np.zeros((1, 1), bool)),
                            np.array([[0]])),
    "grid_offsets_larger_than_grid": (
        lambda: mutex_watershed(_ones(3, 2, 3), [[5, 0], [0, -7], [-3, 4]], 2),
        np.array([[1, 2, 3], [4, 5, 6]])),
    "grid_offsets_larger_than_grid_masked": (
        lambda: mutex_watershed(_ones(3, 2, 3), [[5, 0], [0, -7], [-3, 4]], 2, mask=np.ones((2, 3), bool)),
        np.array([[1, 2, 3], [4, 5, 6]])),
    "grid_offsets_larger_than_grid_strided": (
        lambda: mutex_watershed(_ones(3, 2, 3), [[5, 0], [0, -7], [-3, 4]], 1, strides=2,
                                randomize_strides=True),
        np.array([[1, 2, 3], [4, 5, 6]])),
    "grid_offset_equal_to_size": (lambda: mutex_watershed(_ones(2, 3, 3), [[3, 0], [0, -3]], 2),
                                  np.arange(1, 10).reshape(3, 3)),
    "grid_all_false_mask": (lambda: mutex_watershed(_ones(2, 4, 4), [[0, 1], [1, 0]], 1,
                                                    mask=np.zeros((4, 4), bool)), np.zeros((4, 4))),
    "grid_all_false_mask_random_strides": (
        lambda: mutex_watershed(_ones(2, 4, 4), [[0, 1], [1, 0]], 1, mask=np.zeros((4, 4), bool),
                                strides=(2, 2), randomize_strides=True), np.zeros((4, 4))),
    "grid_strides_larger_than_grid": (
        lambda: mutex_watershed(_ones(2, 3, 3), [[0, 1], [1, 0]], 1, strides=(100, 100)), ROWS_3x3),
    "grid_long_1d": (lambda: mutex_watershed(_ones(2, 1000), [[999], [-1000]], 2),
                     np.r_[1, np.arange(2, 1000), 1]),
    "grid_float16": (lambda: mutex_watershed(np.ones((1, 3, 3), np.float16), [[0, 1]], 1), ROWS_3x3),
    "embeddings_1x1": (lambda: mutex_watershed_embeddings(np.zeros((1, 1, 1)), [[0, 1]], 1), np.array([[1]])),
    "embeddings_1x1_mask_false": (
        lambda: mutex_watershed_embeddings(np.zeros((1, 1, 1)), [[0, 1]], 1, mask=np.zeros((1, 1), bool)),
        np.array([[0]])),
    "embedding_affinities_1x1": (lambda: embedding_affinities(np.zeros((3, 1, 1)), [[0, 1], [9, 9]], 1),
                                 np.zeros((2, 1, 1))),
    "cluster_1x1": (lambda: cluster(np.zeros((2, 1, 1), np.float32)), np.array([[1]])),
    "cluster_1x1x1": (lambda: cluster(np.zeros((2, 1, 1, 1), np.float32)), np.array([[[1]]])),
    "embeddings_1d": (lambda: mutex_watershed_embeddings(np.zeros((2, 5), np.float32), [[-1]], 1), np.ones(5)),
    "cluster_all_false_mask_min_size": (
        lambda: cluster(np.zeros((2, 3, 3)), mask=np.zeros((3, 3), bool), min_size=2), np.zeros((3, 3))),
    "graph_empty": (lambda: mutex_watershed_graph(0, E2, np.zeros(0), E2, np.zeros(0)), np.zeros(0)),
    "graph_empty_lists": (lambda: mutex_watershed_graph(0, [], [], [], []), np.zeros(0)),
    "graph_no_edges": (lambda: mutex_watershed_graph(3, E2, np.zeros(0), E2, np.zeros(0)), np.array([1, 2, 3])),
    "graph_only_mutex": (lambda: mutex_watershed_graph(3, E2, [], [[0, 1], [1, 2]], [1.0, 1.0]),
                         np.array([1, 2, 3])),
    "graph_self_loops": (lambda: mutex_watershed_graph(2, [[0, 0], [1, 1]], [1.0, 1.0], [[1, 1]], [2.0]),
                         np.array([1, 2])),
    "graph_self_mutex_then_merge": (lambda: mutex_watershed_graph(2, [[0, 1]], [0.5], [[0, 0]], [1.0]),
                                    np.array([1, 1])),
    "graph_single_node": (lambda: mutex_watershed_graph(1, [[0, 0]], [1.0], [[0, 0]], [1.0]), np.array([1])),
}

# Offsets whose magnitude overflows int64 arithmetic (-INT64_MIN) or the grid's
# linear index: the channel must simply have no edges.
for _axis in (0, 1):
    for _name, _v in (("min", I64_MIN), ("max", I64_MAX), ("min_plus_1", I64_MIN + 1)):
        _off = [0, 0]
        _off[_axis] = int(_v)
        _tag = f"axis{_axis}_{_name}"
        CASES[f"grid_huge_offset_{_tag}"] = (_rows_with_huge(_off), ROWS_3x3)
        CASES[f"grid_huge_offset_{_tag}_masked"] = (_rows_with_huge(_off, mask=np.ones((3, 3), bool)), ROWS_3x3)
        CASES[f"grid_huge_offset_{_tag}_strided"] = (_rows_with_huge(_off, strides=2), ROWS_3x3)
        CASES[f"grid_huge_offset_{_tag}_random_strides"] = (
            _rows_with_huge(_off, strides=2, randomize_strides=True), ROWS_3x3)
        CASES[f"embeddings_huge_offset_{_tag}"] = (_emb_rows_with_huge(_off), ROWS_3x3)
        CASES[f"embeddings_huge_offset_{_tag}_masked"] = (
            _emb_rows_with_huge(_off, mask=np.ones((3, 3), bool)), ROWS_3x3)
        CASES[f"embedding_affinities_huge_offset_{_tag}"] = (_affinities_with_huge(_off), np.zeros((3, 3)))
        CASES[f"embedding_affinities_huge_offset_{_tag}_attractive"] = (_affinities_with_huge(_off, 2),
                                                                        np.zeros((3, 3)))


def main(names) -> int:
    for name in names or CASES:
        print(f"START {name}", flush=True)
        CASES[name][0]()
        print(f"OK {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
