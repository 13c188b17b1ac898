"""The WGAN-GP critic of the paper's Table 9 (appendix A.1)."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn


class CriticBlock(nn.Sequential):
    """Two (3×3[×3] convolution → LeakyReLU) layers: the paper's ConvBlock without
    normalisation (batch statistics would couple the samples of a batch, which the
    per-sample gradient penalty of WGAN-GP assumes independent)."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, negative_slope: float):
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        super().__init__(conv(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(negative_slope),
                         conv(out_channels, out_channels, 3, padding=1), nn.LeakyReLU(negative_slope))


class Critic(nn.Module):
    """Critic D of WGAN-GP (Table 9): maps object masks ``(M, 1, *patch_shape)`` with
    values in [0, 1] to one unbounded score per mask, ``(M,)``.

    ``levels`` CriticBlocks with ``f_maps · 2^l`` channels, separated by 2× max
    pooling, then a dense layer to 1. Table 9 (3D, ``patch_shape = (40, 64, 64)``,
    ``f_maps = 64``, 4 levels) lists an "Upsample 2×2" after the last block; nearest
    upsampling followed by a dense layer is itself a dense layer on the features before
    the upsampling (each weight is the sum of the weights of its copies), so it is
    left out.

    Parameters
    ----------
    ndim : 2 or 3
    patch_shape : ndim ints, the mask crop shape; each at least ``2**(levels - 1)``
    f_maps : int, channels of the first block (paper: 64)
    levels : int, number of blocks (paper: 4)
    negative_slope : float, LeakyReLU slope α (paper: 0.01)
    """

    def __init__(self, ndim: int, patch_shape, *, f_maps: int = 64, levels: int = 4, negative_slope: float = 0.01):
        super().__init__()
        if ndim not in (2, 3) or isinstance(ndim, bool):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        for name, value in (("f_maps", f_maps), ("levels", levels)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(negative_slope, numbers.Real) or not 0 <= negative_slope < 1:
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope!r}")
        smallest = 2 ** (levels - 1)
        try:
            shape = tuple(int(p) for p in patch_shape)
            ok = len(shape) == ndim and all(p == q and p >= smallest for p, q in zip(shape, patch_shape))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"patch_shape must be {ndim} integers >= {smallest} (2**(levels - 1) for "
                             f"{levels} levels), got {patch_shape!r}")
        self.ndim, self.patch_shape = ndim, shape
        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        layers, channels, size = [], 1, shape
        for level in range(levels):
            if level > 0:
                layers.append(pool(2))
                size = tuple(s // 2 for s in size)
            layers.append(CriticBlock(ndim, channels, f_maps * 2 ** level, negative_slope))
            channels = f_maps * 2 ** level
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(channels * math.prod(size), 1)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        expected = (1,) + self.patch_shape
        if not isinstance(masks, torch.Tensor) or not masks.is_floating_point():
            raise TypeError(f"masks must be a floating point torch.Tensor, got "
                            f"{getattr(masks, 'dtype', type(masks).__name__)}")
        if masks.dim() != self.ndim + 2 or tuple(masks.shape[1:]) != expected:
            raise ValueError(f"masks must have shape (M, {', '.join(map(str, expected))}), got {tuple(masks.shape)}")
        return self.dense(self.features(masks).flatten(1))[:, 0]
