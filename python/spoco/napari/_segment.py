"""Segmenting layers with a trained run: what ``spoco predict`` + ``spoco segment`` do
with a checkpoint, for arrays in memory.

The network the run validated (its ``eval_network``) predicts the embeddings with the
run's border; they are clustered with the post-processing the run validated
(``TrainConfig.segmentation()``). Images larger than :data:`BLOCKWISE_ABOVE` pixels
are predicted tile by tile into a temporary zarr array on disk and clustered block by
block (:func:`spoco.clustering.cluster_blockwise`), so the embeddings (D + 1 floats
per pixel) never have to fit in memory. Called from a worker thread; no Qt here.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..clustering import cluster_blockwise, default_offsets, segment
from ..data import io
from ..predict import predict, select_device
from ..training import TrainConfig, load_checkpoint, model_from_checkpoint
from ..visualize import pca_rgb

# Above this many pixels (voxels), segmentation goes tile by tile and block by block.
BLOCKWISE_ABOVE = 2 ** 24
# Tiles and blocks of large images, and the pixels that the embeddings' PCA is fitted on.
TILE = {2: (1024, 1024), 3: (64, 256, 256)}
PCA_SAMPLES = 1 << 20


@dataclass
class Run:
    """A trained network loaded from a checkpoint (``best.pt`` or ``last.pt``)."""
    checkpoint: Path
    model: object
    config: TrainConfig

    @property
    def ndim(self) -> int:
        return int(self.model.ndim)

    def describe(self) -> str:
        cfg = self.config
        return (f"{self.checkpoint} ({self.ndim}D network, {self.model.config['in_channels']} channel(s), "
                f"patch {'x'.join(map(str, cfg.patch_shape))})")


def load_run(checkpoint) -> Run:
    """The network of a checkpoint written by spoco's trainer, and its config."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    return Run(checkpoint, model_from_checkpoint(state), TrainConfig.from_saved(state.get("config")))


def segment_image(run: Run, image: np.ndarray, *, device=None, slices=None,
                  blockwise_above: int = BLOCKWISE_ABOVE) -> tuple[np.ndarray, np.ndarray]:
    """Instances ``(*spatial)`` (int32, 0 = background) and the embeddings' first three
    principal components ``(*spatial, 3)`` in [0, 1] of ``image (C, *spatial)``.

    A 2D network on a 3D stack segments each slice of ``slices`` (default: all) on its
    own; object ids continue from slice to slice, so they are unique in the stack, and
    the other slices stay 0. Otherwise the whole image is segmented, block-wise above
    ``blockwise_above`` pixels (there only the run's ``min_size`` applies of its
    post-processing; the default recipe has no other).
    """
    device = select_device(device)
    model = run.model.to(device)
    spatial = image.shape[1:]
    if image.shape[0] != run.model.config["in_channels"]:
        raise ValueError(f"the network takes {run.model.config['in_channels']} channel(s), the image has "
                         f"{image.shape[0]}")
    if len(spatial) == run.ndim:
        return _segment_whole(run, model, image, device, blockwise_above)
    if len(spatial) == 3 and run.ndim == 2:
        labels = np.zeros(spatial, np.int32)
        rgb = np.zeros(spatial + (3,), np.float32)
        slices = range(spatial[0]) if slices is None else slices
        embeddings, next_id = [], 0
        for z in slices:
            emb = predict(model, image[:, z], **run.config.prediction(), device=device)
            seg = segment(emb, **run.config.segmentation())
            labels[z] = np.where(seg > 0, seg + next_id, 0)
            next_id += int(seg.max(initial=0))
            embeddings.append((z, emb[:run.model.embedding_dim]))
        # One PCA for all slices, so that colours mean the same in every slice.
        if embeddings:
            stacked = pca_rgb(np.stack([e for _, e in embeddings], axis=1))
            for i, (z, _) in enumerate(embeddings):
                rgb[z] = stacked[i]
        return labels, rgb
    raise ValueError(f"a {run.ndim}D network cannot segment a {len(spatial)}D image")


def _segment_whole(run, model, image, device, blockwise_above):
    settings = run.config.segmentation()
    spatial = image.shape[1:]
    d = run.model.embedding_dim
    if int(np.prod(spatial)) <= blockwise_above:
        emb = predict(model, image, **run.config.prediction(), device=device)
        return segment(emb, **settings).astype(np.int32), pca_rgb(emb[:d])
    tile = tuple(min(t, s) for t, s in zip(TILE[len(spatial)], spatial))
    offsets, n_attractive = default_offsets(len(spatial))
    with tempfile.TemporaryDirectory(prefix="spoco-napari-") as folder:
        emb = io.create_array(Path(folder) / "embeddings.zarr", (d + int(run.model.foreground),) + spatial,
                              "float32", chunks=(1,) + tile)
        predict(model, image, tile_shape=tile, **run.config.prediction(), device=device, out=emb)
        mask = None
        if settings["foreground"]:  # only pixels above the threshold are clustered
            mask = np.asarray(emb[d]) > settings["foreground_threshold"]
        labels = cluster_blockwise(_Channels(emb, d), block_shape=tile, halo=int(np.abs(offsets).max()),
                                   delta_d=settings["delta_d"], offsets=offsets, n_attractive=n_attractive,
                                   mask=mask, min_size=settings["min_size"])
        return labels.astype(np.int32), _pca_sampled(emb, d)


def _pca_sampled(emb, d: int) -> np.ndarray:
    """:func:`spoco.visualize.pca_rgb` of an on-disk ``(D + 1, *spatial)`` array: fitted on a
    strided subsample of about :data:`PCA_SAMPLES` pixels, projected slab by slab."""
    spatial = emb.shape[1:]
    step = max(1, int(round((np.prod(spatial) / PCA_SAMPLES) ** (1 / len(spatial)))))
    sample = np.asarray(emb[(slice(0, d),) + (slice(None, None, step),) * len(spatial)], np.float32)
    flat = sample.reshape(d, -1).T
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    proj = (flat - mean) @ vt[:3].T
    lo, span = proj.min(0), np.ptp(proj, 0) + 1e-9
    rgb = np.zeros(spatial + (3,), np.float32)
    slab = TILE[len(spatial)][0]
    for start in range(0, spatial[0], slab):
        part = np.asarray(emb[:d, start:start + slab], np.float32)
        values = (np.moveaxis(part, 0, -1) - mean) @ vt[:3].T
        rgb[start:start + slab, ..., :values.shape[-1]] = np.clip((values - lo) / span, 0, 1)
    return rgb


class _Channels:
    """A lazy view of the first ``n`` channels of a ``(C, *spatial)`` array on disk (the
    embeddings without the foreground channel), read one block at a time."""

    def __init__(self, array, n: int):
        self.array, self.n = array, n
        self.shape, self.dtype = (n,) + tuple(array.shape[1:]), array.dtype

    def __getitem__(self, index):
        return np.asarray(self.array[(slice(0, self.n),) + tuple(index[1:])])
