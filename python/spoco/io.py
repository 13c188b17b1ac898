"""Reading and writing arrays in the file formats spoco works with: HDF5
(``.h5``, ``.hdf5``, ``.hdf``) and zarr (``.zarr``) with a dataset key, and tif.

HDF5 and zarr arrays are opened lazily (nothing is read until sliced), so
volumes larger than memory can be processed block by block. Arrays written by
:func:`spoco.cluster_blockwise` carry the attribute ``spoco_complete``; an array
whose attribute is ``False`` was left by an interrupted run, and
:func:`open_array` refuses it.
"""
from __future__ import annotations

import os

import numpy as np

from .clustering.blockwise import COMPLETE_ATTR, set_complete

__all__ = ["file_format", "open_array", "create_array", "check_complete", "write_tif", "IncompleteArrayError"]

_HDF5 = (".h5", ".hdf5", ".hdf")
_TIF = (".tif", ".tiff")


class IncompleteArrayError(ValueError):
    """An array marked ``spoco_complete = False``: its writer was interrupted."""


def file_format(path) -> str:
    """``"hdf5"``, ``"zarr"`` or ``"tif"`` from the file name."""
    p = str(path).rstrip("/").lower()
    if p.endswith(_HDF5):
        return "hdf5"
    if p.endswith(".zarr"):
        return "zarr"
    if p.endswith(_TIF):
        return "tif"
    raise ValueError(f"cannot tell the format of {path!r}: use .h5/.hdf5, .zarr or .tif")


def check_complete(array, name: str = "array") -> None:
    """Raise :class:`IncompleteArrayError` if ``array`` is marked as an interrupted write."""
    attrs = getattr(array, "attrs", None)
    if attrs is not None and COMPLETE_ATTR in attrs and not bool(attrs[COMPLETE_ATTR]):
        raise IncompleteArrayError(f"{name} is incomplete ({COMPLETE_ATTR}=False): the run that wrote it "
                                   "was interrupted; run it again")


def open_array(path, key: str | None = None):
    """Open ``path`` (and dataset ``key`` for HDF5/zarr) for reading.

    Returns an h5py dataset or zarr array (lazy), or a numpy array for tif.
    Raises ``FileNotFoundError``, ``KeyError`` (missing key, listing the
    available ones), or :class:`IncompleteArrayError`.
    """
    fmt = file_format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if fmt == "tif":
        import tifffile

        return tifffile.imread(path)
    if key is None:
        raise KeyError(f"{path} is {fmt}: give the dataset key (--key)")
    if fmt == "hdf5":
        import h5py

        f = h5py.File(path, "r")
        if key not in f or not isinstance(f[key], h5py.Dataset):
            names = _h5_datasets(f)
            f.close()
            raise KeyError(f"{path} has no dataset {key!r}; datasets: {', '.join(names) or 'none'}")
        arr = f[key]
    else:
        import zarr

        group = zarr.open(path, mode="r")
        if isinstance(group, zarr.Array):
            raise KeyError(f"{path} is a single zarr array, not a group; it has no key {key!r}")
        try:
            arr = group[key]
        except KeyError:
            names = sorted(group.array_keys())
            raise KeyError(f"{path} has no array {key!r}; arrays: {', '.join(names) or 'none'}") from None
        if not isinstance(arr, zarr.Array):
            raise KeyError(f"{path}: {key!r} is a group, not an array")
    check_complete(arr, f"{path}:{key}")
    return arr


def _h5_datasets(f) -> list:
    import h5py

    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def create_array(path, key: str, shape, dtype, chunks):
    """Create (or replace) dataset ``key`` in an HDF5 file or zarr group for writing.

    The new array is marked ``spoco_complete = False`` until its writer marks it
    complete, so a run that fails or is killed before that never looks finished.
    """
    fmt = file_format(path)
    if fmt == "tif":
        raise ValueError("tif files are written whole (write_tif), not block by block")
    if not key:
        raise KeyError(f"{path} is {fmt}: give the dataset key (--out-key)")
    chunks = tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))
    if fmt == "hdf5":
        import h5py

        f = h5py.File(path, "a")
        if key in f:
            del f[key]
        arr = f.create_dataset(key, shape=tuple(shape), dtype=dtype, chunks=chunks, compression="gzip",
                               compression_opts=1)
    else:
        import zarr

        group = zarr.open_group(path, mode="a")
        arr = group.create_array(key, shape=tuple(shape), dtype=dtype, chunks=chunks, overwrite=True)
    set_complete(arr, False)
    return arr


def write_tif(path, labels: np.ndarray) -> None:
    """Write a label image to tif atomically (a temporary file renamed at the end),
    so an interrupted write never leaves a partial file under ``path``."""
    import tifffile

    tmp = f"{path}.partial"
    tifffile.imwrite(tmp, labels, compression="zlib")
    os.replace(tmp, path)
