"""Default-path building blocks (spoco.loss.torch_sums) against direct autograd formulas; chunking; memory."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spoco.loss.torch_sums as L
from spoco.loss.terms import push_per_image

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIGMA2 = 1.1864


def data(seed=0, B=2, D=3, N=40, K=7, ignore=True):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, N, generator=gen, dtype=torch.float64) + 3.0  # off-centre on purpose
    anchors = emb[:, :, torch.randperm(N, generator=gen)[:K]].transpose(1, 2) + 0.2 * torch.randn(
        B, K, D, generator=gen, dtype=torch.float64)
    slot = torch.randint(0, K + 1, (B, N), generator=gen)
    weight = (torch.rand(B, N, generator=gen) > 0.2).double() if ignore else None
    return emb, anchors, slot, weight


def pairwise_d(a, e):
    return ((e[:, None, :, :] - a[:, :, :, None]) ** 2).sum(2)  # (B, K, N)


def w_or_1(weight, like):
    return torch.ones_like(like[:, 0]) if weight is None else weight


def direct_soft_mask(a, e, slot, weight):
    S = torch.exp(-pairwise_d(a, e) / (2 * SIGMA2))
    w = w_or_1(weight, e)[:, None]
    inside = slot[:, None, :] == torch.arange(a.shape[1])[None, :, None]
    return (w * S * inside).sum(-1), (w * S * S).sum(-1)


def direct_bce(a, e, slot, weight):
    x = pairwise_d(a, e) / (2 * SIGMA2)
    inside = slot[:, None, :] == torch.arange(a.shape[1])[None, :, None]
    loss = torch.where(inside, x, -torch.log(-torch.expm1(-x))).clamp(max=100)
    return (w_or_1(weight, e)[:, None] * loss).sum(-1)


def direct_upush(a, e, unl):
    r = torch.linalg.vector_norm(e[:, None, :, :] - a[:, :, :, None], dim=2)
    return (unl[:, None] * (2.0 - r).clamp(min=0) ** 2).sum(-1)


def compare(fast, slow, inputs, seed=1):
    """Values and gradients (with random upstream weights) of ``fast`` and ``slow`` agree."""
    outs = []
    for fn in (fast, slow):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        out = fn(*xs)
        out = out if isinstance(out, tuple) else (out,)
        gen = torch.Generator().manual_seed(seed)
        (sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out)).backward()
        outs.append(([o.detach() for o in out], [x.grad for x in xs]))
    for a, b in zip(outs[0][0] + outs[0][1], outs[1][0] + outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("chunk", [1, 200, 10**7])
@pytest.mark.parametrize("ignore", [True, False])
def test_soft_mask_sums(monkeypatch, chunk, ignore):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk)
    emb, a, slot, w = data(ignore=ignore)
    compare(lambda a, e: L.soft_mask_sums(a, e, slot, w, SIGMA2), lambda a, e: direct_soft_mask(a, e, slot, w),
            [a, emb])


@pytest.mark.parametrize("chunk", [1, 10**7])
def test_soft_mask_bce_sums(monkeypatch, chunk):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk)
    emb, a, slot, w = data(2)
    compare(lambda a, e: L.soft_mask_bce_sums(a, e, slot, w, SIGMA2), lambda a, e: direct_bce(a, e, slot, w),
            [a, emb])


@pytest.mark.parametrize("chunk", [1, 10**7])
def test_consistency_sums(monkeypatch, chunk):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk)
    emb, a, _, w = data(3)
    eg = emb + 0.3 * torch.randn_like(emb)
    ag = a + 0.1

    def direct(a, e):
        sf = torch.exp(-pairwise_d(a, e) / (2 * SIGMA2))
        sg = torch.exp(-pairwise_d(ag, eg) / (2 * SIGMA2))
        return (w[:, None] * sf * sg).sum(-1), (w[:, None] * sf * sf).sum(-1), (w[:, None] * sg * sg).sum(-1)

    compare(lambda a, e: L.consistency_sums(a, e, ag, eg, w, SIGMA2), direct, [a, emb])


@pytest.mark.parametrize("chunk", [1, 10**7])
def test_unlabeled_push_sums(monkeypatch, chunk):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk)
    emb, a, _, w = data(4)
    compare(lambda a, e: L.unlabeled_push_sums(a, e, w, 2.0), lambda a, e: direct_upush(a, e, w), [a, emb])


def test_segment_means_pull_push():
    emb, _, slot, _ = data(5, K=5)
    C = 5

    def direct(e):
        means = torch.stack([torch.stack([e[b][:, slot[b] == k].mean(1) if (slot[b] == k).any()
                                          else torch.zeros(e.shape[1], dtype=e.dtype) for k in range(C)])
                             for b in range(e.shape[0])])
        pull = torch.stack([torch.stack([((torch.linalg.vector_norm(e[b][:, slot[b] == k] - means[b, k][:, None], dim=0)
                                           - 0.5).clamp(min=0) ** 2).sum() for k in range(C)])
                            for b in range(e.shape[0])])
        return means, pull

    def fast(e):
        means, counts = L.segment_means(e, slot, C)
        return means, L.pull_per_instance(e, means, slot, 0.5)

    compare(fast, direct, [emb])
    means = torch.randn(3, 4, 2, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    push = push_per_image(means, valid, 2.0)
    for b in range(3):
        ks = torch.nonzero(valid[b])[:, 0].tolist()
        terms = [(4 - torch.linalg.vector_norm(means[b, k] - means[b, l])).clamp(min=0) ** 2
                 for k in ks for l in ks if k != l]
        expected = sum(terms) / (len(ks) * (len(ks) - 1)) if len(ks) > 1 else torch.tensor(0.0, dtype=torch.float64)
        torch.testing.assert_close(push[b], expected)


def test_gradcheck_chunked_functions(monkeypatch):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 2 * 15 * 2)
    emb, a, slot, w = data(6, N=15, K=5)
    eg, ag = emb.flip(-1), a.flip(1)
    checks = [
        lambda a, e: L.soft_mask_sums(a, e, slot, w, SIGMA2),
        lambda a, e: L.soft_mask_bce_sums(a, e, slot, w, SIGMA2),
        lambda a, e: L.consistency_sums(a, e, ag, eg, w, SIGMA2)[:2],
        lambda a, e: L.unlabeled_push_sums(a, e, w, 2.0),
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (a.clone().requires_grad_(), emb.clone().requires_grad_()))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_anchor_pixel_work_is_chunked(monkeypatch):
    B, D, N, K = 2, 3, 500, 60
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", B * N * 4)
    emb, a, slot, w = data(7, B=B, D=D, N=N, K=K)
    emb.requires_grad_()
    a.requires_grad_()
    with _LargestTensor() as mode:
        inter, sq = L.soft_mask_sums(a, emb, slot, w, SIGMA2)
        up = L.unlabeled_push_sums(a, emb, w, 2.0)
        cross, sf, _ = L.consistency_sums(a, emb, a.detach(), emb.detach() + 1, w, SIGMA2)
        (inter.sum() + sq.sum() + up.sum() + cross.sum() + sf.sum()).backward()
    assert mode.largest <= max(B * (D + 2) * N, B * N * 4) < B * K * N


def test_no_anchors_gives_zero_gradient():
    emb, a, slot, w = data(8, K=0)
    emb.requires_grad_()
    inter, sq = L.soft_mask_sums(a, emb, torch.zeros_like(slot), w, SIGMA2)
    up = L.unlabeled_push_sums(a, emb, w, 2.0)
    assert inter.shape == sq.shape == up.shape == (2, 0)
    (inter.sum() + sq.sum() + up.sum() + 0 * emb.sum()).backward()
    assert torch.count_nonzero(emb.grad) == 0
