"""The data generators of the tests (the one place where test inputs are made)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from spoco.data.normalize import normalize_image
from spoco.data.synthetic import random_instances, synthetic_embeddings
from spoco.data.sampling import sparsify


def make_batch(seed: int, B: int = 2, spatial=(9, 10), D: int = 3, n_objects: int = 6, *, ignore: float = 0.0,
               empty=(), single=(), dtype=torch.float64, spread: float = 0.6, g_noise: float = 0.3):
    """Random embeddings ``f, g (B, D, *spatial)`` around per-instance centres and labels ``(B, *spatial)``.

    Labels are non-consecutive ids (random values up to 10⁶) with background 0;
    images listed in ``empty`` have no object, those in ``single`` exactly one; a
    fraction ``ignore`` of pixels is set to -1. Centres are spread so that pull,
    push and unlabeled push hinges are active for some pairs and not for others.
    """
    rng = np.random.default_rng(seed)
    labels = []
    for b in range(B):
        lab = random_instances(spatial, n_objects, background=0.25, rng=rng)
        ids = np.unique(lab[lab > 0])
        if b in empty:
            lab[:] = 0
        elif b in single and ids.size:
            lab[lab != ids[0]] = 0
        lut = np.zeros(lab.max() + 1, dtype=np.int64)
        lut[1:] = rng.choice(10**6, size=lab.max(), replace=False) + 1
        lab = lut[lab]
        if ignore:
            lab[rng.random(lab.shape) < ignore] = -1
        labels.append(lab)
    target = torch.from_numpy(np.stack(labels))
    f = np.empty((B, D) + tuple(spatial))
    for b in range(B):
        ids, inv = np.unique(target[b].numpy(), return_inverse=True)
        c = rng.normal(scale=1.2, size=(ids.size, D))
        f[b] = np.moveaxis(c[inv.reshape(spatial)], -1, 0)
    f += rng.normal(scale=spread, size=f.shape)
    f = torch.from_numpy(f).to(dtype)
    g = f + g_noise * torch.from_numpy(rng.normal(size=f.shape)).to(dtype)
    return f, g, target


def make_volume(rng, shape, n_objects: int, *, dim: int = 8, background_texture: float = 0.0):
    """Instances ``(*shape)`` (warped Voronoi cells, 30 % background, objects large
    enough to cross several block faces) and their float32 embeddings ``(dim, *shape)``."""
    labels = random_instances(shape, n_objects, rng=rng)
    emb = synthetic_embeddings(labels, dim, rng=rng, background_texture=background_texture)
    return labels, emb



def make_images(n, shape=(48, 48), n_objects=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels = random_instances(shape, n_objects, rng=rng)
        border = ndimage.morphological_gradient(labels, size=3) > 0
        image = (labels > 0) * 1.0 - 0.8 * border + rng.normal(0, 0.1, shape)
        out.append((normalize_image(image[None].astype(np.float32)), labels))
    return out


class TinySet(torch.utils.data.Dataset):
    """Whole images as patches; labels sparsified to ``fraction``; g-view = f-view + noise."""

    def __init__(self, images, fraction=0.5):
        self.items = [(im, sparsify(lab, fraction, seed=0, image_index=i)) for i, (im, lab) in enumerate(images)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, labels = self.items[i]
        x = torch.from_numpy(image)
        noise = torch.from_numpy(np.random.default_rng(i).normal(0, 0.05, image.shape).astype(np.float32))
        return {"image_f": x, "image_g": x + noise, "labels": torch.from_numpy(labels)}


def make_discs(shape=(64, 64), n_objects: int = 5, radius=(5, 8), seed: int = 0, noise: float = 0.1):
    """A grey image ``(*shape)`` float32 of bright discs on a dark background and its
    labels int32 (discs 1..n, never touching: at least 2 pixels apart)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    placed = []
    for _ in range(1000):
        if len(placed) == n_objects:
            break
        r = rng.uniform(*radius)
        centre = rng.uniform(r, np.array(shape) - r)
        if all(np.linalg.norm(centre - c) > r + q + 2 for c, q in placed):
            placed.append((centre, r))
            inside = ((grid - centre.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0) <= r ** 2
            labels[inside] = len(placed)
    image = (labels > 0).astype(np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    return image, labels


def tiny_checkpoint(path, seed: int = 0):
    """Write a checkpoint of an untrained tiny 2D U-Net (f_maps 4, D = 4) as spoco train would,
    for tests of predict/segment/export that need a network, not a trained one. Returns ``path``."""
    from spoco.training import TrainConfig, save_checkpoint
    from spoco.training.trainer import build_model

    torch.manual_seed(seed)
    config = TrainConfig(patch_shape=(32, 32), f_maps=4, embedding_dim=4)
    model = build_model(config, 1)
    state = model.state_dict()
    save_checkpoint(path, {"model_config": model.config, "model": state, "ema": {"g": state},
                           "config": config.to_dict()})
    return path


def write_image_folders(root, *, n: int = 6, n_val: int = 2, shape=(48, 48), rng: int = 3):
    """``root/{images,labels,val_images,val_labels}`` of generated nuclei tifs (``n`` images, the
    last ``n_val`` for validation), as spoco train reads them. Returns the generated labels."""
    from spoco.data import synthetic_images, write_array

    images, labels = synthetic_images(n, shape, kind="intensity", rng=rng)
    for sub in ("images", "labels", "val_images", "val_labels"):
        (root / sub).mkdir()
    for i in range(n):
        kind = "val_" if i >= n - n_val else ""
        write_array(root / f"{kind}images/img{i}.tif", images[i, 0])
        write_array(root / f"{kind}labels/img{i}.tif", labels[i].astype(np.uint16))
    return labels
