"""Augmentation for SPOCO's two views (Sec. 3.2, 4.1, A.1).

``GeometricAugment`` moves image and labels together (flips, 90° rotations in the
YX plane, random scaling and elastic deformation; labels resampled with nearest
neighbour so ids are never blended). ``PhotometricAugment`` then perturbs the f and
g views independently without moving anything (Gaussian noise, Gaussian blur,
brightness/contrast jitter, per channel for colour images), so both views keep the
geometry of the labels.

Images are channels-first float arrays ``(C, *spatial)``, labels integer arrays
``(*spatial)``, ``spatial`` 2D ``(Y, X)`` or 3D ``(Z, Y, X)``. Every random choice
comes from the ``np.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def smooth_field(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field of unit std, correlation length ``sigma``
    pixels, float32; made on a coarse grid and linearly upsampled when ``sigma``
    is large (same look, far cheaper than a wide filter on the full grid)."""
    factor = max(1, int(sigma // 2))
    coarse = tuple(-(-s // factor) + 2 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / factor,
                                    mode="wrap", truncate=3.0)
    for axis, s in enumerate(shape):
        field = _upsample(field, axis, factor, s)
    return (field - field.mean()) / (field.std() + 1e-9)


def _upsample(field, axis, factor, size):
    """Linear interpolation along ``axis`` at positions ``i / factor``, i < size."""
    pos = np.arange(size, dtype=np.float32) / factor
    lo = pos.astype(np.int64)
    w = (pos - lo).reshape((-1,) + (1,) * (field.ndim - axis - 1))
    return np.take(field, lo, axis=axis) * (1 - w) + np.take(field, lo + 1, axis=axis) * w


def warp(image, labels, output_shape, *, scale=1.0, displacement=None, order: int = 1):
    """Resample image and labels on one coordinate map.

    Output pixel ``o`` reads the input at ``c_in + (o - c_out) / scale + displacement[:, o]``
    (``c`` the centres): ``scale > 1`` zooms in, and the output is centred on the input.

    Parameters
    ----------
    image : (C, *spatial) float array
    labels : (*spatial) int array or None
    output_shape : spatial shape of the result
    scale : float or one per spatial axis
    displacement : (ndim, *output_shape) float array in input pixels, or None
    order : spline order for the image (labels always 0: nearest)

    Returns
    -------
    (image (C, *output_shape) float32, labels (*output_shape) of the labels' dtype or None).
    Coordinates outside the input take the nearest edge value (image and labels alike).
    """
    ndim = len(output_shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float32), (ndim,))
    c_in = (np.asarray(image.shape[1:], dtype=np.float32) - 1) / 2
    c_out = (np.asarray(output_shape, dtype=np.float32) - 1) / 2
    coords = np.indices(output_shape, dtype=np.float32)
    coords -= c_out.reshape((ndim,) + (1,) * ndim)
    coords /= scale.reshape((ndim,) + (1,) * ndim)
    coords += c_in.reshape((ndim,) + (1,) * ndim)
    if displacement is not None:
        coords += displacement
    out = np.stack([ndimage.map_coordinates(ch, coords, order=order, mode="nearest", output=np.float32)
                    for ch in np.asarray(image, dtype=np.float32)])
    lab = None if labels is None else _warp_labels(np.asarray(labels), coords)
    return out, lab


def _warp_labels(labels, coords):
    """Nearest-neighbour resampling of integer labels: the pixels that
    ``map_coordinates(order=0, mode="nearest")`` picks (each coordinate clamped to the
    array, then rounded half up), read by indexing. Same result, ~2.5x faster on a
    training patch, and exact for any id (map_coordinates passes values through float64)."""
    index = tuple(np.clip(np.floor(c.astype(np.float64) + 0.5), 0, n - 1).astype(np.intp)
                  for c, n in zip(coords, labels.shape))
    return labels[index]


@dataclass
class GeometricAugment:
    """Random geometry shared by image and labels.

    Parameters
    ----------
    flip : flip each spatial axis with probability 1/2
    rot90 : rotate by a random multiple of 90° in the YX plane (multiples of 180°
        when Y and X sizes differ, so the shape is kept)
    scale : (low, high) zoom factors, drawn log-uniformly; (1, 1) = off
    elastic_alpha : displacement amplitude (std, pixels); 0 = off
    elastic_sigma : displacement smoothness (pixels)
    p_elastic : probability of the elastic deformation
    """
    flip: bool = True
    rot90: bool = True
    scale: tuple = (0.8, 1.25)
    elastic_alpha: float = 2.0
    elastic_sigma: float = 8.0
    p_elastic: float = 0.5

    @property
    def margin(self) -> int:
        """Pixels the deformation can reach beyond the zoomed window."""
        return int(np.ceil(3 * self.elastic_alpha)) + 1

    def draw_scale(self, rng) -> float:
        lo, hi = self.scale
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)

    def __call__(self, image, labels, rng, output_shape=None, scale=None):
        """Augment ``image (C, *spatial)`` and ``labels (*spatial)`` (or None).

        ``output_shape`` (default: the input's) lets a caller pass a larger window
        around the patch so zooming out and deforming read real pixels; ``scale``
        overrides the random zoom (the caller chose the window for it).
        Returns ``(image float32 (C, *output_shape), labels (*output_shape))``.
        """
        spatial = image.shape[1:]
        output_shape = tuple(spatial if output_shape is None else output_shape)
        s = self.draw_scale(rng) if scale is None else scale
        disp = None
        if self.elastic_alpha > 0 and rng.random() < self.p_elastic:
            disp = np.stack([self.elastic_alpha * smooth_field(output_shape, self.elastic_sigma, rng)
                             for _ in output_shape])
        if s != 1.0 or disp is not None or output_shape != spatial:
            image, labels = warp(image, labels, output_shape, scale=s, displacement=disp)
        image = np.asarray(image, dtype=np.float32)
        if self.flip:
            axes = [ax for ax in range(len(output_shape)) if rng.random() < 0.5]
            image = np.flip(image, [a + 1 for a in axes])
            labels = None if labels is None else np.flip(labels, axes)
        if self.rot90:
            square = output_shape[-1] == output_shape[-2]
            k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
            image = np.rot90(image, k, axes=(-2, -1))
            labels = None if labels is None else np.rot90(labels, k, axes=(-2, -1))
        labels = None if labels is None else np.ascontiguousarray(labels)
        return np.ascontiguousarray(image), labels


@dataclass
class PhotometricAugment:
    """Random intensity changes that keep geometry (one draw per view).

    Works in the units of a normalised image (about 0..1 or unit std).

    Parameters
    ----------
    noise : (low, high) std of additive Gaussian noise
    blur : (low, high) Gaussian blur sigma in pixels (spatial axes only)
    p_blur : probability of blurring
    brightness : max absolute additive shift, drawn per channel
    contrast : (low, high) multiplicative factor about the channel mean, per channel
    """
    noise: tuple = (0.0, 0.1)
    blur: tuple = (0.3, 1.0)
    p_blur: float = 0.5
    brightness: float = 0.1
    contrast: tuple = (0.8, 1.25)

    def __call__(self, image, rng) -> np.ndarray:
        """``image (C, *spatial)`` → float32 copy with the same shape."""
        x = np.array(image, dtype=np.float32)
        c = x.shape[0]
        shape = (c,) + (1,) * (x.ndim - 1)
        if rng.random() < self.p_blur:
            sigma = rng.uniform(*self.blur)
            x = ndimage.gaussian_filter(x, (0,) + (sigma,) * (x.ndim - 1), truncate=3.0)
        mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
        gain = np.exp(rng.uniform(np.log(self.contrast[0]), np.log(self.contrast[1]), c)).reshape(shape)
        shift = rng.uniform(-self.brightness, self.brightness, c).reshape(shape)
        x = (x - mean) * gain.astype(np.float32) + mean + shift.astype(np.float32)
        std = rng.uniform(*self.noise)
        if std > 0:
            x += std * rng.standard_normal(x.shape, dtype=np.float32)
        return x
