"""Fixed-size crops of the instance term's soft masks, one per labelled object: the
"fake" object masks a WGAN critic sees (appendix A.1), next to the ground-truth
("real") masks on the same crops.

The soft mask is the instance term's (Eq. 3): ``S_k(i) = exp(−‖e_i − a_k‖² / 2σ²)``
with the anchor ``a_k`` drawn by :func:`spoco.ops.cluster_slots.random_instance_anchors`
(a uniform pixel of object k, ``anchor="random"``) or the object's mean embedding
(``"mean"``; the draws are this function's own, independent of those of a
:class:`spoco.SPOCOLoss` call on the same batch), and the kernel
:func:`spoco.loss.terms.soft_mask` with the σ² of
:func:`~spoco.loss.terms.kernel_sigma2` (:attr:`spoco.SPOCOLoss.sigma2`).
It is evaluated only on the crop of each object, a box of ``patch_shape`` centred on
the object's centroid, so the cost is ``O(objects · patch · D)`` and not
``O(objects · image)``. Crop pixels outside the image or equal to ``ignore_index``
are 0 in both masks (the instance term gives them no weight either).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from ..loss.terms import soft_mask
from ..loss.torch_sums import segment_means
from ..ops.cluster_slots import random_instance_anchors


class ObjectPatches(NamedTuple):
    """Output of :func:`object_mask_patches` for M objects and crop shape P.

    fake : (M, 1, *P) float, soft masks S_k on the crops (differentiable in ``emb``)
    real : (M, 1, *P) float, ground-truth masks I_k (1 on object k, else 0)
    image : (M,) int64, the batch image of each object
    label : (M,) int64, its label
    anchor : (M, D) the anchor embeddings a_k
    anchor_pixel : (M,) int64 flat pixel index (within its image) of a random anchor;
        -1 with ``anchor="mean"``
    origin : (M, ndim) int64, crop corner in image coordinates (may be negative)
    """
    fake: torch.Tensor
    real: torch.Tensor
    image: torch.Tensor
    label: torch.Tensor
    anchor: torch.Tensor
    anchor_pixel: torch.Tensor
    origin: torch.Tensor


def object_mask_patches(emb: torch.Tensor, target: torch.Tensor, patch_shape, sigma2: float, *,
                        anchor: str = "random", ignore_index: int = -1, max_objects: int | None = None,
                        generator: torch.Generator | None = None) -> ObjectPatches:
    """Soft and ground-truth masks of every labelled object (label > 0), cropped.

    Parameters
    ----------
    emb : (B, D, *spatial) float pixel embeddings (2D or 3D)
    target : (B, *spatial) integer labels; > 0 objects, ``ignore_index`` excluded
    patch_shape : ndim ints, crop shape P; the object's centroid (rounded) lies at
        index ``P // 2`` of its crop
    sigma2 : float, σ² of the kernel (use :attr:`spoco.SPOCOLoss.sigma2`)
    anchor : {"random", "mean"}, as the instance term of :class:`spoco.SPOCOLoss`
    ignore_index : int
    max_objects : int, optional; keep a uniformly drawn subset of at most this many
        objects of the batch (bounds the critic's cost)
    generator : torch.Generator, optional; source of the anchor and subset draws

    Returns
    -------
    :class:`ObjectPatches`, objects ordered by label, then image (M = 0 when the
    batch has no object).
    """
    ndim = _check(emb, target, patch_shape, sigma2, anchor, ignore_index, max_objects, generator)
    patch = tuple(int(p) for p in patch_shape)
    B, D = emb.shape[:2]
    spatial = tuple(emb.shape[2:])
    N = math.prod(spatial)
    dev = emb.device
    lab = target.reshape(B * N).long()
    img = torch.arange(B, device=dev).repeat_interleave(N)
    is_obj = (lab > 0) & (lab != ignore_index)
    # Objects are (image, label) pairs: one unique over rank(label)·B + image numbers them 0..M-1.
    # Ranks, not the labels themselves: label·B overflows int64 for ids near 2**63 (legal ids).
    ids, rank = torch.unique(torch.where(is_obj, lab, -1), return_inverse=True)
    key = torch.where(is_obj, rank * B + img, -1)
    uniq, inv = torch.unique(key, return_inverse=True)
    has_dump = bool(uniq.numel()) and bool(uniq[0] < 0)  # host sync: the number of objects
    M = uniq.numel() - int(has_dump)
    slot = torch.where(is_obj, inv - int(has_dump), M)  # M = no object
    obj_key = uniq[int(has_dump):]

    emb_flat = emb.transpose(0, 1).reshape(D, B * N)  # (D, B·N), column = b·N + pixel
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, device=dev, dtype=torch.float64) for s in spatial],
                                        indexing="ij")).reshape(ndim, N).repeat(1, B)
    centroid, _ = segment_means(coords[None], slot[None], M)  # (1, M, ndim)
    if anchor == "mean":
        means, _ = segment_means(emb_flat[None], slot[None], M)
        anchors, anchor_col = means[0], torch.full((M,), -1, dtype=torch.int64, device=dev)
    else:
        keys = _uniform((B * N,), generator, dev)
        anchor_col = random_instance_anchors(slot[None], keys[None], M)[0]  # column in emb_flat
        anchors = emb_flat[:, anchor_col].T
    origin = torch.floor(centroid[0] + 0.5).long() - torch.tensor([p // 2 for p in patch], device=dev)

    if max_objects is not None and M > max_objects:
        keep = torch.randperm(M, generator=generator, device=_gen_device(generator, dev))[:max_objects].to(dev)
        keep = keep.sort().values
        obj_key, anchors, anchor_col, origin = obj_key[keep], anchors[keep], anchor_col[keep], origin[keep]
        M = max_objects
    image, label = obj_key.remainder(B), ids[obj_key.div(B, rounding_mode="floor")]

    column, inside = _crop_columns(origin, image, patch, spatial)  # (M, P) each
    e = emb_flat[:, column.reshape(-1)].reshape(D, M, column.shape[1]).transpose(0, 1)  # (M, D, P)
    crop_lab = lab[column]
    valid = inside & (crop_lab != ignore_index)
    fake = soft_mask(e, anchors[:, :, None], sigma2) * valid  # dim 1 of e is the embedding axis
    real = ((crop_lab == label[:, None]) & valid).to(emb.dtype)
    anchor_pixel = torch.where(anchor_col >= 0, anchor_col.remainder(N), -1)
    shape = (M, 1) + patch
    return ObjectPatches(fake.reshape(shape), real.reshape(shape), image, label, anchors, anchor_pixel, origin)


def _crop_columns(origin, image, patch, spatial):
    """Flat ``b·N + pixel`` index of every crop pixel (clamped into the image) and
    whether it lies inside the image; both ``(M, prod(patch))``."""
    M, ndim = origin.shape
    N = math.prod(spatial)
    column = (image * N).reshape((M,) + (1,) * ndim)
    inside = torch.ones((M,) + (1,) * ndim, dtype=torch.bool, device=origin.device)
    stride = N
    for axis, (p, s) in enumerate(zip(patch, spatial)):
        stride //= s
        view = [M] + [1] * ndim
        view[axis + 1] = p
        pos = (origin[:, axis:axis + 1] + torch.arange(p, device=origin.device)).reshape(view)
        inside = inside & (pos >= 0) & (pos < s)
        column = column + pos.clamp(0, s - 1) * stride
    full, P = (M,) + tuple(patch), math.prod(patch)
    return column.expand(full).reshape(M, P), inside.expand(full).reshape(M, P)


def _gen_device(generator, device):
    return generator.device if generator is not None else device


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=_gen_device(generator, device)).to(device)


def _check(emb, target, patch_shape, sigma2, anchor, ignore_index, max_objects, generator) -> int:
    if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
        raise TypeError(f"emb must be a floating point torch.Tensor, got "
                        f"{getattr(emb, 'dtype', type(emb).__name__)}")
    if emb.dim() not in (4, 5) or emb.numel() == 0:
        raise ValueError(f"emb must have shape (B, D, H, W) or (B, D, Z, Y, X) with no empty axis, "
                         f"got {tuple(emb.shape)}")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer torch.Tensor of labels, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    expected = (emb.shape[0],) + tuple(emb.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape (B, *spatial) = {expected} to match emb, got {tuple(target.shape)}")
    if target.device != emb.device:
        raise ValueError(f"target is on {target.device} but emb is on {emb.device}")
    ndim = emb.dim() - 2
    try:
        ok = len(patch_shape) == ndim and all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and p >= 1
                                              for p in patch_shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"patch_shape must be {ndim} positive integers for {ndim}D embeddings, got {patch_shape!r}")
    if not isinstance(sigma2, numbers.Real) or isinstance(sigma2, bool) or not 0 < sigma2 < math.inf:
        raise ValueError(f"sigma2 must be a finite number > 0, got {sigma2!r}")
    if anchor not in ("random", "mean"):
        raise ValueError(f"anchor must be 'random' or 'mean', got {anchor!r}")
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    if max_objects is not None and (not isinstance(max_objects, numbers.Integral) or isinstance(max_objects, bool)
                                    or max_objects < 1):
        raise ValueError(f"max_objects must be a positive integer or None, got {max_objects!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return ndim
