"""Instance segmentation metrics of the paper: SBD, DiC / |DiC|, adapted Rand
error, AP@τ and mAP.

Conventions shared by every function
------------------------------------
* ``gt`` and ``pred`` are integer label images of the same shape: 2D ``(H, W)``,
  3D ``(Z, Y, X)`` (any number of axes works), numpy arrays or torch tensors.
  Labels are arbitrary non-negative integers, up to 2**63 - 1; they need not be
  consecutive. **0 is background**; every other value is one object (which need
  not be connected). Negative labels, floats and bools are rejected.
* Every metric only depends on the partition into objects: relabelling the
  objects of either image (injectively, keeping 0 as 0) leaves it unchanged.
* Everything is computed from one sparse contingency (overlap) table, counted in
  C++ in one pass (:func:`contingency_table`), so 3D volumes of 10^8 voxels with
  10^5 objects evaluate in seconds. :func:`evaluate` builds the table once.

Empty cases (an image is empty when it has no object, i.e. is all 0; "gt
empty" means gt empty and pred not, and so on):

======================  ==========  =========  ===================================
metric                  both empty  gt empty   pred empty
======================  ==========  =========  ===================================
symmetric_best_dice     1.0         0.0        0.0
dic                     0           #pred      -#gt
average_precision, mAP  1.0         0.0        0.0
adapted_rand_error      (0, 1, 1)   (0, 1, 1)  pred 0 is one segment: recall 1, see
                                               :func:`adapted_rand_error`
======================  ==========  =========  ===================================
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import _core
from ._labels import label_pair
from ._validation import threads_arg

__all__ = ["contingency_table", "Overlap", "overlap", "symmetric_best_dice", "dic", "abs_dic",
           "adapted_rand_error", "average_precision", "mean_average_precision", "evaluate",
           "MAP_THRESHOLDS"]

#: IoU thresholds of :func:`mean_average_precision`: 0.50, 0.55, ..., 0.95.
MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def contingency_table(gt, pred, *, threads=None):
    """Sparse contingency table of two label images.

    Parameters
    ----------
    gt, pred : integer arrays of the same shape, non-negative labels.
    threads : int, optional
        CPU threads (default: all OpenMP threads); the result does not depend on it.

    Returns
    -------
    gt_ids, pred_ids, counts : int64 arrays of shape (P,)
        Every pair of labels that occurs at some pixel, background 0 included,
        sorted by ``(gt_ids, pred_ids)``: ``counts[k]`` pixels have label
        ``gt_ids[k]`` in ``gt`` and ``pred_ids[k]`` in ``pred``. Equals
        ``np.unique(np.stack([gt.ravel(), pred.ravel()]), axis=1, return_counts=True)``.
    """
    g, p = label_pair(gt, pred)
    return _core.contingency_table(g.reshape(-1), p.reshape(-1), threads_arg(threads))


@dataclass(frozen=True)
class Overlap:
    """The contingency table with the object sizes derived from it.

    ``gt_ids, pred_ids, counts``: the table of :func:`contingency_table`;
    ``gt_labels, gt_sizes`` (and ``pred_*``): the objects (labels > 0), sorted,
    with their sizes in pixels; ``gi, pj, n``: the pairs of objects that overlap,
    as indices into ``gt_labels`` / ``pred_labels`` and their overlap in pixels.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    counts: np.ndarray
    gt_labels: np.ndarray
    gt_sizes: np.ndarray
    pred_labels: np.ndarray
    pred_sizes: np.ndarray
    gi: np.ndarray
    pj: np.ndarray
    n: np.ndarray

    @property
    def n_gt(self) -> int:
        return len(self.gt_labels)

    @property
    def n_pred(self) -> int:
        return len(self.pred_labels)

    def iou(self) -> np.ndarray:
        """IoU of each overlapping object pair ``(gi, pj)``."""
        return self.n / (self.gt_sizes[self.gi] + self.pred_sizes[self.pj] - self.n)

    def dice(self) -> np.ndarray:
        """Dice coefficient of each overlapping object pair ``(gi, pj)``."""
        return 2.0 * self.n / (self.gt_sizes[self.gi] + self.pred_sizes[self.pj])


def _group_sums(ids: np.ndarray, counts: np.ndarray):
    """Distinct ``ids`` (sorted) and the sum of ``counts`` for each."""
    order = np.argsort(ids, kind="stable")
    ids, counts = ids[order], counts[order]
    start = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    return ids[start], np.add.reduceat(counts, start) if len(ids) else counts[:0]


def overlap(gt, pred, *, threads=None) -> Overlap:
    """:class:`Overlap` of two label images (one pass over the pixels)."""
    a, b, c = contingency_table(gt, pred, threads=threads)
    gl, gs = _group_sums(a, c)  # a is sorted already; stable sort keeps it cheap
    pl, ps = _group_sums(b, c)
    g_obj, p_obj = gl > 0, pl > 0
    gl, gs, pl, ps = gl[g_obj], gs[g_obj], pl[p_obj], ps[p_obj]
    both = (a > 0) & (b > 0)
    gi = np.searchsorted(gl, a[both])
    pj = np.searchsorted(pl, b[both])
    return Overlap(a, b, c, gl, gs, pl, ps, gi, pj, c[both])


