"""spoco.metrics against straightforward numpy/scipy implementations, against
scikit-image, and on hand-made cases."""
import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error as skimage_are

from spoco import metrics
from spoco.data.synthetic import random_instances

# ---- straightforward references (one boolean mask per object) -----------------


def objects(labels):
    return [labels == k for k in np.unique(labels) if k != 0]


def ref_sbd(gt, pred):
    g, p = objects(gt), objects(pred)
    if not g and not p:
        return 1.0
    if not g or not p:
        return 0.0

    def bd(a, b):
        return np.mean([max(2 * (x & y).sum() / (x.sum() + y.sum()) for y in b) for x in a])

    return min(bd(g, p), bd(p, g))


def ref_ap(gt, pred, tau):
    g, p = objects(gt), objects(pred)
    if not g and not p:
        return 1.0
    if not g or not p:
        return 0.0
    iou = np.array([[(x & y).sum() / (x | y).sum() for y in p] for x in g])
    hit = iou >= tau
    cost = -hit.astype(float) - iou / (2 * min(iou.shape))  # most matches first, then most IoU
    r, c = linear_sum_assignment(cost)
    tp = hit[r, c].sum()
    return tp / (len(g) + len(p) - tp)


def ref_are_bruteforce(gt, pred):
    """Adapted Rand by enumerating all ordered pixel pairs with gt > 0."""
    g, p = gt.ravel(), pred.ravel()
    keep = g > 0
    g, p = g[keep], p[keep]
    same_g = g[:, None] == g[None, :]
    same_p = p[:, None] == p[None, :]
    off = ~np.eye(len(g), dtype=bool)
    both, in_g, in_p = (same_g & same_p & off).sum(), (same_g & off).sum(), (same_p & off).sum()
    prec = both / in_p if in_p else 1.0
    rec = both / in_g if in_g else 1.0
    return 1 - (2 * both / (in_g + in_p) if in_g + in_p else 1.0), prec, rec


# ---- random label images --------------------------------------------------------


def relabel(labels, rng, high=2**40):
    """Give the objects new distinct random ids in [1, high); 0 stays 0."""
    u, inv = np.unique(labels, return_inverse=True)
    new = rng.choice(high - 1, len(u), replace=False) + 1
    new[u == 0] = 0
    return new[inv].reshape(labels.shape)


def compact(labels):
    """Ids 1..K (0 stays 0), for libraries that allocate up to the largest id."""
    u, inv = np.unique(labels, return_inverse=True)
    return (inv.reshape(labels.shape) + (u[0] != 0)).astype(np.int64)


def perturbed(gt, rng):
    """A plausible prediction: gt shifted by up to one pixel, with one merge, one
    split, one missing and one spurious object, and random 40-bit ids."""
    pred = np.roll(gt, tuple(rng.integers(-1, 2, gt.ndim)), axis=tuple(range(gt.ndim))).copy()
    ids = np.unique(pred)[1:]
    if len(ids) > 3:
        pred[pred == ids[1]] = ids[0]
        rows = np.indices(gt.shape)[0]
        obj = pred == ids[2]
        pred[obj & (rows < np.median(rows[obj]))] = pred.max() + 1
        pred[pred == ids[3]] = 0
    pred[(slice(0, 3),) * gt.ndim] = pred.max() + 1
    return relabel(pred, rng)


def random_pair(shape, n, seed):
    rng = np.random.default_rng(seed)
    gt = random_instances(shape, n, background=0.25, rng=rng)
    return gt, perturbed(gt, rng)


PAIRS = [random_pair((48, 40), 12, s) for s in range(3)] + [random_pair((14, 20, 18), 10, s) for s in range(3, 5)]


@pytest.mark.parametrize("gt, pred", PAIRS)
def test_sbd_and_dic_match_reference(gt, pred):
    assert metrics.symmetric_best_dice(gt, pred) == pytest.approx(ref_sbd(gt, pred), abs=1e-12)
    n_gt, n_pred = len(objects(gt)), len(objects(pred))
    assert metrics.dic(gt, pred) == n_pred - n_gt
    assert metrics.abs_dic(gt, pred) == abs(n_pred - n_gt)


@pytest.mark.parametrize("gt, pred", PAIRS)
def test_ap_matches_reference(gt, pred):
    taus = [0.1, 0.3, 0.5, 0.55, 0.75, 0.9]
    got = metrics.average_precision(gt, pred, taus)
    np.testing.assert_allclose(got, [ref_ap(gt, pred, t) for t in taus], atol=1e-12)
    ref_map = np.mean([ref_ap(gt, pred, t) for t in metrics.MAP_THRESHOLDS])
    assert metrics.mean_average_precision(gt, pred) == pytest.approx(ref_map, abs=1e-12)


