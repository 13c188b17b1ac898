"""Argument checks shared by the public API.

Every error names the argument and says what was expected, so that nothing
malformed ever reaches the compiled core.
"""
from __future__ import annotations

import numbers
import os
import sys

import numpy as np


def is_tensor(x) -> bool:
    """Whether x is a torch tensor. Looked up in ``sys.modules``: a tensor cannot exist
    before torch is imported, and numpy-only callers (clustering, metrics) never import it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x, name: str) -> np.ndarray:
    """numpy view/copy of an array-like (torch tensors are moved to the CPU;
    bfloat16/float16 tensors become float32, which numpy lacks or computes slowly)."""
    if is_tensor(x):
        import torch

        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from err


def float_array(x, name: str, *, ndim=None, dtype=None) -> np.ndarray:
    """C-contiguous float32/float64 array with finite values."""
    a = as_numpy(x, name)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    if ndim is not None and a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(a)


def mask_array(mask, shape: tuple, name: str = "mask") -> np.ndarray | None:
    """uint8 foreground mask of the given spatial shape (nonzero = foreground)."""
    if mask is None:
        return None
    m = as_numpy(mask, name)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {m.shape}")
    if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
        raise TypeError(f"{name} must be a boolean or integer array, got dtype {m.dtype}")
    return np.ascontiguousarray(m != 0, dtype=np.uint8)


def offsets_array(offsets, ndim: int, name: str = "offsets") -> np.ndarray:
    """(C, ndim) int64 array of nonzero offsets."""
    try:
        o = np.asarray(offsets)
    except Exception as err:
        raise TypeError(f"{name} must be a sequence of integer offsets") from err
    if o.ndim != 2 or o.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty list of offsets of length {ndim}, got shape {o.shape}")
    if o.shape[1] != ndim:
        raise ValueError(f"each of {name} must have length {ndim} (the number of spatial axes), got {o.shape[1]}")
    if not np.issubdtype(o.dtype, np.integer):
        if not (np.issubdtype(o.dtype, np.floating) and np.all(o == np.round(o))):
            raise TypeError(f"{name} must be integers, got dtype {o.dtype}")
    o = o.astype(np.int64)
    zero = np.flatnonzero(~o.any(axis=1))
    if zero.size:
        raise ValueError(f"{name}[{zero[0]}] is the zero offset; every offset must be nonzero")
    return np.ascontiguousarray(o)


def is_int(x) -> bool:
    """A true integer (bools are not accepted as numbers)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def int_arg(x, name: str, low: int | None = None, high: int | None = None) -> int:
    """An integer argument in [low, high]."""
    if not is_int(x):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {x}")
    return int(x)


def positive_int_tuple(x, length: int, name: str) -> tuple:
    if is_int(x):
        x = (int(x),) * length
    try:
        t = tuple(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer or a sequence of {length} integers, got {x!r}") from None
    if len(t) != length:
        raise ValueError(f"{name} must have length {length}, got {len(t)}")
    if not all(is_int(v) and v >= 1 for v in t):
        raise ValueError(f"{name} must be positive integers, got {t}")
    return tuple(int(v) for v in t)


#: The most threads any function takes. Every OpenMP thread reserves a stack; asking
#: for 10**5 of them makes the process run out of memory instead of running faster.
MAX_THREADS = 1024


def threads_arg(threads) -> int:
    if threads is None:
        return 0
    if not is_int(threads) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}] or None, got {threads!r}")
    return int(threads)


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, something that needs more bytes than the machine has
    (a hostile header or argument could otherwise ask for petabytes)."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise ValueError(f"{what} needs {nbytes / 2**30:.4g} GiB, more than this machine's memory "
                         f"({total / 2**30:.4g} GiB)")


def positive_float(x, name: str) -> float:
    if not isinstance(x, numbers.Real) or not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    return float(x)
