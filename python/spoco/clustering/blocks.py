"""The pieces of block-wise clustering that do not depend on how blocks are
scheduled (a thread pool or Dask): the block grid, the mutex watershed of one
block with its halo, the matching of segments across one block face, and the
global union-find that turns block fragments into consecutive object ids.

Vocabulary
----------
core
    The part of the volume a block is responsible for (the grid of cores tiles
    the volume without overlap; the last block along an axis may be shorter).
ext
    The core grown by ``halo`` on every side, clipped to the volume. The mutex
    watershed of a block runs on its ext region, so every edge of a core pixel
    (``|offset| <= halo``) is seen.
fragment
    A segment of one block's mutex watershed that has pixels in the core. The
    fragments of block ``b`` are numbered ``1..k_b``; global fragment ids are
    ``fragment_offsets[b] + local id`` (0 = background).
face slab
    The pixels within ``ceil(halo / 2)`` of the face between two neighbouring blocks A and
    B (both sides, cores' extent along the other axes). Both blocks have labels
    there (A's core + halo, B's halo + core), and the two labellings are
    matched by overlap (:func:`match_face`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import _core
from .._cuda_loader import has_cuda_kernels
from .._validation import float_array, is_tensor
from .mws import mutex_watershed, mutex_watershed_embeddings


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks over a volume of ``shape`` (spatial axes only)."""

    shape: tuple
    block_shape: tuple
    halo: tuple

    @property
    def grid_shape(self) -> tuple:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape))

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid_shape))

    def block_index(self, flat: int) -> tuple:
        return tuple(int(i) for i in np.unravel_index(flat, self.grid_shape))

    def core(self, flat: int) -> tuple:
        """Slices of block ``flat``'s core in volume coordinates."""
        idx = self.block_index(flat)
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, self.block_shape, self.shape))

    def ext(self, flat: int) -> tuple:
        """Slices of block ``flat``'s core grown by the halo, clipped to the volume."""
        return tuple(slice(max(c.start - h, 0), min(c.stop + h, s))
                     for c, h, s in zip(self.core(flat), self.halo, self.shape))

    def core_in_ext(self, flat: int) -> tuple:
        """Slices of the core inside the ext region (the crop after segmentation)."""
        return tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(self.core(flat), self.ext(flat)))

    def faces(self) -> list:
        """Every interior face as ``(a, b, axis)``: block ``b`` follows ``a`` along ``axis``."""
        out = []
        for a in range(self.n_blocks):
            idx = self.block_index(a)
            for axis in range(len(self.shape)):
                if idx[axis] + 1 < self.grid_shape[axis]:
                    nxt = list(idx)
                    nxt[axis] += 1
                    out.append((a, int(np.ravel_multi_index(nxt, self.grid_shape)), axis))
        return out

    def face_slab(self, a: int, b: int, axis: int) -> tuple:
        """Volume slices of the slab around the face between blocks ``a`` and ``b``."""
        ca, cb = self.core(a), self.core(b)
        # Half the halo on each side: a block's labels deep in its halo (near the
        # edge of what it saw) are the least reliable; measured in notebook.md.
        h = max(1, -(-self.halo[axis] // 2))
        f = cb[axis].start
        slab = list(ca)
        slab[axis] = slice(max(ca[axis].start, f - h), min(cb[axis].stop, f + h))
        return tuple(slab)

    def faces_of(self, flat: int) -> list:
        """The faces (as in :meth:`faces`) that block ``flat`` is part of."""
        idx = self.block_index(flat)
        out = []
        for axis in range(len(self.shape)):
            if idx[axis] > 0:
                prev = list(idx)
                prev[axis] -= 1
                out.append((int(np.ravel_multi_index(prev, self.grid_shape)), flat, axis))
            if idx[axis] + 1 < self.grid_shape[axis]:
                nxt = list(idx)
                nxt[axis] += 1
                out.append((flat, int(np.ravel_multi_index(nxt, self.grid_shape)), axis))
        return out


def relative(slices: tuple, origin: tuple) -> tuple:
    """``slices`` (volume coordinates) relative to a region starting at ``origin`` (slices)."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(slices, origin))


@dataclass(frozen=True)
class MWSOptions:
    """The mutex watershed settings of every block (validated by the caller)."""

    offsets: np.ndarray
    n_attractive: int
    delta_d: float
    strides: tuple | None
    randomize_strides: bool
    seed: int
    threads: int = 1  # threads inside one block's mutex watershed (its edge sort runs in parallel)


# Working memory of one block's mutex watershed per edge (priority record, sort scratch,
# union-find and mutex lists), measured: 17 B on a 40x200x200 block with 12 offsets, 8-D.
BYTES_PER_EDGE = 17


def block_bytes(ext_voxels: int, n_channels: int, emb_dim: int) -> int:
    """Estimated peak bytes of one block in flight: its edges' working memory, the
    embeddings read as float16/32 and converted to float32, and the labels."""
    return int(ext_voxels) * (n_channels * BYTES_PER_EDGE + emb_dim * 6 + 16)


def block_mws(emb_ext: np.ndarray, opts: MWSOptions, mask_ext=None) -> np.ndarray:
    """Mutex watershed of one ext region ``emb_ext (D, *ext)`` (float32/64) -> int64 labels ``(*ext)``."""
    return mutex_watershed_embeddings(emb_ext, opts.offsets, opts.n_attractive, delta_d=opts.delta_d,
                                      strides=opts.strides, randomize_strides=opts.randomize_strides,
                                      seed=opts.seed, mask=mask_ext, threads=opts.threads)


def block_mws_affinities(aff_ext: np.ndarray, opts: MWSOptions, mask_ext=None) -> np.ndarray:
    """Mutex watershed of one ext region from precomputed affinities ``(C, *ext)``."""
    return mutex_watershed(aff_ext, opts.offsets, opts.n_attractive, strides=opts.strides,
                           randomize_strides=opts.randomize_strides, seed=opts.seed, mask=mask_ext,
                           threads=opts.threads)


def number_fragments(ext_labels: np.ndarray, core: tuple) -> tuple[np.ndarray, int]:
    """Renumber a block's ext labels so that its fragments (segments with core pixels)
    are ``1..k`` (in increasing order of their ext label) and every other segment
    gets an id above ``k``; 0 stays 0.

    Returns ``(labels (*ext) uint32, k)``.
    """
    n = int(ext_labels.max()) + 1
    in_core = np.zeros(n, dtype=bool)
    in_core[ext_labels[core]] = True
    in_core[0] = False
    k = int(in_core.sum())
    lut = np.zeros(n, dtype=np.uint32)
    lut[in_core] = np.arange(1, k + 1, dtype=np.uint32)
    rest = ~in_core
    rest[0] = False
    lut[rest] = np.arange(k + 1, k + 1 + int(rest.sum()), dtype=np.uint32)
    return lut[ext_labels], k


def match_face(labels_a: np.ndarray, labels_b: np.ndarray, k_a: int, k_b: int,
               containment: float) -> np.ndarray:
    """Fragments of blocks A and B that are one object, from their labels on a face slab.

    ``labels_a, labels_b``: the two blocks' numbered labels (:func:`number_fragments`)
    on the same slab. Segments ``a`` and ``b`` are matched when

    * each is the other's largest overlap (ties: smaller id), or
    * one lies within the other: ``|a & b| >= containment * min(|a|, |b|)``
      (sizes counted within the slab), which re-joins a segment that one block
      cut into pieces near its border while the other kept it whole.

    Only fragments (``a <= k_a``, ``b <= k_b``) are returned. Measured against
    whole-volume MWS in benchmarks/notebook.md ("Block-wise clustering").

    Returns ``(M, 2)`` int64 local fragment ids.
    """
    ia, ib, n = _core.contingency_table(np.ascontiguousarray(labels_a, dtype=np.int64).reshape(-1),
                                        np.ascontiguousarray(labels_b, dtype=np.int64).reshape(-1), 1)
    size_a = np.bincount(ia, weights=n)
    size_b = np.bincount(ib, weights=n)
    both = (ia > 0) & (ib > 0)
    ia, ib, n = ia[both], ib[both], n[both]
    if len(n) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    best_b = _best_partner(ia, ib, n)
    best_a = _best_partner(ib, ia, n)
    mutual = (best_b[ia] == ib) & (best_a[ib] == ia)
    contained = n >= containment * np.minimum(size_a[ia], size_b[ib])
    keep = (mutual | contained) & (ia <= k_a) & (ib <= k_b)
    return np.stack([ia[keep], ib[keep]], axis=1).astype(np.int64)


def _best_partner(x: np.ndarray, y: np.ndarray, n: np.ndarray) -> np.ndarray:
    """For every id in ``x``: the ``y`` with the largest overlap ``n`` (ties: smallest ``y``)."""
    order = np.lexsort((y, -n, x))
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    best = np.full(int(x.max()) + 1, -1, dtype=np.int64)
    best[xs[first]] = y[order][first]
    return best


def resolve(fragment_counts, fragment_sizes, face_matches, min_size: int = 0):
    """Global union-find of the face matches and the final consecutive numbering.

    Parameters
    ----------
    fragment_counts : (n_blocks,) ints, ``k_b``.
    fragment_sizes : list of ``(k_b,)`` int arrays, pixels of every fragment in its core.
    face_matches : list of ``(a, b, pairs)``, ``pairs (M, 2)`` local fragment ids of blocks a, b.
    min_size : objects (stitched) smaller than this many pixels become 0.

    Returns
    -------
    offsets : (n_blocks,) int64, global fragment id = ``offsets[b] + local id``.
    lut : (N + 1,) int64, final label of every global fragment id (``lut[0] = 0``).
        Objects are numbered 1..K in order of their smallest global fragment id,
        which depends only on the block grid, never on the scheduling.
    """
    counts = np.asarray(fragment_counts, dtype=np.int64)
    offsets = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    n_nodes = int(counts.sum()) + 1
    rows = [offsets[a] + p[:, 0] for a, b, p in face_matches if len(p)]
    cols = [offsets[b] + p[:, 1] for a, b, p in face_matches if len(p)]
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    n_comp, comp = connected_components(graph, directed=False)
    # scipy numbers components by their smallest node, so node 0 (background) is component 0.
    sizes = np.zeros(n_nodes, dtype=np.int64)
    if n_nodes > 1:
        sizes[1:] = np.concatenate([np.asarray(s, dtype=np.int64) for s in fragment_sizes])
    comp_sizes = np.bincount(comp, weights=sizes, minlength=n_comp)
    keep = comp_sizes >= max(int(min_size), 1)
    keep[comp[0]] = False
    final = np.zeros(n_comp, dtype=np.int64)
    final[keep] = np.arange(1, int(keep.sum()) + 1)
    return offsets, final[comp]


def block_lut(lut: np.ndarray, offset: int, k: int) -> np.ndarray:
    """The final label of local fragment ids ``0..k`` of one block (0 -> 0)."""
    out = lut[offset:offset + k + 1].copy()
    out[0] = 0
    return out


def slab_items(grid: BlockGrid, flat: int):
    """``((a, b, axis), side, slab slices relative to block flat's ext)`` for each face of a block."""
    ext = grid.ext(flat)
    for a, b, axis in grid.faces_of(flat):
        yield (a, b, axis), ("a" if flat == a else "b"), relative(grid.face_slab(a, b, axis), ext)


__all__ = ["BlockGrid", "MWSOptions", "block_mws", "block_mws_affinities", "number_fragments", "match_face",
           "resolve", "block_lut", "slab_items", "relative"]


# ---------------------------------------------------------------------------- one block, shared by
# the threaded (blockwise.py) and the Dask (blockwise_dask.py) runs
def fits(out, value: int) -> None:
    if out is not None and value > np.iinfo(np.dtype(out.dtype)).max:
        raise ValueError(f"out has dtype {np.dtype(out.dtype)}, too small for label {value}; "
                         "use a wider integer dtype (uint32 or larger)")


def read_block(emb, slices) -> np.ndarray:
    """One region ``emb[:, slices]`` as a finite float32/float64 numpy array."""
    block = emb[(slice(None),) + tuple(slices)]
    if not is_tensor(block):
        block = np.asarray(block)
    return float_array(block, "emb")


def segment_ext(emb_ext, opts: MWSOptions, mask_ext, core_in_ext):
    """Mutex watershed of one ext region, fragments numbered (:func:`number_fragments`)."""
    if is_tensor(emb_ext) and emb_ext.device.type == "cuda" and has_cuda_kernels():
        labels = block_mws_affinities(_device_affinities(emb_ext, opts), opts, mask_ext)
    else:
        labels = block_mws(emb_ext if isinstance(emb_ext, np.ndarray) else float_array(emb_ext, "emb"), opts,
                           mask_ext)
    return number_fragments(labels, core_in_ext)


def _device_affinities(emb_ext, opts: MWSOptions) -> np.ndarray:
    """Eq. 12 affinities ``(C, *ext)`` of a torch block, computed on its device (the GPU for
    CUDA tensors); only they cross to the host."""
    import torch

    from ..ops import embedding_affinities as affinities_op

    if emb_ext.dtype in (torch.float16, torch.bfloat16):
        emb_ext = emb_ext.float()
    if not bool(torch.isfinite(emb_ext).all()):
        raise ValueError("emb contains NaN or infinite values")
    ndim = emb_ext.dim() - 1
    aff = affinities_op(emb_ext.contiguous(), opts.offsets.ravel().tolist(), ndim, opts.n_attractive, opts.delta_d)
    return aff.cpu().numpy()
