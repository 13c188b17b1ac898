"""Custom torch ops wrapping spoco's C++/CUDA kernels (the only place that hands
raw pointers to compiled code), and :mod:`spoco.ops.reference`, the pure-PyTorch
oracle of each op."""
from . import reference
from .affinities import embedding_affinities

__all__ = ["embedding_affinities", "reference"]
