"""The network of an exported package: the U-Net followed by what :func:`spoco.predict.predict`
adds to its output, in one TorchScript-compilable module.

``spoco predict`` runs the U-Net and then, outside it, adds the pixel coordinates to the
spatial embedding channels and turns the foreground logit into a probability
(:func:`spoco.predict._embeddings`). A bioimage.io consumer only runs the network, so
:class:`EmbeddingNetwork` does both inside ``forward``. Its parameters and buffers are the
U-Net's under the same names: a U-Net state dict loads into it and back.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from ..models import UNet


class EmbeddingNetwork(nn.Module):
    """Normalised image ``(B, C, *spatial)`` → ``(B, D[+1], *spatial)`` float32: the embeddings
    of :func:`spoco.predict.predict` (coordinates ``/ spatial_scale`` added to the first
    ``ndim`` channels, counted from the input's first pixel), and with a foreground head the
    probability ``min(1, sigmoid(logit) / label_rate)`` as the last channel.

    Takes the keyword arguments of :class:`spoco.models.UNet` (its ``config``, the
    ``model_config`` of a checkpoint), or an existing U-Net as ``unet=`` whose modules it
    shares. ``forward`` repeats :meth:`UNet.forward` in a form TorchScript compiles
    (the export test checks that both give the same output).
    """

    def __init__(self, unet: UNet | None = None, **config):
        super().__init__()
        unet = UNet(**config) if unet is None else unet
        self.ndim, self.divisor, self.foreground = unet.ndim, unet.divisor, unet.foreground
        self.has_scale = unet.spatial_scale is not None
        self.scale = float(unet.spatial_scale or 1.0)
        self.config = dict(unet.config)
        self.encoders, self.decoders, self.head = unet.encoders, unet.decoders, unet.head
        # Always present (1 without a head) so that forward compiles the same way for both.
        self.register_buffer("label_rate", unet.label_rate if self.foreground else torch.ones(()),
                             persistent=self.foreground)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's raw output ``(B, D[+1], *spatial)`` (as :meth:`UNet.forward`)."""
        spatial: List[int] = x.shape[2:]
        pad = [(-s) % self.divisor for s in spatial]
        if max(pad) > 0:
            reflect = True
            for p, s in zip(pad, spatial):
                reflect = reflect and p < s
            flat: List[int] = []
            for p in pad[::-1]:  # F.pad: last axis first, (before, after) each
                flat += [0, p]
            x = F.pad(x, flat, mode="reflect" if reflect else "replicate")
        skips: List[torch.Tensor] = []
        level = 0
        for encoder in self.encoders:
            if level > 0:
                x = F.max_pool2d(x, 2) if self.ndim == 2 else F.max_pool3d(x, 2)
            x = encoder(x)
            skips.append(x)
            level += 1
        level = len(skips) - 2
        for decoder in self.decoders:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = decoder(torch.cat([skips[level], x], dim=1))
            level -= 1
        x = self.head(x)
        for axis, s in enumerate(spatial):
            x = x.narrow(axis + 2, 0, s)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x).float()
        emb = out[:, :-1] if self.foreground else out
        if self.has_scale:
            channels: List[torch.Tensor] = []
            for axis in range(emb.shape[1]):
                channel = emb[:, axis]
                if axis < self.ndim:  # coordinate along spatial axis `axis`, broadcast over the others
                    shape = [1] * (self.ndim + 1)
                    shape[axis + 1] = emb.shape[axis + 2]
                    coords = torch.arange(emb.shape[axis + 2], dtype=emb.dtype, device=emb.device) / self.scale
                    channel = channel + coords.view(shape)
                channels.append(channel)
            emb = torch.stack(channels, dim=1)
        if self.foreground:
            prob = (torch.sigmoid(out[:, -1]) / self.label_rate.clamp_min(1e-6)).clamp(max=1.0)
            emb = torch.cat([emb, prob[:, None]], dim=1)
        return emb
