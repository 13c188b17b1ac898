"""A tiny synthetic training set: bright objects with dark borders on a dark background."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from spoco.data.normalize import normalize_image
from spoco.data.synthetic import random_instances
from spoco.sampling import sparsify


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


@pytest.fixture(scope="session")
def tiny_data():
    return make_images(8, seed=1), make_images(2, seed=2)
