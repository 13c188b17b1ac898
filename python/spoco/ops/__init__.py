"""spoco's torch custom ops, one per file: the op, its fake, its autograd and its CPU/CUDA
dispatch in one place; the only code that hands tensors to compiled kernels
(through :func:`._kernel.launch`).

Loss reductions (used by :mod:`spoco.loss.fused_sums`):

- :mod:`.cluster_slots`: labels to per-image cluster slots, instance anchors, input checks
- :mod:`.consistency_anchors`: the anchors of Eq. 7
- :mod:`.pixel_terms`: every per-pixel sum of a loss call and its fused backward
- :mod:`.segment_sum`, :mod:`.pull_sums`, :mod:`.anchor_pixel_sums`: single terms (the
  CUDA implementation of ``pixel_terms`` is composed of them)

Clustering: :mod:`.embedding_affinities` (Eq. 12). :mod:`.reference` holds the
pure-PyTorch oracle of the affinities (the loss oracle is :mod:`spoco.loss.reference`).
"""
from .anchor_pixel_sums import anchor_pixel_sums, anchor_pixel_sums_backward
from .cluster_slots import cluster_slots
from .consistency_anchors import consistency_anchors
from .embedding_affinities import embedding_affinities
from .pixel_terms import pixel_terms, pixel_terms_backward
from .pull_sums import pull_sums, pull_sums_backward
from .segment_sum import segment_sum, segment_sum_backward

__all__ = ["anchor_pixel_sums", "anchor_pixel_sums_backward", "cluster_slots", "consistency_anchors",
           "embedding_affinities", "pixel_terms", "pixel_terms_backward", "pull_sums", "pull_sums_backward",
           "segment_sum", "segment_sum_backward"]
