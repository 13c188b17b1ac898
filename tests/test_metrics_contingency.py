"""The C++ contingency table (spoco._core via spoco.metrics.contingency_table)
against np.unique over label pairs."""
import numpy as np
import pytest

from spoco.metrics import contingency_table


def reference(a, b):
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


def assert_same(a, b, **kw):
    got = contingency_table(a, b, **kw)
    for x, y in zip(got, reference(a, b)):
        assert x.dtype == np.int64
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(4))
def test_random_small_alphabet(seed):
    rng = np.random.default_rng(seed)
    shape = [(50, 70), (9, 20, 31), (1000,), (3, 4, 5, 6)][seed]
    assert_same(rng.integers(0, 6, shape), rng.integers(0, 9, shape))


def test_runs_and_many_pairs():
    rng = np.random.default_rng(1)
    n = 300_000
    a = np.repeat(rng.integers(0, 5000, n // 7 + 1), 7)[:n]
    b = np.repeat(rng.integers(0, 3000, n // 5), 5)
    assert_same(a, b)  # > 10^5 distinct pairs: the hash map grows many times


def test_64bit_ids():
    rng = np.random.default_rng(2)
    ids = rng.integers(2**40, 2**63 - 1, 50, dtype=np.int64)
    ids[0] = 2**63 - 1
    ids[1] = 0
    a = ids[rng.integers(0, 50, (64, 64))]
    b = ids[rng.integers(0, 50, (64, 64))]
    assert_same(a, b)
    # uint64 input below 2^63 is accepted.
    assert_same(a.astype(np.uint64), b.astype(np.uint64))


def test_integer_dtypes_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 200, (40, 40))
    b = rng.integers(0, 200, (40, 40))
    for dt in (np.uint8, np.int16, np.uint32, np.int32):
        assert_same(a.astype(dt), b.astype(dt))
    got = contingency_table(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_array_equal(got[2], reference(a, b)[2])
    # Non-contiguous views.
    assert_same(a[::2, 1::3], b[1::2, 2::3])


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 300, 3_000_000)
    b = np.repeat(rng.integers(0, 300, 300_000), 10)
    one = contingency_table(a, b, threads=1)
    two = contingency_table(a, b, threads=2)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)


def test_edge_cases():
    e = np.zeros((0, 3), dtype=np.int64)
    assert all(len(x) == 0 for x in contingency_table(e, e))
    a = np.zeros((4, 4), dtype=np.int64)
    ga, pa, c = contingency_table(a, a)
    assert ga.tolist() == [0] and pa.tolist() == [0] and c.tolist() == [16]


@pytest.mark.parametrize("gt, pred, err, match", [
    (np.zeros((3, 3), int), np.zeros((3, 4), int), ValueError, "same shape"),
    (np.zeros((3, 3)), np.zeros((3, 3), int), TypeError, "gt must be an integer"),
    (np.zeros((3, 3), int), np.zeros((3, 3), bool), TypeError, "pred must be an integer"),
    (np.full((3, 3), -1), np.zeros((3, 3), int), ValueError, "gt must hold non-negative"),
    (np.zeros((3, 3), int), np.full((3, 3), 2**63, np.uint64), ValueError, "pred holds label"),
])
def test_validation(gt, pred, err, match):
    with pytest.raises(err, match=match):
        contingency_table(gt, pred)
