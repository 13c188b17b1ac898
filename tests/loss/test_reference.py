"""SPOCOLoss default path == the loop reference (values and gradients), gradcheck, invariances."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spoco.loss.torch_sums as ops_loss
from spoco import SPOCOLoss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TERMS = ("pull", "push", "reg", "instance", "unlabeled_push", "consistency", "total")


def run(f, t, g, seed=0, **kw):
    """(total, terms, grad of f) of one call with a seeded generator."""
    f = f.detach().clone().requires_grad_()
    total, terms = SPOCOLoss(**kw)(f, t, g, generator=torch.Generator().manual_seed(seed), return_terms=True)
    total.backward()
    return total.detach(), terms, f.grad


def assert_same(a, b, rtol=1e-9, atol=1e-11):
    for k in TERMS:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=rtol, atol=atol, msg=f"term {k}")
    torch.testing.assert_close(a[2], b[2], rtol=rtol, atol=atol, msg="gradient of f")


config = st.fixed_dictionaries({
    "sparse": st.booleans(),
    "anchor": st.sampled_from(["random", "mean"]),
    "dice": st.sampled_from(["per_object", "pooled"]),
    "instance_loss": st.sampled_from(["dice", "dice", "bce"]),
})


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ndim=st.sampled_from([2, 3]), ignore=st.sampled_from([0.0, 0.15]), cfg=config)
def test_default_path_equals_reference(batch, seed, ndim, ignore, cfg):
    spatial = (7, 8) if ndim == 2 else (4, 5, 6)
    # image 1 has no object, image 2 exactly one
    f, g, t = batch(seed, B=4, spatial=spatial, D=3, n_objects=7, ignore=ignore, empty=(1,), single=(2,))
    g = g if cfg["sparse"] else None
    assert_same(run(f, t, g, seed, backend="torch", **cfg), run(f, t, g, seed, backend="reference", **cfg))


@pytest.mark.parametrize("sparse", [False, True])
def test_many_instances_and_small_chunks(batch, monkeypatch, sparse):
    monkeypatch.setattr(ops_loss, "CHUNK_ELEMENTS", 3 * 14 * 15)  # a chunk holds ~1 anchor: many chunks
    f, g, t = batch(11, B=3, spatial=(14, 15), D=4, n_objects=40, ignore=0.05)
    assert len(torch.unique(t[0])) > 25
    g = g if sparse else None
    assert_same(run(f, t, g, backend="torch", sparse=sparse), run(f, t, g, backend="reference", sparse=sparse))


def test_float32_close_to_float64_reference(batch):
    f, g, t = batch(12, B=2, spatial=(16, 16), D=8, n_objects=10)
    a = run(f.float(), t, g.float(), sparse=True)
    b = run(f, t, g, sparse=True, backend="reference")
    for k in TERMS:
        torch.testing.assert_close(a[1][k].double(), b[1][k], rtol=1e-4, atol=1e-5, msg=k)
    torch.testing.assert_close(a[2].double(), b[2], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cfg", [dict(sparse=True), dict(sparse=True, anchor="mean", dice="pooled"),
                                 dict(sparse=False, instance_loss="bce"), dict(sparse=False, ignore_index=7)])
def test_gradcheck_whole_loss(batch, monkeypatch, cfg):
    monkeypatch.setattr(ops_loss, "CHUNK_ELEMENTS", 2 * 5 * 6 * 2)
    f, g, t = batch(21, B=2, spatial=(5, 6), D=3, n_objects=4, ignore=0.1)
    t[t == -1] = cfg.get("ignore_index", -1)
    g = g if cfg["sparse"] else None
    loss = SPOCOLoss(**cfg)

    def fn(x):  # a fresh generator per call: the same anchors every time
        return loss(x, t, g, generator=torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(fn, (f.requires_grad_(),), eps=1e-6, atol=1e-6)

@pytest.mark.parametrize("backend", ["reference", "torch", "fused"])
def test_bce_with_underflowing_soft_masks_has_finite_gradient(backend):
    """BCE with a narrow kernel (delta_v 0.05): far pixels have log S between -100 and -87,
    where S is subnormal in float32 and 1/S overflows. Every backend takes log S directly
    (a fuzzing case, tests/fuzz/test_fuzz_loss.py, once gave the reference inf gradients)."""
    f = torch.tensor([[[[-0.7599, 0.4120, -0.5793, 0.4127], [-0.1246, 0.5609, 2.4568, 0.6526],
                        [0.2681, -1.3416, 1.2267, -0.9531]]],
                      [[[-0.5808, -0.2767, 0.2234, -1.4574], [1.5749, 0.6876, -0.7978, -0.5246],
                        [0.4050, 0.8926, -1.1815, -1.1062]]]])
    t = torch.tensor([[[0, 4, 1, 1], [0, 0, 2, 2], [3, 3, 4, 2]], [[0, 1, 1, 3], [2, 2, 4, 4], [3, 4, 2, 3]]])
    kw = dict(instance_loss="bce", delta_v=0.05078125, delta_d=1.0, anchor="random")
    total, terms, grad = run(f, t, None, backend=backend, **kw)
    assert torch.isfinite(grad).all() and torch.isfinite(total)
    _, want, want_grad = run(f.double(), t, None, backend="reference", **kw)
    torch.testing.assert_close(terms["instance"].double(), want["instance"], rtol=1e-4, atol=1e-6)
    # gradients up to ~60 here: the narrow kernel (2 sigma^2 ~ 5e-4) scales float32 rounding
    # of the distances, so float32 agrees with the float64 reference to ~1 %
    torch.testing.assert_close(grad.double(), want_grad, rtol=3e-2, atol=1e-2)



@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
@pytest.mark.parametrize("anchor", ["random", "mean"])
def test_permuting_label_ids_changes_nothing(batch, backend, anchor):
    f, g, t = batch(31, B=2, n_objects=6, ignore=0.1)
    ids = torch.unique(t[t > 0])
    new = torch.randperm(10**4, generator=torch.Generator().manual_seed(1))[:len(ids)] * 100003 + 1  # up to 1e9
    perm = t.clone()
    for old, nw in zip(ids, new):
        perm[t == old] = nw
    for sparse in (False, True):
        kw = dict(sparse=sparse, anchor=anchor, backend=backend)
        gg = g if sparse else None
        assert_same(run(f, t, gg, **kw), run(f, perm, gg, **kw), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
def test_ignore_region_changes_nothing_outside_it(batch, backend):
    f, g, t = batch(41, B=2, spatial=(10, 9), n_objects=5)
    t[:, 2:5, 3:7] = -1
    region = (t == -1)[:, None].expand_as(f)
    f2, g2 = f.clone(), g.clone()
    f2[region] = 100 * torch.randn(int(region.sum()), dtype=f.dtype)
    g2[region] = -50.0
    for sparse, gg, gg2 in [(True, g, g2), (False, None, None)]:
        a = run(f, t, gg, sparse=sparse, backend=backend)
        b = run(f2, t, gg2, sparse=sparse, backend=backend)
        assert_same(a, b, rtol=1e-12, atol=1e-13)
        assert b[2][region].abs().max() == 0
    # padding an image with an ignored band is the same as not having the band (deterministic anchors)
    pad_f = torch.cat([f, torch.randn_like(f[..., :3])], -1)
    pad_t = torch.cat([t, torch.full_like(t[..., :3], -1)], -1)
    a = run(f, t, None, anchor="mean", backend=backend)
    b = run(pad_f, pad_t, None, anchor="mean", backend=backend)
    for k in TERMS:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a[2], b[2][..., :-3], rtol=1e-12, atol=1e-13)


WEIGHTS = ["pull_weight", "push_weight", "reg_weight", "instance_weight", "unlabeled_push_weight",
           "consistency_weight"]


def test_weights_scale_their_terms_and_zero_removes_gradient(batch):
    f, g, t = batch(51, B=2, n_objects=6)
    zero = {w: 0.0 for w in WEIGHTS}
    full = run(f, t, g, sparse=True)[2]
    parts = []
    for w in WEIGHTS:
        one = run(f, t, g, sparse=True, **{**zero, w: 1.0})[2]
        two = run(f, t, g, sparse=True, **{**zero, w: 2.5})[2]
        assert one.abs().max() > 0, w
        torch.testing.assert_close(two, 2.5 * one, rtol=1e-12, atol=1e-14)
        without = run(f, t, g, sparse=True, **{w: 0.0, **({} if w == "reg_weight" else {"reg_weight": 0.001})})[2]
        torch.testing.assert_close(without, full - one * (0.001 if w == "reg_weight" else 1.0), rtol=1e-9,
                                   atol=1e-12)
        parts.append(one * (0.001 if w == "reg_weight" else 1.0))
    torch.testing.assert_close(sum(parts), full, rtol=1e-9, atol=1e-12)


def test_seeded_calls_are_reproducible(batch):
    f, g, t = batch(61, B=2, n_objects=6)
    loss = SPOCOLoss(sparse=True)
    a = [float(loss(f, t, g, generator=torch.Generator().manual_seed(5))) for _ in range(2)]
    b = float(loss(f, t, g, generator=torch.Generator().manual_seed(6)))
    assert a[0] == a[1] != b
    seeded = SPOCOLoss(sparse=True, generator=torch.Generator().manual_seed(5))
    assert float(seeded(f, t, g)) == a[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_equals_cpu(batch, sparse):
    f, g, t = batch(71, B=3, spatial=(20, 21), D=4, n_objects=9, ignore=0.05)
    g = g if sparse else None
    cpu = run(f, t, g, sparse=sparse)
    cuda = run(f.cuda(), t.cuda(), g.cuda() if sparse else None, sparse=sparse)  # CPU generator: same keys
    for k in TERMS:
        torch.testing.assert_close(cuda[1][k].cpu(), cpu[1][k], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(cuda[2].cpu(), cpu[2], rtol=1e-9, atol=1e-11)
