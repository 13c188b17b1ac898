"""Import of the optional CUDA module ``spoco._cuda``."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from . import _cuda
    except ImportError as err:
        return None, str(err)
    return _cuda, None


def has_cuda_kernels() -> bool:
    """Whether spoco was built with its CUDA kernels (wheels are not: a source build with
    nvcc is); callers fall back to PyTorch or the CPU without them."""
    return _load()[0] is not None


def cuda_module():
    """The ``spoco._cuda`` module; a clear error if it was not built."""
    module, err = _load()
    if module is None:
        raise RuntimeError("spoco was built without CUDA kernels (spoco._cuda is missing: "
                           f"{err}); rebuild with nvcc available and SPOCO_CUDA=ON")
    return module
