"""Synthetic pixel embeddings with known instances, for demos, tests and benchmarks."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_instances(shape, n_objects: int, *, background: float = 0.3, rng=None) -> np.ndarray:
    """Touching, non-convex instances: a Voronoi tessellation of random seeds,
    warped by smooth noise, with a random ``background`` fraction of cells set to 0.

    Returns int64 labels of ``shape`` (2D or 3D), objects numbered 1..K.
    """
    rng = np.random.default_rng(rng)
    shape = tuple(int(s) for s in shape)
    seeds = np.stack([rng.uniform(0, s, n_objects) for s in shape], axis=1)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    # Smooth warp of the coordinates makes the cell borders curved.
    scale = max(shape) / 8
    for ax in range(len(shape)):
        warp = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 10)
        grid[..., ax] += scale * warp / (warp.std() + 1e-9)
    # Nearest seed by chunks over seeds (memory: one (shape) array per step).
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int64)
    for k, s in enumerate(seeds, start=1):
        d = ((grid - s.astype(np.float32)) ** 2).sum(-1)
        closer = d < best
        best[closer] = d[closer]
        labels[closer] = k
    drop = rng.random(n_objects + 1) < background
    drop[0] = True
    labels[drop[labels]] = 0
    # Relabel 1..K
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(n_objects + 1, dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def synthetic_embeddings(labels: np.ndarray, dim: int = 8, *, delta_d: float = 2.0, spread: float = 0.15,
                         background_texture: float = 0.3, rng=None) -> np.ndarray:
    """Embeddings ``(dim, *labels.shape)`` float32 for an instance image.

    Every instance (and the background, label 0) gets a centre drawn so that
    centres are typically more than ``2 * delta_d`` apart; each pixel is its centre
    plus smooth spatially correlated noise of standard deviation ``spread`` and,
    in the background, a structured texture of amplitude ``background_texture``.
    """
    rng = np.random.default_rng(rng)
    centres = _centres(int(labels.max()) + 1, dim, delta_d, rng)
    return _view(labels, centres, spread, background_texture, rng)


def synthetic_embedding_views(labels: np.ndarray, dim: int = 8, *, n_views: int = 2, delta_d: float = 2.0,
                              spread: float = 0.15, background_texture: float = 0.3, rng=None) -> list:
    """Several embeddings of one instance image, like the f- and g-networks'
    outputs for two augmentations of the same input (what consistency
    clustering needs): the cluster centres are shared, the noise and the
    background texture are drawn independently for every view.

    Returns a list of ``n_views`` float32 arrays ``(dim, *labels.shape)``; the
    first equals ``synthetic_embeddings`` with the same arguments and ``rng``.
    """
    rng = np.random.default_rng(rng)
    centres = _centres(int(labels.max()) + 1, dim, delta_d, rng)
    return [_view(labels, centres, spread, background_texture, rng) for _ in range(n_views)]


def _centres(n: int, dim: int, delta_d: float, rng) -> np.ndarray:
    centres = rng.normal(size=(n, dim))
    centres *= (2.5 * delta_d) / np.sqrt(dim) * 1.5
    return centres


def _view(labels, centres, spread, background_texture, rng) -> np.ndarray:
    emb = centres[labels].transpose((labels.ndim,) + tuple(range(labels.ndim))).astype(np.float32)
    noise = rng.normal(size=emb.shape).astype(np.float32)
    sigma = (0,) + (1.0,) * labels.ndim
    noise = ndimage.gaussian_filter(noise, sigma=sigma)
    noise *= spread / (noise.std() + 1e-9)
    emb += noise
    if background_texture > 0:
        tex = ndimage.gaussian_filter(rng.normal(size=emb.shape).astype(np.float32),
                                      sigma=(0,) + (4.0,) * labels.ndim)
        tex *= background_texture / (tex.std() + 1e-9)
        emb += tex * (labels == 0)
    return emb.astype(np.float32)


from ._phantoms import synthetic_images  # noqa: E402  (images with labels: boundary / intensity flavours)

__all__ = ["random_instances", "synthetic_embeddings", "synthetic_embedding_views", "synthetic_images"]
