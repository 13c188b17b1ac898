"""Sharing a trained network: bioimage.io model packages.

:func:`export_bioimageio` writes a checkpoint of ``spoco train`` as a bioimage.io model
package (model spec 0.5: rdf.yaml, TorchScript and state-dict weights, test tensors, README,
cover; needs the ``export`` extra). :func:`load_package` reads such a package back as the
U-Net and training configuration that ``spoco predict`` uses, without bioimageio.

Names load on first use, so importing this package loads neither torch nor bioimageio.
"""
from __future__ import annotations

_LAZY = {"export_bioimageio": ".package", "load_package": ".load", "is_package": ".load"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
