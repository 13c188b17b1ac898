"""Writes the malformed-file corpus of ``tests/fuzz/test_corpus.py`` and its README.

Every file is small (a few KB at most) and deterministic; rerun after changing the
list::

    .venv/bin/python tests/data/corpus/make_corpus.py

:data:`FILES` maps each corpus name to ``(description, writer)``; the README's table
is generated from the descriptions, and the test checks that the folder holds
exactly these names.
"""
from __future__ import annotations

import io as _io
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FORMAT = "spoco-checkpoint-1"  # spoco.training.checkpoint.FORMAT, repeated so the corpus is plain data


# ---- helpers ---------------------------------------------------------------------------

def _tif_bytes(array, **kw) -> bytes:
    import tifffile

    buf = _io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack", **kw)
    return buf.getvalue()


def _tif_bytes_rgb() -> bytes:
    import tifffile

    buf = _io.BytesIO()
    tifffile.imwrite(buf, np.stack([_labels().astype(np.uint8)] * 3, axis=-1), photometric="rgb")
    return buf.getvalue()


def _png_bytes(array) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", array, extension=".png")


def _jpg_bytes(array) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", array, extension=".jpg")


def _h5(path, datasets: dict, attrs: dict | None = None) -> None:
    import h5py

    with h5py.File(path, "w", track_order=False) as f:
        for key, value in datasets.items():
            if isinstance(value, dict):  # keyword arguments of create_dataset
                f.create_dataset(key, track_times=False, **value)
            else:
                f.create_dataset(key, data=value, track_times=False)
        for key, value in (attrs or {}).items():
            name, attr = key.split("@")
            f[name].attrs[attr] = value


def _zarr_array(path, array, chunks) -> None:
    import zarr

    z = zarr.open_array(store=str(path), mode="w", shape=array.shape, dtype=array.dtype, chunks=chunks)
    z[...] = array


def _torch_bytes(obj) -> bytes:
    import torch

    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tiny_model():
    """The smallest U-Net spoco builds (1 -> 2 channels), weights fixed by the seed."""
    import torch

    from spoco.models import UNet

    torch.manual_seed(0)
    config = dict(ndim=2, in_channels=1, out_channels=2, f_maps=1, depth=1, norm="none")
    return config, UNet(**config).state_dict()


def _huge_dims_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD claims ``width x height`` uint16 pixels in one
    strip that the file does not hold (a decompression bomb without compression)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 4)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3
                                                       else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 12) + b"\x00" * 4 + ifd


