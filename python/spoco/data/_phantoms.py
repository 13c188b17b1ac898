"""Synthetic microscopy images with instance labels (2D and 3D), the data of the
demo, the tests and the quality benchmark.

Two flavours, after the paper's datasets:

``"boundary"`` (cells in tissue, like CVPPP leaves or PlantSeg ovules)
    A warped, multiplicatively weighted Voronoi tessellation fills a tissue region;
    cells touch, are non-convex and vary in size. The image shows bright membranes
    on the cell borders with uneven (sometimes faint) intensity; every cell interior
    has the same intensity distribution, so only the membranes separate cells.
    Labels are *dense inside the tissue*: a membrane pixel belongs to the cell on
    its side of the border (as in the ovules ground truth, which has no boundary
    class); outside the tissue, one connected region of about ``background`` of the
    image, is background 0 (dark, with a bright tissue outline).

``"intensity"`` (nuclei, like the paper's flower-pot and EM backgrounds)
    Bright, irregular blobs of varied size and brightness, clumped so that many
    touch (the shared border of two touching nuclei is only a faint dip in
    intensity), on a structured background: blotches, bright fibres and small
    debris about as bright as the dimmest nuclei. Background is label 0.

Both get smooth uneven illumination, Gaussian blur and Poisson-Gaussian noise, and
are normalised per image to zero mean and unit standard deviation.
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from .augment import smooth_field as smooth_noise

_KINDS = ("boundary", "intensity")
_MAX_DRAWS = 100
_PLACEMENT_TRIES = 20  # positions tried for a nucleus that must not touch the earlier ones
# Default object diameters (pixels) by flavour and dimensionality.
_SIZES = {"boundary": {2: 24.0, 3: 14.0}, "intensity": {2: 20.0, 3: 12.0}}
_DEFAULTS = {
    # object_size: typical object diameter in pixels; n_objects: None = from the
    # area (about 20 objects at 128x128); noise: Gaussian noise std relative to
    # the brightest structure; blur: Gaussian PSF sigma in pixels.
    "boundary": dict(object_size=None, n_objects=None, background=0.2, membrane_width=2,
                     faint_membranes=0.5, noise=0.12, blur=1.0, shading=0.25),
    "intensity": dict(object_size=None, n_objects=None, touching=0.6, texture=1.0,
                      noise=0.1, blur=1.0, shading=0.25),
}


def synthetic_images(n: int, shape, *, kind: str = "boundary", rng=None, **params):
    """``n`` synthetic microscopy images with their instance labels.

    Parameters
    ----------
    n : int, number of images (≥ 1)
    shape : 2 or 3 ints, spatial shape (Y, X) or (Z, Y, X), each ≥ 8
    kind : {"boundary", "intensity"}, see the module docstring
    rng : None, int seed or ``np.random.Generator``; fixes the result
    **params : overrides of the flavour's defaults
        Common: ``object_size`` (typical diameter, pixels; default 24 boundary /
        20 intensity in 2D, 14 / 12 in 3D), ``n_objects`` (int, or ``(low, high)`` drawn per image;
        default from the area: about 20 objects at 128×128), ``noise`` (Gaussian
        noise std relative to the brightest structure), ``blur`` (PSF sigma,
        pixels), ``shading`` (amplitude of the smooth illumination field).
        Boundary: ``background`` (target fraction of the image outside the tissue;
        whole cells and one connected region leave about 0.15 for the default 0.2),
        ``membrane_width`` (pixels), ``faint_membranes`` (0 = uniform membranes,
        1 = many nearly invisible membrane stretches). Intensity: ``touching``
        (0..1, how clumped the nuclei are), ``texture`` (background structure
        amplitude, 0 = flat).

    Returns
    -------
    images : float32 ``(n, 1, *shape)``, each normalised to zero mean, unit std
    labels : int64 ``(n, *shape)``, 0 = background, objects 1..K per image (K ≥ 1)
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of 2 or 3 ints, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"shape must have 2 or 3 dimensions, each >= 8, got {shape!r}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    unknown = set(params) - set(_DEFAULTS[kind])
    if unknown:
        raise TypeError(f"unknown parameter(s) {sorted(unknown)} for kind={kind!r}; "
                        f"known: {sorted(_DEFAULTS[kind])}")
    p = {**_DEFAULTS[kind], **params}
    if p["object_size"] is None:
        p["object_size"] = _SIZES[kind][len(shape)]
    if not isinstance(p["object_size"], numbers.Real) or not p["object_size"] > 0:
        raise ValueError(f"object_size must be a positive number of pixels, got {p['object_size']!r}")
    count = p["n_objects"]
    pair = isinstance(count, (tuple, list)) and len(count) == 2
    if not (count is None or (isinstance(count, numbers.Integral) and count >= 1)
            or (pair and all(isinstance(c, numbers.Integral) for c in count) and 1 <= count[0] <= count[1])):
        raise ValueError(f"n_objects must be None, a positive int or (low, high) with 1 <= low <= high, got {count!r}")
    rng = np.random.default_rng(rng)
    make = _boundary if kind == "boundary" else _intensity
    images = np.empty((n, 1) + shape, dtype=np.float32)
    labels = np.empty((n,) + shape, dtype=np.int64)
    for i in range(n):
        # Small images can come out without any object (all seeds outside or too small);
        # such an image is drawn again from the same stream, so results stay seeded.
        for _ in range(_MAX_DRAWS):
            lab, img = make(shape, p, rng)
            if lab.max() > 0:
                break
        else:
            raise ValueError(f"no objects in {_MAX_DRAWS} draws of a {kind} image of shape {shape} with "
                             f"object_size {p['object_size']}: use a larger shape or smaller objects")
        labels[i], images[i, 0] = lab, _acquire(img, p, rng)
    return images, labels


