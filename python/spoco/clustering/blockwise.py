"""Block-wise mutex watershed for volumes larger than memory.

``cluster_blockwise`` segments a volume block by block (each block with a halo
of at least the longest offset), stitches the blocks' segments across the block
faces, and numbers the objects 1..K. Memory is a few blocks per thread whatever
the volume size; the input may live on disk (zarr, HDF5, ``np.memmap``), in a
Dask array (see :mod:`.blockwise_dask`) or on a GPU.

Algorithm (see :mod:`.blocks` for the vocabulary)
-------------------------------------------------
1. Every block: read core + halo, mutex watershed (C++, releases the GIL, so a
   thread pool runs blocks in parallel), number the fragments, write the core's
   local fragment ids to the output and keep the labels of the face slabs
   (compressed, in a temporary directory).
2. Every face: match the two blocks' labels on the slab around it (mutual best
   overlap, or one segment contained in the other; :func:`.blocks.match_face`).
3. Union-find over the matches (scipy), objects numbered 1..K, ``min_size``.
4. Every block: local fragment ids -> final ids, written in place.

The result depends only on the block grid, never on the thread count.
``out`` (zarr/HDF5) gets the attribute ``spoco_complete = False`` before the
first write and ``True`` after the last one, so an interrupted run is never
mistaken for a result (:func:`spoco.data.io.check_complete`).
"""
from __future__ import annotations

import os
import tempfile
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np

from .._validation import (as_numpy, int_arg, is_int, is_tensor, offsets_array, positive_float,
                           positive_int_tuple)
from .blocks import BlockGrid, MWSOptions, block_lut, fits, match_face, read_block, resolve, segment_ext, slab_items
from .offsets import default_offsets
from .._complete import COMPLETE_ATTR, set_complete

__all__ = ["cluster_blockwise", "COMPLETE_ATTR"]

def cluster_blockwise(emb, *, block_shape, halo, out=None, threads=None, delta_d: float = 2.0, offsets=None,
                      n_attractive=None, strides=None, randomize_strides: bool = False, seed: int = 0, mask=None,
                      min_size: int = 0, stitch_containment: float = 0.9, progress=False):
    """Mutex watershed of a large volume, block by block, with stitching across block faces.

    Parameters
    ----------
    emb : array-like (D, *spatial), float, 2D or 3D
        numpy array, ``np.memmap``, zarr array, h5py dataset, dask array, or torch
        tensor (CPU or CUDA). Only one block plus halo is read at a time.
    block_shape : int or ndim ints
        Core size of a block (pixels); the last block along an axis may be shorter.
    halo : int or ndim ints
        Context added on every side of a block; at least the longest offset along
        every axis (default offsets: 27).
    out : zarr array or h5py dataset (*spatial), integer, optional
        Written block by block (and returned). Default: an int64 numpy array.
    threads : int, optional
        Blocks segmented at the same time (default: the usable CPUs). Memory grows
        with it; the result does not depend on it. Dask arrays ignore it: the
        active Dask scheduler runs the blocks.
    delta_d, offsets, n_attractive, strides, randomize_strides, seed, mask, min_size :
        As in :func:`spoco.cluster` (``strides`` and the random strides apply to each
        block's own pixel grid). ``mask`` may be any array-like (*spatial);
        ``min_size`` applies to the stitched objects.
    stitch_containment : float in [0.5, 1]
        Two blocks' segments in the slab around a face (``ceil(halo / 2)`` on each side) are
        one object when each is the other's largest overlap there, or when this
        fraction of the smaller one lies within the other.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    labels : ``out``, or an int64 numpy array (*spatial); 0 = background/masked,
        objects 1..K.
    """
    spatial, ndim = _emb_spatial(emb)
    grid, opts = _setup(spatial, ndim, block_shape, halo, delta_d, offsets, n_attractive, strides,
                        randomize_strides, seed)
    if not is_int(min_size) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    containment = _containment(stitch_containment)
    if mask is not None and tuple(mask.shape) != spatial:
        raise ValueError(f"mask must have shape {spatial}, got {tuple(mask.shape)}")
    if out is not None:
        check_out(out, spatial)
    n_threads = _threads(threads, grid.n_blocks)
    if _is_dask(emb):
        from .blockwise_dask import cluster_dask

        return cluster_dask(emb, grid, opts, out=out, mask=mask, min_size=int(min_size), containment=containment)
    return _Run(emb, grid, opts, out, mask, n_threads, containment, bool(progress)).run(int(min_size))


