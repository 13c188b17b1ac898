"""OME-Zarr images and label images: reading 0.4 and 0.5 metadata, writing, voxel sizes."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

import spoco
from spoco.cli import main
from spoco.clustering import default_offsets
from spoco.data import io


def _ome(path, data, axes, scale, zarr_format):
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("0", data=data, chunks=data.shape)
    group.create_array("1", data=data[..., ::2, ::2], chunks=data[..., ::2, ::2].shape)
    multiscale = {"axes": [{"name": a, "type": "channel" if a == "c" else "time" if a == "t" else "space"}
                           for a in axes],
                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
                               {"path": "1", "coordinateTransformations": [
                                   {"type": "scale", "scale": scale[:-2] + [2 * scale[-2], 2 * scale[-1]]}]}]}
    if zarr_format == 2:
        group.attrs["multiscales"] = [dict(multiscale, version="0.4")]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_read_ome_zarr_full_resolution_and_voxel_size(tmp_path, rng, zarr_format):
    data = rng.random((2, 5, 16, 20)).astype(np.float32)
    _ome(tmp_path / "img.zarr", data, "czyx", [1.0, 2.0, 0.5, 0.5], zarr_format)
    np.testing.assert_array_equal(io.read_array(tmp_path / "img.zarr"), data)
    assert io.open_array(tmp_path / "img.zarr").shape == data.shape
    assert io.voxel_size(tmp_path / "img.zarr") == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(io.read_array(tmp_path / "img.zarr", "1"), data[..., ::2, ::2])  # a level


def test_time_axis_of_one_point_is_dropped_and_more_are_refused(tmp_path, rng):
    data = rng.random((1, 8, 9)).astype(np.float32)
    _ome(tmp_path / "t.zarr", data, "tyx", [1.0, 0.3, 0.3], 3)
    arr = io.open_array(tmp_path / "t.zarr")
    assert arr.shape == (8, 9)
    np.testing.assert_array_equal(arr[2:4], data[0, 2:4])
    np.testing.assert_array_equal(io.read_array(tmp_path / "t.zarr"), data[0])
    _ome(tmp_path / "t3.zarr", np.zeros((3, 8, 9)), "tyx", [1.0, 1.0, 1.0], 3)
    with pytest.raises(ValueError, match="t3.zarr.*3 time points"):
        io.open_array(tmp_path / "t3.zarr")


@pytest.mark.parametrize("channels, labels", [(True, False), (False, True)])
def test_write_ome_zarr(tmp_path, channels, labels):
    shape = (3, 6, 7, 8) if channels else (6, 7, 8)
    out = io.create_array(tmp_path / "o.ome.zarr", shape, "float32", key="ignored", voxel_size=(2, 1, 1),
                          channels=channels, labels=labels)
    out[...] = 1
    io.set_complete(out, True)
    assert io.voxel_size(tmp_path / "o.ome.zarr") == (2.0, 1.0, 1.0)
    assert io.read_array(tmp_path / "o.ome.zarr").shape == shape
    ome = dict(zarr.open_group(str(tmp_path / "o.ome.zarr"), mode="r").attrs)["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == (["c"] if channels else []) + ["z", "y", "x"]
    assert ("image-label" in ome) == labels
    with pytest.raises(ValueError, match="voxel_size needs 3 values"):
        io.create_array(tmp_path / "p.ome.zarr", (6, 7, 8), "u4", voxel_size=(1, 1))


def test_offsets_follow_the_voxel_size():
    iso = default_offsets(3)
    np.testing.assert_array_equal(default_offsets(3, voxel_size=(0.7, 0.7, 0.7))[0], iso[0])
    off, n_att = default_offsets(3, (3, 9, 27), voxel_size=(2.0, 0.5, 0.5))
    z = sorted(int(-o[0]) for o in off[n_att:] if o[0])
    assert z == [2, 7] and n_att == 3  # 3/4 -> 1 (the neighbour: dropped), 9/4 -> 2, 27/4 -> 7
    assert sorted(int(-o[2]) for o in off[n_att:] if o[2]) == [3, 9, 27]
    with pytest.raises(ValueError, match="voxel_size must be 3 positive"):
        default_offsets(3, voxel_size=(1, 0, 1))


def test_segment_takes_the_voxel_size_of_ome_embeddings(tmp_path, volume, rng):
    _, emb = volume(rng, (10, 40, 40), 8)
    _ome(tmp_path / "emb.zarr", emb.astype(np.float32), "czyx", [1.0, 3.0, 1.0, 1.0], 3)
    assert main(["segment", str(tmp_path / "emb.zarr"), "--out", str(tmp_path / "seg.ome.zarr"),
                 "--long-range", "3", "9", "--quiet"]) == 0
    offsets, n_att = default_offsets(3, (3, 9), voxel_size=(3.0, 1.0, 1.0))
    expected = spoco.cluster(emb.astype(np.float32), offsets=offsets, n_attractive=n_att)
    seg = io.read_array(tmp_path / "seg.ome.zarr")
    np.testing.assert_array_equal(seg, expected)
    assert io.voxel_size(tmp_path / "seg.ome.zarr") == (3.0, 1.0, 1.0)
    assert "image-label" in dict(zarr.open_group(str(tmp_path / "seg.ome.zarr"), mode="r").attrs)["ome"]
    # --voxel-size overrides the metadata
    assert main(["segment", str(tmp_path / "emb.zarr"), "--out", str(tmp_path / "iso.zarr"), "--long-range", "3",
                 "9", "--voxel-size", "1", "1", "1", "--quiet"]) == 0
    offsets, n_att = default_offsets(3, (3, 9))
    np.testing.assert_array_equal(io.read_array(tmp_path / "iso.zarr", "labels"),
                                  spoco.cluster(emb.astype(np.float32), offsets=offsets, n_attractive=n_att))


def test_predict_carries_the_voxel_size_to_ome_embeddings(tmp_path, rng):
    from tests._helpers.data import tiny_checkpoint

    tiny_checkpoint(tmp_path / "m.pt")
    _ome(tmp_path / "img.zarr", rng.random((1, 32, 40)).astype(np.float32), "cyx", [1.0, 0.25, 0.25], 3)
    assert main(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--images", str(tmp_path / "img.zarr"),
                 "--out", str(tmp_path / "emb.ome.zarr"), "--device", "cpu", "--quiet"]) == 0
    assert io.voxel_size(tmp_path / "emb.ome.zarr") == (0.25, 0.25)
    assert io.read_array(tmp_path / "emb.ome.zarr").shape == (4, 32, 40)