def test_ap_on_random_labels_with_crowded_matchings():
    # Few labels on a small grid: many objects overlap several others at low IoU,
    # so the matching components are non-trivial.
    rng = np.random.default_rng(7)
    for _ in range(5):
        gt = rng.integers(0, 7, (12, 12))
        pred = np.where(rng.random((12, 12)) < 0.7, gt, rng.integers(0, 9, (12, 12)))
        for tau in (0.05, 0.15, 0.3, 0.5):
            assert metrics.average_precision(gt, pred, tau) == pytest.approx(ref_ap(gt, pred, tau), abs=1e-12)


@pytest.mark.parametrize("gt, pred", PAIRS)
def test_adapted_rand_matches_skimage_with_precision_recall_swapped(gt, pred):
    err, prec, rec = metrics.adapted_rand_error(gt, pred)
    sk_err, sk_prec, sk_rec = skimage_are(compact(gt), compact(pred))
    assert err == pytest.approx(sk_err, abs=1e-12)
    assert prec == pytest.approx(sk_rec, abs=1e-12)  # skimage's "recall" is precision w.r.t. pred
    assert rec == pytest.approx(sk_prec, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_adapted_rand_matches_pair_enumeration(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (10, 11))
    pred = rng.integers(0, 5, (10, 11))
    np.testing.assert_allclose(metrics.adapted_rand_error(gt, pred), ref_are_bruteforce(gt, pred), atol=1e-12)


def test_evaluate_returns_everything_consistently():
    gt, pred = PAIRS[0]
    r = metrics.evaluate(gt, pred)
    assert r["sbd"] == metrics.symmetric_best_dice(gt, pred)
    assert r["dic"] == metrics.dic(gt, pred) and r["abs_dic"] == abs(r["dic"])
    assert (r["are"], r["are_precision"], r["are_recall"]) == metrics.adapted_rand_error(gt, pred)
    assert r["ap50"] == metrics.average_precision(gt, pred, 0.5)
    assert r["ap75"] == metrics.average_precision(gt, pred, 0.75)
    assert r["map"] == metrics.mean_average_precision(gt, pred)
    assert (r["n_gt"], r["n_pred"]) == (len(objects(gt)), len(objects(pred)))


def test_invariance_to_relabelling():
    gt, pred = PAIRS[3]
    rng = np.random.default_rng(0)
    base = metrics.evaluate(gt, pred)
    for labels_to_permute in ("gt", "pred"):
        g = relabel(gt, rng, 10**6) if labels_to_permute == "gt" else gt
        p = relabel(pred, rng, 10**6) if labels_to_permute == "pred" else pred
        r = metrics.evaluate(g, p)
        for k in base:
            assert r[k] == pytest.approx(base[k], abs=1e-12), k


def test_swapping_gt_and_pred():
    gt, pred = PAIRS[1]
    assert metrics.symmetric_best_dice(gt, pred) == metrics.symmetric_best_dice(pred, gt)
    assert metrics.dic(gt, pred) == -metrics.dic(pred, gt)
    assert metrics.average_precision(gt, pred, [0.5, 0.7]) == pytest.approx(
        metrics.average_precision(pred, gt, [0.5, 0.7]))


# ---- hand cases -------------------------------------------------------------------

def two_squares():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:, :4] = 3
    gt[:, 4:] = 7  # non-consecutive ids, no background
    return gt


def test_identical():
    gt = random_instances((32, 32), 8, rng=1)
    r = metrics.evaluate(gt, gt * 5 + (gt > 0))
    assert r == {"sbd": 1.0, "dic": 0, "abs_dic": 0, "are": 0.0, "are_precision": 1.0, "are_recall": 1.0,
                 "ap50": 1.0, "ap75": 1.0, "map": 1.0, "n_gt": r["n_gt"], "n_pred": r["n_gt"]}


