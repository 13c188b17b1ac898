"""spoco.data.sampling: SPOCO@p per image and a fixed annotation budget over a dataset (A.5)."""
import numpy as np
import pytest
import torch

from spoco.data.synthetic import random_instances
from spoco.data.sampling import n_kept, sparsify, sparsify_budget


def image(seed, n=12, shape=(20, 22)):
    lab = random_instances(shape, n, background=0.2, rng=seed)
    return np.where(lab > 0, lab * 7 + 100, 0)  # non-consecutive ids


def objects(lab):
    ids = np.unique(np.asarray(lab))
    return set(ids[ids > 0].tolist())


@pytest.mark.parametrize("n,p,expected", [(10, 0.1, 1), (10, 0.25, 3), (10, 0.24, 2), (3, 0.1, 1), (5, 0.5, 3),
                                          (7, 1.0, 7), (0, 0.5, 0), (1, 0.01, 1)])
def test_number_kept(n, p, expected):
    assert n_kept(n, p) == expected


@pytest.mark.parametrize("p", [0.1, 0.4, 1.0])
def test_keeps_round_p_n_objects_untouched(p):
    lab = image(0)
    out = sparsify(lab, p, seed=3, image_index=5)
    kept = objects(out)
    assert len(kept) == n_kept(len(objects(lab)), p) and kept <= objects(lab)
    for k in kept:
        assert np.array_equal(out == k, lab == k)  # kept objects keep their pixels and ids
    assert np.all(out[~np.isin(lab, list(kept))] == 0)  # the rest (and the background) is unlabeled
    assert out.dtype == lab.dtype and out.shape == lab.shape


def test_fraction_one_keeps_every_object_and_background_is_unlabeled():
    lab = image(1)
    assert np.array_equal(sparsify(lab, 1.0), lab)


def test_reproducible_per_seed_and_image_index():
    lab = image(2, n=30)
    a = sparsify(lab, 0.3, seed=7, image_index=4)
    assert np.array_equal(a, sparsify(lab, 0.3, seed=7, image_index=4))
    others = [objects(sparsify(lab, 0.3, seed=7, image_index=i)) for i in range(6)]
    assert len({frozenset(o) for o in others}) > 1  # different images draw differently
    assert objects(sparsify(lab, 0.3, seed=8, image_index=4)) != objects(a) or \
        objects(sparsify(lab, 0.3, seed=9, image_index=4)) != objects(a)


def test_torch_in_torch_out_and_ignore_index():
    lab = image(3)
    lab[:2] = 255
    t = torch.from_numpy(lab).to(torch.int32)
    out = sparsify(t, 0.5, seed=1, ignore_index=255)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32 and out.device == t.device
    assert np.array_equal(out.numpy(), sparsify(lab, 0.5, seed=1, ignore_index=255))
    assert (out[:2] == 255).all()  # ignored pixels stay, and 255 is never counted as an object
    assert len(objects(out.numpy()) - {255}) == n_kept(len(objects(lab) - {255}), 0.5)


def test_image_without_objects():
    empty = np.zeros((5, 6), dtype=np.int64)
    assert np.array_equal(sparsify(empty, 0.3), empty)


def test_sparsify_errors():
    lab = image(4)
    for p in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction must be a number in"):
            sparsify(lab, p)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        sparsify(lab.astype(float), 0.5)
    with pytest.raises(ValueError, match="negative labels"):
        sparsify(lab - 200, 0.5)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        sparsify(lab, 0.5, seed=-1)


def test_budget_spreads_over_images():
    data = [image(s, n=6) for s in range(10)] + [np.zeros((20, 22), dtype=np.int64)]
    for n in (4, 10, 17):
        out = sparsify_budget(data, n, seed=2)
        counts = [len(objects(o)) for o in out]
        assert sum(counts) == n and counts[-1] == 0
        assert max(counts[:-1]) - min(counts[:-1]) <= 1  # as even as possible
        if n <= 10:
            assert set(counts) <= {0, 1}  # the paper's setting: N files, one object each
        for o, lab in zip(out, data):
            assert objects(o) <= objects(lab)
            for k in objects(o):
                assert np.array_equal(o == k, lab == k)
    assert all(np.array_equal(a, b) for a, b in zip(sparsify_budget(data, 10, seed=2), sparsify_budget(data, 10, 2)))


def test_budget_uniform_and_torch():
    data = [torch.from_numpy(image(s, n=6)) for s in range(5)]
    out = sparsify_budget(data, 12, seed=0, spread="uniform")
    assert all(isinstance(o, torch.Tensor) for o in out)
    assert sum(len(objects(o.numpy())) for o in out) == 12
    total = sum(len(objects(d.numpy())) for d in data)
    assert sum(len(objects(o.numpy())) for o in sparsify_budget(data, total, seed=0)) == total
    with pytest.raises(ValueError, match=rf"n_objects must be an integer in \[0, {total}\]"):
        sparsify_budget(data, total + 1)
    with pytest.raises(ValueError, match="spread must be one of"):
        sparsify_budget(data, 3, spread="dense")
