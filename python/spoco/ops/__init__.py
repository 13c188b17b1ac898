"""Custom torch ops wrapping spoco's C++/CUDA kernels (the only place that hands
raw pointers to compiled code), the building blocks of the default SPOCOLoss path
(:mod:`spoco.ops.loss`, :mod:`spoco.ops.anchors`), the critic's object mask crops
(:mod:`spoco.ops.object_masks`), and :mod:`spoco.ops.reference`,
the pure-PyTorch oracle of each op."""
from . import anchors, loss, object_masks, reference
from .affinities import embedding_affinities

__all__ = ["anchors", "embedding_affinities", "loss", "object_masks", "reference"]
