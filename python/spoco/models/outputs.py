"""What a network's output means: embedding channels, an optional foreground logit, and
the pixel coordinates that spatial embeddings add to their offsets."""
from __future__ import annotations

import functools

import torch


def split_output(out: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings (B, D, *spatial), foreground logits (B, *spatial) or None)`` of the
    raw output ``(B, D[+1], *spatial)`` of ``model`` (a :class:`spoco.models.UNet`)."""
    if getattr(model, "foreground", False):
        # One split, not two slices: its backward writes both gradients into one
        # buffer instead of zero-filling a full-size buffer per slice.
        emb, logits = out.split([out.shape[1] - 1, 1], dim=1)
        return emb, logits.squeeze(1)
    return out, None


def add_coordinates(emb: torch.Tensor, scale: float | None, origin=None) -> torch.Tensor:
    """Spatial embeddings: ``emb (B, D, *spatial)`` with ``coordinate / scale`` added to
    channel ``k`` for every spatial axis ``k`` (coordinates in pixels, counted from
    ``origin``, default 0: the position of the array's first pixel in the whole image).
    ``scale=None`` returns ``emb`` unchanged."""
    if scale is None:
        return emb
    origin = None if origin is None else tuple(int(o) for o in origin)
    # Zero-padded to all D channels: one broadcast add, whose backward passes the
    # gradient through (slices and a concatenation would copy it twice); the same
    # coordinates serve every training step, so they are made once.
    return emb + _coordinates(tuple(emb.shape[1:]), float(scale), origin, emb.dtype, emb.device)


@functools.lru_cache(maxsize=16)
def _coordinates(shape: tuple, scale: float, origin, dtype, device) -> torch.Tensor:
    """``(1, D, *spatial)``: ``coordinate / scale`` in channel ``k`` for spatial axis ``k``,
    zeros in the other channels. Made outside inference mode, so that autograd may use it."""
    spatial = shape[1:]
    origin = (0,) * len(spatial) if origin is None else origin
    with torch.inference_mode(False), torch.no_grad():
        axes = [(torch.arange(n, device=device, dtype=dtype) + o) / scale for n, o in zip(spatial, origin)]
        coords = torch.zeros((1,) + shape, device=device, dtype=dtype)
        coords[0, :len(spatial)] = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return coords
