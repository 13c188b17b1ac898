"""Reading and writing images, label images and volumes.

Formats by suffix:

===============  ==========  ========================================================
suffix           library     key
===============  ==========  ========================================================
.tif .tiff       tifffile    none; colour samples and ImageJ channels are moved to the front
                             (``(H, W, 3)`` RGB becomes ``(3, H, W)``), other axes as stored
.png .jpg .jpeg  imageio     none; colour images are returned channels-first (C, Y, X)
.h5 .hdf5 .hdf   h5py        required: the dataset's path inside the file
.zarr            zarr        optional when the store is an array, required for a group
===============  ==========  ========================================================

A key can also be given inside the path, after the file name: ``"raw.h5:volumes/raw"``
equals ``read_array("raw.h5", key="volumes/raw")`` (for container formats only, so
Windows drive letters are unaffected; when both are given they must agree). This is
how the command line takes keys.

Errors name the path (and key): ``FileNotFoundError`` for a missing file,
``KeyError`` for a missing key (listing the keys that exist), ``ValueError`` for an
unsupported suffix or a missing required key.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._complete import COMPLETE_ATTR, IncompleteArrayError, check_complete, set_complete  # noqa: F401
from .._validation import check_fits_in_memory
from . import ome_zarr

TIFF = (".tif", ".tiff")
PLAIN = (".png", ".jpg", ".jpeg")
HDF5 = (".h5", ".hdf5", ".hdf")
ZARR = (".zarr",)
SUFFIXES = TIFF + PLAIN + HDF5 + ZARR
_CONTAINERS = HDF5 + ZARR

def split_key(path, key=None) -> tuple[Path, str | None]:
    """``(file path, key)`` from a path that may end in ``":key"`` (container formats
    only). Raises ValueError if the path's key and ``key`` disagree."""
    text = os.fspath(path)
    head, sep, tail = text.rpartition(":")
    if sep and Path(head).suffix.lower() in _CONTAINERS and not Path(text).exists():
        if key is not None and key != tail:
            raise ValueError(f"{text!r}: key {tail!r} in the path differs from key={key!r}")
        return Path(head), tail or None
    return Path(text), key


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {s or '(no suffix)'!r}; "
                         f"supported: {', '.join(SUFFIXES)}")
    return s


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return path


def _h5_keys(f) -> list:
    import h5py

    keys = []
    try:
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    except Exception:  # noqa: BLE001 - a damaged file (h5py raises RuntimeError, OSError, ...): list what was read
        keys.append("... (the rest is unreadable)")
    return keys


def _h5_dataset(f, path, key):
    import h5py

    if key is None:
        keys = _h5_keys(f)
        if len(keys) != 1:  # the only dataset of a file needs no name
            raise ValueError(f"{path}: HDF5 files with {len(keys)} datasets need a key (the dataset path); "
                             f"datasets in the file: {keys}")
        key = keys[0]
    try:
        obj = f.get(key)
    except Exception as exc:  # noqa: BLE001 - damaged object headers raise RuntimeError, OSError, ...
        raise ValueError(f"{path}: {key!r} is unreadable, the file may be corrupt ({_first_line(exc)})") from None
    if not isinstance(obj, h5py.Dataset):
        raise KeyError(f"{path}: no dataset {key!r}; datasets in the file: {_h5_keys(f)}")
    return obj


def _h5_open(path, mode: str = "r"):
    """``h5py.File`` with a clear error naming the file when it is not readable HDF5
    (corrupt, truncated, another format under an .h5 name)."""
    import h5py

    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if mode == "r" or Path(path).exists():
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: not a readable HDF5 file ({first})") from None
        raise