# ---- SBD and DiC (CVPPP) -----------------------------------------------------

def _best_dice(ov: Overlap):
    """Best Dice of every gt object against pred objects, and vice versa."""
    d = ov.dice()
    best_gt = np.zeros(ov.n_gt)
    best_pred = np.zeros(ov.n_pred)
    np.maximum.at(best_gt, ov.gi, d)
    np.maximum.at(best_pred, ov.pj, d)
    return best_gt, best_pred


def _sbd(ov: Overlap) -> float:
    if ov.n_gt == 0 or ov.n_pred == 0:
        return 1.0 if ov.n_gt == ov.n_pred else 0.0
    best_gt, best_pred = _best_dice(ov)
    return float(min(best_gt.mean(), best_pred.mean()))


def symmetric_best_dice(gt, pred) -> float:
    """Symmetric best Dice (SBD) of the CVPPP challenge.

    ``SBD = min(BD(pred, gt), BD(gt, pred))`` where ``BD(a, b)`` is the mean over
    the objects of ``a`` of their best Dice coefficient ``2|a_i ∩ b_j| / (|a_i| + |b_j|)``
    over the objects of ``b`` (0 for an object that overlaps no object of ``b``).
    Background (0) is no object. Both images empty: 1.0; exactly one empty: 0.0.

    Parameters
    ----------
    gt, pred : integer label images of the same shape; 0 = background.

    Returns
    -------
    float in [0, 1], higher is better.
    """
    return _sbd(overlap(gt, pred))


def dic(gt, pred) -> int:
    """Difference in count (CVPPP): ``#objects(pred) - #objects(gt)``.

    Objects are the distinct labels > 0. Positive = too many objects
    (over-segmentation), negative = too few. An empty image has 0 objects.
    """
    ov = overlap(gt, pred)
    return ov.n_pred - ov.n_gt


def abs_dic(gt, pred) -> int:
    """``|DiC| = |#objects(pred) - #objects(gt)|``, see :func:`dic`."""
    return abs(dic(gt, pred))


# ---- adapted Rand error ------------------------------------------------------

def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def _adapted_rand(ov: Overlap):
    fg = ov.gt_ids > 0
    n = ov.counts[fg].astype(np.float64)
    _, t = _group_sums(ov.pred_ids[fg], n)  # pred segment sizes inside the gt foreground
    s = ov.gt_sizes.astype(np.float64)
    both = float(n @ n - n.sum())   # ordered pixel pairs together in gt and in pred
    in_gt = float(s @ s - s.sum())  # ... together in gt
    in_pred = float(t @ t - t.sum())  # ... together in pred
    precision = _ratio(both, in_pred)
    recall = _ratio(both, in_gt)
    error = 1.0 - _ratio(2.0 * both, in_gt + in_pred)
    return error, precision, recall


def adapted_rand_error(gt, pred) -> tuple[float, float, float]:
    """Adapted Rand error (SNEMI3D / CREMI), with scikit-image's pixel conventions.

    Only pixels with ``gt > 0`` are considered (gt background is ignored). On
    those pixels, **prediction label 0 is an ordinary segment** (all of its
    pixels together), exactly as ``skimage.metrics.adapted_rand_error``. Over
    the ordered pairs of distinct considered pixels:

    * ``precision`` = P(same gt object | same pred segment): low when pred merges;
    * ``recall`` = P(same pred segment | same gt object): low when pred splits;
    * ``error`` = 1 - F1 = ``1 - 2 P R / (P + R)``.

    scikit-image returns the same ``error`` but its ``prec`` is our ``recall`` and
    its ``rec`` our ``precision`` (its table rows are the true image); here they
    follow the usual meaning (precision is relative to the prediction).

    Empty cases: a ratio with no pair in its denominator is 1. So with ``gt``
    empty (nothing considered) the result is ``(0.0, 1.0, 1.0)`` whatever ``pred``
    holds: this metric never sees false positives in the gt background (use
    :func:`average_precision` or :func:`symmetric_best_dice` for those). An empty
    ``pred`` is one segment covering the gt foreground: recall 1, precision
    ``Σ|g|(|g|-1) / (N(N-1))``; a perfect score when gt has a single object.

    Returns
    -------
    (error, precision, recall) : floats in [0, 1]; error lower is better.
    """
    return _adapted_rand(overlap(gt, pred))


# ---- average precision -------------------------------------------------------

def _thresholds(thresholds) -> np.ndarray:
    if isinstance(thresholds, (str, bytes, bool)):  # np.asarray would read "0.5" and True as numbers
        raise TypeError(f"thresholds must be a number or a 1-D sequence of numbers, got {thresholds!r}")
    try:
        t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(f"thresholds must be a number or a 1-D sequence of numbers, got {thresholds!r}") from None
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"thresholds must be a number or a 1-D sequence of numbers, got {thresholds!r}")
    if not np.all((t > 0) & (t <= 1)):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {t.tolist()}")
    return t


