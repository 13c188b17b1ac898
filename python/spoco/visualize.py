"""Pictures and exports of a segmentation for your own data: a PNG preview (instance
outlines over the image, the embeddings' principal components) and ImageJ ROIs.

No torch: labels, images and embeddings are numpy arrays (or array-likes: only the
displayed slice of a volume is read).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["pca_rgb", "display_range", "outline_overlay", "write_preview", "write_imagej_rois"]


def pca_rgb(emb: np.ndarray) -> np.ndarray:
    """First three principal components of ``(D, *spatial)`` embeddings as an RGB image
    ``(*spatial, 3)`` in [0, 1] (components fitted on at most 20 000 pixels)."""
    emb = np.asarray(emb, dtype=np.float32)
    d = emb.reshape(emb.shape[0], -1).T
    d = d - d.mean(0)
    _, _, vt = np.linalg.svd(d[:: max(1, len(d) // 20000)], full_matrices=False)
    rgb = d @ vt[:3].T
    if rgb.shape[1] < 3:  # fewer than 3 embedding dimensions
        rgb = np.pad(rgb, ((0, 0), (0, 3 - rgb.shape[1])))
    rgb = (rgb - rgb.min(0)) / (np.ptp(rgb, 0) + 1e-9)
    return rgb.reshape(emb.shape[1:] + (3,))


def display_range(image: np.ndarray) -> np.ndarray:
    """The first channel of ``image`` ``([C,] Y, X)`` scaled to [0, 1] by its 1st and 99.8th
    percentiles (as spoco normalises for the network)."""
    img = np.asarray(image, dtype=np.float32)
    img = img[0] if img.ndim == 3 else img
    lo, hi = np.percentile(img, (1, 99.8))
    return np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)


def outline_overlay(labels: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """RGB ``(Y, X, 3)`` in [0, 1]: the outline of every instance of ``labels (Y, X)`` in its
    own colour over the grey ``image`` (or over black)."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    grey = np.zeros(labels.shape, np.float32) if image is None else display_range(image)
    if grey.shape != labels.shape:
        raise ValueError(f"image of spatial shape {grey.shape} does not match labels of shape {labels.shape}")
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    colours = label2rgb(np.where(edges, labels, 0), bg_label=0)
    rgb[edges] = colours[edges]
    return rgb


def write_preview(path, labels, image=None, embeddings=None, z: int | None = None) -> Path:
    """Write a PNG: outlines of ``labels`` over ``image`` | PCA of ``embeddings`` (when given).

    Parameters
    ----------
    labels : array-like ``(Y, X)`` or ``(Z, Y, X)``; for volumes the slice ``z`` is shown
        (default: the middle one) and only it is read.
    image : array-like ``([C,] *spatial)``, optional; the raw image under the outlines.
    embeddings : array-like ``(D[+1], *spatial)``, optional; a foreground channel, if any,
        is shown with the others.
    """
    volume = labels.ndim == 3
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D (Y, X) or 3D (Z, Y, X), got shape {tuple(labels.shape)}")
    if volume:
        z = labels.shape[0] // 2 if z is None else int(z)
        if not 0 <= z < labels.shape[0]:
            raise ValueError(f"z={z} is outside the volume's {labels.shape[0]} slices")
    plane = (lambda a, axis: np.asarray(a[(slice(None),) * axis + (z,)])) if volume else \
        (lambda a, axis: np.asarray(a[(slice(None),) * len(a.shape)]))
    panels = [outline_overlay(plane(labels, 0),
                              None if image is None else plane(image, int(image.ndim == labels.ndim + 1)))]
    if embeddings is not None:
        panels.append(pca_rgb(plane(embeddings, 1)))
    gap = np.ones((panels[0].shape[0], 4, 3), np.float32)
    picture = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    from .data import io

    path = Path(path)
    io.write_array(path, np.moveaxis((picture * 255).round().astype(np.uint8), -1, 0))
    return path


def write_imagej_rois(path, labels) -> int:
    """Write every instance of ``labels`` ``(Y, X)`` or ``(Z, Y, X)`` as an ImageJ polygon ROI
    (its outer outline) into the zip file ``path``, readable by ImageJ/Fiji's ROI manager
    (as Cellpose exports them). In a volume every object gets one ROI per slice it
    occupies, with that slice as its position. ROIs are named ``<label>`` or
    ``<label>-z<slice>``. Returns the number of ROIs written.
    """
    import roifile
    from scipy import ndimage
    from skimage.measure import find_contours

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D (Y, X) or 3D (Z, Y, X), got shape {labels.shape}")
    planes = [(None, labels)] if labels.ndim == 2 else list(enumerate(labels))
    rois = []
    for z, plane in planes:
        boxes = ndimage.find_objects(plane)
        for label, box in enumerate(boxes, start=1):  # export, not a hot path: one contour per object
            if box is None:
                continue
            mask = np.pad(plane[box] == label, 1)
            contour = max(find_contours(mask.astype(np.float32), 0.5), key=len)
            yx = contour - 1 + np.array([box[0].start, box[1].start])
            roi = roifile.ImagejRoi.frompoints(yx[:, ::-1])  # ImageJ points are (x, y)
            roi.name = f"{label}" if z is None else f"{label}-z{z}"
            if z is not None:
                roi.position = z + 1  # ImageJ slices count from 1
            rois.append(roi)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.zip")  # renamed when whole
    tmp.unlink(missing_ok=True)
    if rois:
        roifile.roiwrite(tmp, rois)
    else:  # an empty zip: no objects
        import zipfile

        zipfile.ZipFile(tmp, "w").close()
    tmp.replace(path)
    return len(rois)
