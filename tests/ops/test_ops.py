"""The custom ops of spoco.ops against direct PyTorch formulas: values, gradients,
gradcheck, opcheck, anchor selection, bad inputs; the same on CUDA when available."""
import pytest
import torch

from spoco import ops as F
from spoco.loss import reference
from spoco.loss.torch_sums import draw_consistency_anchors
from spoco.ops._kernel import BLOCK_PIXELS
from spoco.ops.anchor_pixel_sums import TERMS
from spoco.ops.cluster_slots import cluster_slots_torch, random_instance_anchors
from spoco.ops.pixel_terms import _composed_backward, _composed_forward

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
    return F.anchor_pixel_sums(TERMS[term], a, e, ag, eg, slot if term == "soft_mask" else None, w, n_valid,
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
    for term in TERMS:
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
    for term in TERMS:
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
    torch.library.opcheck(F.cluster_slots, (slot, emb, None, -1, True, torch.rand(2, 30, dtype=torch.float64)),
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
    tp, tok = draw_consistency_anchors(ef, eg, unl, keys, 20, 0.5, 0.05)
    assert torch.equal(tok, ok)


def test_cluster_slots():
    t = torch.tensor([[5, 0, 5, -1, 9, 0], [0, 0, 0, 0, 0, 0], [7, 3, 3, 7, 0, -1]])
    f = torch.zeros(3, 2, 6)
    keys = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.5, 0.2], [0.5] * 6, [0.4, 0.6, 0.6, 0.7, 0.9, 0.95]],
                        dtype=torch.float64)
    for fn in (F.cluster_slots, cluster_slots_torch):
        slot, labels, pix = fn(t, f, None, -1, True, keys)
        assert labels.tolist() == [[5, 9], [-1, -1], [3, 7]]
        assert slot.tolist() == [[0, 2, 0, -1, 1, 2], [2] * 6, [1, 0, 0, 1, 2, -1]]
        assert pix[0].tolist() == [2, 4] and pix[2].tolist() == [1, 3]  # largest key; ties: the lowest index
        slot, labels, pix = fn(t, f, None, -1, False, None)
        assert labels.tolist() == [[0, 5, 9], [0, -1, -1], [0, 3, 7]] and pix.shape == (3, 0)
        assert slot.tolist() == [[1, 0, 1, -1, 2, 0], [0] * 6, [2, 1, 1, 2, 0, -1]]
        slot, labels, pix = fn(torch.full((1, 4), -1), f[:1, :, :4], None, -1, True, None)
        assert labels.tolist() == [[-1]] and slot.tolist() == [[-1] * 4]  # no cluster: one unused slot


@pytest.mark.parametrize("n_objects", [1, 2, 50, 1000])
@pytest.mark.parametrize("spatial", [(30, 31), (6, 12, 13)])
def test_cluster_slots_cpu_equals_torch_ops(batch, seed, n_objects, spatial):
    """The C++ relabelling (CPU) and the torch one (CUDA) agree, with the random anchors of
    the torch anchors; labels up to 10^6, ignored pixels, an empty image, 2D and 3D."""
    n = 80 if n_objects == 1000 else n_objects
    _, _, t = batch(seed % 2**31, B=3, spatial=spatial, D=2, n_objects=n, ignore=0.1, empty=(1,))
    if n_objects == 1000:  # every pixel its own label
        t[0] = torch.randperm(t[0].numel(), generator=torch.Generator().manual_seed(seed % 2**31)).reshape(spatial)
    lab = t.reshape(3, -1)
    f = torch.zeros(3, 2, lab.shape[1])
    keys = torch.rand(lab.shape, generator=torch.Generator().manual_seed(seed % 2**31), dtype=torch.float64)
    keys[0, :7] = keys[0].max()  # ties
    for sparse, ignore in [(True, -1), (False, -1), (True, 0), (False, 7)]:
        t = lab if ignore < 0 else lab.clamp(min=0)  # labels -1 are an error unless ignored
        a = F.cluster_slots(t, f, None, ignore, sparse, keys)
        b = cluster_slots_torch(t, f, None, ignore, sparse, keys)
        C = a[1].shape[1]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), f"seed {seed}"
        used = a[1] >= 0
        assert torch.equal(a[2][used], b[2][used]), f"seed {seed}"
        ref = random_instance_anchors(torch.where(a[0] < 0, C, a[0]), keys, C)
        assert torch.equal(a[2][used], ref[used]), f"seed {seed}"


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
            outs = [fused(t, a, emb, slot, w, nv, a + 0.1, emb * 0.9) for t in TERMS]
            outs += list(F.anchor_pixel_sums_backward(torch.ones(2, 2, 40, device="cuda"), 0, a, emb, None, None,
                                                      slot, w, nv, 0.4, 0.0))
            outs += list(F.segment_sum(emb, slot, 40)) + [F.pull_sums(emb, a, slot, 0.5)]
            runs.append(outs)
        for x, y in zip(*runs):
            assert torch.equal(x, y)
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------ pixel_terms
H = 0.5 / SIGMA2


