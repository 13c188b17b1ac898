"""spoco.data.io: round trips for every format, lazy opening, folder pairing, errors."""
import h5py
import numpy as np
import pytest
import zarr

from spoco.data import io


@pytest.mark.parametrize("name, key", [("a.tif", None), ("a.tiff", None), ("a.h5", "raw"), ("a.hdf5", "g/raw"),
                                       ("a.zarr", None), ("a.zarr", "g/raw")])
@pytest.mark.parametrize("shape, dtype", [((17, 23), np.uint16), ((5, 9, 11), np.float32), ((2, 4, 6, 8), np.int64)])
def test_round_trip(tmp_path, rng, name, key, shape, dtype):
    a = (rng.random(shape) * 1000).astype(dtype)
    path = io.write_array(tmp_path / name, a, key=key)
    b = io.read_array(path, key)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    lazy = io.open_array(path, key)
    assert lazy.shape == a.shape and lazy.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(lazy[1:]), a[1:])


@pytest.mark.parametrize("shape, dtype", [((20, 30), np.uint8), ((3, 20, 30), np.uint8), ((4, 20, 30), np.uint8),
                                          ((20, 30), np.uint16)])
def test_png_round_trip_channels_first(tmp_path, rng, shape, dtype):
    a = rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    io.write_array(tmp_path / "a.png", a)
    np.testing.assert_array_equal(io.read_array(tmp_path / "a.png"), a)


def test_jpg_is_lossy_but_shaped(tmp_path, rng):
    a = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    io.write_array(tmp_path / "a.jpg", a)
    b = io.read_array(tmp_path / "a.jpg")
    assert b.shape == a.shape and np.abs(b.astype(int) - a).max() < 20


def test_key_in_the_path_and_chunks(tmp_path, rng):
    a = rng.random((6, 40, 50)).astype(np.float32)
    io.write_array(f"{tmp_path / 'v.h5'}:data/raw", a, chunks=(2, 20, 25))
    io.write_array(tmp_path / "v.h5", 2 * a, key="other")  # appends to the file
    io.write_array(f"{tmp_path / 'v.zarr'}:raw", a, chunks=(3, 10, 10))
    np.testing.assert_array_equal(io.read_array(f"{tmp_path / 'v.h5'}:data/raw"), a)
    np.testing.assert_array_equal(io.read_array(tmp_path / "v.h5", "other"), 2 * a)
    np.testing.assert_array_equal(io.read_array(tmp_path / "v.zarr", key="raw"), a)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert f["data/raw"].chunks == (2, 20, 25)
    assert zarr.open(str(tmp_path / "v.zarr"), mode="r")["raw"].chunks == (3, 10, 10)
    with pytest.raises(ValueError, match="differs from key"):
        io.read_array(f"{tmp_path / 'v.h5'}:data/raw", key="other")


def test_open_array_is_lazy(tmp_path, rng):
    a = rng.random((4, 8, 8)).astype(np.float32)
    io.write_array(tmp_path / "a.tif", a)
    io.write_array(tmp_path / "a.h5", a, key="x")
    io.write_array(tmp_path / "a.zarr", a)
    assert isinstance(io.open_array(tmp_path / "a.tif"), np.memmap)
    assert isinstance(io.open_array(tmp_path / "a.h5", "x"), h5py.Dataset)
    assert isinstance(io.open_array(tmp_path / "a.zarr"), zarr.Array)


