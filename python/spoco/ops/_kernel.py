"""What every loss op shares: argument checks, and the one place that hands tensors to
compiled code (:func:`launch`).

A kernel call fills a ``LossCall`` (``csrc/bindings/loss_call.hpp``) by field name:
tensors become their ``data_ptr()`` (``None`` becomes 0), ``dbl`` comes from the
embeddings' dtype. CPU calls go to ``spoco._core.loss_<kernel>`` with torch's intra-op
thread count; CUDA calls to ``spoco._cuda.loss_<kernel>`` on the tensor's device and
current stream, with scratch memory from torch's allocator.
"""
from __future__ import annotations

import torch

from .. import _core
from .._cuda_loader import cuda_module

#: The most embedding channels the fused kernels support.
MAX_DIM = 64
#: Pixels per block of the CPU pixel_terms pass (the granularity of ``up_active``).
BLOCK_PIXELS = int(_core.loss_block_pixels)


def check_emb(name: str, x: torch.Tensor, ndim: int = 3) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {x.device}")


def check_like(name: str, x: torch.Tensor | None, shape: tuple, dtype, device) -> None:
    """``x`` is None or a tensor of ``shape``, ``dtype`` (None: any) on ``device``."""
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the embeddings are on {device}")


def check_dims(emb: torch.Tensor) -> tuple[int, int, int]:
    """``(B, D, N)`` of embeddings ``emb (B, D, N)`` that the kernels accept."""
    B, D, N = emb.shape
    if B < 1 or N < 1:
        raise ValueError(f"embeddings must have B >= 1 images and N >= 1 pixels, got shape {tuple(emb.shape)}")
    if not 1 <= D <= MAX_DIM:
        raise ValueError(f"the fused kernels support 1 <= D <= {MAX_DIM} embedding channels, got D = {D}")
    return B, D, N


def gradient_buffer(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The buffer a backward kernel writes a gradient of ``shape`` into: uninitialised on
    the CPU, whose kernels write every element, zeros on CUDA, whose kernels accumulate
    with atomics (the one device difference of the gradient buffers)."""
    return like.new_empty(shape) if like.device.type == "cpu" else like.new_zeros(shape)


def contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


def launch(kernel: str, like: torch.Tensor, *, scratch_dims: tuple | None = None, **fields):
    """Run ``loss_<kernel>`` on ``like``'s device with the named ``fields`` of a ``LossCall``.

    Tensors among the fields must be contiguous (their memory is read as laid out);
    ``like`` gives the device and the float type. ``scratch_dims = (op, B, D, N, K)``
    sizes the scratch memory of a CUDA launch (``spoco._cuda.loss_scratch_bytes``).
    Returns what the kernel returns.
    """
    on_cpu = like.device.type == "cpu"
    module = _core if on_cpu else cuda_module()
    call = module.LossCall()
    call.dbl = like.dtype == torch.float64
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            value = value.data_ptr()
        elif value is None:
            value = 0
        setattr(call, name, value)  # an unknown field name raises AttributeError
    if on_cpu:
        call.threads = max(1, torch.get_num_threads())
        return getattr(module, f"loss_{kernel}")(call)
    # CUDA: scratch from torch's allocator (stream-ordered, so freeing it right after the
    # asynchronous launch is safe); deterministic = torch.are_deterministic_algorithms_enabled()
    dev = like.device
    call.deterministic = bool(torch.are_deterministic_algorithms_enabled())
    op, *dims = scratch_dims if scratch_dims is not None else (kernel, 1, 1, 1, 1)
    nbytes = module.loss_scratch_bytes(op, *dims, like.element_size(), call.deterministic)
    with torch.cuda.device(dev):
        scratch = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=dev)
        call.scratch, call.scratch_bytes = scratch.data_ptr(), nbytes
        call.device, call.stream = dev.index, torch.cuda.current_stream(dev).cuda_stream
        return getattr(module, f"loss_{kernel}")(call)
