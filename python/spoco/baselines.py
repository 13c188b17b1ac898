"""Classic, no-learning instance segmentation pipelines (scikit-image), the baselines that
a learned method has to beat on real images.

- :func:`otsu_components`: Otsu threshold, then connected components (bright objects on
  a dark background, e.g. fluorescent nuclei).
- :func:`otsu_watershed`: Otsu threshold, then a watershed on the distance transform
  seeded at its maxima, which splits touching round objects (the textbook nuclei pipeline).
- :func:`threshold_components`: for boundary-stained images (electron microscopy: dark
  membranes between bright cells): Otsu threshold of the interiors, connected components.

All take one 2D or 3D single-channel image (any real dtype) and return int64 labels,
0 = background, objects 1..K. ``min_size`` drops components smaller than that many pixels.
"""
from __future__ import annotations

import numpy as np

__all__ = ["otsu_components", "otsu_watershed", "threshold_components", "BASELINES"]


def _image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be one 2D or 3D channel, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_:
        raise TypeError(f"image must be numeric, got dtype {img.dtype}")
    return img.astype(np.float32)


def _foreground(img: np.ndarray, smooth: float, dark: bool = False) -> np.ndarray:
    from skimage.filters import gaussian, threshold_otsu

    if smooth > 0:
        img = gaussian(img, sigma=smooth, preserve_range=True)
    if img.max() == img.min():
        return np.zeros(img.shape, dtype=bool)
    t = threshold_otsu(img)
    return img < t if dark else img > t


def _finish(labels: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    from .clustering.mws import remove_small_segments

    return relabel_sequential(remove_small_segments(labels.astype(np.int64), int(min_size)))[0]


def otsu_components(image, *, smooth: float = 1.0, min_size: int = 30) -> np.ndarray:
    """Otsu threshold of the (Gaussian-smoothed) image, then connected components."""
    from scipy import ndimage as ndi

    fg = _foreground(_image(image), smooth)
    return _finish(ndi.label(ndi.binary_fill_holes(fg))[0], min_size)


def otsu_watershed(image, *, smooth: float = 1.0, min_distance: int = 7, min_size: int = 30) -> np.ndarray:
    """Otsu foreground split by a watershed of the negated distance transform, seeded at
    its local maxima at least ``min_distance`` pixels apart (one per component at least)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = ndi.binary_fill_holes(_foreground(_image(image), smooth))
    components = ndi.label(fg)[0]
    distance = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return _finish(watershed(-distance, markers, mask=fg), min_size)


def threshold_components(image, *, smooth: float = 1.0, min_size: int = 30) -> np.ndarray:
    """Boundary-stained images: interiors brighter than the Otsu threshold of the
    smoothed image, split into connected components (4-/6-connectivity)."""
    from scipy import ndimage as ndi

    interior = _foreground(_image(image), smooth)
    return _finish(ndi.label(interior)[0], min_size)


# name -> function, for benchmarks and the demo
BASELINES = {"otsu_cc": otsu_components, "otsu_watershed": otsu_watershed,
             "threshold_cc": threshold_components}
