"""The default training recipe, with the sizes derived from the labelled objects.

``spoco train --images … --labels … --out …`` (and :func:`auto_config`) looks at the
labels it is given, as Cellpose looks at the object diameter, and chooses:

- spatial embeddings with ``spatial_scale = diameter / 4`` pixels per embedding unit,
  so that the centres of two touching objects lie ``2·δ_d = 4`` units apart (the
  distance at which the mutex watershed weights are fully repulsive);
- a foreground head trained positive-unlabeled (:mod:`spoco.foreground`): objects
  are clustered inside its mask, so the unlabeled background never becomes objects;
  where the labelled objects never touch one another (membranes between EM cells), the
  pixels just outside them are background and the head learns the objects against
  them (``border_background``);
- the smallest object kept, ``min_size``: a tenth of the median labelled area;
- random patches per epoch: as many as cover the training images once.

The other settings were chosen by measurement on real data (benchmarks/README.md,
"Real data"): a small U-Net (``f_maps`` 8) on 64-pixel patches, Adam at 1e-3, the
moving-average network g (momentum 0.995) validated, kept and used for prediction,
with BatchNorm statistics of its own (``ema_buffers="own"``: f's statistics, which the
paper's g copies, do not fit g's averaged weights while f still moves fast, and g's
validation collapsed to a few segments per image early in runs on ISBI-2012), 16 pixels of mirrored image past the border;
after training, the foreground threshold, the merge distance and whether prediction
averages the 8 orientations of each image (test-time augmentation) are chosen on the
validation images. :data:`PAPER` holds the paper's settings (``spoco train --recipe paper``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._labels import pairs_at_step
from .config import TrainConfig

# Fixed part of the default recipe (sizes come from the data, see auto_config).
RECIPE = dict(f_maps=8, embedding_dim=16, batch_size=8, lr=1e-3, lr_schedule="cosine", warmup=200, momentum=0.995,
              eval_network="g", ema_buffers="own", border="mirror", foreground=True, max_iters=10000, val_every=500,
              tta=None)
# The paper's settings (appendix A.1) are TrainConfig's own defaults.
PAPER: dict = {}


@dataclass
class LabelSummary:
    """What the training labels hold (sizes in pixels or voxels)."""
    images: int
    empty: int                 # label images without any labelled object
    objects: int               # labelled objects over all images
    median_area: float         # of the labelled objects; nan without objects
    weighted_area: float       # area-weighted median: the size of the object a labelled pixel belongs to
    pixels: int                # over all images
    ndim: int
    near_pairs: int = 0        # pairs of labelled objects at most NEAR pixels apart along an axis
    touching_pairs: int = 0    # of those, pairs that touch (4-/6-connected neighbours)

    @property
    def objects_separated(self) -> bool:
        """Whether the labels show objects that never touch, always separated by background:
        at least MIN_NEAR_PAIRS neighbouring pairs of labelled objects, none touching."""
        return self.near_pairs >= MIN_NEAR_PAIRS and self.touching_pairs == 0

    @property
    def diameter(self) -> float:
        """Equivalent diameter (disc or ball) of an object of the median area."""
        return _diameter(self.median_area, self.ndim)

    @property
    def typical_diameter(self) -> float:
        """Equivalent diameter of an object of the area-weighted median area: the size
        that matters for a pixel (large objects count with all their pixels)."""
        return _diameter(self.weighted_area, self.ndim)

    def line(self) -> str:
        empty = f", {self.empty} without labelled objects" if self.empty else ""
        size = (f", median labelled object {self.median_area:.0f} px (diameter {self.diameter:.0f}, "
                f"area-weighted {self.typical_diameter:.0f})" if self.objects else "")
        return f"{self.images} training images{empty}, {self.objects} labelled objects{size}"


NEAR = 8             # pixels: labelled objects this close count as neighbours
MIN_NEAR_PAIRS = 3   # neighbouring pairs needed before the labels say whether objects touch
BORDER_BACKGROUND = 2  # px around labelled objects that never touch: painted background


def neighbour_pairs(lab: np.ndarray, reach: int = NEAR) -> tuple[int, int]:
    """Numbers of pairs of labelled objects of ``lab`` (ids > 0, any integer width) at most
    ``reach`` pixels apart along an axis, and of those that touch (one step apart)."""
    lab = np.asarray(lab)
    touching = pairs_at_step(lab, 1)
    near = [touching] + [pairs_at_step(lab, step) for step in range(2, reach + 1)]
    return len(np.unique(np.concatenate(near), axis=0)), len(touching)


def _diameter(area: float, ndim: int) -> float:
    if not area > 0:
        return math.nan
    return 2 * math.sqrt(area / math.pi) if ndim == 2 else 2 * (3 * area / (4 * math.pi)) ** (1 / 3)


def summarize_labels(labels, ignore_index: int | None = None, pairs: bool = True) -> LabelSummary:
    """:class:`LabelSummary` of a list of label images ``(*spatial)`` (0 = unlabeled).
    ``pairs=False`` skips counting neighbouring objects (the costly part: about a second
    for 139 fields of 520x696), leaving ``near_pairs`` and ``touching_pairs`` 0."""
    areas, empty, pixels, near, touching = [], 0, 0, 0, 0
    for lab in labels:
        lab = np.asarray(lab)
        pixels += lab.size
        flat = lab.ravel()
        if ignore_index is not None:
            flat = flat[flat != ignore_index]
            lab = np.where(lab == ignore_index, 0, lab)
        if pairs:
            n_near, n_touching = neighbour_pairs(lab)
            near, touching = near + n_near, touching + n_touching
        # object sizes by np.unique, not np.bincount: any id (up to 2**63 - 1) costs nothing extra
        counts = np.unique(flat[flat > 0], return_counts=True)[1] if flat.size else np.zeros(0, np.int64)
        empty += counts.size == 0
        areas.append(counts)
    areas = np.sort(np.concatenate(areas)) if areas else np.zeros(0)
    ndim = np.asarray(labels[0]).ndim if len(labels) else 2
    weighted = math.nan
    if areas.size:
        cumulative = np.cumsum(areas, dtype=np.float64)
        weighted = float(areas[np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    return LabelSummary(images=len(labels), empty=int(empty), objects=int(areas.size),
                        median_area=float(np.median(areas)) if areas.size else math.nan, weighted_area=weighted,
                        pixels=int(pixels), ndim=int(ndim), near_pairs=near, touching_pairs=touching)


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def auto_config(summary: LabelSummary, overrides: dict | None = None,
                voxel_size=None) -> tuple[TrainConfig, list[str]]:
    """The default recipe for data like ``summary``, with ``overrides`` (TrainConfig keys)
    applied last. ``voxel_size`` (z, y, x) of 3D images, e.g. from OME-Zarr, makes the
    patches cover about as much along z as along y and x. Returns the config and one line
    per derived choice, saying why."""
    overrides = dict(overrides or {})
    values = dict(RECIPE)
    reasons = []
    ndim = summary.ndim
    values["patch_shape"] = (64,) * 2 if ndim == 2 else (32, 64, 64)
    if summary.objects:
        d = summary.typical_diameter
        values["spatial_scale"] = round(d / 4, 2)
        values["min_size"] = max(1, int(round(summary.median_area / 10)))
        reasons.append(f"typical labelled object diameter {d:.0f} px (area-weighted median) -> spatial_scale "
                       f"{values['spatial_scale']} px per embedding unit (touching objects 2*delta_d apart)")
        reasons.append(f"median labelled object {summary.median_area:.0f} px -> min_size {values['min_size']} px "
                       "(a tenth)")
        if ndim == 2:
            # Patches twice the typical object, with as many pixels per step as 8 patches of 64².
            side = min(256, max(64, int(math.ceil(2 * d / 16) * 16)))
            values["patch_shape"] = (side, side)
            values["batch_size"] = max(2, int(round(8 * 64 ** 2 / side ** 2)))
            reasons.append(f"-> patches {side}x{side} (twice the typical diameter, at least 64), "
                           f"batch {values['batch_size']}")
        if summary.objects_separated and overrides.get("sparse", True):  # dense: all of 0 is background already
            values["border_background"] = BORDER_BACKGROUND
            reasons.append(f"labelled objects never touch (0 of {summary.near_pairs} pairs within {NEAR} px) -> "
                           f"the {BORDER_BACKGROUND} px around each count as painted background for the foreground "
                           "head")
    else:
        reasons.append("no labelled objects: plain embeddings, no size filter")
    if ndim == 3 and voxel_size is not None and len(voxel_size) == 3 and min(voxel_size) > 0:
        vz, vy, vx = (float(v) for v in voxel_size)
        depth = min(64, max(8, _round_up(64 * min(vy, vx) / vz, 8)))
        values["patch_shape"] = (depth, 64, 64)
        reasons.append(f"voxel size {vz:g} x {vy:g} x {vx:g} -> patches {depth}x64x64 (about as far along z as "
                       "along y and x)")
    return _with_samples(summary, values, overrides, reasons)


def paper_config(summary: LabelSummary, overrides: dict | None = None,
                 voxel_size=None) -> tuple[TrainConfig, list[str]]:
    """The paper's settings (TrainConfig's defaults) with ``overrides``; same return as
    :func:`auto_config`."""
    return _with_samples(summary, dict(PAPER), dict(overrides or {}), ["the paper's settings (appendix A.1)"])


def _with_samples(summary, values, overrides, reasons):
    """The config, with random patches per epoch enough to cover the training pixels once
    (at least one batch), unless set."""
    config = TrainConfig.from_dict({**values, **overrides})
    if "samples_per_epoch" not in overrides:
        patch = int(np.prod(config.patch_shape))
        config.samples_per_epoch = max(config.batch_size, int(round(summary.pixels / patch)))
        reasons.append(f"{summary.pixels} training pixels / {patch} per patch -> {config.samples_per_epoch} "
                       "patches per epoch")
    return config, reasons


RECIPES = {"auto": auto_config, "paper": paper_config}