# ---------------------------------------------------------------------------- argument checks

def _emb_spatial(emb):
    shape = getattr(emb, "shape", None)
    if shape is None:
        raise TypeError(f"emb must be an array-like with a shape (numpy, zarr, h5py, dask, torch), "
                        f"got {type(emb).__name__}")
    shape = tuple(int(s) for s in shape)
    if not 2 <= len(shape) <= 4:
        raise ValueError(f"emb must have shape (D, *spatial) with 1 to 3 spatial axes, got {shape}")
    if min(shape) == 0:
        raise ValueError(f"emb is empty (shape {shape})")
    dtype = getattr(emb, "dtype", None)
    kind = str(dtype).removeprefix("torch.")
    if kind not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"emb must hold floats, got dtype {dtype}")
    return shape[1:], len(shape) - 1


def _setup(spatial, ndim, block_shape, halo, delta_d, offsets, n_attractive, strides, randomize_strides, seed):
    block = positive_int_tuple(block_shape, ndim, "block_shape")
    if is_int(halo):
        halo = (halo,) * ndim
    try:
        halo = tuple(halo)
    except TypeError:
        raise TypeError(f"halo must be an integer or a sequence of {ndim} integers, got {halo!r}") from None
    if len(halo) != ndim or not all(is_int(h) and h >= 0 for h in halo):
        raise ValueError(f"halo must be {ndim} non-negative integers (one per spatial axis), got {halo}")
    if offsets is None:
        if n_attractive is not None:
            raise ValueError("n_attractive needs explicit offsets")
        offsets, n_attractive = default_offsets(ndim)
    o = offsets_array(offsets, ndim)
    if n_attractive is None:
        raise ValueError("n_attractive is required with explicit offsets")
    n_attractive = int_arg(n_attractive, "n_attractive", 0, len(o))
    # An offset at least as long as the volume links nothing, so it needs no halo.
    need = np.minimum(np.abs(o).max(axis=0), np.asarray(spatial) - 1)
    if any(h < n for h, n in zip(halo, need)):
        raise ValueError(f"halo must be at least the longest offset along every axis, {tuple(int(n) for n in need)}"
                         f", got {tuple(halo)}")
    if strides is not None:
        strides = positive_int_tuple(strides, ndim, "strides")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    opts = MWSOptions(o, n_attractive, positive_float(delta_d, "delta_d"), strides, bool(randomize_strides),
                      int(seed))
    return BlockGrid(tuple(spatial), block, tuple(int(h) for h in halo)), opts


def _containment(t):
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not 0.5 <= t <= 1:
        raise ValueError(f"stitch_containment must be a number in [0.5, 1], got {t!r}")
    return float(t)


def _threads(threads, n_blocks):
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    elif not is_int(threads) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return max(1, min(int(threads), n_blocks))


def check_out(out, spatial):
    """``out`` must be a writable integer array of the volume's spatial shape."""
    shape = getattr(out, "shape", None)
    if shape is None or not hasattr(out, "__setitem__"):
        raise TypeError(f"out must be a writable array (zarr array, h5py dataset, numpy), got {type(out).__name__}")
    if tuple(shape) != tuple(spatial):
        raise ValueError(f"out must have the spatial shape of emb, {tuple(spatial)}, got {tuple(shape)}")
    dtype = np.dtype(out.dtype)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise TypeError(f"out must have an integer dtype, got {dtype}")
    mode = getattr(getattr(out, "file", None), "mode", None)  # h5py
    if mode == "r" or getattr(out, "read_only", False):
        raise ValueError("out is opened read-only")


def _is_dask(x) -> bool:
    return type(x).__module__.split(".")[0] == "dask"