def test_merge():
    gt = two_squares()
    pred = (gt > 0).astype(np.int32) * 9  # one object covering both
    s = 32  # pixels per gt object
    assert metrics.symmetric_best_dice(gt, pred) == pytest.approx(2 / 3)
    assert metrics.dic(gt, pred) == -1
    # IoU of each gt square with the merged object is exactly 0.5: inclusive
    # threshold, one-to-one matching -> TP 1, FN 1.
    assert metrics.average_precision(gt, pred, 0.5) == 0.5
    assert metrics.average_precision(gt, pred, 0.55) == 0.0
    err, prec, rec = metrics.adapted_rand_error(gt, pred)
    assert rec == 1.0  # nothing split
    assert prec == pytest.approx((s - 1) / (2 * s - 1))  # merged: low precision
    assert err == pytest.approx(1 - 2 * prec / (1 + prec))


def test_split():
    pred = two_squares()
    gt = (pred > 0).astype(np.int64) * 4
    err, prec, rec = metrics.adapted_rand_error(gt, pred)
    assert prec == 1.0 and rec == pytest.approx(31 / 63)
    assert metrics.dic(gt, pred) == 1
    assert metrics.average_precision(gt, pred) == 0.5  # one of the halves matches at IoU 0.5


def test_missing_object():
    gt = two_squares()
    pred = np.where(gt == 7, 0, gt)
    assert metrics.symmetric_best_dice(gt, pred) == 0.5  # BD(gt, pred) = (1 + 0) / 2
    assert metrics.dic(gt, pred) == -1
    assert metrics.average_precision(gt, pred, [0.5, 0.95]).tolist() == [0.5, 0.5]
    # pred 0 is one segment covering the missing object: nothing is split or merged.
    assert metrics.adapted_rand_error(gt, pred) == (0.0, 1.0, 1.0)


def test_false_positive_in_background():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:4] = 1
    pred = gt.copy()
    pred[6:, 6:] = 2
    assert metrics.average_precision(gt, pred) == 0.5
    assert metrics.symmetric_best_dice(gt, pred) == 0.5
    assert metrics.adapted_rand_error(gt, pred) == (0.0, 1.0, 1.0)  # gt background is ignored


@pytest.mark.parametrize("case", ["both", "gt", "pred"])
def test_empty_cases(case):
    full = two_squares()
    zero = np.zeros_like(full)
    gt = zero if case in ("both", "gt") else full
    pred = zero if case in ("both", "pred") else full
    r = metrics.evaluate(gt, pred)
    expect_ok = case == "both"
    assert r["sbd"] == r["ap50"] == r["map"] == (1.0 if expect_ok else 0.0)
    assert r["dic"] == {"both": 0, "gt": 2, "pred": -2}[case]
    if case in ("both", "gt"):
        assert (r["are"], r["are_precision"], r["are_recall"]) == (0.0, 1.0, 1.0)
    else:  # empty pred = one segment over the gt foreground: merges both squares
        assert r["are_recall"] == 1.0 and r["are_precision"] == pytest.approx(31 / 63)


def test_zero_size_images():
    e = np.zeros((0, 5), dtype=np.int64)
    assert metrics.evaluate(e, e)["sbd"] == 1.0


def test_3d_volume_with_64bit_ids():
    gt, pred = PAIRS[4]
    rng = np.random.default_rng(5)
    r = metrics.evaluate(relabel(gt, rng, 2**63 - 1), relabel(pred, rng, 2**63 - 1))
    assert r == pytest.approx(metrics.evaluate(compact(gt), compact(pred)))


def test_thresholds_argument():
    gt, pred = PAIRS[0]
    assert isinstance(metrics.average_precision(gt, pred, 0.5), float)
    assert metrics.average_precision(gt, pred, [0.5]).shape == (1,)
    assert metrics.MAP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    for bad in (0.0, 1.5, [0.5, -1], []):
        with pytest.raises(ValueError, match="thresholds"):
            metrics.average_precision(gt, pred, bad)


def test_bad_inputs_name_the_argument():
    gt = two_squares()
    with pytest.raises(ValueError, match="same shape"):
        metrics.evaluate(gt, gt[:, :3])
    with pytest.raises(TypeError, match="pred must be an integer"):
        metrics.symmetric_best_dice(gt, gt.astype(float))
    with pytest.raises(ValueError, match="gt must hold non-negative"):
        metrics.adapted_rand_error(-gt, gt)


def test_all_metrics_are_within_bounds():
    rng = np.random.default_rng(11)
    for shape, a, b in itertools.product([(6, 7), (3, 4, 5)], [1, 3], [1, 4]):
        gt, pred = rng.integers(0, a + 1, shape), rng.integers(0, b + 1, shape)
        r = metrics.evaluate(gt, pred)
        for k in ("sbd", "are", "are_precision", "are_recall", "ap50", "ap75", "map"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])
