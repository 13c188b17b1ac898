"""The adversarial term of a training step: critic updates and ``ζ·L_wgan``."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .object_masks import object_mask_patches
from .critic import Critic
from .wgan import critic_loss, generator_loss

#: Critic input crop of the paper (Table 9: K × M × M with K = 40, M = 64) per dimensionality.
PAPER_PATCH = {2: (64, 64), 3: (40, 64, 64)}


class AdversarialTerm:
    """Owns the critic and its Adam optimiser; called once per embedding step.

    ``term(f, target, iteration)`` returns ``ζ·L_wgan`` (a scalar with a graph to ``f``)
    and the logged values. Before ``warmup`` iterations it returns 0 and does nothing
    else (the warm-up trains the embedding network alone, as the authors' code does).
    From then on every call first takes ``critic_steps`` (n_critic) critic updates on
    the detached masks of the current batch (fresh anchors and interpolation factors
    each update), then computes ``L_wgan`` on masks with gradients.

    Parameters
    ----------
    ndim : 2 or 3
    patch_shape : ndim ints, crop around each object (critic input)
    sigma2 : float, the instance term's σ² (:attr:`spoco.SPOCOLoss.sigma2`)
    anchor : {"random", "mean"}, the instance term's anchor rule
    ignore_index : int
    weight : float, ζ
    critic_steps : int, n_critic
    gp_weight : float, λ of the gradient penalty
    lr, betas : critic Adam settings (paper: 1e-4, (0.5, 0.9))
    warmup : int, iterations before the term (and critic training) starts
    max_objects : int, most objects per step given to the critic (random subset)
    f_maps, levels : critic width and depth (paper: 64, 4)
    device : torch.device
    seed : int, seeds the anchor / subset / interpolation draws
    """

    def __init__(self, ndim: int, *, patch_shape, sigma2: float, anchor: str = "random", ignore_index: int = -1,
                 weight: float = 0.1, critic_steps: int = 5, gp_weight: float = 10.0, lr: float = 1e-4,
                 betas=(0.5, 0.9), warmup: int = 50_000, max_objects: int = 32, f_maps: int = 64, levels: int = 4,
                 device=None, seed: int = 0):
        self.patch_shape, self.sigma2, self.anchor = tuple(patch_shape), float(sigma2), anchor
        self.ignore_index, self.weight, self.gp_weight = int(ignore_index), float(weight), float(gp_weight)
        self.critic_steps, self.warmup, self.max_objects = int(critic_steps), int(warmup), int(max_objects)
        device = torch.device(device or "cpu")
        self.critic = Critic(ndim, self.patch_shape, f_maps=f_maps, levels=levels).to(device)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=tuple(betas))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, f: torch.Tensor, target: torch.Tensor, iteration: int):
        """``(ζ·L_wgan, logged)`` for embeddings ``f (B, D, *spatial)`` and labels ``target``."""
        logged = {"wgan": 0.0, "critic": math.nan, "wasserstein": math.nan, "gradient_penalty": math.nan}
        zero = f.reshape(-1)[:1].sum() * 0  # keeps a graph to f when there is nothing to add
        if iteration < self.warmup:
            return zero, logged
        logged.update(self.train_critic(f.detach(), target))
        fake = self._patches(f, target).fake
        if fake.shape[0] == 0:
            return zero, logged
        wgan = generator_loss(self.critic, fake)
        logged["wgan"] = float(wgan.detach())
        return self.weight * wgan, logged

    def train_critic(self, f: torch.Tensor, target: torch.Tensor) -> dict:
        """n_critic updates of the critic on the masks of ``f`` (no gradient to f).
        Returns the last update's ``critic`` loss, ``wasserstein`` and ``gradient_penalty``."""
        out = {}
        for _ in range(self.critic_steps):
            p = self._patches(f.detach(), target)
            self.optimizer.zero_grad(set_to_none=True)
            if p.fake.shape[0] > 0:
                loss, terms = critic_loss(self.critic, p.real, p.fake, gp_weight=self.gp_weight,
                                          generator=self.generator)
                loss.backward()
                out = {"critic": float(loss.detach()), **{k: float(v) for k, v in terms.items()}}
            if _all_reduce_grads(self.critic):  # every process joins, with or without objects
                self.optimizer.step()
        return out

    def _patches(self, f, target):
        return object_mask_patches(f, target, self.patch_shape, self.sigma2, anchor=self.anchor,
                                   ignore_index=self.ignore_index, max_objects=self.max_objects,
                                   generator=self.generator)

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())


def _all_reduce_grads(module) -> bool:
    """Average the gradients over processes (a no-op in a single process); True when
    any process has a gradient, i.e. an optimiser step is due."""
    params = list(module.parameters())
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return any(p.grad is not None for p in params)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    has = torch.tensor([float(any(p.grad is not None for p in params))], device=flat.device)
    dist.all_reduce(flat)
    dist.all_reduce(has)
    if has.item() == 0:
        return False
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return True
