"""SPOCOLoss: every term against hand-computed values, mode semantics and batch reduction."""
import math

import pytest
import torch

from spoco import SPOCOLoss
from spoco.loss.terms import kernel_sigma2, soft_mask

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BACKENDS = ["fused", "torch", "reference"]
T = 0.9  # kernel threshold
DV, DD = 0.5, 2.0


def row(embs, labels, g_embs=None):
    """One image of shape (1, n): embeddings ``embs`` (n vectors) and ``labels`` (n ints)."""
    f = torch.tensor(embs, dtype=torch.float64).reshape(len(embs), -1).T[None, :, None, :]
    t = torch.tensor(labels)[None, None, :]
    g = None if g_embs is None else torch.tensor(g_embs, dtype=torch.float64).reshape(len(embs), -1).T[None, :, None, :]
    return f, t, g


def phi(r, t=T, delta_v=DV):
    """The kernel of Eq. 3 as a function of the distance: t ** ((r / δ_v)²)."""
    return t ** ((r / delta_v) ** 2)


def terms(f, t, g=None, **kw):
    kw.setdefault("consistency_weight", 0.0 if g is None else 1.0)
    loss = SPOCOLoss(**kw)
    total, out = loss(f, t, g, generator=torch.Generator().manual_seed(0), return_terms=True)
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_is_t_at_delta_v(backend):
    f64 = dict(dtype=torch.float64)
    assert math.isclose(float(soft_mask(torch.tensor([[DV, 0.0]], **f64), torch.zeros(2, **f64), kernel_sigma2(DV, T))),
                        T, rel_tol=1e-14)
    assert math.isclose(float(soft_mask(torch.tensor([[0.3]], **f64), torch.zeros(1, **f64), kernel_sigma2(0.3, 0.5))),
                        0.5, rel_tol=1e-14)
    # object pixel at the anchor, background pixel at exactly δ_v: S = [1, t], I = [1, 0]
    for t in (0.9, 0.5):
        out = terms(*row([[0.0], [DV]], [1, 0]), kernel_threshold=t, backend=backend)
        assert out["instance"] == pytest.approx(1 - 2 / (2 + t * t), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r,expected", [(DV + 0.1, 0.1**2), (DV - 0.1, 0.0), (DV + 0.4, 0.4**2)])
def test_pull_hinge_around_delta_v(backend, r, expected):
    out = terms(*row([[r, 0.0], [-r, 0.0]], [3, 3]), backend=backend)  # mean 0, both pixels at distance r
    assert out["pull"] == pytest.approx(expected, abs=1e-12)
    assert out["push"] == 0 and out["reg"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d,expected", [(2 * DD - 0.1, 0.1**2), (2 * DD + 0.1, 0.0), (1.0, 9.0)])
def test_push_two_clusters_at_known_distance(backend, d, expected):
    out = terms(*row([[0.0, 0.0], [0.0, 0.0], [d, 0.0], [d, 0.0]], [5, 5, 9, 9]), backend=backend)
    assert out["push"] == pytest.approx(expected, abs=1e-12)
    assert out["pull"] == 0
    assert out["reg"] == pytest.approx(d / 2, rel=1e-12)  # mean of ‖μ‖ = (0 + d) / 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_push_three_clusters_ordered_pairs(backend):
    # pairwise distances 1, 2, 3 on a line: Σ_{k≠l} = 2 * (3² + 2² + 1²), C(C-1) = 6
    out = terms(*row([[0.0], [1.0], [3.0]], [1, 2, 3]), backend=backend)
    assert out["push"] == pytest.approx(2 * (9 + 4 + 1) / 6, rel=1e-12)
    assert out["reg"] == pytest.approx(4 / 3, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_dice_per_object_and_pooled(backend):
    # objects at 0 (2 px) and at δ_v (1 px): S_1 = [1, 1, t], S_2 = [t, t, 1]
    data = row([[0.0], [0.0], [DV]], [1, 1, 2])
    d1 = 1 - 4 / (4 + T * T)
    d2 = 1 - 2 / (2 + 2 * T * T)
    for anchor in ("random", "mean"):
        out = terms(*data, anchor=anchor, backend=backend)
        assert out["instance"] == pytest.approx((d1 + d2) / 2, rel=1e-12)
        out = terms(*data, anchor=anchor, dice="pooled", backend=backend)
        assert out["instance"] == pytest.approx(1 - 6 / (6 + 3 * T * T), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_bce(backend):
    out = terms(*row([[0.0], [DV]], [1, 0]), instance_loss="bce", backend=backend)
    assert out["instance"] == pytest.approx(-math.log(1 - T) / 2, rel=1e-9)  # pixels: (S=1, I=1), (S=t, I=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlabeled_push_hinge_around_delta_d(backend):
    data = row([[0.0], [0.0], [DD - 0.1], [DD + 0.1], [0.5]], [4, 4, 0, 0, 0])
    out = terms(*data, sparse=True, backend=backend)
    assert out["unlabeled_push"] == pytest.approx((0.1**2 + 0 + 1.5**2) / 3, rel=1e-12)
    assert terms(*data, sparse=False, backend=backend)["unlabeled_push"] == 0  # dense: no such term


@pytest.mark.parametrize("backend", BACKENDS)
def test_consistency_known_value(backend):
    # one unlabeled pixel (the only anchor) at 0 in f and g; the object pixel at 0.5 in f, 1.0 in g
    f, t, g = row([[0.0], [0.5]], [0, 1], g_embs=[[0.0], [1.0]])
    out = terms(f, t, g, sparse=True, backend=backend)
    pa, pb = phi(0.5), phi(1.0)
    assert out["consistency"] == pytest.approx(1 - 2 * (1 + pa * pb) / (2 + pa**2 + pb**2), rel=1e-12)
    assert terms(f, t, f.clone(), sparse=True, backend=backend)["consistency"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_total_is_weighted_sum(batch, backend):
    f, g, t = batch(3)
    w = dict(pull_weight=0.7, push_weight=1.3, reg_weight=0.01, instance_weight=2.0, unlabeled_push_weight=0.5,
             consistency_weight=3.0)
    out = terms(f, t, g, sparse=True, backend=backend, **w)
    expected = sum(w[f"{k}_weight"] * out[k] for k in ["pull", "push", "reg", "instance", "unlabeled_push",
                                                      "consistency"])
    assert out["total"] == pytest.approx(expected, rel=1e-12)
    assert all(out[k] > 0 for k in out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_mean_over_images_where_a_term_exists(backend):
    two = row([[0.0], [1.0], [2.0], [0.3]], [1, 1, 2, 0])
    bg_only = row([[0.0], [1.2], [2.0], [0.3]], [0, 0, 0, 0])
    f = torch.cat([two[0], bg_only[0]])
    t = torch.cat([two[1], bg_only[1]])
    both, a, b = terms(f, t, backend=backend), terms(*two[:2], backend=backend), terms(*bg_only[:2], backend=backend)
    assert both["pull"] == pytest.approx((a["pull"] + b["pull"]) / 2)  # dense: background is a cluster
    assert both["reg"] == pytest.approx((a["reg"] + b["reg"]) / 2)
    assert both["push"] == pytest.approx(a["push"])  # C = 1 in image 1: no push there
    assert both["instance"] == pytest.approx(a["instance"])  # no object in image 1
    assert b["push"] == 0 and b["instance"] == 0 and b["pull"] > 0

    g = f + 0.1
    sp_both = terms(f, t, g, sparse=True, backend=backend)
    sp_a = terms(two[0], two[1], g[:1], sparse=True, backend=backend)
    sp_b = terms(bg_only[0], bg_only[1], g[1:], sparse=True, backend=backend)
    for k in ("pull", "push", "reg", "instance", "unlabeled_push"):  # image 1 is all unlabeled
        assert sp_both[k] == pytest.approx(sp_a[k]) and sp_b[k] == 0
    assert sp_both["consistency"] == pytest.approx((sp_a["consistency"] + sp_b["consistency"]) / 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_gives_zero_loss_with_zero_gradient(batch, backend):
    f, g, t = batch(5)
    f.requires_grad_()
    loss = SPOCOLoss(sparse=True, backend=backend)(f, torch.full_like(t, -1), g)
    loss.backward()
    assert float(loss.detach()) == 0 and torch.count_nonzero(f.grad) == 0


def test_sparse_label0_never_in_pull_push_reg_nor_an_instance(batch):
    f, g, t = batch(7, B=2, n_objects=5)
    f.requires_grad_()
    only = dict(instance_weight=0, unlabeled_push_weight=0, consistency_weight=0)
    SPOCOLoss(sparse=True, **only)(f, t).backward()
    unl = (t == 0)[:, None].expand_as(f)
    assert f.grad[unl].abs().max() == 0 and f.grad[~unl & (t != -1)[:, None]].abs().max() > 0
    # label 0 is never an instance: the instance term is the same as in dense mode, where the
    # background is a cluster without an instance term; in both it only appears as soft-mask negatives
    for anchor in ("random", "mean"):
        for dice in ("per_object", "pooled"):
            kw = dict(anchor=anchor, dice=dice)
            assert terms(f.detach(), t, g, sparse=True, **kw)["instance"] == pytest.approx(
                terms(f.detach(), t, **kw)["instance"], rel=1e-12)
    # an image of unlabeled pixels only has no pull, push, reg or instance term (but consistency)
    out = terms(f.detach(), torch.zeros_like(t), g, sparse=True)
    assert [out[k] for k in ("pull", "push", "reg", "instance", "unlabeled_push")] == [0] * 5
    assert out["consistency"] > 0


def test_dense_background_pulled_and_pushed_without_instance_term():
    # background spread beyond δ_v and close to the object: pulled and pushed, but no instance term
    f, t, _ = row([[0.0], [2.0], [1.0], [1.0]], [0, 0, 6, 6])
    out = terms(f, t)
    assert out["pull"] == pytest.approx((0.5**2 + 0) / 2)  # background: both pixels at distance 1 from its mean
    assert out["push"] == pytest.approx((4 - 0) ** 2)  # both means at 1
    # the object's soft mask (anchor at 1) spans the background pixels as negatives
    s_bg = phi(1.0)
    assert out["instance"] == pytest.approx(1 - 2 * 2 / (2 * s_bg**2 + 2 + 2))
    assert terms(*row([[0.0], [2.0]], [0, 0]))["instance"] == 0
