"""spoco.data.synthetic.synthetic_images: shapes, determinism, label conventions and
that the images are neither trivial (thresholding fails) nor uninformative (a
watershed seeded from the true objects recovers them)."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import sobel, threshold_otsu
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries, watershed

from spoco.data.synthetic import synthetic_images
from spoco.metrics import average_precision

KINDS = ["boundary", "intensity"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(40, 56), (12, 32, 36)])
def test_shapes_dtypes_and_consecutive_labels(kind, shape, seed):
    img, lab = synthetic_images(2, shape, kind=kind, rng=seed)
    assert img.shape == (2, 1) + shape and img.dtype == np.float32
    assert lab.shape == (2,) + shape and lab.dtype == np.int64
    for i in range(2):
        ids = np.unique(lab[i])
        k = int(lab[i].max())
        assert k >= 1, f"seed {seed}: no objects"
        assert set(ids[ids > 0]) == set(range(1, k + 1)), f"seed {seed}: labels not consecutive"
        assert ids.min() >= 0
        np.testing.assert_allclose(img[i].mean(), 0, atol=1e-4)
        np.testing.assert_allclose(img[i].std(), 1, atol=1e-3)
        # Every object is one connected piece.
        n_pieces = connected_components(lab[i], background=0, connectivity=1).max()
        assert n_pieces == k, f"seed {seed}: {n_pieces} pieces for {k} objects"
        if kind == "boundary":  # the outside of the tissue is one region
            assert connected_components(lab[i] == 0, connectivity=1).max() <= 1, f"seed {seed}"


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_given_seed_or_generator(kind, seed):
    a = synthetic_images(2, (48, 48), kind=kind, rng=seed)
    b = synthetic_images(2, (48, 48), kind=kind, rng=np.random.default_rng(seed))
    c = synthetic_images(2, (48, 48), kind=kind, rng=seed + 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("kind", KINDS)
def test_default_2d_images_are_crowded_touching_and_non_convex(kind, seed):
    img, lab = synthetic_images(4, (128, 128), kind=kind, rng=seed)
    counts = lab.reshape(4, -1).max(1)
    # about 19 objects per image; one image in 400 has fewer than 10 (7 in 1200 draws), so the
    # bound on each image is looser than the one on their mean
    assert np.all((counts >= 5) & (counts <= 30)) and counts.mean() >= 10, f"seed {seed}: object counts {counts}"
    touching, solidity = 0, []
    for gt in lab:
        # Objects in contact: different non-zero labels at 4-neighbours.
        for a, b in [(gt[1:], gt[:-1]), (gt[:, 1:], gt[:, :-1])]:
            touching += np.count_nonzero((a != b) & (a > 0) & (b > 0))
        solidity += [r.solidity for r in regionprops(gt) if r.area > 50]
    assert touching > 0, f"seed {seed}: no touching objects"
    assert np.min(solidity) < 0.9, f"seed {seed}: all objects nearly convex"
    sizes = np.concatenate([np.bincount(gt.ravel())[1:] for gt in lab])
    assert sizes.max() > 3 * np.median(sizes) or sizes.min() < np.median(sizes) / 3, \
        f"seed {seed}: no size variation"


def test_boundary_cells_have_the_same_interior_and_bright_membranes(seed):
    img, lab = synthetic_images(3, (128, 128), kind="boundary", rng=seed)
    for x, gt in zip(img[:, 0], lab):
        edge = find_boundaries(gt, mode="thick")
        core = (gt > 0) & ~ndimage.binary_dilation(edge, iterations=3)
        ids = np.unique(gt[core])
        means = ndimage.mean(x, gt * core, ids)
        contrast = x[edge & (gt > 0)].mean() - x[core].mean()
        assert contrast > 0.5, f"seed {seed}: membranes not brighter ({contrast:.2f})"
        # Interiors differ between cells only by illumination, much less than
        # the membrane contrast: intensity alone cannot tell cells apart.
        assert means.std() < 0.3 * contrast, f"seed {seed}: {means.std():.2f} vs {contrast:.2f}"


def _otsu_components(x):
    """Best of both polarities: Otsu threshold on the smoothed image, connected
    components of the bright (or dark) side, objects under 20 pixels dropped."""
    x = ndimage.gaussian_filter(x, 1.0)
    t = threshold_otsu(x)
    out = []
    for fg in (x > t, x <= t):
        cc = connected_components(fg, connectivity=1)
        cc[np.bincount(cc.ravel())[cc] < 20] = 0
        out.append(cc)
    return out


def _seeded_watershed(x, gt):
    """Watershed of the image's gradient from markers inside the true objects and
    the background: what the image alone gives once the objects are found."""
    inner = (gt > 0) & ~ndimage.binary_dilation(find_boundaries(gt), iterations=1)
    markers = np.where(inner, gt, 0)
    markers[(gt == 0) & ~ndimage.binary_dilation(gt > 0)] = gt.max() + 1
    seg = watershed(sobel(ndimage.gaussian_filter(x, 0.5)), markers)
    seg[seg == gt.max() + 1] = 0
    return seg


@pytest.mark.parametrize("kind", KINDS)
def test_thresholding_fails_but_the_image_holds_the_objects(kind, seed):
    img, lab = synthetic_images(4, (128, 128), kind=kind, rng=seed)
    otsu = np.mean([max(average_precision(gt, p, 0.5) for p in _otsu_components(x))
                    for x, gt in zip(img[:, 0], lab)])
    seeded = np.mean([average_precision(gt, _seeded_watershed(x, gt), 0.5) for x, gt in zip(img[:, 0], lab)])
    assert otsu < 0.5, f"seed {seed}: Otsu + connected components reach AP@0.5 = {otsu:.2f}"
    assert seeded > 0.8, f"seed {seed}: seeded watershed only reaches AP@0.5 = {seeded:.2f}"


def test_parameters_change_the_images(seed):
    _, few = synthetic_images(1, (96, 96), kind="boundary", rng=seed, n_objects=4, background=0.0)
    _, many = synthetic_images(1, (96, 96), kind="boundary", rng=seed, object_size=12)
    assert few.max() <= 8 and many.max() > 30, (few.max(), many.max())
    assert few.min() >= 1  # background=0: the tissue fills the image
    _, flat = synthetic_images(1, (64, 64), kind="intensity", rng=seed, n_objects=(3, 3), touching=0.0)
    assert 1 <= flat.max() <= 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0, shape=(32, 32)), "n must be"),
    (dict(n=1, shape=(32,)), "shape must"),
    (dict(n=1, shape=(4, 32)), "shape must"),
    (dict(n=1, shape=(32, 32), kind="nuclei"), "kind must be one of"),
    (dict(n=1, shape=(32, 32), n_objects=(5, 2)), "n_objects"),
    (dict(n=1, shape=(32, 32), n_objects=0), "n_objects"),
    (dict(n=1, shape=(32, 32), object_size=-3), "object_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_images(**kwargs)
    with pytest.raises(TypeError, match="membrane_width"):
        synthetic_images(1, (32, 32), kind="intensity", membrane_width=3)


@pytest.mark.parametrize("kind", KINDS)
def test_small_images_always_have_an_object(kind, seed):
    # Small images sometimes come out empty; such draws are repeated (seeded).
    rng = np.random.default_rng(seed)
    _, lab = synthetic_images(60, (16, 20), kind=kind, rng=rng)
    assert (lab.reshape(60, -1).max(axis=1) >= 1).all(), seed
    again = synthetic_images(3, (16, 20), kind=kind, rng=seed)[1]
    np.testing.assert_array_equal(again, synthetic_images(3, (16, 20), kind=kind, rng=seed)[1])


def _share_in_contact(labels) -> float:
    """Share of the objects of ``labels (n, *spatial)`` that touch another object (4-neighbours)."""
    touching, total = 0, 0
    for gt in labels:
        pairs = [(gt[1:], gt[:-1]), (gt[:, 1:], gt[:, :-1])]
        ids = np.unique(np.concatenate([np.concatenate([a[(a != b) & (a > 0) & (b > 0)],
                                                        b[(a != b) & (a > 0) & (b > 0)]]) for a, b in pairs]))
        touching, total = touching + len(ids), total + int(gt.max())
    return touching / total


def test_touching_sets_the_share_of_nuclei_in_contact(seed):
    _, apart = synthetic_images(8, (128, 128), kind="intensity", rng=seed, touching=0.0)
    _, clumped = synthetic_images(8, (128, 128), kind="intensity", rng=seed, touching=1.0)
    # touching=0: nuclei are placed apart; the outline warp rarely brings two into contact
    assert _share_in_contact(apart) < 0.08, seed
    assert _share_in_contact(clumped) > 0.5, seed