def _zarr_node(path, key):
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for unreadable stores
        raise ValueError(f"{path}: not a readable zarr store ({exc})") from exc
    if key:
        if not isinstance(node, zarr.Group) or not _zarr_read(path, key, node.__contains__, key):
            keys = _zarr_read(path, None, _zarr_keys, node)
            raise KeyError(f"{path}: no array {key!r}; arrays in the store: {keys}")
        node = _zarr_read(path, key, node.__getitem__, key)
    if isinstance(node, zarr.Group) and ome_zarr.multiscales(node):  # OME-Zarr: full resolution, no time axis
        try:
            array, axes, _ = ome_zarr.level(node)
            return ome_zarr.ChannelFirstView(array, axes) if "t" in axes else array
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
    keys = _zarr_read(path, None, _zarr_keys, node)
    if isinstance(node, zarr.Group) and key is None and len(keys) == 1:
        node = _zarr_read(path, keys[0], node.__getitem__, keys[0])  # the only array of a store needs no name
    if isinstance(node, zarr.Group):
        what = "needs a key" if key is None else f"key {key!r} is a group and needs a longer key"
        raise ValueError(f"{path}: the zarr store {what}; arrays in the store: {keys}")
    return node


def _zarr_read(path, key, fn, *args):
    """``fn(*args)`` on a store whose members' metadata may be damaged (zarr then raises
    JSON, Unicode, value errors, ...): any failure becomes a ValueError naming the store."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - see above
        what = f"the metadata of {key!r}" if key else "the list of its arrays"
        raise ValueError(f"{path}: {what} is unreadable, the store may be corrupt ({_first_line(exc)})") from None


def _zarr_keys(node) -> list:
    import zarr

    if not isinstance(node, zarr.Group):
        return []
    keys = []
    for name, child in node.members(max_depth=None) if hasattr(node, "members") else node.arrays(recurse=True):
        if isinstance(child, zarr.Array):
            keys.append(name)
    return sorted(keys)


def read_array(path, key: str | None = None) -> np.ndarray:
    """Read a whole image, label image or volume into memory.

    Parameters
    ----------
    path : str or Path; suffix selects the format (see the module docstring);
        ``"file.h5:key"`` / ``"store.zarr:key"`` carry the key in the path
    key : str, optional; dataset path inside HDF5 (required) or zarr (for groups)

    Returns
    -------
    np.ndarray as stored (dtype kept), except that colour images (png/jpg, RGB tif) and
    ImageJ channel axes become channels-first ``(C, ...)``.

    Raises ValueError naming the file for damaged files, for arrays whose header asks
    for more memory than the machine has (checked before reading; :func:`open_array`
    reads parts) and for HDF5/zarr outputs marked incomplete by an interrupted writer.
    """
    path, key = split_key(path, key)
    suffix = _suffix(path)
    _existing(path)
    if suffix in TIFF:
        return _read_tiff(path)
    if suffix in HDF5:
        with _h5_open(path) as f:
            dataset = _h5_dataset(f, path, key)
            return _read_stored(dataset, f"{path}:{dataset.name.lstrip('/')}")
    if suffix in ZARR:
        return _read_stored(_zarr_node(path, key), f"{path}:{key}" if key else str(path))
    if suffix in PLAIN:
        import imageio.v3 as iio

        try:
            arr = np.asarray(iio.imread(path))
        except Exception as exc:  # noqa: BLE001 - imageio raises several types for unreadable files
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: not a readable {suffix.lstrip('.')} image ({first})") from None
        return np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr
    raise AssertionError(suffix)  # every suffix of SUFFIXES is handled above


def _read_stored(array, name: str) -> np.ndarray:
    """All of an HDF5 dataset or zarr array, refused before reading when its header asks
    for more memory than there is or marks it incomplete. Damaged metadata or chunks make
    h5py and zarr raise OSError, RuntimeError, ValueError, ...: all become a ValueError
    naming the array."""
    try:
        check_complete(array, name)
        shape, dtype = tuple(array.shape), array.dtype
    except IncompleteArrayError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise ValueError(f"{name}: the metadata is unreadable, the file may be corrupt ({_first_line(exc)})") from None
    check_fits_in_memory(_nbytes(shape, dtype), f"{name}: reading the whole array (shape {shape}, {dtype})")
    try:
        return np.asarray(array[...])
    except Exception as exc:  # noqa: BLE001 - see above
        raise ValueError(f"{name}: the stored data is unreadable, the file may be corrupt ({_first_line(exc)})") \
            from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _nbytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, in Python integers (no overflow)."""
    n = np.dtype(dtype).itemsize
    for s in shape:
        n *= int(s)
    return n


