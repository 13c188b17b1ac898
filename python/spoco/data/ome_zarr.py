"""OME-Zarr (NGFF) images and label images: the multiscale metadata, axes and voxel size.

An OME-Zarr image is a zarr group whose attributes describe one or more resolution
levels (``multiscales``): the arrays' paths, the axes (``t``, ``c``, ``z``, ``y``,
``x`` in that order, each with a type and unit) and each level's voxel size (a
``scale`` transformation). Version 0.4 keeps them in the group's attributes
(zarr format 2), version 0.5 under ``attributes["ome"]`` (zarr format 3). Both are read;
spoco writes the version that matches the zarr format its zarr library writes.

spoco reads the full-resolution level (or the level given as the key, e.g. ``"1"``),
with the channel axis first as everywhere in spoco; a time axis must have one time
point. Label images written by spoco are OME-Zarr label images (``image-label``
metadata) with the voxel size of their embeddings.

Reference: https://ngff.openmicroscopy.org (0.4, 0.5).
"""
from __future__ import annotations

import numpy as np

SPACE_AXES = ("z", "y", "x")


def multiscales(group) -> list | None:
    """The ``multiscales`` list of an OME-Zarr group (0.4 or 0.5), or None for a plain group."""
    attrs = dict(getattr(group, "attrs", {}) or {})
    found = attrs.get("ome", {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    found = found or attrs.get("multiscales")
    return found if isinstance(found, list) and found else None


def level(group, path: str | None = None):
    """``(array, axes, voxel_size)`` of one resolution level of an OME-Zarr group (default: the
    first, full resolution). ``axes``: axis names; ``voxel_size``: the scale of the spatial axes
    (one float per z/y/x axis present), or None when the metadata give none.
    Raises ValueError for metadata spoco cannot use (missing datasets, unknown axes)."""
    meta = multiscales(group)[0]
    datasets = meta.get("datasets") or []
    if not datasets:
        raise ValueError("OME-Zarr multiscales without datasets")
    if path is None:
        entry = datasets[0]
    else:
        matches = [d for d in datasets if str(d.get("path")) == str(path)]
        if not matches:
            raise KeyError(f"no resolution level {path!r}; levels: {[d.get('path') for d in datasets]}")
        entry = matches[0]
    array = group[str(entry["path"])]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", [])]
    if not axes:  # version <= 0.3: always 5D tczyx
        axes = list("tczyx")[-len(array.shape):]
    if len(axes) != len(array.shape) or set(axes) - {"t", "c", *SPACE_AXES}:
        raise ValueError(f"OME-Zarr axes {axes} do not describe an array of shape {tuple(array.shape)}")
    scale = _scale(meta.get("coordinateTransformations"), entry.get("coordinateTransformations"), len(axes))
    voxel = None if scale is None else tuple(float(s) for s, a in zip(scale, axes) if a in SPACE_AXES)
    return array, axes, voxel


def _scale(global_transforms, level_transforms, n):
    """The product of the level's and the multiscale's ``scale`` transformations (or None)."""
    scale, found = np.ones(n), False
    for transforms in (level_transforms, global_transforms):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == n:
                scale, found = scale * np.asarray(t["scale"], dtype=float), True
    return scale if found else None


class ChannelFirstView:
    """A lazy view of an OME-Zarr array without its time axis (one time point), so that
    spoco sees ``([C,] [Z,] Y, X)``. Slicing reads only what is asked for."""

    def __init__(self, array, axes):
        if "t" in axes:
            t = axes.index("t")
            if array.shape[t] != 1:
                raise ValueError(f"OME-Zarr image with {array.shape[t]} time points; spoco takes one "
                                 "(select it into its own image)")
        self.array, self.drop = array, ("t" in axes)
        self.shape = tuple(array.shape[1:] if self.drop else array.shape)
        self.dtype, self.ndim, self.attrs = array.dtype, len(self.shape), getattr(array, "attrs", {})

    def __getitem__(self, index):
        return np.asarray(self.array[(0,) + _as_tuple(index)] if self.drop else self.array[index])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[...], dtype=dtype)


def _as_tuple(index):
    return index if isinstance(index, tuple) else (index,)


def metadata(shape, voxel_size=None, *, channels: bool, labels: bool, zarr_format: int, name: str = "0") -> dict:
    """Group attributes of a single-level OME-Zarr image (``channels``: the first axis is ``c``)
    or label image of ``shape``, with ``voxel_size`` (spatial axes) in micrometres if given."""
    n_space = len(shape) - int(channels)
    if not 2 <= n_space <= 3:
        raise ValueError(f"OME-Zarr output needs 2 or 3 spatial axes, got shape {tuple(shape)}")
    axes = ([{"name": "c", "type": "channel"}] if channels else []) + \
        [{"name": a, "type": "space", "unit": "micrometer"} for a in SPACE_AXES[-n_space:]]
    voxel = [1.0] * n_space if voxel_size is None else [float(v) for v in voxel_size]
    if len(voxel) != n_space:
        raise ValueError(f"voxel_size needs {n_space} values (one per spatial axis), got {voxel_size}")
    scale = ([1.0] if channels else []) + voxel
    multiscale = {"name": name, "axes": axes,
                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}
    if zarr_format == 2:
        multiscale["version"] = "0.4"
        attrs = {"multiscales": [multiscale]}
        if labels:
            attrs["image-label"] = {"version": "0.4"}
        return attrs
    ome = {"version": "0.5", "multiscales": [multiscale]}
    if labels:
        ome["image-label"] = {}
    return {"ome": ome}
