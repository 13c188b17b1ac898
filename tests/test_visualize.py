"""Pictures and exports of a segmentation: the PNG preview and ImageJ ROIs."""
from __future__ import annotations

import numpy as np
import pytest
import roifile
from skimage.draw import disk

from spoco import visualize
from spoco.cli import main
from spoco.data import io


def _discs(rng, shape=(64, 80), n=6):
    """``n`` discs of random radius and position, each in its own cell of a grid (no overlaps)."""
    labels = np.zeros(shape, np.int32)
    cols = int(np.ceil(np.sqrt(n)))
    cell = np.array(shape) // np.array([int(np.ceil(n / cols)), cols])
    for i in range(n):
        r = int(rng.integers(3, max(4, min(cell) // 2 - 1)))
        origin = np.array([i // cols, i % cols]) * cell
        centre = origin + rng.integers(r + 1, np.maximum(cell - r - 1, r + 2))
        labels[disk(tuple(centre), r, shape=shape)] = i + 1
    return labels


def test_pca_rgb_range_and_few_dimensions(rng):
    for d in (1, 2, 8):
        rgb = visualize.pca_rgb(rng.normal(size=(d, 10, 12)))
        assert rgb.shape == (10, 12, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_outlines_only_on_object_borders(rng):
    labels = _discs(rng)
    image = rng.random(labels.shape)
    rgb = visualize.outline_overlay(labels, image)
    grey = np.all(rgb == rgb[..., :1], axis=-1)
    from skimage.segmentation import find_boundaries

    border = find_boundaries(labels, mode="inner") & (labels > 0)
    assert not grey[border].any()  # coloured outlines
    assert grey[~border].all()  # the image elsewhere
    with pytest.raises(ValueError, match="does not match"):
        visualize.outline_overlay(labels, image[:10])


def test_imagej_rois_2d_round_trip(rng, tmp_path):
    labels = _discs(rng)
    labels[labels == 3] = 0  # ids need not be consecutive
    n = visualize.write_imagej_rois(tmp_path / "r.zip", labels)
    rois = roifile.roiread(tmp_path / "r.zip")
    present = sorted(set(np.unique(labels)) - {0})
    assert n == len(rois) == len(present)
    for roi in rois:
        ys, xs = np.nonzero(labels == int(roi.name))
        x, y = roi.coordinates().T
        # the outline runs half a pixel outside the pixel centres of the object
        assert abs(x.min() - xs.min()) <= 1 and abs(x.max() - xs.max()) <= 1
        assert abs(y.min() - ys.min()) <= 1 and abs(y.max() - ys.max()) <= 1


def test_imagej_rois_3d_one_per_slice_and_empty(rng, tmp_path):
    volume = np.stack([_discs(rng, (32, 32), 2), np.zeros((32, 32), np.int32), _discs(rng, (32, 32), 3)])
    n = visualize.write_imagej_rois(tmp_path / "v.zip", volume)
    rois = roifile.roiread(tmp_path / "v.zip")
    expected = sum(len(set(np.unique(p)) - {0}) for p in volume)
    assert n == len(rois) == expected
    assert {r.position for r in rois} == {1, 3}
    assert visualize.write_imagej_rois(tmp_path / "e.zip", np.zeros((8, 8), int)) == 0
    assert (tmp_path / "e.zip").exists()
    with pytest.raises(ValueError, match="2D .* or 3D"):
        visualize.write_imagej_rois(tmp_path / "x.zip", np.zeros(5, int))


def test_preview_png_2d_and_3d(rng, tmp_path):
    labels = _discs(rng)
    path = visualize.write_preview(tmp_path / "p.png", labels, rng.random(labels.shape),
                                   rng.normal(size=(4,) + labels.shape))
    assert io.read_array(path).shape == (3, 64, 2 * 80 + 4)
    volume = np.stack([labels] * 3)
    path = visualize.write_preview(tmp_path / "v.png", volume, rng.random((1, 3) + labels.shape))
    assert io.read_array(path).shape == (3, 64, 80)
    with pytest.raises(ValueError, match="outside"):
        visualize.write_preview(tmp_path / "w.png", volume, z=5)


def test_segment_cli_writes_preview_and_rois(rng, tmp_path, capsys):
    labels = _discs(rng)
    emb = (rng.normal(size=(int(labels.max()) + 1, 4)) * 3)[labels].transpose(2, 0, 1).astype(np.float32)
    io.write_array(tmp_path / "emb.h5", emb, key="emb")
    io.write_array(tmp_path / "raw.tif", rng.integers(0, 1000, labels.shape).astype(np.uint16))
    assert main(["segment", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "seg.tif"), "--preview", "--rois",
                 "--image", str(tmp_path / "raw.tif"), "--quiet"]) == 0
    seg = io.read_array(tmp_path / "seg.tif")
    assert io.read_array(tmp_path / "seg.preview.png").shape == (3, 64, 164)
    assert len(roifile.roiread(tmp_path / "seg.rois.zip")) == len(set(np.unique(seg)) - {0}) > 0
    io.write_array(tmp_path / "small.tif", np.zeros((32, 40), np.uint16))
    assert main(["segment", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "s2.tif"), "--preview",
                 "--image", str(tmp_path / "small.tif"), "--quiet"]) == 2
    assert "differs from the labels'" in capsys.readouterr().err


def test_segment_images_with_a_model_equals_predict_then_segment(rng, tmp_path):
    """``spoco segment --model`` on an image = spoco predict, then spoco segment."""
    from tests._helpers.data import tiny_checkpoint

    tiny_checkpoint(tmp_path / "m.pt")
    io.write_array(tmp_path / "img.tif", rng.integers(0, 4000, (48, 56)).astype(np.uint16))
    assert main(["segment", str(tmp_path / "img.tif"), "--model", str(tmp_path / "m.pt"), "--device", "cpu",
                 "--out", str(tmp_path / "direct.tif"), "--preview", "--quiet"]) == 0
    assert main(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--images", str(tmp_path / "img.tif"),
                 "--device", "cpu", "--out", str(tmp_path / "emb.h5"), "--quiet"]) == 0
    assert main(["segment", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "two_steps.tif"), "--quiet"]) == 0
    np.testing.assert_array_equal(io.read_array(tmp_path / "direct.tif"), io.read_array(tmp_path / "two_steps.tif"))
    assert io.read_array(tmp_path / "direct.preview.png").shape == (3, 48, 2 * 56 + 4)
