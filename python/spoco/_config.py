"""``spoco.show_config()``: what this installation was built with."""
from __future__ import annotations

import platform

from . import __version__, _core
from ._cuda_loader import _load


def config() -> dict:
    """Build and runtime facts as a dict (see :func:`show_config`)."""
    cuda, err = _load()
    info = {
        "spoco": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "_core": getattr(_core, "__version__", "built"),
        "openmp": bool(_core.has_openmp),
        "threads": _core.max_threads(),
        "_cuda": "built" if cuda is not None else f"not built ({err})",
    }
    if cuda is not None:
        info["cuda_archs"] = getattr(cuda, "archs", "?")
        v = cuda.cuda_runtime_version
        info["cuda_runtime"] = f"{v // 1000}.{(v % 1000) // 10} (static)"
        info["cuda_devices_seen_by_spoco"] = cuda.device_count()
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = "not installed"
    return info


def show_config() -> None:
    """Print spoco's version, compiled modules, CUDA archs, threads and torch/device."""
    info = config()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}} : {value}")
