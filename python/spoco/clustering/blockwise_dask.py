"""Block-wise mutex watershed on a Dask array, on whatever scheduler is active
(threads, processes, or a ``distributed`` cluster).

The same per-block and per-face functions as the threaded run
(:mod:`.blockwise`), so the result is identical to it:

1. One task per block: ``emb[:, ext]`` (Dask gathers core + halo from the
   chunks) -> mutex watershed -> numbered fragments. The block results are
   persisted (in the workers' memory; ``distributed`` spills to disk).
2. One task per face: match the two blocks' slab labels.
3. On the client: the small union-find over the face matches (:func:`.blocks.resolve`).
4. One task per block: local -> final ids; the client assembles the result or
   writes it to ``out`` a few blocks at a time.
"""
from __future__ import annotations

import numpy as np

from .blocks import BlockGrid, MWSOptions, block_lut, fits, match_face, read_block, resolve, segment_ext, slab_items
from .._complete import set_complete

__all__ = ["cluster_dask"]


def _segment_task(emb_ext, mask_ext, grid: BlockGrid, flat: int, opts: MWSOptions):
    numbered, k = segment_ext(read_block(emb_ext, tuple(slice(None) for _ in grid.shape)), opts,
                              None if mask_ext is None else np.asarray(mask_ext), grid.core_in_ext(flat))
    core = numbered[grid.core_in_ext(flat)]
    slabs = {face: np.ascontiguousarray(numbered[sl]) for face, _, sl in slab_items(grid, flat)}
    return {"core": core, "k": k, "sizes": np.bincount(core.ravel(), minlength=k + 1)[1:], "slabs": slabs}


def _face_task(block_a, block_b, face, containment):
    return match_face(block_a["slabs"][face], block_b["slabs"][face], block_a["k"], block_b["k"], containment)


def _summary_task(block):
    return block["k"], block["sizes"]


def _relabel_task(block, lut):
    return lut[block["core"]]


def cluster_dask(emb, grid: BlockGrid, opts: MWSOptions, *, out, mask, min_size: int, containment: float,
                 batch: int = 8):
    """Block-wise MWS of a dask array ``emb (D, *spatial)``; see :func:`spoco.cluster_blockwise`."""
    import dask

    delayed = dask.delayed
    set_complete(out, False)
    blocks = []
    for flat in range(grid.n_blocks):
        ext = grid.ext(flat)
        mask_ext = None if mask is None else mask[ext]
        blocks.append(delayed(_segment_task, pure=True)(emb[(slice(None),) + ext], mask_ext, grid, flat, opts))
    blocks = list(dask.persist(*blocks))
    faces = grid.faces()
    summaries, matches = dask.compute([delayed(_summary_task)(b) for b in blocks],
                                      [delayed(_face_task)(blocks[a], blocks[b], (a, b, axis), containment)
                                       for a, b, axis in faces])
    counts = [k for k, _ in summaries]
    offsets, lut = resolve(counts, [s for _, s in summaries],
                           [(a, b, m) for (a, b, _), m in zip(faces, matches)], min_size)
    fits(out, int(lut.max()) if len(lut) else 0)
    final = [delayed(_relabel_task)(blocks[flat], block_lut(lut, int(offsets[flat]), counts[flat]))
             for flat in range(grid.n_blocks)]
    result = out if out is not None else np.zeros(grid.shape, dtype=np.int64)
    for start in range(0, grid.n_blocks, batch):  # a few blocks at a time through the client
        for flat, labels in zip(range(start, start + batch), dask.compute(*final[start:start + batch])):
            result[grid.core(flat)] = labels
    set_complete(out, True)
    del blocks
    return result

