"""What a network's output means: embedding channels, an optional foreground logit, and
the pixel coordinates that spatial embeddings add to their offsets."""
from __future__ import annotations

import torch


def split_output(out: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings (B, D, *spatial), foreground logits (B, *spatial) or None)`` of the
    raw output ``(B, D[+1], *spatial)`` of ``model`` (a :class:`spoco.models.UNet`)."""
    if getattr(model, "foreground", False):
        return out[:, :-1], out[:, -1]
    return out, None


def add_coordinates(emb: torch.Tensor, scale: float | None, origin=None) -> torch.Tensor:
    """Spatial embeddings: ``emb (B, D, *spatial)`` with ``coordinate / scale`` added to
    channel ``k`` for every spatial axis ``k`` (coordinates in pixels, counted from
    ``origin``, default 0: the position of the array's first pixel in the whole image).
    ``scale=None`` returns ``emb`` unchanged."""
    if scale is None:
        return emb
    spatial = emb.shape[2:]
    origin = (0,) * len(spatial) if origin is None else tuple(int(o) for o in origin)
    axes = [(torch.arange(n, device=emb.device, dtype=emb.dtype) + o) / scale for n, o in zip(spatial, origin)]
    grids = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack(grids)[None]  # (1, ndim, *spatial)
    ndim = len(spatial)
    return torch.cat([emb[:, :ndim] + coords, emb[:, ndim:]], dim=1)
