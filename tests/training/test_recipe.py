"""The default recipe: sizes derived from the labelled objects."""
import math

import numpy as np
import pytest

from spoco.training import TrainConfig
from spoco.training.recipe import auto_config, paper_config, summarize_labels


def _discs(shape, centres, radius):
    yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, 1):
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = i
    return lab


def test_summary_counts_objects_sizes_and_empty_images():
    a = _discs((100, 120), [(20, 20), (60, 70)], 10)
    empty = np.zeros((50, 50), np.int32)
    s = summarize_labels([a, empty])
    area = int((a == 1).sum())
    assert (s.images, s.empty, s.objects, s.pixels, s.ndim) == (2, 1, 2, 100 * 120 + 2500, 2)
    assert s.median_area == area == s.weighted_area
    assert s.diameter == pytest.approx(2 * math.sqrt(area / math.pi))
    assert "1 without labelled objects" in s.line() and "2 labelled objects" in s.line()
    ball = np.zeros((20, 20, 20), np.int32)
    ball[5:9, 5:9, 5:9] = 1
    assert summarize_labels([ball]).diameter == pytest.approx(2 * (3 * 64 / (4 * math.pi)) ** (1 / 3))


def test_auto_config_derives_sizes_and_says_why():
    s = summarize_labels([_discs((200, 200), [(40, 40), (120, 150)], 12)])
    config, reasons = auto_config(s)
    assert config.spatial_scale == pytest.approx(round(s.typical_diameter / 4, 2))
    assert config.patch_shape == (64, 64) and config.batch_size == 8
    assert config.min_size == round(s.median_area / 10)
    assert config.foreground and config.samples_per_epoch == round(200 * 200 / 64 ** 2)
    assert any("diameter" in r for r in reasons) and any("patches per epoch" in r for r in reasons)
    # options win over the recipe
    config, _ = auto_config(s, {"spatial_scale": 3.0, "min_size": 5, "samples_per_epoch": 7, "batch_size": 2})
    assert (config.spatial_scale, config.min_size, config.samples_per_epoch) == (3.0, 5, 7)


def test_one_large_image_gives_many_samples_and_no_objects_no_scale():
    big = np.zeros((1000, 1000), np.int32)
    config, _ = auto_config(summarize_labels([big]))
    assert config.spatial_scale is None and config.samples_per_epoch == round(1e6 / 64 ** 2)
    tiny = summarize_labels([np.zeros((10, 10), np.int32)])
    assert auto_config(tiny)[0].samples_per_epoch == 8  # at least one batch


def test_paper_config_is_trainconfig_defaults():
    s = summarize_labels([_discs((64, 64), [(30, 30)], 8)])
    config, _ = paper_config(s)
    default = TrainConfig()
    assert (config.lr, config.momentum, config.foreground, config.spatial_scale) == \
        (default.lr, default.momentum, False, None)


def test_large_objects_weigh_with_their_pixels():
    # Ten small objects and two large ones: the median object is small, the typical pixel
    # belongs to a large one; patches grow to twice its diameter with smaller batches.
    lab = _discs((600, 600), [(30 + 50 * i, 30) for i in range(10)], 5)
    big = _discs((600, 600), [(150, 300), (450, 300)], 60)
    lab[big > 0] = big[big > 0] + 10
    s = summarize_labels([lab])
    assert s.diameter == pytest.approx(2 * math.sqrt(s.median_area / math.pi))
    assert s.typical_diameter == pytest.approx(2 * math.sqrt((big == 1).sum() / math.pi))
    config, reasons = auto_config(s)
    side = int(math.ceil(2 * s.typical_diameter / 16) * 16)
    assert config.patch_shape == (side, side) and config.batch_size == max(2, round(8 * 64 ** 2 / side ** 2))
    assert config.spatial_scale == pytest.approx(round(s.typical_diameter / 4, 2))


def test_voxel_size_shapes_3d_patches():
    ball = np.zeros((20, 40, 40), np.int32)
    ball[5:12, 10:25, 10:25] = 1
    s = summarize_labels([ball])
    assert auto_config(s)[0].patch_shape == (32, 64, 64)  # unknown voxel size
    config, reasons = auto_config(s, voxel_size=(2.0, 0.5, 0.5))
    assert config.patch_shape == (16, 64, 64) and any("voxel size 2 x 0.5 x 0.5" in r for r in reasons)
    assert auto_config(s, voxel_size=(0.5, 0.5, 0.5))[0].patch_shape == (64, 64, 64)
    assert auto_config(s, {"patch_shape": (8, 32, 32)}, voxel_size=(2.0, 0.5, 0.5))[0].patch_shape == (8, 32, 32)


def _neighbour_pairs_reference(lab, reach):
    """Pairs of objects with pixels at most ``reach`` apart along an axis, pixel by pixel."""
    near, touching = set(), set()
    for p in np.argwhere(lab > 0):
        for axis in range(lab.ndim):
            for step in range(1, reach + 1):
                q = p.copy()
                q[axis] += step
                if q[axis] < lab.shape[axis] and lab[tuple(q)] > 0 and lab[tuple(q)] != lab[tuple(p)]:
                    pair = tuple(sorted((int(lab[tuple(p)]), int(lab[tuple(q)]))))
                    near.add(pair)
                    if step == 1:
                        touching.add(pair)
    return len(near), len(touching)


@pytest.mark.parametrize("shape", [(24, 24), (6, 10, 12)])
def test_neighbour_pairs_equal_the_pixel_by_pixel_count(rng, seed, shape):
    from spoco.training.recipe import neighbour_pairs

    for _ in range(5):
        lab = rng.integers(0, 6, shape) * (rng.random(shape) < 0.3)
        for reach in (1, 3, 8):
            assert neighbour_pairs(lab, reach) == _neighbour_pairs_reference(lab, reach), seed


def test_objects_separated_by_background_paint_their_borders():
    apart = _discs((200, 200), [(30, 30 + 26 * k) for k in range(7)] + [(56, 30 + 26 * k) for k in range(7)], 10)
    s = summarize_labels([apart])  # 14 discs, 6 px gaps: neighbours, none touching
    assert s.objects_separated and s.touching_pairs == 0 and s.near_pairs >= 10
    config, reasons = auto_config(s)
    assert config.border_background > 0 and any("never touch" in r for r in reasons)
    assert auto_config(s, {"sparse": False})[0].border_background == 0  # dense labels: every 0 is background
    touching = _discs((200, 200), [(30, 30 + 20 * k) for k in range(7)] + [(50, 30 + 20 * k) for k in range(7)], 10)
    s = summarize_labels([touching])
    assert not s.objects_separated and s.touching_pairs > 0
    assert auto_config(s)[0].border_background == 0
    few = summarize_labels([_discs((200, 200), [(30, 30), (30, 56)], 10)])  # one pair: too little to tell
    assert not few.objects_separated and auto_config(few)[0].border_background == 0
