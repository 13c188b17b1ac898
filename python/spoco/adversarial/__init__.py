"""Adversarial training of the embedding network (appendix A.1): a WGAN-GP critic
learns to tell the soft object masks of the differentiable instance selection
(Eq. 3) from ground-truth masks, and the embedding network is trained with
``L_SO + ζ·L_wgan`` (or ``L_SSO + ζ·L_wgan``) to fool it."""
from .object_masks import ObjectPatches, object_mask_patches
from .critic import Critic
from .term import PAPER_PATCH, AdversarialTerm
from .wgan import critic_loss, generator_loss, gradient_penalty

__all__ = ["AdversarialTerm", "Critic", "ObjectPatches", "PAPER_PATCH", "critic_loss", "generator_loss",
           "gradient_penalty", "object_mask_patches"]
