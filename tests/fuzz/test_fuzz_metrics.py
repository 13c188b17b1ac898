"""Property tests of spoco.metrics on hostile label images: random shapes (0-D to 5-D,
empty axes), every integer dtype, bool and float labels, negative and huge ids.

A valid pair (same shape, non-negative integers below 2**63) must give scores in
their documented ranges that depend only on the partition; anything else must be
refused with an error that names ``gt`` or ``pred``."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoco import metrics
from tests._helpers.fuzz import FUZZ, INT_DTYPES, labels, outcome, shapes, valid_labels


@st.composite
def label_pairs(draw):
    """Two label images: half of the pairs valid (same shape, non-negative integer ids,
    huge ones included), the others anything."""
    shape = draw(shapes())
    if draw(st.booleans()):
        valid = labels(shape=shape, dtypes=INT_DTYPES, kinds=("small", "huge", "zero", "one"))
        return draw(valid), draw(valid)
    other = draw(st.one_of(st.just(shape), shapes()))
    return draw(labels(shape=shape)), draw(labels(shape=other))


def _objects(a: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(a))) if a.size else 0


def _check_scores(scores: dict, gt: np.ndarray, pred: np.ndarray) -> None:
    for name in ("sbd", "are", "are_precision", "are_recall", "ap50", "ap75", "map"):
        value = scores[name]
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (name, value)
    assert scores["n_gt"] == _objects(gt) and scores["n_pred"] == _objects(pred)
    assert scores["dic"] == scores["n_pred"] - scores["n_gt"] and scores["abs_dic"] == abs(scores["dic"])
    assert scores["ap75"] <= scores["ap50"] + 1e-12  # fewer matches at a stricter threshold


@FUZZ
@given(label_pairs())
def test_evaluate_gives_scores_in_range_or_names_the_argument(pair):
    gt, pred = (p.make() for p in pair)
    kind, result = outcome(metrics.evaluate, ("gt", "pred"), gt, pred)
    valid = valid_labels(gt) and valid_labels(pred) and gt.shape == pred.shape
    assert (kind == "ok") == valid, (pair, result)
    if valid:
        _check_scores(result, gt, pred)


@FUZZ
@given(label_pairs(), st.integers(0, 2 ** 32 - 1))
def test_every_metric_agrees_with_evaluate_and_ignores_the_ids(pair, seed):
    """Each metric on its own equals ``evaluate``'s, and an injective relabelling to huge
    ids (2**62 + rank) changes nothing: huge ids are legal and only the partition counts."""
    gt, pred = (p.make() for p in pair)
    if not (valid_labels(gt) and valid_labels(pred) and gt.shape == pred.shape):
        for fn in (metrics.symmetric_best_dice, metrics.dic, metrics.adapted_rand_error,
                   metrics.average_precision, metrics.mean_average_precision, metrics.contingency_table):
            assert outcome(fn, ("gt", "pred"), gt, pred)[0] == "error"
        return
    scores = metrics.evaluate(gt, pred)
    rng = np.random.default_rng(seed)
    for a in (gt, pred):
        ids = np.unique(a)
        new = np.sort(rng.choice(2 ** 20, ids.size, replace=False)) + 2 ** 62  # order kept
        if ids.size and ids[0] == 0:
            new[0] = 0
        big = new[np.searchsorted(ids, a)] if a.size else a.astype(np.int64)
        moved = metrics.evaluate(gt if a is pred else big, big if a is pred else pred)
        assert moved == pytest.approx(scores, abs=1e-12)
    assert metrics.symmetric_best_dice(gt, pred) == pytest.approx(scores["sbd"])
    assert metrics.dic(gt, pred) == scores["dic"] and metrics.abs_dic(gt, pred) == scores["abs_dic"]
    assert metrics.adapted_rand_error(gt, pred) == pytest.approx((scores["are"], scores["are_precision"],
                                                                  scores["are_recall"]))
    assert metrics.average_precision(gt, pred, [0.5, 0.75]) == pytest.approx([scores["ap50"], scores["ap75"]])
    assert metrics.mean_average_precision(gt, pred) == pytest.approx(scores["map"])
    g, p, n = metrics.contingency_table(gt, pred)
    assert n.sum() == gt.size and (n > 0).all() and len(g) == len(p) == len(n)


@FUZZ
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.lists(st.floats(-1, 2), max_size=3),
                 st.text(max_size=3), st.booleans(), st.none(), st.lists(st.lists(st.floats(0.1, 1)), max_size=2)))
def test_average_precision_thresholds_are_checked(thresholds):
    gt = np.array([[0, 1], [2, 2]])
    kind, result = outcome(metrics.average_precision, ("thresholds",), gt, gt, thresholds)
    if kind == "ok":
        assert np.all((np.atleast_1d(result) >= 0) & (np.atleast_1d(result) <= 1))


def test_int64_max_is_a_label_like_any_other():
    """2**63 - 1, where NumPy's bincount overflows, is one of the strategy's huge ids."""
    table = np.array([0, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1])
    a = table[np.arange(16).reshape(4, 4) % 5]
    assert a.max() == 2 ** 63 - 1
    assert metrics.evaluate(a, a) == metrics.evaluate(np.arange(16).reshape(4, 4) % 5, a)
    assert metrics.evaluate(a, a)["sbd"] == 1.0 and metrics.evaluate(a, a)["n_gt"] == 4
