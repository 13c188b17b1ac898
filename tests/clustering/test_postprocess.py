"""Post-processing against slow, obviously-correct references on random inputs."""
import numpy as np
import pytest

from spoco.clustering import merge_close_segments, postprocess, remove_background
from spoco.clustering.postprocess import adjacent_pairs, relabel_consecutive, segment, segment_means, segment_variants


def _random_case(rng, ndim):
    shape = tuple(rng.integers(3, 9, ndim))
    labels = rng.integers(0, rng.integers(2, 12), shape)
    n = int(labels.max()) + 1
    centres = rng.normal(0, 1.0, (n, 3))
    emb = centres[labels].transpose(ndim, *range(ndim)) + rng.normal(0, 0.05, (3,) + shape)
    return labels, emb


def _same_partition(a, b):
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b)) and ((a == 0) == (b == 0)).all()


def _slow_merge(labels, emb, distance):
    ids = [i for i in np.unique(labels) if i]
    means = {i: emb[:, labels == i].mean(axis=1) for i in ids}
    parent = {i: i for i in ids}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for idx in np.ndindex(labels.shape):
        for axis in range(labels.ndim):
            nb = list(idx)
            nb[axis] += 1
            if nb[axis] >= labels.shape[axis]:
                continue
            a, b = labels[idx], labels[tuple(nb)]
            if a and b and a != b and np.linalg.norm(means[a] - means[b]) < distance:
                parent[find(a)] = find(b)
    return np.vectorize(lambda v: find(v) if v else 0)(labels)


@pytest.mark.parametrize("ndim", [2, 3])
def test_merge_matches_slow_reference(rng, seed, ndim):
    for _ in range(20):
        labels, emb = _random_case(rng, ndim)
        d = float(rng.uniform(0.1, 2.0))
        got = merge_close_segments(labels, emb, d)
        assert _same_partition(got, _slow_merge(labels, emb, d)), seed
        assert set(np.unique(got)) - {0} == set(range(1, got.max() + 1))


@pytest.mark.parametrize("ndim", [2, 3])
def test_segment_variants_equal_segment_per_distance(rng, seed, ndim):
    """One clustering, several merge distances: each result is segment()'s, on random
    embeddings with and without a foreground channel and a background rule."""
    for _ in range(10):
        shape = tuple(int(s) for s in rng.integers(4, 12, ndim))
        emb = rng.normal(0, 1.5, (4,) + shape).astype(np.float32)
        emb[-1] = rng.uniform(0, 1, shape)  # a foreground probability where used
        foreground = bool(rng.integers(2))
        settings = dict(delta_d=float(rng.uniform(0.5, 2.0)), foreground=foreground,
                        foreground_threshold=float(rng.uniform(0.2, 0.8)),
                        background=str(rng.choice(["none", "largest", "embedding"])), background_radius=1.0,
                        min_size=int(rng.integers(0, 4)))
        distances = [0.0, float(rng.uniform(0.1, 2)), float(rng.uniform(2, 6))]
        got = segment_variants(emb, distances, **settings)
        for m, labels in zip(distances, got):
            assert np.array_equal(labels, segment(emb, **settings, merge_distance=m)), (seed, settings, m)


def test_adjacent_pairs_and_means(rng, seed):
    labels, emb = _random_case(rng, 2)
    pairs = {tuple(p) for p in adjacent_pairs(labels).tolist()}
    expect = set()
    for axis in range(2):
        a, b = np.moveaxis(labels, axis, 0)[:-1], np.moveaxis(labels, axis, 0)[1:]
        for x, y in zip(a.ravel(), b.ravel()):
            if x and y and x != y:
                expect.add((min(x, y), max(x, y)))
    assert pairs == expect, seed
    sizes, means = segment_means(labels, emb)
    for i in np.unique(labels):
        assert sizes[i] == (labels == i).sum()
        np.testing.assert_allclose(means[i], emb[:, labels == i].mean(axis=1), atol=1e-12)


def test_adjacent_pairs_of_the_largest_ids():
    """Ids near 2**63 - 1 (a key id * n + id would overflow) give their own pairs."""
    top = np.iinfo(np.int64).max
    labels = np.array([[top, top - 1, 0], [top - 1, 3, 3]], dtype=np.int64)
    assert adjacent_pairs(labels).tolist() == [[3, top - 1], [top - 1, top]]


@pytest.mark.parametrize("ndim", [2, 3])
def test_background_modes_match_reference(rng, seed, ndim):
    for _ in range(20):
        labels, emb = _random_case(rng, ndim)
        ids, sizes = np.unique(labels[labels > 0], return_counts=True)
        got = remove_background(labels, mode="largest")
        if len(ids):
            largest = ids[np.argmax(sizes)]  # np.unique sorts ids: ties go to the smallest id, as argmax
            assert _same_partition(got, np.where(labels == largest, 0, labels)), seed
        r = float(rng.uniform(0.2, 1.5))
        got = remove_background(labels, emb, mode="embedding", radius=r)
        if len(ids):
            mu = emb[:, labels == largest].mean(axis=1)
            bg = [i for i in ids if np.linalg.norm(emb[:, labels == i].mean(axis=1) - mu) < r]
            assert _same_partition(got, np.where(np.isin(labels, bg), 0, labels)), seed


def test_postprocess_order_and_min_size(rng):
    labels = np.zeros((6, 12), int)
    labels[:, :4], labels[:, 4:8], labels[:, 8:11], labels[0, 11] = 1, 2, 3, 4
    emb = np.zeros((2, 6, 12))
    emb[0, :, 4:8] = 0.1      # segment 2 is close to segment 1: merged into the largest segment
    emb[0, :, 8:11] = 5.0
    emb[0, :, 11] = -5.0
    out = postprocess(labels, emb, merge_distance=0.5, background="largest", min_size=2)
    # 1+2 merged (48 px) become background; 3 stays; 4 (1 px) is removed.
    np.testing.assert_array_equal(out, np.where(labels == 3, 1, 0))


def test_relabel_consecutive():
    a = np.array([[0, 7, 7], [3, 0, 100]])
    np.testing.assert_array_equal(relabel_consecutive(a), [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(relabel_consecutive(np.array([5, 9])), [1, 2])


def test_errors():
    labels = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="background must be"):
        remove_background(labels, mode="smallest")
    with pytest.raises(ValueError, match="emb is required"):
        merge_close_segments(labels + 1, None, 1.0)
    with pytest.raises(ValueError, match="emb must have shape"):
        merge_close_segments(labels + 1, np.zeros((2, 4, 5)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        remove_background(labels - 1)