def terms_inputs(seed, B=3, N=60, C=5, K=4, device="cpu", dtype=torch.float64, empty=True):
    """Embeddings off the origin; slots in [-1, C] (-1 ignored, C unlabeled) in runs, image 1
    without clusters (if empty), slot C-1 unused in image 0; anchor pixels in their clusters."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, 3, N, generator=gen, dtype=torch.float64) + 2.0
    runs = torch.randint(-1, C + 1, (B, (N + 3) // 4), generator=gen)
    slot = runs.repeat_interleave(4, dim=1)[:, :N].contiguous()
    slot[0][slot[0] == C - 1] = C
    if empty and B > 1:
        slot[1] = torch.where(slot[1] >= 0, C, -1)
    keys = torch.rand(B, N, generator=gen, dtype=torch.float64)
    inst_pix = random_instance_anchors(torch.where(slot < 0, C, slot), keys, C)
    cons_pix = torch.randint(0, N, (B, K), generator=gen)
    n_cons = torch.randint(0, K + 1, (B,), generator=gen)
    eg = emb * 0.9 + 0.1 * torch.randn(emb.shape, generator=gen, dtype=torch.float64)
    cast = lambda x: x.to(device=device, dtype=dtype).contiguous()  # noqa: E731
    return cast(emb), slot.to(device), inst_pix.to(device), cons_pix.to(device), cast(eg), n_cons.to(device)


def direct_pixel_terms(emb, slot, C, inst_pix, unlabeled_push, cons_pix, eg, n_cons, h=H, dv=0.5, dd=2.0):
    """pixel_terms from dense torch formulas ((B, C, N) masks; autograd for the gradients)."""
    B, D, N = emb.shape
    onehot = (slot[:, None, :] == torch.arange(C, device=emb.device)[None, :, None]).to(emb.dtype)
    counts = onehot.sum(-1)
    means = torch.bmm(onehot, emb.transpose(1, 2)) / counts.clamp(min=1)[:, :, None]
    rank = torch.arange(1, C + 1, device=emb.device)
    valid = rank[None] <= torch.where(counts > 0, rank, 0).amax(1, keepdim=True)
    dist = lambda a, e: sq_dist(a, e).clamp(min=1e-30).sqrt()  # noqa: E731
    pull = (onehot * (dist(means, emb) - dv).clamp(min=0) ** 2).sum(-1)
    w = ((slot >= 0) & (slot <= C)).to(emb.dtype)[:, None]
    a = means if inst_pix is None else at(emb, inst_pix)
    S = torch.exp(-h * sq_dist(a, emb))
    inst = torch.stack([(w * S * onehot).sum(-1), (w * S * S).sum(-1)]) * valid
    if unlabeled_push:
        u = (slot == C).to(emb.dtype)[:, None]
        up = ((u * (dd - dist(means, emb)).clamp(min=0) ** 2).sum(-1) * valid)[None]
    else:
        up = emb.new_zeros((1, B, 0))
    if cons_pix is None:
        return means, counts, pull, inst, up, emb.new_zeros((3, B, 0))
    K = cons_pix.shape[1]
    sf = torch.exp(-h * sq_dist(at(emb, cons_pix), emb))
    sg = torch.exp(-h * sq_dist(at(eg, cons_pix), eg))
    ok = valid_mask(n_cons, K)
    cons = torch.stack([(w * sf * sg).sum(-1), (w * sf * sf).sum(-1), (w * sg * sg).sum(-1)]) * ok
    return means, counts, pull, inst, up, cons


def at(e, pix):
    return e.gather(2, pix[:, None, :].expand(e.shape[0], e.shape[1], pix.shape[1])).transpose(1, 2)


VARIANTS = {  # (pixel anchors, unlabeled push, consistency)
    "sparse, random anchors": (True, True, True),
    "sparse, mean anchors": (False, True, True),
    "dense, random anchors": (True, False, False),
    "dense, mean anchors": (False, False, False),
}


def variant_args(inputs, variant, C):
    emb, slot, inst_pix, cons_pix, eg, n_cons = inputs
    pix, up, cons = VARIANTS[variant]
    return (slot, C, inst_pix if pix else None, up, cons_pix if cons else None, eg if cons else None,
            n_cons if cons else None)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("C,N", [(1, 50), (2, 60), (50, 400), (1000, 2100)])
def test_pixel_terms_equal_direct_formulas(seed, variant, C, N):
    inputs = terms_inputs(seed % 2**31, B=2 if C == 1000 else 3, N=N, C=C)
    args = variant_args(inputs, variant, C)
    compare(lambda e: F.pixel_terms(e, *args, H, 0.5, 2.0)[:6], lambda e: direct_pixel_terms(e, *args), [inputs[0]],
            seed)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pixel_terms_equal_their_composed_form(seed, variant):
    """The one-kernel CPU op and its composition from the single-term ops (the CUDA
    implementation) agree on the CPU."""
    inputs = terms_inputs(seed % 2**31, N=500, C=7, K=5)
    args = variant_args(inputs, variant, 7)

    def composed(e):
        return ComposedTerms.apply(e, args)[:6]

    compare(lambda e: F.pixel_terms(e, *args, H, 0.5, 2.0)[:6], composed, [inputs[0]], seed)


class ComposedTerms(torch.autograd.Function):
    """_composed_forward with _composed_backward as its backward."""

    @staticmethod
    def forward(ctx, emb, args):
        out = _composed_forward(emb, *args, H, 0.5, 2.0)
        ctx.save_for_backward(emb, out[0], out[1])
        ctx.args = args
        return out

    @staticmethod
    def backward(ctx, gm, gc, gp, gi, gu, gcons, gactive):
        emb, means, counts = ctx.saved_tensors
        slot, C, inst_pix, up, cons_pix, eg, n_cons = ctx.args
        g = _composed_backward(gm, gp, gi, gu, gcons, emb, slot, means, counts, inst_pix, up, cons_pix,
                                             eg, n_cons, H, 0.5, 2.0)
        return g, None


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_unlabeled_push_activity_marks_exactly_the_nonzero_blocks(seed, scale):
    """up_active is 1 exactly where a mean has a non-zero hinge on a block's unlabeled pixels;
    the backward skips the other (mean, block) pairs and still gives the exact gradient."""
    C, N = 6, 3000
    emb, *rest = terms_inputs(seed % 2**31, B=2, N=N, C=C, K=3)
    inputs = (emb * scale, *rest)  # scale 3: many unlabeled pixels beyond delta_d of every mean
    args = variant_args(inputs, "sparse, random anchors", C)
    active = F.pixel_terms(inputs[0], *args, H, 0.5, 2.0)[6]
    slot = inputs[1]
    means, counts = direct_pixel_terms(inputs[0], *args)[:2]
    hinge = (2.0 - sq_dist(means, inputs[0]).sqrt()).clamp(min=0) * (slot == C)[:, None, :]
    nb = -(-N // BLOCK_PIXELS)
    padded = torch.nn.functional.pad(hinge, (0, nb * BLOCK_PIXELS - N))
    expected = (padded.reshape(2, C, nb, BLOCK_PIXELS) > 0).any(-1).to(torch.uint8)
    rank = torch.arange(1, C + 1)
    valid = rank[None] <= torch.where(counts > 0, rank, 0).amax(1, keepdim=True)  # means after the last cluster: none
    expected *= valid[:, :, None]
    assert torch.equal(active, expected), f"seed {seed}"
    if scale == 3.0:
        assert 0 < int(active.sum()) < active.numel(), f"seed {seed}: nothing to skip or nothing kept"
    compare(lambda e: F.pixel_terms(e, *args, H, 0.5, 2.0)[:6], lambda e: direct_pixel_terms(e, *args), [inputs[0]],
            seed)


@pytest.mark.parametrize("device", DEVICES)
def test_pixel_terms_float32(seed, device):
    inputs = terms_inputs(seed % 2**31, N=3000, C=20, K=10)
    args = variant_args(inputs, "sparse, random anchors", 20)
    ref = direct_pixel_terms(inputs[0], *args)
    inputs32 = [x.to(device).float() if x.is_floating_point() else x.to(device) for x in inputs]
    out = F.pixel_terms(inputs32[0], *variant_args(inputs32, "sparse, random anchors", 20), H, 0.5, 2.0)[:6]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-5, atol=1e-5 * max(r.abs().max().item(), 1e-30),
                                   msg=f"seed {seed}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pixel_terms_cuda_equals_cpu(seed, variant):
    inputs = terms_inputs(seed % 2**31, N=2000, C=30, K=8)
    args = variant_args(inputs, variant, 30)
    cuda_args = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in args)

    def on_cuda(e):
        return tuple(o.cpu() for o in F.pixel_terms(e.cuda(), *cuda_args, H, 0.5, 2.0)[:6])

    compare(on_cuda, lambda e: F.pixel_terms(e, *args, H, 0.5, 2.0)[:6], [inputs[0]], seed)


def test_pixel_terms_do_not_depend_on_the_thread_count(seed):
    inputs = terms_inputs(seed % 2**31, B=2, N=20000, C=40, K=10, dtype=torch.float32)
    args = variant_args(inputs, "sparse, random anchors", 40)
    runs = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            e = inputs[0].clone().requires_grad_()
            out = F.pixel_terms(e, *args, H, 0.5, 2.0)
            sum((o * torch.linspace(0.5, 1.5, o.numel()).reshape(o.shape)).sum() for o in out[:6]).backward()
            runs.append([o.detach() for o in out] + [e.grad])
    finally:
        torch.set_num_threads(n)
    for x, y in zip(*runs):
        assert torch.equal(x, y), f"seed {seed}"


def test_pixel_terms_gradcheck_and_opcheck(seed):
    inputs = terms_inputs(seed % 2**31, B=2, N=16, C=3, K=2)
    req = lambda x: x.clone().requires_grad_()  # noqa: E731
    for variant in VARIANTS:
        args = variant_args(inputs, variant, 3)
        fn = lambda e: F.pixel_terms(e, *args, H, 0.5, 2.0)[:6]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (req(inputs[0]),), eps=1e-6, atol=1e-6), variant
        torch.library.opcheck(F.pixel_terms, (req(inputs[0]),) + args + (H, 0.5, 2.0))
        out = F.pixel_terms(inputs[0], *args, H, 0.5, 2.0)
        grads = tuple(torch.randn(o.shape, dtype=torch.float64) for o in out[:6])
        slot, C, inst_pix, up, cons_pix, eg, n_cons = args
        torch.library.opcheck(F.pixel_terms_backward, (grads[0],) + grads[2:] + (
            inputs[0], slot, out[0], out[1], out[6], inst_pix, up, cons_pix, eg, n_cons, H, 0.5, 2.0))
    with pytest.raises(ValueError, match="must be given together"):
        F.pixel_terms(inputs[0], inputs[1], 3, None, True, inputs[3], None, inputs[5], H, 0.5, 2.0)
    with pytest.raises(ValueError, match="inst_pix must have shape"):
        F.pixel_terms(inputs[0], inputs[1], 4, inputs[2], True, None, None, None, H, 0.5, 2.0)




def test_kernel_arguments_are_named_and_a_misspelled_one_is_refused():
    from spoco import _core
    from spoco.ops._kernel import launch
    call = _core.LossCall()
    call.emb, call.B = 123, 4
    assert (call.emb, call.B, call.slot) == (123, 4, 0)  # fields by name; unset pointers stay 0
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(AttributeError):
        launch("all_finite", x, xx=x, n=3)
    assert launch("all_finite", x, x=x, n=3) is True
