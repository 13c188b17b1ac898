"""How many CPU threads spoco uses, and how they wait.

:func:`available_cpus` counts the CPUs this process may actually run on: the CPU
affinity mask (``taskset``, batch schedulers) and a cgroup CPU quota (containers,
``docker --cpus``), not the machine's core count. :func:`set_threads` gives PyTorch's
intra-op pool and spoco's C++ kernels that many threads (or the number asked for).

Waiting policy: letting idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) was
measured and made a training step slower, alone and beside a busy process
(``benchmarks/bench_threads.py``), so spoco leaves the policy alone. Beside another
heavy process, one thread per free core (``--threads 1`` on 2 cores) is fastest.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process can use: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads (default: :func:`available_cpus`, at most 1024) in
    PyTorch and in spoco's kernels; returns the number set."""
    import torch

    from ._validation import MAX_THREADS

    if threads is None:
        threads = min(available_cpus(), MAX_THREADS)
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    torch.set_num_threads(threads)
    from . import _core

    _core.set_max_threads(threads)
    return threads
