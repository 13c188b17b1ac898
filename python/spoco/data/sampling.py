"""Sparse object sampling: the training labels of SPOCO@p (Sec. 3.2) and of a fixed
annotation budget (appendix A.5).

Labels follow spoco's convention: 0 = background, positive integers = objects (any
values, not necessarily consecutive). Objects that are not kept become 0, which is
*unlabeled* for ``SPOCOLoss(sparse=True)``; so is the background, even at fraction 1.0.
Every function takes numpy arrays or torch tensors and returns the same kind
(dtype and device preserved). Randomness comes from numpy's ``SeedSequence`` of
``(seed, image_index)``: the result for one image does not depend on the others.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .._validation import as_numpy, is_tensor

_SPREADS = ("images", "uniform")


def _rng(seed, image_index=None) -> np.random.Generator:
    for name, v in [("seed", seed), ("image_index", image_index)]:
        if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    entropy = [int(seed)] if image_index is None else [int(seed), int(image_index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _labels(labels, ignore_index, name="labels"):
    arr = as_numpy(labels, name)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of instance labels, got dtype {arr.dtype}")
    ids = np.unique(arr)
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    if ids.size and ids[0] < 0:
        raise ValueError(f"{name} contains negative labels ({ids[0]}) other than ignore_index={ignore_index}")
    return arr, ids[ids > 0]


def _keep(labels, arr, keep, ignore_index):
    """``labels`` with every object not in ``keep`` set to 0, as the input's type."""
    mask = np.isin(arr, keep)
    if ignore_index is not None:
        mask |= arr == ignore_index
    out = np.where(mask, arr, 0).astype(arr.dtype, copy=False)
    if is_tensor(labels):
        import torch
        return torch.from_numpy(out).to(device=labels.device, dtype=labels.dtype)
    return out


def n_kept(n_objects: int, fraction: float) -> int:
    """Objects kept out of ``n_objects`` at ``fraction``: ``round(fraction · n)`` (halves
    round up), at least 1 when ``n_objects > 0``."""
    if n_objects == 0:
        return 0
    return min(n_objects, max(1, math.floor(fraction * n_objects + 0.5)))


def sparsify(labels, fraction: float, seed: int = 0, *, image_index: int = 0, ignore_index: int | None = None):
    """SPOCO@p labels of one image: keep ``round(p·n)`` of its n objects, chosen uniformly.

    Parameters
    ----------
    labels : (*spatial) integer numpy array or torch tensor; 0 = background
    fraction : float in (0, 1], p
    seed : int
        Base seed; together with ``image_index`` it fixes the choice.
    image_index : int
        Index of the image in its dataset, so that every image gets its own draw.
    ignore_index : int, optional
        Label kept as-is and never counted as an object.

    Returns
    -------
    Labels of the same type, shape and dtype: kept objects keep their ids, everything
    else (dropped objects and background) is 0 = unlabeled.
    """
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    arr, ids = _labels(labels, ignore_index)
    rng = _rng(seed, image_index)
    keep = rng.choice(ids, size=n_kept(ids.size, fraction), replace=False) if ids.size else ids
    return _keep(labels, arr, keep, ignore_index)


def sparsify_budget(images, n_objects: int, seed: int = 0, *, spread: str = "images",
                    ignore_index: int | None = None) -> list:
    """Spread a fixed annotation budget of ``n_objects`` objects over a dataset (A.5).

    Parameters
    ----------
    images : sequence of label images (numpy arrays or torch tensors, any shapes)
    n_objects : int
        The budget N; at most the number of objects in the dataset.
    seed : int
    spread : {"images", "uniform"}
        ``"images"`` (default): as evenly over images as possible: a random order of
        the images that have objects gets one random object each, then a second one
        each, and so on, until N are chosen (so N ≤ #images gives N images with one
        object each, the paper's sparse setting). ``"uniform"``: N objects drawn
        uniformly without replacement from all objects of the dataset.
    ignore_index : int, optional
        Label kept as-is and never counted as an object.

    Returns
    -------
    list of label images like :func:`sparsify`'s output; images that got no object
    are entirely 0 (unlabeled) apart from ignored pixels.
    """
    if spread not in _SPREADS:
        raise ValueError(f"spread must be one of {_SPREADS}, got {spread!r}")
    parsed = [_labels(img, ignore_index, name=f"images[{i}]") for i, img in enumerate(images)]
    total = sum(ids.size for _, ids in parsed)
    if not isinstance(n_objects, numbers.Integral) or isinstance(n_objects, bool) or not 0 <= n_objects <= total:
        raise ValueError(f"n_objects must be an integer in [0, {total}] (the objects in images), got {n_objects!r}")
    rng = _rng(seed)
    if spread == "uniform":
        pairs = [(i, v) for i, (_, ids) in enumerate(parsed) for v in ids]
        chosen = [pairs[j] for j in rng.choice(len(pairs), size=n_objects, replace=False)]
    else:
        queues = {i: list(rng.permutation(ids)) for i, (_, ids) in enumerate(parsed) if ids.size}
        order = [i for i in rng.permutation(len(parsed)) if i in queues]
        chosen, depth = [], 0
        while len(chosen) < n_objects:
            for i in order:
                if depth < len(queues[i]) and len(chosen) < n_objects:
                    chosen.append((i, queues[i][depth]))
            depth += 1
    keep = [[] for _ in parsed]
    for i, v in chosen:
        keep[i].append(v)
    return [_keep(img, arr, np.asarray(k, dtype=arr.dtype), ignore_index)
            for img, (arr, _), k in zip(images, parsed, keep)]
