"""Pure-PyTorch references of every spoco op: written to read like the paper's
equations, slow, and the oracle the fast kernels are tested against."""
from .affinities import embedding_affinities

__all__ = ["embedding_affinities"]