def _read_tiff(path: Path) -> np.ndarray:
    """A tif as stored, except that colour samples (RGB, axis 'S') and ImageJ channels
    (axis 'C') move to the front: ``(H, W, 3)`` becomes ``(3, H, W)``, ``(Z, C, Y, X)``
    becomes ``(C, Z, Y, X)``."""
    import tifffile

    # A damaged file makes tifffile raise almost anything (IndexError, ZeroDivisionError,
    # RuntimeError, ...): every failure to parse it is "not a readable TIFF file".
    try:  # the header first: its shape is checked before anything is allocated
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), series.dtype, str(series.axes)
    except Exception as err:  # noqa: BLE001 - see above
        raise ValueError(f"{path}: not a readable TIFF file ({err})") from None
    check_fits_in_memory(_nbytes(shape, dtype), f"{path}: the TIFF image (shape {shape}, {dtype})")
    try:
        arr = np.asarray(tifffile.imread(path, series=0))
    except Exception as err:  # noqa: BLE001 - see above
        raise ValueError(f"{path}: not a readable TIFF file ({err})") from None
    for channel_axis in ("S", "C"):
        if channel_axis in axes and len(axes) == arr.ndim and arr.ndim >= 3:
            i = axes.index(channel_axis)
            arr, axes = np.moveaxis(arr, i, 0), channel_axis + axes[:i] + axes[i + 1:]
            break
    return arr


def open_array(path, key: str | None = None):
    """A lazy array-like for data larger than memory: an ``h5py.Dataset`` (the file
    stays open while the dataset is referenced), a ``zarr.Array``, or for
    uncompressed tif a read-only ``np.memmap``. Compressed tif and png/jpg are read
    into memory. Slicing any of them gives numpy arrays; ``.shape`` and ``.dtype``
    are available without reading."""
    path, key = split_key(path, key)
    suffix = _suffix(path)
    _existing(path)
    if suffix in TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                axes = str(tif.series[0].axes)
            if "S" in axes or "C" in axes:  # channels move to the front: as read_array gives them
                return read_array(path)
            return tifffile.memmap(path, mode="r")
        except Exception:  # noqa: BLE001 - compressed, tiled or damaged: read_array reads it or names the file
            return read_array(path)
    if suffix in HDF5:
        f = _h5_open(path)
        try:
            arr = _h5_dataset(f, path, key)
            check_complete(arr, f"{path}:{key}")
            return arr
        except (KeyError, ValueError):
            f.close()
            raise
        except (RuntimeError, OSError) as exc:  # h5py's errors for damaged headers or attributes
            f.close()
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: not a readable HDF5 dataset, the file may be corrupt ({first})") from None
    if suffix in ZARR:
        arr = _zarr_node(path, key)
        check_complete(arr, f"{path}:{key}" if key else str(path))
        return arr
    return read_array(path)


def write_array(path, array, key: str | None = None, chunks=None) -> Path:
    """Write ``array`` to ``path`` (format from the suffix) and return the file path.

    tif: any shape and dtype, uncompressed (memory-mappable by :func:`open_array`). png/jpg: 2D ``(Y, X)`` or
    channels-first colour ``(C, Y, X)`` with C in {3, 4}; uint8 (png also uint16).
    HDF5: ``key`` required; an existing file is kept and the dataset replaced;
    gzip-compressed, chunked by ``chunks`` (default: automatic). zarr: without
    ``key`` the store is one array (replaced), with ``key`` an array inside a group.
    """
    path, key = split_key(path, key)
    suffix = _suffix(path)
    array = np.asarray(array)
    if not path.parent.exists():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    if suffix in TIFF:
        import tifffile

        if array.ndim < 2 or array.size == 0:  # tifffile fails on these with IndexErrors
            raise ValueError(f"{path}: tif holds arrays of 2 or more non-empty axes, got shape {array.shape}; "
                             "use .h5 or .zarr")
        # Uncompressed, so that open_array can memory-map it; grey pages, so that
        # (3, Y, X) stays channels-first and is never stored as RGB.
        # Written under a temporary name and renamed, so an interrupted write never
        # leaves a partial file under ``path``.
        tmp = path.with_name(path.name + ".partial")
        tifffile.imwrite(tmp, array, photometric="minisblack")
        os.replace(tmp, path)
    elif suffix in PLAIN:
        _write_plain(path, array, suffix)
    elif suffix in HDF5:
        import h5py

        if key is None:
            raise ValueError(f"{path}: writing HDF5 needs a key (the dataset path)")
        with h5py.File(path, "a") as f:
            if key in f:
                del f[key]
            plain = array.size == 0 or array.ndim == 0  # HDF5 chunks and compresses neither
            chunk = None if plain else (tuple(chunks) if chunks is not None else True)
            # Marked incomplete until the data are in: a writer killed half-way leaves no result.
            dataset = f.create_dataset(key, shape=array.shape, dtype=array.dtype, chunks=chunk,
                                       compression=None if plain else "gzip")
            set_complete(dataset, False)
            if array.size:
                dataset[...] = array
            set_complete(dataset, True)
    else:
        _write_zarr(path, array, key, chunks)
    return path


