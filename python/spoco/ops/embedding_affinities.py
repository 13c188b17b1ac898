"""``spoco::embedding_affinities``: Eq. 12 affinities as a torch custom op.

CPU tensors go to ``spoco._core``, CUDA tensors to ``spoco._cuda``. The op has no
gradient: affinities feed the (non-differentiable) mutex watershed.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _core
from .._cuda_loader import cuda_module


def _check(emb: torch.Tensor, offsets: list[int], ndim: int) -> None:
    if emb.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"emb must be float32 or float64, got {emb.dtype}")
    if emb.dim() != ndim + 1:
        raise ValueError(f"emb must have shape (D, *spatial) with {ndim} spatial axes, got {tuple(emb.shape)}")
    if len(offsets) == 0 or len(offsets) % ndim:
        raise ValueError("offsets must hold C * ndim integers")


@torch.library.custom_op("spoco::embedding_affinities", mutates_args=())
def embedding_affinities(emb: torch.Tensor, offsets: list[int], ndim: int, n_attractive: int,
                         delta_d: float) -> torch.Tensor:
    """Eq. 12 affinities ``(C, *spatial)`` of ``emb (D, *spatial)``.

    ``offsets`` is the flattened ``(C, ndim)`` offset list. See
    :func:`spoco.ops.reference.embedding_affinities` for the definition.
    """
    _check(emb, offsets, ndim)
    emb = emb.contiguous()
    spatial = tuple(emb.shape[1:])
    C = len(offsets) // ndim
    shape3 = (1,) * (3 - ndim) + spatial
    off3 = np.zeros((C, 3), dtype=np.int64)
    size = np.asarray(spatial, dtype=np.int64)  # |offset| >= size links nothing: clip (no overflow)
    off3[:, 3 - ndim:] = np.clip(np.asarray(offsets, dtype=np.int64).reshape(C, ndim), -size, size)
    if emb.device.type == "cpu":
        out = _core.embedding_affinities(emb.reshape(emb.shape[0], -1).numpy(), shape3, off3, n_attractive,
                                         delta_d, 0)
        return torch.from_numpy(out).reshape((C,) + spatial)
    if emb.device.type != "cuda":
        raise ValueError(f"emb must be on the CPU or a CUDA device, got {emb.device}")
    cuda = cuda_module()
    out = torch.empty((C,) + spatial, dtype=emb.dtype, device=emb.device)
    with torch.cuda.device(emb.device):
        stream = torch.cuda.current_stream(emb.device).cuda_stream
        cuda.embedding_affinities(emb_ptr=emb.data_ptr(), out_ptr=out.data_ptr(),
                                  dtype=str(emb.dtype).removeprefix("torch."), D=emb.shape[0], shape=shape3,
                                  offsets=off3.ravel().tolist(), n_attractive=n_attractive, delta_d=delta_d,
                                  device=emb.device.index, stream=stream)  # by name (the binding's py::arg)
    return out


@embedding_affinities.register_fake
def _(emb, offsets, ndim, n_attractive, delta_d):
    _check(emb, offsets, ndim)
    return emb.new_empty((len(offsets) // ndim,) + tuple(emb.shape[1:]))