# ---------------------------------------------------------------------------- the threaded run

class _SlabStore:
    """Face-slab labels of finished blocks, zlib-compressed in a temporary directory
    (so memory does not grow with the number of blocks waiting for a neighbour)."""

    def __init__(self, folder: str):
        self.folder = folder

    def _path(self, face, side):
        a, b, axis = face
        return os.path.join(self.folder, f"{a}_{b}_{axis}_{side}.bin")

    def put(self, face, side, labels: np.ndarray) -> None:
        with open(self._path(face, side), "wb") as f:
            f.write(zlib.compress(np.ascontiguousarray(labels, dtype=np.uint32).tobytes(), 1))

    def pop(self, face, side, shape) -> np.ndarray:
        path = self._path(face, side)
        with open(path, "rb") as f:
            data = zlib.decompress(f.read())
        os.remove(path)
        return np.frombuffer(data, dtype=np.uint32).reshape(shape)


def _parallel(fn, items, threads, progress, desc):
    """``[fn(x) for x in items]`` on a thread pool; the first error cancels the rest."""
    items = list(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="block" if desc != "stitch" else "face")
    results = [None] * len(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    results[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return results


class _Run:
    def __init__(self, emb, grid, opts, out, mask, threads, containment, progress):
        self.emb, self.grid, self.opts, self.out, self.mask = emb, grid, opts, out, mask
        self.threads, self.containment, self.progress = threads, containment, progress
        self.result = out if out is not None else np.zeros(grid.shape, dtype=np.int64)
        # zarr chunks may straddle blocks: serialise the read-modify-writes of out.
        self.lock = threading.Lock() if out is not None else _NoLock()
        self.counts = [0] * grid.n_blocks

    def run(self, min_size):
        grid = self.grid
        set_complete(self.out, False)
        with tempfile.TemporaryDirectory(prefix="spoco-faces-") as folder:
            self.slabs = _SlabStore(folder)
            sizes = _parallel(self._segment, range(grid.n_blocks), self.threads, self.progress, "segment")
            faces = grid.faces()
            matches = _parallel(self._stitch, faces, self.threads, self.progress, "stitch")
        offsets, lut = resolve(self.counts, sizes, [(a, b, m) for (a, b, _), m in zip(faces, matches)], min_size)
        fits(self.out, int(lut.max()) if len(lut) else 0)
        _parallel(lambda flat: self._relabel(flat, offsets, lut), range(grid.n_blocks), self.threads,
                  self.progress, "relabel")
        set_complete(self.out, True)
        return self.result

    def _segment(self, flat):
        grid = self.grid
        ext, core_in_ext = grid.ext(flat), grid.core_in_ext(flat)
        if is_tensor(self.emb) and self.emb.device.type == "cuda":
            emb_ext = self.emb[(slice(None),) + ext]
        else:
            emb_ext = read_block(self.emb, ext)
        mask_ext = None if self.mask is None else as_numpy(self.mask[ext], "mask")
        numbered, k = segment_ext(emb_ext, self.opts, mask_ext, core_in_ext)
        del emb_ext
        fits(self.out, k)
        core = numbered[core_in_ext]
        with self.lock:
            self.result[grid.core(flat)] = core
        for face, side, slab in slab_items(grid, flat):
            self.slabs.put(face, side, numbered[slab])
        self.counts[flat] = k
        return np.bincount(core.ravel(), minlength=k + 1)[1:]

    def _stitch(self, face):
        a, b, axis = face
        shape = tuple(s.stop - s.start for s in self.grid.face_slab(a, b, axis))
        la, lb = self.slabs.pop(face, "a", shape), self.slabs.pop(face, "b", shape)
        return match_face(la, lb, self.counts[a], self.counts[b], self.containment)

    def _relabel(self, flat, offsets, lut):
        core = self.grid.core(flat)
        local_to_final = block_lut(lut, int(offsets[flat]), self.counts[flat])
        with self.lock:
            local = np.asarray(self.result[core])
        final = local_to_final[local]
        with self.lock:
            self.result[core] = final


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
