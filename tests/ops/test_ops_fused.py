"""Fused loss ops (spoco.ops.fused) against direct PyTorch formulas: values, gradients,
gradcheck, opcheck, anchor selection, bad inputs; the same on CUDA when available."""
import pytest
import torch

from spoco.ops import anchors as torch_anchors
from spoco.ops import fused as F
from spoco.ops import reference

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIGMA2 = 1.1864
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def data(seed, B=2, D=3, N=40, K=7, dtype=torch.float64, device="cpu"):
    """Embeddings off the origin, anchors near pixels, slots in [0, K] (K = none), weights with zeros."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, N, generator=gen, dtype=torch.float64) + 3.0
    anchors = emb[:, :, torch.randperm(N, generator=gen)[:K]].transpose(1, 2) + 0.3 * torch.randn(
        B, K, D, generator=gen, dtype=torch.float64)
    slot = torch.randint(0, K + 1, (B, N), generator=gen)
    weight = (torch.rand(B, N, generator=gen) > 0.2).double()
    n_valid = torch.randint(0, K + 1, (B,), generator=gen)
    n_valid[0] = K
    cast = lambda x: x.to(device=device, dtype=dtype).contiguous()  # noqa: E731
    return cast(emb), cast(anchors), slot.to(device), cast(weight), n_valid.to(device)


def sq_dist(a, e):
    return ((e[:, None, :, :] - a[:, :, :, None]) ** 2).sum(2)  # (B, K, N)


def valid_mask(n_valid, K):
    return (torch.arange(K, device=n_valid.device)[None] < n_valid[:, None])  # (B, K)


def direct(term, a, e, slot, w, n_valid, ag=None, eg=None, delta=2.0):
    K = a.shape[1]
    ok = valid_mask(n_valid, K)[:, :, None]
    if term == "soft_mask":
        S = torch.exp(-sq_dist(a, e) / (2 * SIGMA2))
        inside = slot[:, None, :] == torch.arange(K, device=e.device)[None, :, None]
        out = [(w[:, None] * S * inside).sum(-1), (w[:, None] * S * S).sum(-1)]
    elif term == "unlabeled_push":
        r = sq_dist(a, e).clamp(min=1e-30).sqrt()
        out = [(w[:, None] * (delta - r).clamp(min=0) ** 2).sum(-1)]
    else:
        sf = torch.exp(-sq_dist(a, e) / (2 * SIGMA2))
        sg = torch.exp(-sq_dist(ag, eg) / (2 * SIGMA2))
        out = [(w[:, None] * sf * sg).sum(-1), (w[:, None] * sf * sf).sum(-1), (w[:, None] * sg * sg).sum(-1)]
    return torch.stack([torch.where(ok[:, :, 0], o, 0) for o in out])


def fused(term, a, e, slot, w, n_valid, ag=None, eg=None, delta=2.0):
    h = 0.5 / SIGMA2
    return F.anchor_pixel_sums(F.TERMS[term], a, e, ag, eg, slot if term == "soft_mask" else None, w, n_valid,
                               h, delta)


def compare(fast, slow, inputs, seed, rtol=1e-10, atol=1e-11):
    """Values and gradients (random upstream weights) of ``fast`` and ``slow`` agree."""
    outs = []
    for fn in (fast, slow):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        out = fn(*xs)
        out = out if isinstance(out, tuple) else (out,)
        gen = torch.Generator().manual_seed(seed % 2**31)
        sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in out).backward()
        outs.append(([o.detach() for o in out], [x.grad for x in xs]))
    for a, b in zip(outs[0][0] + outs[0][1], outs[1][0] + outs[1][1]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"seed {seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("term", ["soft_mask", "unlabeled_push", "consistency"])
@pytest.mark.parametrize("N,K", [(40, 7), (3000, 1), (700, 130)])
def test_anchor_pixel_sums_equal_direct_formulas(seed, device, term, N, K):
    emb, a, slot, w, nv = data(seed % 2**31, N=N, K=K, device=device)
    eg, ag = emb.flip(-1) * 0.9, a + 0.1
    if term == "consistency":
        compare(lambda a, e: fused(term, a, e, slot, w, nv, ag, eg), lambda a, e: direct(term, a, e, slot, w, nv, ag, eg),
                [a, emb], seed)
    else:
        compare(lambda a, e: fused(term, a, e, slot, w, nv), lambda a, e: direct(term, a, e, slot, w, nv), [a, emb],
                seed)


@pytest.mark.parametrize("device", DEVICES)
def test_anchor_pixel_sums_float32(seed, device):
    emb, a, slot, w, nv = data(seed % 2**31, N=2000, K=20, device=device)
    for term in F.TERMS:
        ref = fused(term, a, emb, slot, w, nv, a + 0.1, emb * 0.9)
        out = fused(term, a.float(), emb.float(), slot, w.float(), nv, (a + 0.1).float(), (emb * 0.9).float())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item(),
                                   msg=f"{term}, seed {seed}")


@pytest.mark.parametrize("device", DEVICES)
def test_segment_sum_and_pull_equal_direct_formulas(seed, device):
    emb, means, slot, _, _ = data(seed % 2**31, N=300, K=6, device=device)
    C = 6

    def fast(e, m):
        sums, counts = F.segment_sum(e, slot, C)
        return sums, counts, F.pull_sums(e, m, slot, 0.5)

    def slow(e, m):
        onehot = (slot[:, None, :] == torch.arange(C, device=e.device)[None, :, None]).to(e.dtype)  # (B, C, N)
        sums = torch.bmm(onehot, e.transpose(1, 2))
        d = sq_dist(m, e).clamp(min=1e-30).sqrt()
        pull = (onehot * (d - 0.5).clamp(min=0) ** 2).sum(-1)
        return sums, onehot.sum(-1), pull

    compare(fast, slow, [emb, means], seed)


def test_gradcheck_every_op(seed):
    emb, a, slot, w, nv = data(seed % 2**31, N=15, K=4)
    eg, ag = emb.flip(-1), a.flip(1)
    req = lambda x: x.clone().requires_grad_()  # noqa: E731
    for term in F.TERMS:
        fn = lambda a, e: fused(term, a, e, slot, w, nv, ag, eg)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (req(a), req(emb)), eps=1e-6, atol=1e-6), term
    assert torch.autograd.gradcheck(lambda e: F.segment_sum(e, slot, 4)[0], (req(emb),))
    assert torch.autograd.gradcheck(lambda e, m: F.pull_sums(e, m, slot, 0.5), (req(emb), req(a)))


def test_opcheck_every_op(seed):
    emb, a, slot, w, nv = data(seed % 2**31, N=30, K=5)
    eg, ag = emb + 0.2, a - 0.1
    req = lambda x: x.clone().requires_grad_()  # noqa: E731
    h = 0.5 / SIGMA2
    cases = [
        (F.anchor_pixel_sums, (0, req(a), req(emb), None, None, slot, w, nv, h, 0.0)),
        (F.anchor_pixel_sums, (1, req(a), req(emb), None, None, None, w, nv, 0.0, 2.0)),
        (F.anchor_pixel_sums, (2, req(a), req(emb), ag, eg, None, w, nv, h, 0.0)),
        (F.anchor_pixel_sums_backward, (torch.randn(2, 2, 5, dtype=torch.float64), 0, a, emb, None, None, slot, w,
                                        nv, h, 0.0)),
        (F.segment_sum, (req(emb), slot, 5)),
        (F.segment_sum_backward, (torch.randn(2, 5, 3, dtype=torch.float64), slot, 30)),
        (F.pull_sums, (req(emb), req(a), slot, 0.5)),
        (F.pull_sums_backward, (torch.randn(2, 5, dtype=torch.float64), emb, a, slot, 0.5)),
        (F.consistency_anchors, (emb, eg, slot == 5, torch.rand(2, 30, dtype=torch.float64), 4, 0.5, 0.05)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    # cluster_slots has a data-dependent output size: its fake implementation needs a dynamic-shape context
    torch.library.opcheck(F.cluster_slots, (slot, emb, None, -1, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_consistency_anchors_match_reference(seed, device):
    gen = torch.Generator().manual_seed(seed % 2**31)
    B, D, N = 3, 3, 400
    ef = torch.randn(B, D, N, generator=gen, dtype=torch.float64) * 0.7
    eg = ef + 0.3 * torch.randn(B, D, N, generator=gen, dtype=torch.float64)
    unl = torch.rand(B, N, generator=gen) < 0.6
    unl[2] = False
    keys = torch.rand(B, N, generator=gen, dtype=torch.float64)
    keys[0, :50] = keys[0, :50].max()  # ties: the lowest index wins
    for dtype in (torch.float64, torch.float32):
        pix, ok = F.consistency_anchors(*(x.to(device) for x in (ef.to(dtype), eg.to(dtype), unl, keys)), 20, 0.5,
                                        0.05)
        pix, ok = pix.cpu(), ok.cpu()
        assert not (ok[:, 1:] & ~ok[:, :-1]).any()
        for b in range(B):
            ref = reference.consistency_anchors(ef[b].to(dtype), eg[b].to(dtype), unl[b], keys[b], 20, 0.5, 0.05)
            assert pix[b, ok[b]].tolist() == ref, f"seed {seed}"
        assert ok[:2].sum(1).min() >= 2
    tp, tok = torch_anchors.consistency_anchors(ef, eg, unl, keys, 20, 0.5, 0.05)
    assert torch.equal(tok, ok)


def test_cluster_slots():
    t = torch.tensor([[5, 0, 5, -1, 9, 0], [0, 0, 0, 0, 0, 0], [7, 3, 3, 7, 0, -1]])
    f = torch.zeros(3, 2, 6)
    slot, labels = F.cluster_slots(t, f, None, -1, True)
    assert labels.tolist() == [[5, 9], [-1, -1], [3, 7]]
    assert slot.tolist() == [[0, 2, 0, 2, 1, 2], [2] * 6, [1, 0, 0, 1, 2, 2]]
    slot, labels = F.cluster_slots(t, f, None, -1, False)
    assert labels.tolist() == [[0, 5, 9], [0, -1, -1], [0, 3, 7]]
    slot, labels = F.cluster_slots(torch.full((1, 4), -1), f[:1, :, :4], None, -1, True)
    assert labels.tolist() == [[-1]] and slot.tolist() == [[1] * 4]  # no cluster: one unused slot


def test_bad_inputs_fail_early():
    emb, a, slot, w, nv = data(0)
    with pytest.raises(TypeError, match="emb must be float32 or float64"):
        F.segment_sum(emb.half(), slot, 3)
    with pytest.raises(ValueError, match="slot must have shape"):
        F.segment_sum(emb, slot[:, :5], 3)
    with pytest.raises(TypeError, match="slot must have dtype torch.int64"):
        F.pull_sums(emb, a, slot.int(), 0.5)
    with pytest.raises(ValueError, match="1 <= D <= 64"):
        F.segment_sum(torch.zeros(1, 65, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="anchors must have shape"):
        fused("soft_mask", a[:, :, :2], emb, slot, w, nv)
    with pytest.raises(TypeError, match="anchors must have dtype"):
        fused("soft_mask", a.float(), emb, slot, w, nv)
    with pytest.raises(ValueError, match="needs anchors_g and emb_g"):
        fused("consistency", a, emb, slot, w, nv)
    with pytest.raises(ValueError, match="weight must have shape"):
        fused("unlabeled_push", a, emb, slot, w[:1], nv)
    with pytest.raises(ValueError, match="n_valid must have shape"):
        fused("unlabeled_push", a, emb, slot, w, nv[:1])
    with pytest.raises(ValueError, match="f contains NaN"):
        F.cluster_slots(slot, emb.masked_fill(emb > 3, float("nan")), None, -1, True)
    with pytest.raises(ValueError, match="target contains negative labels"):
        F.cluster_slots(slot - 2, emb, None, -1, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_deterministic_mode_is_bit_identical(seed):
    emb, a, slot, w, nv = data(seed % 2**31, N=5000, K=40, dtype=torch.float32, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            outs = [fused(t, a, emb, slot, w, nv, a + 0.1, emb * 0.9) for t in F.TERMS]
            outs += list(F.anchor_pixel_sums_backward(torch.ones(2, 2, 40, device="cuda"), 0, a, emb, None, None,
                                                      slot, w, nv, 0.4, 0.0))
            outs += list(F.segment_sum(emb, slot, 40)) + [F.pull_sums(emb, a, slot, 0.5)]
            runs.append(outs)
        for x, y in zip(*runs):
            assert torch.equal(x, y)
    finally:
        torch.use_deterministic_algorithms(False)


def terms_inputs(seed, device="cpu", N=60, C=5, K=4):
    emb, anchors, slot, w, n_obj = data(seed, N=N, K=C, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    means = anchors + 0.1
    unl = (torch.rand(2, N, generator=gen) > 0.5).double().to(device)
    inst_pix = torch.randint(0, N, (2, C), generator=gen).to(device)
    cons_pix = torch.randint(0, N, (2, K), generator=gen).to(device)
    eg = (emb * 0.9 + 0.1).contiguous()
    n_cons = torch.tensor([K, K - 1], device=device)
    return emb, slot, w, n_obj, anchors, inst_pix, means, unl, cons_pix, eg, n_cons


def at(e, pix):
    return e.gather(2, pix[:, None, :].expand(e.shape[0], e.shape[1], pix.shape[1])).transpose(1, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("present", ["all, pixel anchors", "all, given anchors", "instance only"])
def test_anchor_pixel_terms_equal_the_single_terms(seed, device, present):
    emb, slot, w, n_obj, anchors, inst_pix, means, unl, cons_pix, eg, n_cons = terms_inputs(seed % 2**31, device)
    if present == "instance only":
        means = unl = cons_pix = eg = n_cons = None
    if present == "all, given anchors":
        inst_pix = None
    else:
        anchors = None
    h = 0.5 / SIGMA2

    def together(e, a, m):
        return F.anchor_pixel_terms(e, slot, w, n_obj, a, inst_pix, m, unl, cons_pix, eg, n_cons, h, 2.0)

    def apart(e, a, m):
        a = at(e, inst_pix) if a is None else a
        inst = F.anchor_pixel_sums(0, a, e, None, None, slot, w, n_obj, h, 0.0)
        up = F.anchor_pixel_sums(1, m, e, None, None, None, unl, n_obj, 0.0, 2.0) if m is not None \
            else e.new_zeros((1, 2, 0))
        cons = F.anchor_pixel_sums(2, at(e, cons_pix), e, at(eg, cons_pix), eg, None, w, n_cons, h, 0.0) \
            if cons_pix is not None else e.new_zeros((3, 2, 0))
        return inst, up, cons

    # differentiate with respect to emb and to whichever of anchors / means are tensors
    if present == "all, given anchors":
        compare(together, apart, [emb, anchors, means], seed)
    elif present == "all, pixel anchors":
        compare(lambda e, m: together(e, None, m), lambda e, m: apart(e, None, m), [emb, means], seed)
    else:
        compare(lambda e: together(e, None, None), lambda e: apart(e, None, None), [emb], seed)


def test_anchor_pixel_terms_gradcheck_and_opcheck(seed):
    emb, slot, w, n_obj, anchors, inst_pix, means, unl, cons_pix, eg, n_cons = terms_inputs(seed % 2**31, N=15, C=3,
                                                                                             K=2)
    req = lambda x: x.clone().requires_grad_()  # noqa: E731
    h = 0.5 / SIGMA2
    fn = lambda e, m: F.anchor_pixel_terms(e, slot, w, n_obj, None, inst_pix, m, unl, cons_pix, eg, n_cons, h, 2.0)  # noqa
    assert torch.autograd.gradcheck(fn, (req(emb), req(means)), eps=1e-6, atol=1e-6)
    fn = lambda e, a: F.anchor_pixel_terms(e, slot, w, n_obj, a, None, None, None, None, None, None, h, 2.0)  # noqa
    assert torch.autograd.gradcheck(fn, (req(emb), req(anchors)), eps=1e-6, atol=1e-6)
    torch.library.opcheck(F.anchor_pixel_terms, (req(emb), slot, w, n_obj, None, inst_pix, req(means), unl, cons_pix,
                                                 eg, n_cons, h, 2.0))
    torch.library.opcheck(F.anchor_pixel_terms, (req(emb), slot, w, n_obj, req(anchors), None, None, None, None,
                                                 None, None, h, 2.0))
    grads = (torch.randn(2, 2, 3, dtype=torch.float64), torch.randn(1, 2, 3, dtype=torch.float64),
             torch.randn(3, 2, 2, dtype=torch.float64))
    torch.library.opcheck(F.anchor_pixel_terms_backward, grads + (emb, slot, w, n_obj, None, inst_pix, means, unl,
                                                                  cons_pix, eg, n_cons, h, 2.0))
    with pytest.raises(ValueError, match="must be given together"):
        F.anchor_pixel_terms(emb, slot, w, n_obj, None, inst_pix, means, None, cons_pix, eg, n_cons, h, 2.0)
    with pytest.raises(ValueError, match="exactly one of anchors and inst_pix"):
        F.anchor_pixel_terms(emb, slot, w, n_obj, anchors, inst_pix, None, None, None, None, None, h, 2.0)
