"""Training samples for SPOCO: random patches of (partially) labelled images, each
as two views f and g with shared geometry and independent photometric noise.

Randomness: SPOCO@p sparsification is drawn once, at construction, from
``(seed, image index)`` (:func:`spoco.data.sampling.sparsify`). Every sample is drawn
from ``np.random.SeedSequence([seed, epoch, index])`` and nothing else: the samples of
an epoch differ by their index, and a sample is the same whichever DataLoader worker
(or the main process) loads it and whichever batches were loaded before, so a
resumed training run that skips the batches it already trained on sees exactly the
samples of an uninterrupted one. Call :meth:`set_epoch` at the start of every epoch
for new patches and augmentations; without it every epoch repeats the first.
``persistent_workers=True`` keeps the workers' copies of the dataset across epochs, so
``set_epoch`` does not reach them and every epoch repeats the first: keep the
default, non-persistent workers.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .._labels import BACKGROUND_SCRIBBLE
from .sampling import sparsify
from . import io
from .augment import GeometricAugment, PhotometricAugment
from .normalize import normalize_image

_MAX_ANCHORS = 100_000  # labelled positions remembered per image for patch placement


class InstanceDataset(torch.utils.data.Dataset):
    """Random training patches of instance-labelled images, as SPOCO's two views.

    Parameters
    ----------
    images : list of arrays ``(C, *spatial)`` or ``(*spatial)`` (then C = 1);
        all with the same C and 2 or 3 spatial axes
    labels : list of integer arrays ``(*spatial)`` (floats holding integers are
        accepted); 0 = unlabelled (and background), objects > 0
    patch_shape : spatial patch size; an image smaller than it is padded (image with
        its 1st-percentile value, labels with 0 = unlabelled)
    fraction : p of SPOCO@p: keep ``round(p·n)`` objects per image (≥ 1), the rest
        become 0; None keeps the labels as they are (already partial labels stay so)
    seed : int, fixes the sparsification and, with the epoch, every sample
    augment : True (default transforms), False (crops only; then ``image_f`` equals
        ``image_g``) or a pair ``(GeometricAugment or None, PhotometricAugment or None)``
    length : samples per epoch (default ``len(images)``); sample i uses image
        ``i % len(images)``
    normalize : per-image robust normalisation (:func:`normalize_image`,
        percentiles 1 → 0 and 99.8 → 1, per channel); False uses values as given
    names : one name per image for error messages (default ``images[i]``)
    background_label : int, optional
        Label value painted on background pixels (scribbles). Never an object: not
        drawn by ``fraction``, not counted; in the items' labels these pixels are
        :data:`spoco.foreground.BACKGROUND_SCRIBBLE` (-2).
    border_background : int
        Paint the unlabeled pixels within this many pixels (4-connected steps) of a
        labelled object (after ``fraction``) as background scribbles: for objects that
        never touch, separated by background. 0 (default): off.

    Notes
    -----
    Items are dicts ``{"image_f": float32 (C, *patch), "image_g": float32 (C, *patch),
    "labels": int64 (*patch)}``. Patches contain a labelled pixel (at a random place)
    with probability 0.8, else lie anywhere.
    """

    def __init__(self, images, labels, *, patch_shape, fraction=None, seed=0, augment=True, length=None,
                 normalize=True, names=None, background_label=None, border_background=0):
        self.patch_shape = _patch_shape(patch_shape)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} label images")
        if len(images) == 0:
            raise ValueError("images is empty: a dataset needs at least one image")
        names = [f"images[{i}]" for i in range(len(images))] if names is None else [str(n) for n in names]
        if len(names) != len(images):
            raise ValueError(f"got {len(names)} names for {len(images)} images")
        if length is None:
            length = len(images)
        if not isinstance(length, numbers.Integral) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if augment is True:
            augment = (GeometricAugment(), PhotometricAugment())
        self.geometric, self.photometric = augment if augment else (None, None)
        self.seed, self.length, self.epoch, self.names = int(seed), int(length), 0, names
        self.images, self.labels, self._anchors = [], [], []
        # per image: the id its scribbles carry in self.labels (one above its objects, so
        # that tables of one entry per id stay small), or None
        self._scribble_ids = []
        channels = None
        for i, (img, lab, name) in enumerate(zip(images, labels, names)):
            img, lab = self._check(img, lab, name)
            if channels is not None and img.shape[0] != channels:
                raise ValueError(f"{name}: {img.shape[0]} channels, but {names[0]} has {channels}")
            channels = img.shape[0]
            img = normalize_image(img) if normalize else img.astype(np.float32)
            scribbles = lab == background_label if background_label is not None else None
            scribble_id = None
            if scribbles is not None and scribbles.any():
                lab = np.where(scribbles, 0, lab)
                scribble_id = int(lab.max()) + 1
                lab[scribbles] = scribble_id
            if fraction is not None:
                lab = sparsify(lab, fraction, self.seed, image_index=i, ignore_index=scribble_id)
            if border_background:
                lab, scribble_id = _paint_borders(lab, scribble_id, int(border_background))
            self._scribble_ids.append(scribble_id)
            img, lab = self._pad(img, lab)
            self.images.append(img)
            self.labels.append(lab)
            self._anchors.append(_anchors(lab, np.random.default_rng([self.seed, i])))

    # ---- construction helpers ------------------------------------------------------

    def _check(self, img, lab, name):
        img, lab = np.asarray(img), np.asarray(lab)
        nd = len(self.patch_shape)
        if img.ndim == nd:
            img = img[None]
        if img.ndim != nd + 1:
            raise ValueError(f"{name}: image of shape {img.shape} is neither (*spatial) nor (C, *spatial) "
                             f"for a {nd}D patch_shape {self.patch_shape}")
        if lab.shape != img.shape[1:]:
            raise ValueError(f"{name}: labels of shape {lab.shape} do not match the image's spatial shape "
                             f"{img.shape[1:]}")
        if np.issubdtype(lab.dtype, np.floating) and lab.size and np.array_equal(lab, np.round(lab)):
            lab = lab.astype(np.int64)  # integer ids stored as floats (some tools write label tifs so)
        if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"{name}: labels must be integers (or floats with integer values), got dtype {lab.dtype}")
        if not np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_:
            raise TypeError(f"{name}: image must be numeric, got dtype {img.dtype}")
        lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
        if lo < 0:
            raise ValueError(f"{name}: labels contain negative values ({lo}); use 0 for unlabelled pixels")
        return img, lab.astype(np.int32 if hi < 2 ** 31 else np.int64, copy=False)

    def _pad(self, img, lab):
        short = [max(0, p - s) for p, s in zip(self.patch_shape, lab.shape)]
        if not any(short):
            return img, lab
        width = [(d // 2, d - d // 2) for d in short]
        fill = float(np.percentile(img, 1))
        img = np.pad(img, [(0, 0)] + width, constant_values=fill)
        return img, np.pad(lab, width)

    def object_labels(self) -> list:
        """The training label images with scribbles as 0: what the objects are."""
        return [lab if sid is None else np.where(lab == sid, 0, lab)
                for lab, sid in zip(self.labels, self._scribble_ids)]

    @property
    def scribble_pixels(self) -> int:
        """Painted background pixels over all images."""
        return int(sum(int((lab == sid).sum()) for lab, sid in zip(self.labels, self._scribble_ids)
                       if sid is not None))

    # ---- alternative constructors ---------------------------------------------------

    @classmethod
    def from_files(cls, image_paths, label_paths, key=None, label_key=None, **kw):
        """Read pairs of files with :func:`spoco.data.io.read_array` (``key`` and
        ``label_key``: dataset keys for HDF5/zarr, or ``"file.h5:key"`` paths).
        Error messages name the files."""
        image_paths, label_paths = list(image_paths), list(label_paths)
        if len(image_paths) != len(label_paths):
            raise ValueError(f"got {len(image_paths)} image files but {len(label_paths)} label files")
        images = [io.read_array(p, key) for p in image_paths]
        labels = [io.read_array(p, label_key) for p in label_paths]
        kw.setdefault("names", [f"{p} / {q}" for p, q in zip(image_paths, label_paths)])
        return cls(images, labels, **kw)

    @classmethod
    def from_folders(cls, image_dir, label_dir, **kw):
        """Pairs of files with the same name (without suffix) in two folders
        (:func:`spoco.data.io.list_pairs`): ``images/a.tif`` with ``labels/a.tif``."""
        pairs = io.list_pairs(image_dir, label_dir)
        return cls.from_files([p for p, _ in pairs], [q for _, q in pairs], **kw)

    # ---- sampling ----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use a new set of random patches and augmentations (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _generators(self, index):
        ss = np.random.SeedSequence([self.seed, self.epoch, int(index)])
        return [np.random.default_rng(s) for s in ss.spawn(4)]

    def __getitem__(self, index):
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index %= self.length
        k = index % len(self.images)
        img, lab = self.images[k], self.labels[k]
        rng_crop, rng_geo, rng_f, rng_g = self._generators(index)
        if self.geometric is None:
            window = self.patch_shape
            scale = 1.0
        else:
            scale = self.geometric.draw_scale(rng_geo)
            # Read enough around the patch for zooming out and deforming; never more
            # than the image (then edge pixels repeat).
            window = tuple(min(s, int(np.ceil(p / scale)) + 2 * self.geometric.margin)
                           for p, s in zip(self.patch_shape, lab.shape))
        sl = _window(lab.shape, window, self._anchors[k], rng_crop)
        img, lab = img[(slice(None),) + sl], lab[sl]
        if self.geometric is not None:
            img, lab = self.geometric(img, lab, rng_geo, output_shape=self.patch_shape, scale=scale)
        f = g = img
        if self.photometric is not None:
            f, g = self.photometric(img, rng_f), self.photometric(img, rng_g)
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        if self._scribble_ids[k] is not None:
            lab[lab == self._scribble_ids[k]] = BACKGROUND_SCRIBBLE
        return {"image_f": torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)),
                "image_g": torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32)),
                "labels": torch.from_numpy(lab)}


def _paint_borders(lab: np.ndarray, scribble_id, width: int):
    """``lab`` with its unlabeled pixels within ``width`` 4-connected steps of an object
    set to ``scribble_id`` (a new id one above the objects if None); returns (labels, id)."""
    from scipy import ndimage as ndi

    objects = (lab > 0) if scribble_id is None else (lab > 0) & (lab != scribble_id)
    ring = ndi.binary_dilation(objects, ndi.generate_binary_structure(lab.ndim, 1), iterations=width) & (lab == 0)
    if not ring.any():
        return lab, scribble_id
    if scribble_id is None:
        scribble_id = int(lab.max()) + 1
    lab = lab.astype(np.promote_types(lab.dtype, np.int32))  # a copy; room for the new id
    lab[ring] = scribble_id
    return lab, scribble_id


def _patch_shape(patch_shape) -> tuple:
    try:
        shape = tuple(patch_shape)
    except TypeError:
        raise ValueError(f"patch_shape must be 2 or 3 positive ints, got {patch_shape!r}") from None
    if len(shape) not in (2, 3) or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                           for s in shape):
        raise ValueError(f"patch_shape must be 2 or 3 positive ints, got {patch_shape!r}")
    return tuple(int(s) for s in shape)


def _anchors(labels, rng) -> np.ndarray:
    """Flat indices of up to ``_MAX_ANCHORS`` random labelled pixels."""
    idx = np.flatnonzero(labels)
    if idx.size > _MAX_ANCHORS:
        idx = rng.choice(idx, _MAX_ANCHORS, replace=False)
    return idx


def _window(shape, window, anchors, rng) -> tuple:
    """Slices of a ``window``-sized box inside ``shape`` that contains a random labelled
    pixel with probability 0.8, else placed uniformly.

    The labelled pixel lands at a uniformly random position inside the box (then the
    box is shifted to fit the image), not at its centre: a network with zero padding
    can tell where in a patch a pixel lies, and would learn "the object in the middle
    is the labelled one" -- which breaks the foreground head (spoco.foreground)."""
    if anchors.size and rng.random() < 0.8:
        anchor = np.unravel_index(anchors[rng.integers(anchors.size)], shape)
        start = [min(max(0, a - int(rng.integers(w))), s - w) for a, w, s in zip(anchor, window, shape)]
    else:
        start = [int(rng.integers(0, s - w + 1)) for w, s in zip(window, shape)]
    return tuple(slice(a, a + w) for a, w in zip(start, window))
