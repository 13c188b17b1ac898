"""Pure-PyTorch oracle of the Eq. 12 affinities: written to read like the paper, slow, and
what :func:`spoco.ops.embedding_affinities` is tested against. The loss oracle is
:mod:`spoco.loss.reference`."""
from .affinities import embedding_affinities

__all__ = ["embedding_affinities"]