def _write_plain(path, array, suffix):
    import imageio.v3 as iio

    colour = array.ndim == 3 and array.shape[0] in (3, 4)
    if not (array.ndim == 2 or colour):
        raise ValueError(f"{path}: {suffix} holds (Y, X) or (C, Y, X) with C in 3 or 4, got shape {array.shape}")
    allowed = (np.uint8, np.uint16) if suffix == ".png" else (np.uint8,)
    if array.dtype not in allowed:
        raise ValueError(f"{path}: {suffix} holds {', '.join(np.dtype(t).name for t in allowed)} only, "
                         f"got {array.dtype}; use tif for other types")
    tmp = path.with_name(f".{path.stem}.partial{suffix}")  # renamed when whole (the suffix tells the format)
    iio.imwrite(tmp, np.moveaxis(array, 0, -1) if colour else array)
    os.replace(tmp, path)


def _write_zarr(path, array, key, chunks):
    out = _create_zarr(path, array.shape, array.dtype, key, tuple(chunks) if chunks is not None else None)
    set_complete(out, False)  # until the data are in
    if array.size:
        out[...] = array
    set_complete(out, True)


def list_pairs(image_dir, label_dir) -> list[tuple[Path, Path]]:
    """Image/label file pairs of two folders, matched by file name without suffix
    (``a.tif`` with ``a.png`` is a pair), sorted by name.

    Raises FileNotFoundError for a missing folder, ValueError for a folder with no
    supported files or for files that have no partner (all listed)."""
    found = []
    for name, folder in (("image_dir", image_dir), ("label_dir", label_dir)):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} {folder}: no such folder")
        files = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in SUFFIXES and not p.name.startswith("."):
                if p.stem in files:
                    raise ValueError(f"{name} {folder}: two files named {p.stem!r} ({files[p.stem].name}, {p.name})")
                files[p.stem] = p
        if not files:
            raise ValueError(f"{name} {folder}: no image files ({', '.join(SUFFIXES)})")
        found.append(files)
    images, labels = found
    missing = sorted(set(images) ^ set(labels))
    if missing:
        lonely = [str(images.get(s) or labels.get(s)) for s in missing]
        raise ValueError(f"{len(missing)} file(s) without a partner in {image_dir} / {label_dir} "
                         f"(pairs are matched by name without suffix): {', '.join(lonely[:10])}"
                         + (" ..." if len(lonely) > 10 else ""))
    return [(images[s], labels[s]) for s in sorted(images)]


def create_array(path, shape, dtype, key: str | None = None, chunks=None, *, voxel_size=None,
                 channels: bool = False, labels: bool = False):
    """An empty HDF5 dataset or zarr array to be filled block by block (outputs larger
    than memory); an existing dataset of that key is replaced. HDF5 needs ``key``.
    The array is marked incomplete (:data:`COMPLETE_ATTR` = False) until its writer
    calls :func:`set_complete`; :func:`open_array` refuses it before that. The HDF5
    file stays open while the returned dataset is referenced.

    A path ending in ``.ome.zarr`` becomes a single-level OME-Zarr image (``channels``:
    the first axis is ``c``) or label image (``labels``) at path ``"0"`` of the store
    (``key`` is not used), with ``voxel_size`` (spatial axes) in its metadata; other
    outputs keep ``voxel_size`` in the attribute :data:`VOXEL_ATTR`."""
    if is_ome(path):
        import zarr

        store = str(split_key(path)[0])
        group = zarr.open_group(store=store, mode="w")
        group.attrs.update(ome_zarr.metadata(shape, voxel_size, channels=channels, labels=labels,
                                             zarr_format=group.metadata.zarr_format))
        array = _create_zarr(store, shape, dtype, "0", chunks)
    else:
        array = _create_array(path, shape, dtype, key, chunks)
        if voxel_size is not None:
            array.attrs[VOXEL_ATTR] = [float(v) for v in voxel_size]
    set_complete(array, False)
    return array


