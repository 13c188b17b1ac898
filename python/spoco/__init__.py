"""spoco: instance segmentation with pixel embeddings trained from sparse object
annotations (Wolny et al., CVPR 2022).

Names are imported on first use, so ``import spoco`` and ``import spoco.metrics`` or
``spoco.clustering`` do not load torch; ``spoco.SPOCOLoss`` and ``spoco.EMANet`` do.
"""
import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute or None for the module itself)
_LAZY = {
    "EMANet": (".ema", "EMANet"),
    "SPOCOLoss": (".loss", "SPOCOLoss"),
    "cluster": (".clustering", "cluster"),
    "cluster_blockwise": (".clustering", "cluster_blockwise"),
    "show_config": ("._config", "show_config"),
    "adversarial": (".adversarial", None),
    "clustering": (".clustering", None),
    "data": (".data", None),
    "loss": (".loss", None),
    "metrics": (".metrics", None),
    "models": (".models", None),
    "ops": (".ops", None),
    "training": (".training", None),
}

__all__ = ["EMANet", "SPOCOLoss", "__version__", "adversarial", "cluster", "cluster_blockwise", "clustering", "data",
           "loss", "metrics", "models", "ops", "show_config", "training"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'spoco' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
