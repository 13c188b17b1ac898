"""spoco.data.augment: geometry moves image and labels together; photometric
changes keep geometry; normalisation and the resampling against exact references."""
import numpy as np
import pytest
from scipy import ndimage

from spoco.data.augment import GeometricAugment, PhotometricAugment, warp
from spoco.data.normalize import normalize_image


def checkerboard(shape, block, rng):
    """Labels: blocks of ``block`` pixels with distinct random ids; image: two
    channels whose intensities encode the label (``id`` and ``-2·id``)."""
    grid = np.indices(shape).reshape(len(shape), -1) // block
    nblocks = [-(-s // block) for s in shape]
    block_id = np.ravel_multi_index(tuple(grid), nblocks).reshape(shape)
    ids = rng.permutation(np.prod(nblocks)) + 1
    labels = ids[block_id].astype(np.int64)
    image = np.stack([labels, -2 * labels]).astype(np.float32)
    return image, labels


STRONG = GeometricAugment(scale=(0.7, 1.4), elastic_alpha=3.0, elastic_sigma=8.0, p_elastic=1.0)


@pytest.mark.parametrize("shape, block", [((64, 80), 8), ((20, 40, 40), 6)])
def test_geometry_keeps_image_and_labels_aligned(shape, block, rng, seed):
    image, labels = checkerboard(shape, block, rng)
    # Extra channels: the pixel coordinates. Linear interpolation is exact on them,
    # so after the transform they say where in the input each output pixel came from.
    image = np.concatenate([image, np.indices(shape, dtype=np.float32)])
    d = len(shape)
    moved = 0
    for _ in range(4):
        out, lab = STRONG(image, labels, rng)
        assert out.shape == image.shape and lab.shape == labels.shape and lab.dtype == labels.dtype
        assert set(np.unique(lab)) <= set(np.unique(labels)), f"seed {seed}: labels blended"
        src = out[2:]
        inside = np.all([(c >= 0) & (c <= s - 1) for c, s in zip(src, shape)], axis=0)
        # Labels: exactly the input label at the nearest source pixel.
        nearest = tuple(np.clip(np.rint(c).astype(int), 0, s - 1) for c, s in zip(src, shape))
        np.testing.assert_array_equal(lab[inside], labels[nearest][inside], err_msg=f"seed {seed}")
        # Image: where all 2^d pixels that the interpolation mixes lie in one block
        # (away from interpolation borders), its intensity is the pixel's label.
        lo = [np.floor(c).astype(int) for c in src]
        one_block = inside & np.all([(f // block) == ((f + 1) // block) for f in lo], axis=0)
        assert one_block.mean() > 0.3, f"seed {seed}: only {one_block.mean():.2f} checked"
        np.testing.assert_allclose(out[0][one_block], lab[one_block], rtol=1e-5, err_msg=f"seed {seed}")
        np.testing.assert_allclose(out[1][one_block], -2 * lab[one_block], rtol=1e-5, err_msg=f"seed {seed}")
        moved += not np.array_equal(lab, labels)
        assert d == src.shape[0]
    assert moved >= 3, f"seed {seed}: the transform left the labels in place"


def test_flips_and_rotations_are_exact_and_cover_all_cases(rng):
    image, labels = checkerboard((12, 12), 3, rng)
    aug = GeometricAugment(scale=(1, 1), elastic_alpha=0)
    candidates = [np.rot90(f, k) for k in range(4) for f in (labels, labels[::-1], labels[:, ::-1], labels[::-1, ::-1])]
    seen = set()
    for _ in range(120):  # misses one of the 8 with probability 8·(7/8)^120 < 1e-6
        out, lab = aug(image, labels, rng)
        match = [i for i, c in enumerate(candidates) if np.array_equal(c, lab)]
        assert match, "not a flip/rotation of the input"
        np.testing.assert_array_equal(out[0], lab)
        seen.add(lab.tobytes())
    assert len(seen) == 8  # the dihedral group of the square
    # Non-square: only 180° turns, shape kept.
    image, labels = checkerboard((10, 14), 3, rng)
    for _ in range(10):
        out, lab = aug(image, labels, rng)
        assert lab.shape == (10, 14)
        np.testing.assert_array_equal(out[0], lab)


def test_warp_against_exact_references(rng):
    # Identity.
    img = rng.random((2, 15, 17)).astype(np.float32)
    out, _ = warp(img, None, (15, 17))
    np.testing.assert_allclose(out, img, atol=1e-6)
    # Linear interpolation is exact on ramps: zooming by s about the centre
    # divides the slope by s; a constant displacement shifts the ramp.
    s = rng.uniform(0.6, 1.8)  # sources stay inside: 20 ± 10/0.6 ± 1
    yy, xx = np.indices((41, 43), dtype=np.float32)
    ramp = (0.5 * yy + 0.25 * xx)[None]
    d = rng.uniform(-1, 1, 2).astype(np.float32)
    disp = np.broadcast_to(d[:, None, None], (2, 21, 21)).copy()
    out, _ = warp(ramp, None, (21, 21), scale=s, displacement=disp)
    oy, ox = np.indices((21, 21), dtype=np.float32)
    y_in = 20 + (oy - 10) / s + d[0]
    x_in = 21 + (ox - 10) / s + d[1]
    np.testing.assert_allclose(out[0], 0.5 * y_in + 0.25 * x_in, atol=1e-4)


def test_photometric_views_differ_but_do_not_move(rng, seed):
    image, labels = checkerboard((48, 48), 8, rng)
    image = image / np.abs(image).max()
    aug = PhotometricAugment(noise=(0.0, 0.0), p_blur=0.0)  # affine per channel only
    f, g = aug(image, rng), aug(image, rng)
    assert f.shape == image.shape and f.dtype == np.float32
    assert not np.allclose(f, g), f"seed {seed}: f and g identical"
    for view in (f, g):
        for c in range(2):  # per-channel affine map of the input: nothing moved
            A = np.stack([image[c].ravel(), np.ones(image[c].size)], 1)
            coef, res, *_ = np.linalg.lstsq(A, view[c].ravel(), rcond=None)
            np.testing.assert_allclose(A @ coef, view[c].ravel(), atol=1e-5, err_msg=f"seed {seed}")
    # Blur keeps an impulse's centre of mass; noise has the requested scale.
    impulse = np.zeros((1, 33, 33), np.float32)
    impulse[0, 16, 16] = 1
    blurred = PhotometricAugment(noise=(0, 0), p_blur=1.0, brightness=0, contrast=(1, 1))(impulse, rng)
    np.testing.assert_allclose(ndimage.center_of_mass(blurred[0]), (16, 16), atol=1e-4)
    assert blurred.max() < 0.99 and blurred[0, 16, 17] > 1e-4  # spread, not moved
    noisy = PhotometricAugment(noise=(0.2, 0.2), p_blur=0, brightness=0, contrast=(1, 1))(np.zeros((1, 64, 64)), rng)
    assert 0.18 < noisy.std() < 0.22


def test_photometric_is_driven_by_the_generator(seed):
    x = np.random.default_rng(seed).random((3, 8, 16, 16)).astype(np.float32)
    aug = PhotometricAugment()
    np.testing.assert_array_equal(aug(x, np.random.default_rng(seed)), aug(x, np.random.default_rng(seed)))
    assert not np.array_equal(aug(x, np.random.default_rng(seed)), aug(x, np.random.default_rng(seed + 1)))


def test_normalize_image_is_per_channel_and_robust(rng):
    x = np.stack([rng.normal(100, 5, (40, 40)), rng.normal(-3, 0.1, (40, 40))]).astype(np.float32)
    x[0, 3, 3] = 1e6  # hot pixel
    y = normalize_image(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    for c in range(2):
        lo, hi = np.percentile(x[c], [1, 99.8])
        np.testing.assert_allclose(y[c], (x[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
        assert 0.3 < np.median(y[c]) < 0.7  # the hot pixel does not set the scale
    assert np.all(normalize_image(np.full((1, 5, 5), 7.0)) == 0)


def test_label_resampling_picks_the_pixels_of_nearest_neighbour_map_coordinates(rng):
    # warp reads labels by indexing; its pixel choice must be map_coordinates(order=0, mode="nearest")'s:
    # coordinates clamped to the array, then rounded half up (exact halves and far outside included).
    for trial in range(200):
        nd = 2 + trial % 2
        shape = tuple(int(n) for n in rng.integers(2, 16, nd))
        out_shape = tuple(int(n) for n in rng.integers(1, 12, nd))
        labels = rng.integers(-3, 40, shape)
        img = rng.random((1,) + shape).astype(np.float32)
        high = np.asarray(shape, dtype=np.float64).reshape((nd,) + (1,) * nd)
        disp = rng.uniform(-4, 4, (nd,) + out_shape) * (high / 4)
        if trial % 4 == 0:
            disp = np.round(2 * disp) / 2  # coordinates on exact halves
        scale = float(rng.uniform(0.5, 2))
        _, got = warp(img, labels, out_shape, scale=scale, displacement=disp.astype(np.float32))
        c_in = (np.asarray(shape, dtype=np.float32) - 1) / 2
        c_out = (np.asarray(out_shape, dtype=np.float32) - 1) / 2
        coords = np.indices(out_shape, dtype=np.float32)
        coords -= c_out.reshape((nd,) + (1,) * nd)
        coords /= np.float32(scale)
        coords += c_in.reshape((nd,) + (1,) * nd)
        coords += disp.astype(np.float32)
        expected = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")
        assert got.dtype == labels.dtype
    # ids beyond float64's exact integers pass unchanged
    big = np.array([[2**62 + 1, 2**62 + 3], [-(2**62) - 5, 7]], dtype=np.int64)
    _, got = warp(np.zeros((1, 2, 2), np.float32), big, (2, 2))
    np.testing.assert_array_equal(got, big)
