"""Anchor selection (random_instance_anchors and the torch draw of Eq. 7 anchors) against the reference loops and the coverage rule of Eq. 7."""
import pytest
import torch

from spoco.loss import reference
from spoco.loss.reference import pick
from spoco.loss.torch_sums import draw_consistency_anchors
from spoco.ops.cluster_slots import random_instance_anchors

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def keys_for(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_random_instance_anchors_match_reference_and_lie_in_their_object():
    gen = torch.Generator().manual_seed(0)
    B, N, C = 3, 50, 6
    slot = torch.randint(0, C + 1, (B, N), generator=gen)
    slot[1] = C  # an image without clusters
    keys = keys_for((B, N), 1)
    keys[0, :10] = 0.5  # ties: the lowest pixel index wins
    pix = random_instance_anchors(slot, keys, C)
    for b in range(B):
        for k in range(C):
            members = torch.nonzero(slot[b] == k)[:, 0]
            if len(members):
                assert int(pix[b, k]) == pick(members, keys[b])
                assert slot[b, pix[b, k]] == k


def test_random_instance_anchor_is_uniform_over_the_object():
    slot = torch.tensor([[1, 0, 0, 1, 0, 2, 0]])  # object (slot) 0 has 4 pixels
    draws = torch.stack([random_instance_anchors(slot, keys_for(slot.shape, s), 3)[0, 0]
                         for s in range(2000)])
    counts = torch.bincount(draws, minlength=7)
    assert counts[[0, 3, 5]].sum() == 0
    assert ((counts[[1, 2, 4, 6]] - 500).abs() < 90).all()  # ~4 sigma


def groups(sizes_and_positions, D=2):
    """Unlabeled pixels in groups: (size, f position, g position) -> emb_f, emb_g (1, D, N), group id per pixel."""
    ef, eg, gid = [], [], []
    for i, (n, pf, pg) in enumerate(sizes_and_positions):
        ef += [[pf] + [0.0] * (D - 1)] * n
        eg += [[pg] + [0.0] * (D - 1)] * n
        gid += [i] * n
    to = lambda e: torch.tensor(e, dtype=torch.float64).T[None]  # noqa: E731
    return to(ef), to(eg), torch.tensor(gid)


def select(ef, eg, unl, seed, K=20, stop=0.05):
    return draw_consistency_anchors(ef, eg, unl, keys_for(unl.shape, seed), K, 0.5, stop)


def test_coverage_is_the_union_of_f_and_g_balls():
    # A and B are far apart in f but coincide in g: one anchor covers both
    ef, eg, _ = groups([(10, 0.0, 0.0), (10, 5.0, 0.0)])
    unl = torch.ones(1, 20, dtype=torch.bool)
    for seed in range(5):
        pix, ok = select(ef, eg, unl, seed)
        assert ok.sum() == 1
    ef, eg, gid = groups([(10, 0.0, 0.0), (10, 5.0, 5.0)])
    pix, ok = select(ef, eg, unl, 0)
    assert ok.sum() == 2 and set(gid[pix[0, :2]].tolist()) == {0, 1}


def test_stops_when_less_than_5_percent_of_the_unlabeled_region_is_uncovered():
    ef, eg, gid = groups([(60, 0.0, 0.0), (39, 5.0, 5.0), (1, 10.0, 10.0)])
    unl = torch.ones(1, 100, dtype=torch.bool)
    seen = set()
    for seed in range(40):
        pix, ok = select(ef, eg, unl, seed)
        chosen = gid[pix[0, ok[0]]].tolist()
        assert len(set(chosen)) == len(chosen)  # every anchor opens a new group
        assert set(chosen) >= {0, 1} and len(chosen) == (3 if 2 in chosen else 2)  # the singleton is 1% < 5%
        seen.add(len(chosen))
    assert 2 in seen
    pix, ok = select(ef, eg, unl, 0, stop=0.0)
    assert ok.sum() == 3  # without the 5% rule every group gets an anchor
    pix, ok = select(ef, eg, unl, 0, K=1)
    assert ok.sum() == 1  # K is an upper bound


def test_no_unlabeled_pixels_no_anchors():
    ef, eg, _ = groups([(5, 0.0, 0.0)])
    pix, ok = select(ef, eg, torch.zeros(1, 5, dtype=torch.bool), 0)
    assert not ok.any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistency_anchors_match_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    B, D, N = 3, 3, 120
    ef = torch.randn(B, D, N, generator=gen, dtype=torch.float64) * 0.6
    eg = ef + 0.3 * torch.randn(B, D, N, generator=gen, dtype=torch.float64)
    unl = torch.rand(B, N, generator=gen) < 0.6
    unl[2] = False
    keys = keys_for((B, N), seed + 10)
    pix, ok = draw_consistency_anchors(ef, eg, unl, keys, 20, 0.5, 0.05)
    assert not (ok[:, 1:] & ~ok[:, :-1]).any()  # the drawn anchors are a prefix
    for b in range(B):
        ref = reference.consistency_anchors(ef[b], eg[b], unl[b], keys[b], 20, 0.5, 0.05)
        assert pix[b, ok[b]].tolist() == ref
        assert unl[b, pix[b, ok[b]]].all()
    assert ok[:2].sum(1).min() >= 2
