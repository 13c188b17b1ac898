"""Multi-process training through ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m spoco train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK;
NCCL is used on GPUs, gloo on CPUs. Rank 0 validates, logs and writes checkpoints.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment variables.

    Returns ``(rank, world_size, device)``; without those variables (a plain run)
    ``(0, 1, device)`` and no process group. On CUDA each process takes the GPU of
    its LOCAL_RANK.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