def _huge_dims_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` grey pixels, with one tiny IDAT."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _image() -> np.ndarray:
    return (np.arange(256, dtype=np.float32).reshape(16, 16) % 17) / 16


def _labels() -> np.ndarray:
    lab = np.zeros((16, 16), np.int32)
    lab[2:7, 2:7], lab[9:14, 3:12] = 1, 2
    return lab


def _emb() -> np.ndarray:
    """Embeddings ``(2, 16, 16)`` of the two objects of :func:`_labels` (4 apart) and background."""
    lab = _labels()
    return np.stack([lab * 4.0, np.zeros_like(lab, dtype=np.float64)]).astype(np.float32)


# ---- writers: each takes the target path --------------------------------------------------

def write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def write_cut(make_bytes, fraction: float = 0.6):
    def write(path):
        data = make_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return write


def write_tif(array, **kw):
    return lambda path: path.write_bytes(_tif_bytes(array, **kw))


def _flip(data: bytes, start: int, n: int = 16) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start:start + n]) + data[start + n:]


def _corrupt_ifd_tif() -> bytes:
    data = bytearray(_tif_bytes(_image()))
    data[4:8] = struct.pack("<I", 10 ** 9)  # first IFD far past the end of the file
    return bytes(data)


def _corrupt_png() -> bytes:
    data = _png_bytes((_image() * 255).astype(np.uint8))
    i = data.index(b"IDAT") + 8
    return _flip(data, i)  # compressed pixels garbled, CRC now wrong


def _corrupt_h5(path) -> None:
    _h5(path, {"embeddings": _emb()})
    data = path.read_bytes()
    path.write_bytes(_flip(data, 96, 512))  # superblock intact, root group's object header garbled


def _corrupt_chunk_h5(path) -> None:
    import h5py

    _h5(path, {"embeddings": {"data": _emb(), "chunks": (2, 8, 8), "compression": "gzip"}})
    with h5py.File(path, "r") as f:
        chunk = f["embeddings"].id.get_chunk_info(0)
    data = path.read_bytes()
    path.write_bytes(_flip(data, chunk.byte_offset, chunk.size))  # metadata intact, one chunk garbled


def _corrupt_attribute_h5(path) -> None:
    _h5(path, {"embeddings": _emb()}, {"embeddings@spoco_complete": True})
    data = path.read_bytes()
    path.write_bytes(_flip(data, data.index(b"spoco_complete") + 16, 3))  # the attribute's datatype garbled


def _truncated_h5(path) -> None:
    _h5(path, {"embeddings": _emb()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _dangling_link_h5(path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f["embeddings"] = h5py.SoftLink("/nowhere")
        f["external"] = h5py.ExternalLink("missing_file.h5", "/data")


def _groups_only_h5(path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("grp/sub")


def _zarr_store(path, corrupt=None) -> None:
    _zarr_array(path, _emb(), chunks=(2, 8, 8))
    if corrupt is not None:
        corrupt(path)


def _garble_chunk(path) -> None:
    chunk = path / "c" / "0" / "0" / "0"
    chunk.write_bytes(b"this is not a zstd frame" * 4)


def _cut_chunk(path) -> None:
    chunk = path / "c" / "0" / "1" / "1"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])


def _edit_meta(change):
    def edit(path):
        meta = path / "zarr.json"
        meta.write_text(change(meta.read_text()))
    return edit


def _set_meta(**fields):
    def change(text):
        meta = json.loads(text)
        meta.update(fields)
        return json.dumps(meta, indent=2)
    return change


def _zarr_v2_broken(path) -> None:
    path.mkdir()
    (path / ".zarray").write_text('{"zarr_format": 2, "shape": [16, 16], "chunks": [8, 8], "dtype": "<f4", ')


def _zarr_group_only(path) -> None:
    import zarr

    zarr.open_group(str(path), mode="w").create_group("empty")


def _zarr_complex(path) -> None:
    _zarr_array(path, _emb().astype(np.complex64), chunks=(2, 16, 16))


def _zarr_no_metadata(path) -> None:
    path.mkdir()
    (path / "README").write_text("a folder named .zarr without zarr metadata\n")


def _zip(name: str, text: str) -> bytes:
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def _checkpoint(**state) -> bytes:
    return _torch_bytes({"format": FORMAT, **state})


def _valid_checkpoint() -> bytes:
    config, weights = _tiny_model()
    return _checkpoint(model_config=config, model=weights)


def _mismatched_checkpoint() -> bytes:
    config, weights = _tiny_model()
    return _checkpoint(model_config=dict(config, out_channels=3), model=weights)


def _linear_state_dict() -> bytes:
    import torch

    torch.manual_seed(0)
    return _torch_bytes(torch.nn.Linear(2, 2).state_dict())


# name -> (what it is, writer(path))
FILES = {
    # every suffix spoco reads, empty
    **{f"empty{s}": (f"empty file with the suffix {s}", write_bytes(b""))
       for s in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".h5", ".hdf5", ".hdf", ".zarr", ".pt")},
    "unsupported.bmp": ("a file with a suffix spoco does not read", write_bytes(b"BM" + bytes(60))),
    # TIFF
    "text.tif": ("a text file named .tif", write_bytes(b"this is not an image\n")),
    "truncated.tif": ("a valid 16x16 float32 tif cut at 60 %", write_cut(lambda: _tif_bytes(_image()))),
    "bad_magic.tif": ("a valid tif whose byte-order mark is garbage",
                      write_bytes(b"XX" + _tif_bytes(_image())[2:])),
    "corrupt_ifd.tif": ("a valid tif whose first-IFD offset points past the end of the file",
                        write_bytes(_corrupt_ifd_tif())),
    "huge_dims.tif": ("a tif header claiming 2**31-1 x 2**31-1 uint16 pixels (the data is not there)",
                      write_bytes(_huge_dims_tiff(2 ** 31 - 1, 2 ** 31 - 1))),
    "complex.tif": ("a (2, 16, 16) complex64 tif", write_tif(_emb().astype(np.complex64))),
    # PNG / JPEG
    "text.png": ("a text file named .png", write_bytes(b"this is not an image\n")),
    "truncated.png": ("a valid 16x16 uint8 png cut at 60 %",
                      write_cut(lambda: _png_bytes((_image() * 255).astype(np.uint8)))),
    "corrupt_idat.png": ("a png whose compressed pixel data is garbled (CRC mismatch)", write_bytes(_corrupt_png())),
    "huge_dims.png": ("a png header claiming 100000 x 100000 pixels (a decompression bomb)",
                      write_bytes(_huge_dims_png(100_000, 100_000))),
    "truncated.jpg": ("a valid 16x16 jpeg cut at 60 %",
                      write_cut(lambda: _jpg_bytes((_image() * 255).astype(np.uint8)))),
    # HDF5 (entry points ask for the key "embeddings")
    "truncated.h5": ("a valid HDF5 file (dataset 'embeddings') cut in half", _truncated_h5),
    "corrupt.h5": ("a valid HDF5 file with 512 bytes after the superblock inverted", _corrupt_h5),
    "corrupt_chunk.h5": ("HDF5 whose gzip-compressed 'embeddings' has one chunk garbled (metadata intact)",
                         _corrupt_chunk_h5),
    "corrupt_attribute.h5": ("HDF5 whose 'embeddings' has its spoco_complete attribute's datatype garbled",
                             _corrupt_attribute_h5),
    "wrong_key.h5": ("HDF5 whose only dataset is 'raw' (not 'embeddings')", lambda p: _h5(p, {"raw": _emb()})),
    "groups_only.h5": ("HDF5 with groups and no dataset", _groups_only_h5),
    "dangling_link.h5": ("HDF5 whose 'embeddings' is a soft link to nothing, 'external' a link to a missing file",
                         _dangling_link_h5),
    "complex.h5": ("'embeddings' of dtype complex64", lambda p: _h5(p, {"embeddings": _emb().astype(np.complex64)})),
    "strings.h5": ("'embeddings' of byte strings (dtype S3)",
                   lambda p: _h5(p, {"embeddings": np.array([["a", "bb"], ["ccc", "d"]], dtype=object).astype("S3")})),
    "compound.h5": ("'embeddings' of a structured (compound) dtype",
                    lambda p: _h5(p, {"embeddings": np.zeros((4, 4), dtype=[("a", "<i4"), ("b", "<f4")])})),
    "scalar.h5": ("'embeddings' is a scalar (shape ())", lambda p: _h5(p, {"embeddings": np.float32(1.5)})),
    "zero_size.h5": ("'embeddings' of shape (2, 0, 16)", lambda p: _h5(p, {"embeddings": np.zeros((2, 0, 16), "f4")})),
    "huge_shape.h5": ("'embeddings' declared (2**24, 2**24) float32, chunked, nothing written",
                      lambda p: _h5(p, {"embeddings": {"shape": (2 ** 24, 2 ** 24), "dtype": "f4",
                                                       "chunks": (16, 16)}})),
    "incomplete.h5": ("'embeddings' marked spoco_complete = False (an interrupted write)",
                      lambda p: _h5(p, {"embeddings": _emb()}, {"embeddings@spoco_complete": False})),
    "emb_nan.h5": ("'embeddings' (2, 16, 16) float32 holding NaN and inf",
                   lambda p: _h5(p, {"embeddings": np.where(_labels() > 0, np.nan, np.inf).astype("f4")[None]
                                     .repeat(2, 0)})),
    "emb_int.h5": ("'embeddings' of dtype int64", lambda p: _h5(p, {"embeddings": _emb().astype(np.int64)})),
    "emb_1d.h5": ("'embeddings' of shape (2, 16): one spatial axis", lambda p: _h5(p, {"embeddings": _emb()[:, 0]})),
    "emb_5d.h5": ("'embeddings' of shape (2, 2, 2, 4, 4): four spatial axes",
                  lambda p: _h5(p, {"embeddings": _emb().reshape(2, 2, 2, 4, 16)[..., :4]})),
    # zarr (v3 stores unless named v2)
    "corrupt_chunk.zarr": ("zarr array (2, 16, 16) float32 with one chunk replaced by garbage",
                           lambda p: _zarr_store(p, _garble_chunk)),
    "truncated_chunk.zarr": ("zarr array with one chunk cut in half", lambda p: _zarr_store(p, _cut_chunk)),
    "broken_meta.zarr": ("zarr array whose zarr.json is cut mid-way (invalid JSON)",
                         lambda p: _zarr_store(p, _edit_meta(lambda t: t[: len(t) // 2]))),
    "wrong_meta.zarr": ("zarr array whose zarr.json has shape 'abc' and no data type",
                        lambda p: _zarr_store(p, _edit_meta(lambda t: json.dumps(
                            {k: v for k, v in json.loads(t).items() if k != "data_type"} | {"shape": "abc"})))),
    "negative_shape.zarr": ("zarr array whose zarr.json claims shape [-5, 16, 16]",
                            lambda p: _zarr_store(p, _edit_meta(_set_meta(shape=[-5, 16, 16])))),
    "huge_shape.zarr": ("zarr array whose zarr.json claims shape [2, 2**24, 2**24] (chunks absent)",
                        lambda p: _zarr_store(p, _edit_meta(_set_meta(shape=[2, 2 ** 24, 2 ** 24])))),
    "v2_broken_meta.zarr": ("zarr v2 array whose .zarray is cut mid-way", _zarr_v2_broken),
    "group_only.zarr": ("zarr group with one empty subgroup and no array", _zarr_group_only),
    "complex.zarr": ("zarr array (2, 16, 16) of complex64", _zarr_complex),
    "no_metadata.zarr": ("a folder named .zarr with no zarr metadata", _zarr_no_metadata),
    # label images (0 = background; paired with image.tif in the training tests)
    "image.tif": ("a valid 16x16 float32 image: the partner of the label files", write_tif(_image())),
    "labels_ok.tif": ("valid int32 labels 16x16 with two objects", write_tif(_labels())),
    "labels_negative.tif": ("int32 labels with a negative id (-3)", write_tif(np.where(_labels() == 2, -3, _labels()))),
    "labels_huge.tif": ("int64 labels with ids 2**62 and 2**63 - 1",
                        write_tif(np.choose(_labels(), [0, 2 ** 62, 2 ** 63 - 1]).astype(np.int64))),
    "labels_uint64_max.tif": ("uint64 labels with id 2**64 - 1 (beyond int64)",
                              write_tif(np.where(_labels() > 0, np.uint64(2 ** 64 - 1), np.uint64(0)))),
    "labels_float.tif": ("float32 labels with non-integer values (1.5)",
                         write_tif(_labels().astype(np.float32) * 0.75)),
    "labels_float_nan.tif": ("float32 labels holding NaN", write_tif(np.where(_labels() > 0, np.nan, 0).astype("f4"))),
    "labels_bool.tif": ("bool labels (a mask, not instances)", write_tif(_labels() > 0)),
    "labels_all_zero.tif": ("int32 labels without any object", write_tif(np.zeros((16, 16), np.int32))),
    "labels_one_pixel.tif": ("a 1x1 label image holding one object", write_tif(np.ones((1, 1), np.int32))),
    "labels_rgb.tif": ("labels stored as a 16x16 RGB tif (3 channels)",
                       lambda p: p.write_bytes(_tif_bytes_rgb())),
    "pair_mismatch_image.tif": ("a 16x16 image whose label partner is 12x16", write_tif(_image())),
    "pair_mismatch_labels.tif": ("12x16 labels, partner of a 16x16 image", write_tif(_labels()[:12])),
    # embeddings (D, Y, X) for spoco segment
    "emb_ok.tif": ("valid float32 embeddings (2, 16, 16) of two objects", write_tif(_emb())),
    "emb_2d.tif": ("a 16x16 float32 image given as embeddings (one spatial axis)", write_tif(_image())),
    # images for a model with one input channel
    "image_5ch.tif": ("a (5, 16, 16) float32 image: 5 channels for a 1-channel network",
                      write_tif(np.stack([_image()] * 5))),
    "image_1d.h5": ("'embeddings' (here an image) of shape (16,)", lambda p: _h5(p, {"embeddings": _image()[0]})),
    "image_5d.tif": ("a (1, 1, 2, 8, 16) float32 array", write_tif(_image().reshape(1, 1, 2, 8, 16))),
    "image_nan.tif": ("a 16x16 float32 image holding NaN and inf",
                      write_tif(np.where(_labels() == 1, np.nan, np.where(_labels() == 2, np.inf, _image()))
                                .astype("f4"))),
    "image_tiny.tif": ("a 1x1 float32 image", write_tif(np.ones((1, 1), np.float32))),
    # checkpoints
    "text.pt": ("a text file named .pt", write_bytes(b"this is not a checkpoint\n")),
    "state_dict.pt": ("a plain torch.save of a torch.nn.Linear state dict (another tool's checkpoint)",
                      write_bytes(_linear_state_dict())),
    "plain_pickle.pt": ("a plain pickle of a dict (protocol 4)",
                        write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))),
    "foreign.zip": ("a zip archive holding a text file", write_bytes(_zip("notes.txt", "hello\n"))),
    "zip_archive.pt": ("a zip archive holding a text file, named .pt", write_bytes(_zip("data.pkl", "hello\n"))),
    "wrong_format.pt": ("a torch.save dict with format 'spoco-checkpoint-0'",
                        write_bytes(_torch_bytes({"format": "spoco-checkpoint-0"}))),
    "no_model.pt": ("a spoco-format checkpoint holding no model", write_bytes(_checkpoint(iteration=3))),
    "bad_model_config.pt": ("a spoco-format checkpoint whose model_config says ndim = 4",
                            write_bytes(_checkpoint(model_config=dict(ndim=4), model={}))),
    "huge_model_config.pt": ("a spoco-format checkpoint whose model_config asks for f_maps = 2**20, depth 6",
                             write_bytes(_checkpoint(model_config=dict(ndim=2, f_maps=2 ** 20, depth=6), model={}))),
    "mismatched_weights.pt": ("a spoco-format checkpoint whose weights do not fit its model_config",
                              write_bytes(_mismatched_checkpoint())),
    "truncated_checkpoint.pt": ("a valid spoco checkpoint cut in half", write_cut(_valid_checkpoint, 0.5)),
    "valid_tiny.pt": ("a valid spoco checkpoint: a 2D U-Net, 1 input channel, 2 embedding channels",
                      write_bytes(_valid_checkpoint())),
}


README_HEAD = """# Malformed-file corpus

Hostile and broken inputs for `tests/fuzz/test_corpus.py`, which runs every file
through the readers, `load_checkpoint` and the `spoco` command line and expects a
result or a clear error naming the file. Generated by `make_corpus.py` (rerun it
after changing its list; this README is written by it too).

| file | what it is |
|------|------------|
"""


def main(out: Path = HERE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, write) in FILES.items():
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        write(path)
    rows = "".join(f"| `{name}` | {what} |\n" for name, (what, _) in sorted(FILES.items()))
    (out / "README.md").write_text(README_HEAD + rows)


if __name__ == "__main__":
    main()
