"""Pure-PyTorch references of every spoco op: written to read like the paper's
equations, slow, and the oracle the fast kernels are tested against."""
from .affinities import embedding_affinities
from .loss import consistency_anchors, dice_loss, kernel_sigma2, soft_mask, spoco_loss

__all__ = ["consistency_anchors", "dice_loss", "embedding_affinities", "kernel_sigma2", "soft_mask", "spoco_loss"]
