"""The classic baselines on images whose answer is known."""
import numpy as np
import pytest

from spoco import metrics
from spoco.baselines import BASELINES, otsu_components, otsu_watershed, threshold_components


def _two_touching_discs(rng, dtype=np.uint16):
    yy, xx = np.indices((80, 100))
    gt = np.zeros((80, 100), int)
    gt[(yy - 40) ** 2 + (xx - 35) ** 2 <= 14 ** 2] = 1
    gt[((yy - 40) ** 2 + (xx - 62) ** 2 <= 14 ** 2) & (gt == 0)] = 2
    image = 200 + 800 * (gt > 0) + rng.normal(0, 20, gt.shape)
    return image.clip(0).astype(dtype), gt


def test_watershed_splits_touching_discs_that_components_merge(rng, seed):
    image, gt = _two_touching_discs(rng)
    cc = otsu_components(image)
    ws = otsu_watershed(image)
    assert cc.max() == 1, seed
    assert ws.max() == 2 and metrics.average_precision(gt, ws, 0.5) == 1.0, seed


def test_em_interiors_split_by_dark_membranes(rng, seed):
    image = np.full((60, 60), 200.0) + rng.normal(0, 5, (60, 60))
    image[:, 29:31] = image[29:31, :] = 20  # a dark cross: four cells
    labels = threshold_components(image.astype(np.uint8))
    assert labels.max() == 4, seed


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_empty_flat_and_bad_images(name):
    fn = BASELINES[name]
    assert fn(np.zeros((30, 30), np.uint16)).max() == 0
    assert fn(np.zeros((1, 30, 30), np.float32)).shape == (30, 30)
    with pytest.raises(ValueError, match="one 2D or 3D channel"):
        fn(np.zeros((2, 2, 30, 30)))