def test_errors_name_the_path_and_key(tmp_path, rng):
    a = rng.random((4, 5)).astype(np.float32)
    for name in ("grp/x", "grp/y"):  # two datasets: a key is needed
        io.write_array(tmp_path / "a.h5", a, key=name)
        io.write_array(tmp_path / "g.zarr", a, key=name)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        io.read_array(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match=r"a\.bmp.*unsupported file type '\.bmp'"):
        io.read_array(tmp_path / "a.bmp")
    with pytest.raises(ValueError, match=r"a\.h5.*need a key.*grp/x"):
        io.read_array(tmp_path / "a.h5")
    with pytest.raises(KeyError, match=r"a\.h5.*no dataset 'nope'.*grp/x"):
        io.read_array(tmp_path / "a.h5", "nope")
    with pytest.raises(KeyError, match=r"a\.h5.*no dataset 'nope'"):
        io.open_array(tmp_path / "a.h5", "nope")
    with pytest.raises(ValueError, match=r"g\.zarr.*needs a key.*grp/x"):
        io.read_array(tmp_path / "g.zarr")
    with pytest.raises(KeyError, match=r"g\.zarr.*no array 'nope'"):
        io.read_array(tmp_path / "g.zarr", "nope")
    with pytest.raises(ValueError, match="needs a key"):
        io.write_array(tmp_path / "b.h5", a)
    with pytest.raises(ValueError, match=r"b\.png.*uint8, uint16 only, got float32"):
        io.write_array(tmp_path / "b.png", a)
    with pytest.raises(ValueError, match=r"\(C, Y, X\)"):
        io.write_array(tmp_path / "b.png", np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.write_array(tmp_path / "no" / "b.tif", a)


def test_list_pairs(tmp_path):
    img, lab = tmp_path / "images", tmp_path / "labels"
    img.mkdir(), lab.mkdir()
    for stem in ["b", "a", "c"]:
        io.write_array(img / f"{stem}.tif", np.zeros((4, 4), np.uint8))
        io.write_array(lab / f"{stem}.png", np.zeros((4, 4), np.uint8))
    (img / "notes.txt").write_text("not an image")
    pairs = io.list_pairs(img, lab)
    assert [(p.name, q.name) for p, q in pairs] == [("a.tif", "a.png"), ("b.tif", "b.png"), ("c.tif", "c.png")]
    io.write_array(img / "d.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"1 file\(s\) without a partner.*d\.tif"):
        io.list_pairs(img, lab)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="label_dir .*empty: no image files"):
        io.list_pairs(img, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="image_dir .*nowhere"):
        io.list_pairs(tmp_path / "nowhere", lab)


def test_tiff_colour_and_channel_axes_come_first(tmp_path, rng):
    import tifffile

    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(io.read_array(tmp_path / "rgb.tif"), np.moveaxis(rgb, -1, 0))
    zc = rng.integers(0, 999, (5, 2, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zc.tif", zc, imagej=True, metadata={"axes": "ZCYX"})
    np.testing.assert_array_equal(io.read_array(tmp_path / "zc.tif"), np.moveaxis(zc, 1, 0))
    stack = rng.integers(0, 999, (4, 20, 30), dtype=np.uint16)  # a plain z-stack stays as stored
    tifffile.imwrite(tmp_path / "z.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(io.read_array(tmp_path / "z.tif"), stack)
    (tmp_path / "text.tif").write_text("not an image")
    with pytest.raises(ValueError, match="text.tif.*not a readable TIFF"):
        io.read_array(tmp_path / "text.tif")


@pytest.mark.parametrize("content", [b"not an hdf5 file", b"\x89HDF\r\n\x1a\n" + bytes(200)])
def test_unreadable_hdf5_is_a_clear_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.h5"
    path.write_bytes(content)
    for read in (io.read_array, io.open_array):
        with pytest.raises(ValueError, match="broken.h5: not a readable HDF5 file"):
            read(path, "embeddings")


@pytest.mark.parametrize("name", ["broken.png", "broken.jpg"])
def test_unreadable_png_or_jpeg_is_a_clear_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"{name}: not a readable"):
        io.read_array(path)


@pytest.mark.parametrize("name", ["a.h5:x", "a.zarr:x", "a.zarr"])
def test_write_array_interrupted_is_marked_incomplete(tmp_path, monkeypatch, name):
    """A container written whole is marked complete only after its data are in: a writer that
    dies half-way leaves an array open_array refuses, never one that looks like a result."""
    path = f"{tmp_path / name}"
    io.write_array(path, np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(io.open_array(path)[...], np.arange(12).reshape(3, 4))

    def interrupted(self, *args):
        raise KeyboardInterrupt

    import h5py

    monkeypatch.setattr(h5py.Dataset, "__setitem__", interrupted)
    monkeypatch.setattr(zarr.Array, "__setitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.write_array(path, np.ones((3, 4)))
    monkeypatch.undo()
    with pytest.raises(io.IncompleteArrayError, match="incomplete"):
        io.open_array(path)


def test_png_is_written_under_a_temporary_name(tmp_path, monkeypatch):
    import imageio.v3 as iio

    written = []
    real = iio.imwrite
    monkeypatch.setattr(iio, "imwrite", lambda p, a, **kw: (written.append(p), real(p, a, **kw)))
    io.write_array(tmp_path / "a.png", np.zeros((4, 5), np.uint8))
    assert written and written[0] != tmp_path / "a.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_the_only_dataset_needs_no_key(tmp_path, rng):
    a = rng.random((4, 5)).astype(np.float32)
    io.write_array(tmp_path / "a.h5", a, key="grp/x")
    io.write_array(tmp_path / "g.zarr", a, key="grp/x")
    for path in (tmp_path / "a.h5", tmp_path / "g.zarr"):
        np.testing.assert_array_equal(io.read_array(path), a)
        np.testing.assert_array_equal(io.open_array(path)[...], a)