def _match_components(gi, pj, iou) -> int:
    """Matched pairs of an optimal one-to-one matching of the graph of edges
    ``(gi, pj)``: Hungarian matching per connected component, maximising the
    number of pairs first and their total IoU second (as StarDist / Cellpose).
    The assignment solver is dense, so it runs once per component; components
    with more than one edge are rare for IoU thresholds >= 0.5."""
    ug, gc = np.unique(gi, return_inverse=True)
    up, pc = np.unique(pj, return_inverse=True)
    ng = len(ug)
    graph = coo_matrix((np.ones(len(gc)), (gc, ng + pc)), shape=(ng + len(up),) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[gc]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    tp = 0
    for e in np.split(order, bounds):
        rows, r = np.unique(gc[e], return_inverse=True)
        cols, c = np.unique(pc[e], return_inverse=True)
        block = np.zeros((len(rows), len(cols)))
        block[r, c] = iou[e]
        cost = -(block > 0).astype(np.float64) - block / (2 * min(block.shape))
        ri, ci = linear_sum_assignment(cost)
        tp += int(np.count_nonzero(block[ri, ci] > 0))
    return tp


def _true_positives(ov: Overlap, iou: np.ndarray, tau: float) -> int:
    keep = iou >= tau
    gi, pj, v = ov.gi[keep], ov.pj[keep], iou[keep]
    if len(gi) == 0:
        return 0
    # Edges whose two objects have no other edge are matched as they are.
    lone = (np.bincount(gi, minlength=ov.n_gt)[gi] == 1) & (np.bincount(pj, minlength=ov.n_pred)[pj] == 1)
    tp = int(np.count_nonzero(lone))
    if not lone.all():
        tp += _match_components(gi[~lone], pj[~lone], v[~lone])
    return tp


def _ap(ov: Overlap, thresholds: np.ndarray) -> np.ndarray:
    if ov.n_gt == 0 and ov.n_pred == 0:
        return np.ones(len(thresholds))
    iou = ov.iou()
    tp = np.array([_true_positives(ov, iou, t) for t in thresholds], dtype=np.float64)
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    return tp / (tp + fp + fn)


def average_precision(gt, pred, thresholds=0.5):
    """Average precision at IoU thresholds (the DSB 2018 / StarDist definition).

    Objects of ``gt`` and ``pred`` (labels > 0) are matched one-to-one by the
    Hungarian algorithm on their IoU (``scipy.optimize.linear_sum_assignment``),
    maximising the number of pairs with ``IoU >= τ`` (inclusive) and then their
    total IoU. Matched pairs with ``IoU >= τ`` are true positives (TP); unmatched
    pred objects are false positives (FP), unmatched gt objects false negatives
    (FN); ``AP@τ = TP / (TP + FP + FN)``. For τ > 0.5 an object has at most one
    partner with ``IoU >= τ``, so the matching is unique; the count-first rule
    only matters for τ <= 0.5.

    Parameters
    ----------
    gt, pred : integer label images of the same shape; 0 = background.
    thresholds : float or sequence of floats in (0, 1]
        IoU thresholds τ.

    Returns
    -------
    float for a single threshold, else float64 array ``(len(thresholds),)``.
    Both images empty: 1.0; exactly one empty: 0.0.
    """
    t = _thresholds(thresholds)
    ap = _ap(overlap(gt, pred), t)
    return float(ap[0]) if isinstance(thresholds, numbers.Real) else ap


def mean_average_precision(gt, pred) -> float:
    """Mean of :func:`average_precision` over τ = 0.50, 0.55, ..., 0.95
    (:data:`MAP_THRESHOLDS`). Empty cases as for ``average_precision``."""
    return float(_ap(overlap(gt, pred), np.array(MAP_THRESHOLDS)).mean())


# ---- everything at once --------------------------------------------------------

def evaluate(gt, pred, *, threads=None) -> dict:
    """All metrics from one contingency table.

    Returns
    -------
    dict with
        ``sbd``: :func:`symmetric_best_dice`; ``dic``, ``abs_dic``: :func:`dic`,
        :func:`abs_dic`; ``are``, ``are_precision``, ``are_recall``:
        :func:`adapted_rand_error`; ``ap50``, ``ap75``: :func:`average_precision`
        at 0.5 and 0.75; ``map``: :func:`mean_average_precision`; ``n_gt``,
        ``n_pred``: numbers of objects.
    """
    ov = overlap(gt, pred, threads=threads)
    are, prec, rec = _adapted_rand(ov)
    ap = _ap(ov, np.array(MAP_THRESHOLDS))
    return {
        "sbd": _sbd(ov),
        "dic": ov.n_pred - ov.n_gt,
        "abs_dic": abs(ov.n_pred - ov.n_gt),
        "are": are,
        "are_precision": prec,
        "are_recall": rec,
        "ap50": float(ap[0]),
        "ap75": float(ap[MAP_THRESHOLDS.index(0.75)]),
        "map": float(ap.mean()),
        "n_gt": ov.n_gt,
        "n_pred": ov.n_pred,
    }
