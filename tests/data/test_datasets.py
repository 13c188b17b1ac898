"""spoco.data.InstanceDataset: samples, SPOCO@p, reproducibility (also across DataLoader
workers), reading from files, and errors."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from spoco.data import InstanceDataset, io, synthetic_images
from spoco.data.augment import GeometricAugment, PhotometricAugment
from spoco.data.sampling import n_kept, sparsify


def _data(seed, n=3, shape=(48, 56)):
    img, lab = synthetic_images(n, shape, kind="intensity", rng=seed, object_size=14)
    return list(img), list(lab)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("image_f", "image_g", "labels"))


def test_samples_shapes_types_and_views(seed):
    img, lab = _data(seed)
    ds = InstanceDataset(img, lab, patch_shape=(32, 40), seed=seed % 2**32, length=7)
    assert len(ds) == 7
    s = ds[5]
    assert set(s) == {"image_f", "image_g", "labels"}
    assert s["image_f"].shape == s["image_g"].shape == (1, 32, 40) and s["labels"].shape == (32, 40)
    assert s["image_f"].dtype == torch.float32 and s["labels"].dtype == torch.int64
    assert not torch.equal(s["image_f"], s["image_g"]), f"seed {seed}: f and g views identical"
    assert set(torch.unique(s["labels"]).tolist()) <= set(np.unique(lab[5 % 3]).tolist())
    with pytest.raises(IndexError):
        ds[7]
    plain = InstanceDataset(img, lab, patch_shape=(32, 40), augment=False)[0]
    assert torch.equal(plain["image_f"], plain["image_g"])


def test_3d_and_multichannel(seed):
    img, lab = synthetic_images(2, (12, 30, 30), kind="boundary", rng=seed)
    two = [np.concatenate([x, -x]) for x in img]  # (2, Z, Y, X)
    s = InstanceDataset(two, list(lab), patch_shape=(8, 24, 20), seed=1)[1]
    assert s["image_f"].shape == (2, 8, 24, 20) and s["labels"].shape == (8, 24, 20)
    no_channel = InstanceDataset([x[0] for x in img], list(lab), patch_shape=(8, 24, 24))[0]
    assert no_channel["image_f"].shape == (1, 8, 24, 24)


def test_geometry_shared_by_views_and_labels(seed):
    """Intensity = label id: with photometric changes that are affine per view, both
    views are affine functions of the labels away from interpolation borders."""
    rng = np.random.default_rng(seed)
    lab = np.kron(rng.permutation(48).reshape(6, 8) + 1, np.ones((12, 12), np.int64))
    ds = InstanceDataset([lab.astype(np.float32)], [lab], patch_shape=(40, 40), normalize=False, seed=3,
                         augment=(GeometricAugment(), PhotometricAugment(noise=(0, 0), p_blur=0)), length=4)
    for i in range(4):
        s = ds[i]
        y = s["labels"].numpy()
        interior = ndimage.minimum_filter(y, 7, mode="constant") == ndimage.maximum_filter(y, 7, mode="constant")
        assert interior.mean() > 0.05  # enough pixels for the fit below
        coefs = []
        for view in ("image_f", "image_g"):
            v = s[view][0].numpy()[interior]
            A = np.stack([y[interior], np.ones(v.size)], 1).astype(np.float64)
            coef = np.linalg.lstsq(A, v, rcond=None)[0]
            np.testing.assert_allclose(A @ coef, v, atol=1e-3, err_msg=f"seed {seed}")
            coefs.append(coef)
        assert not np.allclose(coefs[0], coefs[1]), f"seed {seed}: same photometric change for f and g"


def test_sparsification_at_construction(seed):
    img, lab = _data(seed, n=4)
    s = seed % 2**32
    ds = InstanceDataset(img, lab, patch_shape=(32, 32), fraction=0.3, seed=s)
    for i, y in enumerate(lab):
        np.testing.assert_array_equal(ds.labels[i], sparsify(y, 0.3, s, image_index=i))
        assert np.unique(ds.labels[i]).size - 1 == n_kept(int(y.max()), 0.3)
    other = InstanceDataset(img, lab, patch_shape=(32, 32), fraction=0.3, seed=s + 1)
    assert any(not np.array_equal(a, b) for a, b in zip(ds.labels, other.labels))
    # Already partial labels (fraction None) are used as they are.
    partial = [np.where(y == 1, 1, 0) for y in lab]
    kept = InstanceDataset(img, partial, patch_shape=(32, 32))
    for a, b in zip(kept.labels, partial):
        np.testing.assert_array_equal(a, b)


def test_reproducible_by_seed_and_epoch(seed):
    img, lab = _data(seed)
    make = lambda s: InstanceDataset(img, lab, patch_shape=(32, 32), fraction=0.5, seed=s, length=5)  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    assert all(_same(a[i], b[i]) for i in range(5))
    assert not any(_same(a[i], c[i]) for i in range(5))
    b.set_epoch(1)
    assert not any(_same(a[i], b[i]) for i in range(5))
    b.set_epoch(0)
    assert _same(a[3], b[3])


def _epoch(ds, generator_seed, workers=2):
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers,
                                         generator=torch.Generator().manual_seed(generator_seed))
    return list(loader)


def test_samples_depend_on_seed_epoch_and_index_only(seed):
    """Whichever worker loads a sample, and whatever the loader's seed, it is the same:
    a resumed training run that skips batches sees the samples of an uninterrupted one."""
    img, lab = _data(seed, n=1)
    ds = InstanceDataset(img, lab, patch_shape=(32, 32), seed=0, length=4)
    first, other, main = _epoch(ds, 5), _epoch(ds, 6), _epoch(ds, 7, workers=0)
    direct = [{k: v[None] for k, v in ds[i].items()} for i in range(4)]  # as batches of one
    assert all(_same(a, b) and _same(a, c) and _same(a, d) for a, b, c, d in zip(first, other, main, direct))
    flat = [torch.cat([s["image_f"].ravel(), s["labels"].ravel().float()]) for s in first]
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i)), "an epoch repeats samples"


def test_small_images_are_padded(seed):
    img, lab = _data(seed, n=1, shape=(20, 24))
    s = InstanceDataset(img, lab, patch_shape=(32, 30), augment=False)[0]
    assert s["image_f"].shape == (1, 32, 30)
    y = s["labels"].numpy()
    assert np.all(y[:6] == 0) and np.all(y[-6:] == 0) and np.all(y[:, :3] == 0) and np.all(y[:, -3:] == 0)


def test_from_folders_and_files(tmp_path, seed):
    img, lab = _data(seed, n=2)
    (tmp_path / "im").mkdir(), (tmp_path / "lb").mkdir()
    for i, (x, y) in enumerate(zip(img, lab)):
        io.write_array(tmp_path / "im" / f"s{i}.tif", x[0])
        io.write_array(tmp_path / "lb" / f"s{i}.png", y.astype(np.uint16))
        io.write_array(tmp_path / "all.h5", x, key=f"raw/{i}")
        io.write_array(tmp_path / "all.h5", y, key=f"labels/{i}")
    a = InstanceDataset.from_folders(tmp_path / "im", tmp_path / "lb", patch_shape=(32, 32), seed=4)
    b = InstanceDataset(img, lab, patch_shape=(32, 32), seed=4)
    assert all(_same(a[i], b[i]) for i in range(2))
    c = InstanceDataset.from_files([f"{tmp_path / 'all.h5'}:raw/{i}" for i in range(2)],
                                   [f"{tmp_path / 'all.h5'}:labels/{i}" for i in range(2)],
                                   patch_shape=(32, 32), seed=4)
    assert all(_same(a[i], c[i]) for i in range(2))
    io.write_array(tmp_path / "im.zarr", img[0], key="raw")
    io.write_array(tmp_path / "lb.zarr", lab[0])
    z = InstanceDataset.from_files([tmp_path / "im.zarr"], [tmp_path / "lb.zarr"], key="raw", patch_shape=(32, 32),
                                   seed=4)
    assert _same(z[0], b[0])
    d = InstanceDataset.from_files([tmp_path / "all.h5"], [tmp_path / "all.h5"], key="raw/1", label_key="labels/1",
                                   patch_shape=(32, 32))
    np.testing.assert_array_equal(d.labels[0], lab[1])


def test_errors_name_the_file(tmp_path):
    io.write_array(tmp_path / "a.tif", np.zeros((20, 20), np.float32))
    io.write_array(tmp_path / "a_lab.tif", np.ones((20, 21), np.uint16))
    io.write_array(tmp_path / "empty.tif", np.zeros((20, 20), np.uint16))
    io.write_array(tmp_path / "neg.tif", -np.ones((20, 20), np.int32))
    io.write_array(tmp_path / "float.tif", np.full((20, 20), 1.5, np.float32))
    io.write_array(tmp_path / "whole.tif", np.ones((20, 20), np.float32))  # integer ids stored as floats
    kw = dict(patch_shape=(16, 16))
    for label_file, err, match in [("a_lab.tif", ValueError, r"a_lab\.tif.*\(20, 21\) do not match.*\(20, 20\)"),
                                   ("neg.tif", ValueError, r"neg\.tif.*negative"),
                                   ("float.tif", TypeError, r"float\.tif.*integers")]:
        with pytest.raises(err, match=match):
            InstanceDataset.from_files([tmp_path / "a.tif"], [tmp_path / label_file], **kw)
    ds = InstanceDataset.from_files([tmp_path / "a.tif"], [tmp_path / "whole.tif"], **kw)
    assert ds[0]["labels"].dtype == torch.int64 and ds[0]["labels"].max() == 1
    y = np.ones((20, 20), np.int64)
    with pytest.raises(ValueError, match="images\\[1\\]: 2 channels, but images\\[0\\] has 1"):
        InstanceDataset([np.zeros((20, 20)), np.zeros((2, 20, 20))], [y, y], **kw)
    with pytest.raises(ValueError, match="neither"):
        InstanceDataset([np.zeros((1, 1, 20, 20))], [y], **kw)
    with pytest.raises(ValueError, match="2 images but 1 label"):
        InstanceDataset([y, y], [y], **kw)
    with pytest.raises(ValueError, match="empty"):
        InstanceDataset([], [], **kw)
    for bad in [(16,), (0, 16), (16, 16.5), 16]:
        with pytest.raises(ValueError, match="patch_shape"):
            InstanceDataset([y], [y], patch_shape=bad)
    with pytest.raises(ValueError, match="fraction"):
        InstanceDataset([y], [y], fraction=0, **kw)
    with pytest.raises(ValueError, match="length"):
        InstanceDataset([y], [y], length=0, **kw)
    with pytest.raises(ValueError, match="seed"):
        InstanceDataset([y], [y], seed=-1, **kw)


def test_label_images_without_objects_are_accepted(rng):
    # Real screens have empty fields of view: they train the unlabeled terms only.
    image, empty = rng.random((40, 40)), np.zeros((40, 40), np.int64)
    full = np.zeros((40, 40), np.int64)
    full[5:15, 5:15] = 3
    for fraction in (None, 0.5):
        ds = InstanceDataset([image, image], [empty, full], patch_shape=(16, 16), fraction=fraction, length=8)
        items = [ds[i] for i in range(8)]
        assert all(it["labels"].max() == 0 for it in items[0::2])
        assert (ds.labels[0] == 0).all()


def test_patches_hold_a_labelled_pixel_at_varied_places(rng, seed):
    lab = np.zeros((200, 200), np.int64)
    lab[100, 100] = 1  # one labelled pixel: every anchored window must contain it
    ds = InstanceDataset([rng.random((200, 200))], [lab], patch_shape=(32, 32), augment=False, length=400, seed=1)
    positions = [tuple(np.argwhere(ds[i]["labels"].numpy())[0]) for i in range(400) if ds[i]["labels"].max() > 0]
    assert 0.7 < len(positions) / 400 < 0.9, seed  # anchored with probability 0.8
    rows = {p[0] for p in positions}
    assert len(rows) > 20  # not always the centre of the patch


def test_background_scribbles_survive_sparsification_and_become_minus_two(rng, seed):
    from spoco.foreground import BACKGROUND_SCRIBBLE

    labels = np.zeros((40, 40), np.uint16)
    for k in range(8):  # eight 5x5 objects
        labels[5 * k:5 * k + 5, 5 * k:5 * k + 5] = k + 1
    labels[30:33, 0:20] = 9999  # a stroke of painted background
    image = rng.random((40, 40)).astype(np.float32)
    ds = InstanceDataset([image], [labels], patch_shape=(40, 40), fraction=0.25, seed=int(seed % 2**31),
                         augment=False, background_label=9999)
    objects = ds.object_labels()[0]
    assert len(np.unique(objects[objects > 0])) == 2, seed  # 25 % of 8; the stroke is no object
    assert ds.scribble_pixels == 60
    item = ds[0]["labels"].numpy()
    assert (item == BACKGROUND_SCRIBBLE).sum() == 60 and (item[30:33, 0:20] == BACKGROUND_SCRIBBLE).all(), seed
    assert set(np.unique(item)) - {0, BACKGROUND_SCRIBBLE} == set(np.unique(objects[objects > 0]))
    plain = InstanceDataset([image], [labels], patch_shape=(40, 40), augment=False)
    assert plain.scribble_pixels == 0 and (plain[0]["labels"].numpy() == 9999).sum() == 60


def _border_reference(lab: np.ndarray, width: int) -> np.ndarray:
    """Unlabeled pixels within ``width`` 4-connected steps of an object: by grid distance,
    pixel by pixel (the slow, obvious way)."""
    objects = np.argwhere(lab > 0)
    out = np.zeros(lab.shape, bool)
    for p in np.argwhere(lab == 0):
        out[tuple(p)] = objects.size > 0 and np.abs(objects - p).sum(axis=1).min() <= width
    return out


@pytest.mark.parametrize("width", [1, 2, 3])
def test_border_background_paints_the_ring_around_kept_objects(rng, seed, width):
    from spoco.foreground import BACKGROUND_SCRIBBLE

    labels = np.zeros((30, 30), np.uint8)
    for k in range(6):  # six objects of random size and place; later ones may cover earlier
        y, x, h, w = rng.integers(0, 26, 2).tolist() + rng.integers(1, 6, 2).tolist()
        labels[y:y + h, x:x + w] = k + 1
    labels[0, 0] = 255  # the new id must not overflow uint8
    ds = InstanceDataset([rng.random((30, 30))], [labels], patch_shape=(30, 30), fraction=0.5,
                         seed=int(seed % 2**31), augment=False, border_background=width)
    objects = ds.object_labels()[0]
    item = ds[0]["labels"].numpy()
    expected = _border_reference(objects, width)
    assert np.array_equal(item == BACKGROUND_SCRIBBLE, expected), seed
    assert np.array_equal(np.where(expected, 0, item), objects), seed  # objects untouched
    assert ds.scribble_pixels == expected.sum()


def test_border_background_adds_to_scribbles(rng):
    from spoco.foreground import BACKGROUND_SCRIBBLE

    labels = np.zeros((20, 20), np.int32)
    labels[5:8, 5:8] = 1
    labels[15, :] = 7  # a stroke of painted background, far from the object
    ds = InstanceDataset([rng.random((20, 20))], [labels], patch_shape=(20, 20), augment=False,
                         background_label=7, border_background=1)
    item = ds[0]["labels"].numpy()
    assert (item[15] == BACKGROUND_SCRIBBLE).all() and (item == BACKGROUND_SCRIBBLE).sum() == 20 + 12
