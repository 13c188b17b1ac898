"""U-Net embedding networks as in the paper's Tables 6–8.

Encoder: ConvBlocks with ``f_maps · 2^l`` channels separated by 2× max-pooling;
decoder: nearest-neighbour 2× upsampling, concatenation with the encoder output of
the same level, ConvBlock; a final 1×1 convolution maps to the D embedding channels.
A ConvBlock (Fig. 7) is two (3×3[×3] convolution → normalisation → ReLU) layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_fits_in_memory

_NORMS = ("batch", "group", "none")


def receptive_field(depth: int, kernel: int = 3, convs_per_block: int = 2) -> int:
    """Receptive field (pixels along one axis) of the bottleneck features of a U-Net
    with ``depth`` levels (``depth - 1`` poolings)."""
    rf, jump = 1, 1
    for level in range(depth):
        rf += convs_per_block * (kernel - 1) * jump
        if level < depth - 1:  # 2x2 max-pool: one more input pixel at the current jump, then stride 2
            rf += jump
            jump *= 2
    return rf


def choose_depth(patch_shape, max_depth: int = 7) -> int:
    """The smallest depth whose bottleneck receptive field covers the largest patch
    axis (the paper's rule, A.1), at least 2 and at most ``max_depth``; the patch's
    smallest axis limits the number of poolings."""
    largest, smallest = max(patch_shape), min(patch_shape)
    depth = 2
    while depth < max_depth and receptive_field(depth) < largest and smallest >= 2 ** depth:
        depth += 1
    return depth


class ConvBlock(nn.Sequential):
    """Two (conv 3×3 → norm → ReLU) layers (the paper's ConvBlock / ConvBlockBN / ConvBlockGN)."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, norm: str, groups: int):
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        layers = []
        for c_in in (in_channels, out_channels):
            # The convolution's bias is redundant before a normalisation layer.
            layers.append(conv(c_in, out_channels, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append((nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(out_channels))
            elif norm == "group":
                layers.append(nn.GroupNorm(min(groups, out_channels), out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net mapping ``(B, in_channels, *spatial)`` images to ``(B, out_channels, *spatial)``
    pixel embeddings (2D or 3D).

    Parameters
    ----------
    ndim : 2 or 3
    in_channels : int
        Image channels.
    out_channels : int
        Embedding dimension D (the paper uses 16).
    f_maps : int
        Channels of the first level; level l has ``f_maps * 2**l``.
    depth : int, optional
        Number of levels (poolings + 1). Default: chosen from ``patch_shape`` with
        :func:`choose_depth`, or 4 without a patch shape.
    patch_shape : tuple of ints, optional
        Training patch shape, used to choose the depth.
    norm : "batch" | "group" | "none"
        Normalisation in the ConvBlocks (paper: batch for 2D natural images, group
        for 3D and electron microscopy).
    groups : int
        Groups of GroupNorm.
    foreground : bool
        Add one output channel after the D embedding channels: a foreground logit
        (trained positive-unlabeled, :func:`spoco.foreground.pu_foreground_loss`).
    spatial_scale : float, optional
        Spatial embeddings: the first ``ndim`` embedding channels are offsets to which
        the pixel coordinates divided by ``spatial_scale`` (pixels per embedding unit)
        are added outside the network (:func:`spoco.models.embeddings`), so that the
        embedding of an object is where its pixels point to. The network itself
        stays translation-equivariant; the value is kept here so checkpoints carry it.

    Inputs of any size are accepted: they are padded (reflect) to a multiple of
    ``2**(depth-1)`` and the output is cropped back. A configuration whose weights would
    not fit in the machine's memory (model configs come from checkpoint files) raises
    ValueError before any layer is allocated.
    """

    def __init__(self, ndim: int, in_channels: int = 1, out_channels: int = 16, *, f_maps: int = 16,
                 depth: int | None = None, patch_shape=None, norm: str = "batch", groups: int = 8,
                 foreground: bool = False, spatial_scale: float | None = None):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("f_maps", f_maps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if depth is None:
            depth = choose_depth(patch_shape) if patch_shape is not None else 4
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        if spatial_scale is not None and not (float(spatial_scale) > 0 and math.isfinite(spatial_scale)):
            raise ValueError(f"spatial_scale must be a positive number or None, got {spatial_scale!r}")
        if spatial_scale is not None and out_channels < ndim:
            raise ValueError(f"spatial embeddings need out_channels >= ndim = {ndim}, got {out_channels}")
        self.ndim, self.depth = ndim, depth
        self.embedding_dim, self.foreground = out_channels, bool(foreground)
        self.spatial_scale = None if spatial_scale is None else float(spatial_scale)
        self.config = dict(ndim=ndim, in_channels=in_channels, out_channels=out_channels, f_maps=f_maps,
                           depth=depth, norm=norm, groups=groups)
        if self.foreground:  # only when set, so older checkpoints' configs stay valid
            self.config["foreground"] = True
        if self.spatial_scale is not None:
            self.config["spatial_scale"] = self.spatial_scale
        if self.foreground:
            # c of spoco.foreground: the share of object pixels that were labelled in training,
            # estimated by the trainer; the foreground probability is sigmoid(logit) / c.
            self.register_buffer("label_rate", torch.ones(()))
        if depth > 32:  # level l has f_maps * 2**l channels
            raise ValueError(f"depth must be at most 32, got {depth}")
        widths = [f_maps * 2 ** level for level in range(depth)]
        _check_size(ndim, in_channels, out_channels + int(self.foreground), widths)
        self.encoders = nn.ModuleList(
            ConvBlock(ndim, c_in, c_out, norm, groups) for c_in, c_out in zip([in_channels] + widths[:-1], widths))
        self.decoders = nn.ModuleList(
            ConvBlock(ndim, widths[level] + widths[level + 1], widths[level], norm, groups)
            for level in reversed(range(depth - 1)))
        self.head = (nn.Conv2d if ndim == 2 else nn.Conv3d)(widths[0], out_channels + int(self.foreground), 1)

    @property
    def divisor(self) -> int:
        """Input sizes that are multiples of this need no padding; tiles should start at multiples of it."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2:
            raise ValueError(f"input must have shape (B, C, *spatial) with {self.ndim} spatial axes, "
                             f"got shape {tuple(x.shape)}")
        spatial = x.shape[2:]
        pad = [(-s) % self.divisor for s in spatial]
        if any(pad):
            # F.pad takes (last axis before, after, ...); pad only at the end of each axis.
            mode = "reflect" if all(p < s for p, s in zip(pad, spatial)) else "replicate"
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode=mode)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                x = F.max_pool2d(x, 2) if self.ndim == 2 else F.max_pool3d(x, 2)
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = decoder(torch.cat([skip, x], dim=1))
        x = self.head(x)
        return x[(..., *[slice(0, s) for s in spatial])]


def _check_size(ndim, in_channels, out_channels, widths) -> None:
    """Refuse, before any layer is allocated, a U-Net whose convolution weights need more
    memory than the machine has (model configs come from checkpoint files, which may be hostile)."""
    blocks = list(zip([in_channels] + widths[:-1], widths))
    blocks += [(widths[level] + widths[level + 1], widths[level]) for level in range(len(widths) - 1)]
    n = sum(3 ** ndim * (c_in + c_out) * c_out for c_in, c_out in blocks) + widths[0] * out_channels
    check_fits_in_memory(4 * n, f"a U-Net with {len(widths)} levels of {widths[0]}..{widths[-1]} channels "
                         f"({n:.3g} float32 weights)")


class UNet2D(UNet):
    """2D U-Net (Tables 6 and 8); see :class:`UNet` for the parameters."""

    def __init__(self, in_channels: int = 1, out_channels: int = 16, **kwargs):
        super().__init__(2, in_channels, out_channels, **kwargs)


class UNet3D(UNet):
    """3D U-Net (Table 7; group normalisation by default); see :class:`UNet` for the parameters."""

    def __init__(self, in_channels: int = 1, out_channels: int = 16, *, norm: str = "group", **kwargs):
        super().__init__(3, in_channels, out_channels, norm=norm, **kwargs)