# ---- shared pieces -------------------------------------------------------------

def _n_objects(p, shape, rng, area_fraction=1.0) -> int:
    n = p["n_objects"]
    if n is None:
        # Objects tile about area_fraction of the image at density 1 / size^d
        # (Voronoi cells of spacing ``size``).
        n = area_fraction * np.prod(shape) / float(p["object_size"]) ** len(shape)
        return max(2, int(round(n * rng.uniform(0.85, 1.15))))
    if isinstance(n, numbers.Integral):
        return int(n)
    lo, hi = n
    return int(rng.integers(lo, hi + 1))


def _nearest_seed(coords, seeds, weights) -> tuple[np.ndarray, np.ndarray]:
    """Index of the seed minimising ``|x - s_k| / w_k`` for every point of
    ``coords (P, d)`` and that minimum, in pixel blocks to bound memory."""
    best = np.empty(len(coords), dtype=np.int64)
    dist = np.empty(len(coords), dtype=np.float32)
    block = max(1, 2 ** 21 // max(1, len(seeds)))
    for start in range(0, len(coords), block):
        c = coords[start:start + block]
        d2 = ((c[:, None, :] - seeds[None, :, :]) ** 2).sum(-1) / (weights[None, :] ** 2)
        k = d2.argmin(1)
        best[start:start + block] = k
        dist[start:start + block] = np.sqrt(d2[np.arange(len(c)), k])
    return best, dist


def _warped_grid(shape, amplitude, sigma, rng) -> np.ndarray:
    """Pixel coordinates ``(P, d)`` displaced by a smooth random field (curved borders)."""
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T
    for ax in range(len(shape)):
        grid[:, ax] += amplitude * smooth_noise(shape, sigma, rng).ravel()
    return grid


def _relabel(labels, min_size) -> np.ndarray:
    """Split disconnected pieces into separate objects, give fragments smaller than
    ``min_size`` pixels to their nearest neighbour (or background), and number the
    objects 1..K."""
    from skimage.measure import label as connected

    pieces = connected(labels, background=0, connectivity=1)
    sizes = np.bincount(pieces.ravel())
    small = (sizes < min_size)[pieces] & (pieces > 0)
    if small.any():
        idx = ndimage.distance_transform_edt(small, return_distances=False, return_indices=True)
        pieces = pieces[tuple(idx)]
    ids, inverse = np.unique(pieces, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int64)
    if ids[0] != 0:  # no background at all: objects are 1..K
        out += 1
    return out


def _borders(labels, width: int) -> np.ndarray:
    """Pixels whose label differs from a neighbour's (both sides of every border),
    dilated to ``width`` pixels in total."""
    edge = np.zeros(labels.shape, dtype=bool)
    for ax in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    if width > 2:
        edge = ndimage.binary_dilation(edge, iterations=(width - 1) // 2)
    return edge


def _acquire(img, p, rng) -> np.ndarray:
    """Microscope: uneven illumination, PSF blur, Poisson-Gaussian noise, then
    per-image normalisation to zero mean and unit std."""
    shape = img.shape
    if p["shading"]:
        img = img * (1 + p["shading"] * np.tanh(smooth_noise(shape, max(shape) / 2, rng)))
    if p["blur"]:
        img = ndimage.gaussian_filter(img, p["blur"], truncate=3.0)
    scale = float(np.percentile(img, 99)) + 1e-6
    if p["noise"]:
        shot = np.sqrt(np.clip(img, 0, None) * scale) * rng.standard_normal(shape, dtype=np.float32)
        img = img + p["noise"] * (0.5 * shot + scale * rng.standard_normal(shape, dtype=np.float32))
    img = img - img.mean()
    return (img / (img.std() + 1e-9)).astype(np.float32)


# ---- boundary-stained tissue ------------------------------------------------------

def _boundary(shape, p, rng):
    size = float(p["object_size"])
    n = _n_objects(p, shape, rng)
    seeds = np.stack([rng.uniform(-0.1 * s, 1.1 * s, n) for s in shape], axis=1).astype(np.float32)
    weights = rng.lognormal(0.0, 0.12, n).astype(np.float32)  # multiplicative Voronoi: size variation
    coords = _warped_grid(shape, 0.25 * size, 0.9 * size, rng)
    cell, _ = _nearest_seed(coords, seeds, weights)
    cell = cell.reshape(shape) + 1
    # Tissue: whole cells, those mostly inside a smooth random region covering
    # 1 - background of the image.
    if p["background"] > 0:
        field = smooth_noise(shape, max(shape) / 4, rng)
        inside = field > np.quantile(field, p["background"])
        share = np.bincount(cell.ravel(), weights=inside.ravel(), minlength=n + 1) / \
            np.maximum(np.bincount(cell.ravel(), minlength=n + 1), 1)
        keep = share >= 0.5
        keep[0] = False
        # One connected outside, like an organ in the field of view: cells cut
        # off in smaller outside pockets go back into the tissue.
        from skimage.measure import label as connected

        outside = connected(~keep[cell], connectivity=1)
        if outside.max() > 1:
            largest = np.bincount(outside.ravel())[1:].argmax() + 1
            keep[np.unique(cell[(outside > 0) & (outside != largest)])] = True
        cell = np.where(keep[cell], cell, 0)
    labels = _relabel(cell, min_size=max(4, int(0.1 * size ** len(shape) / 2)))

    membrane = _borders(labels, int(p["membrane_width"])).astype(np.float32)
    # Membrane brightness varies along the walls; some stretches nearly vanish.
    strength = 1.0 + 0.35 * smooth_noise(shape, 0.5 * size, rng)
    strength -= p["faint_membranes"] * np.clip(smooth_noise(shape, 0.4 * size, rng) - 0.6, 0, None)
    strength = np.clip(strength, 0.2, None)
    interior = 0.3 * (1 + 0.25 * smooth_noise(shape, 1.5, rng))  # cytoplasm, same for every cell
    img = np.where(labels > 0, interior, 0.05) + membrane * strength
    return labels, img.astype(np.float32)


# ---- intensity-stained nuclei on a structured background ---------------------------

def _intensity(shape, p, rng):
    size = float(p["object_size"])
    d = len(shape)
    n = _n_objects(p, shape, rng, area_fraction=0.45)
    # Clumps: a share ``touching`` of the nuclei sit next to an earlier one.
    radii = (0.5 * size * rng.lognormal(0.0, 0.25, n)).astype(np.float32)
    seeds = np.stack([rng.uniform(0, s, n) for s in shape], axis=1).astype(np.float32)
    clumped = rng.random(n) < p["touching"]
    clumped[0] = False
    parent = (rng.random(n) * np.arange(n)).astype(np.int64)
    direction = rng.standard_normal((n, d)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    # Placed in order: a clumped nucleus sits next to its (earlier) parent; the others
    # keep apart from every nucleus placed before them (redrawn where they would touch,
    # dropped after a few tries), so ``touching`` really sets the share of nuclei in
    # contact. The margin covers the outline jitter and the coordinate warp below.
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if clumped[i] and keep[parent[i]]:
            seeds[i] = seeds[parent[i]] + direction[i] * (radii[parent[i]] + radii[i]) * 0.85
            continue
        for _ in range(_PLACEMENT_TRIES):
            gap = np.linalg.norm(seeds[:i] - seeds[i], axis=1) - 1.3 * (radii[:i] + radii[i]) - 0.15 * size
            if not np.any(gap[keep[:i]] < 0):
                break
            seeds[i] = [rng.uniform(0, s) for s in shape]
        else:
            keep[i] = False
    seeds, radii = seeds[keep], radii[keep]

    coords = _warped_grid(shape, 0.15 * size, 0.5 * size, rng)
    nearest, dist = _nearest_seed(coords, seeds, radii)
    outline = 1.0 + 0.2 * smooth_noise(shape, 0.25 * size, rng).ravel()  # irregular outlines
    labels = np.where(dist < outline, nearest + 1, 0).reshape(shape)
    labels = _relabel(labels, min_size=max(4, int(0.15 * (0.5 * size) ** d * 3)))
    k = int(labels.max())

    # Nuclei: per-object brightness, chromatin texture, dimmer towards the border
    # (touching nuclei meet in a faint dip, not a dark gap).
    depth = ndimage.distance_transform_edt(labels > 0) if k else np.zeros(shape)
    seam = ndimage.distance_transform_edt(~_borders(labels, 2) | (labels == 0))
    profile = (1 - 0.6 * np.exp(-depth / 2.0)) * (1 - 0.25 * np.exp(-seam / 1.5))
    brightness = np.concatenate([[0.0], rng.uniform(0.35, 1.0, k)]).astype(np.float32)
    chromatin = 1 + 0.2 * smooth_noise(shape, 1.2, rng)
    nuclei = brightness[labels] * profile * chromatin

    # Background: blotches, fibres (level lines of a smooth field) and small
    # debris, some as bright as the dim nuclei.
    t = p["texture"]
    blotch = 0.1 + 0.08 * t * np.clip(smooth_noise(shape, size, rng) + 1, 0, None)
    fibres = np.exp(-(smooth_noise(shape, 0.8 * size, rng) / 0.08) ** 2)
    fibres *= 0.35 * t * np.clip(1 + smooth_noise(shape, 1.5 * size, rng), 0, None)
    debris = (smooth_noise(shape, 1.5, rng) > 3.0).astype(np.float32)
    debris = 0.5 * t * np.minimum(ndimage.gaussian_filter(debris, 1.0) * 4, 1)
    background = blotch + fibres + debris
    img = np.where(labels > 0, nuclei + 0.3 * background, background)
    return labels, img.astype(np.float32)