VOXEL_ATTR = "spoco_voxel_size"  # voxel size (spatial axes) of spoco's non-OME outputs


def is_ome(path) -> bool:
    """Whether ``path`` names an OME-Zarr image spoco writes (``*.ome.zarr``)."""
    return str(split_key(path)[0]).lower().rstrip("/").endswith(".ome.zarr")


def voxel_size(path, key: str | None = None):
    """The voxel size of an image's spatial axes (a tuple of floats, OME-Zarr units, normally
    micrometres) from OME-Zarr metadata or spoco's own attribute, or None if the file says
    nothing (tif/png/HDF5 from other tools)."""
    path, key = split_key(path, key)
    suffix = _suffix(path)
    _existing(path)
    if suffix in ZARR:
        import zarr

        node = zarr.open(store=str(path), mode="r")
        node = node[key] if key else node
        if isinstance(node, zarr.Group) and ome_zarr.multiscales(node):
            return ome_zarr.level(node)[2]
        found = node.attrs.get(VOXEL_ATTR)
    elif suffix in HDF5:
        with _h5_open(path) as f:
            found = _h5_dataset(f, path, key).attrs.get(VOXEL_ATTR)
    else:
        return None
    return None if found is None else tuple(float(v) for v in np.ravel(found))


def open_for_update(path, key: str | None = None):
    """An existing zarr array opened for writing, complete or not (to continue an interrupted
    writer), or None if there is none or it cannot be read. Only zarr: an HDF5 file whose
    writer was killed may hold chunks that can be neither read nor overwritten."""
    import zarr

    path, key = split_key(path, key)
    if _suffix(path) not in ZARR or not path.exists():
        return None
    try:
        node = zarr.open(store=str(path), mode="r+")
        if key:
            node = node[key]
        if isinstance(node, zarr.Group) and ome_zarr.multiscales(node):
            node = ome_zarr.level(node)[0]
    except Exception:  # noqa: BLE001 - unreadable or missing: the caller creates a new array
        return None
    return node if isinstance(node, zarr.Array) else None


def _create_array(path, shape, dtype, key, chunks):
    path, key = split_key(path, key)
    suffix = _suffix(path)
    shape = tuple(int(s) for s in shape)
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, shape)) if chunks is not None else None
    if not path.parent.exists():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    if suffix in HDF5:
        import h5py

        if key is None:
            raise ValueError(f"{path}: writing HDF5 needs a key (the dataset path)")
        f = h5py.File(path, "a")
        if key in f:
            del f[key]
        return f.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks or True, compression="gzip",
                                compression_opts=1)
    if suffix in ZARR:
        return _create_zarr(path, shape, dtype, key, chunks)
    raise ValueError(f"{path}: block-wise output needs an HDF5 (.h5) or zarr (.zarr) path")


def _create_zarr(path, shape, dtype, key, chunks):
    """An empty zarr array: the whole store without ``key``, else ``key`` inside a group
    (an existing array of that name is replaced). ``chunks=None``: zarr's default."""
    import zarr

    if key is None:
        return zarr.open_array(store=str(path), mode="w", shape=shape, dtype=dtype, chunks=chunks)
    group = zarr.open_group(store=str(path), mode="a")
    parent, _, name = key.rpartition("/")
    if parent:
        group = group.require_group(parent)
    if name in group:
        del group[name]
    create = group.create_array if hasattr(group, "create_array") else group.create_dataset
    return create(name, shape=shape, dtype=dtype, **({"chunks": chunks} if chunks else {}))
