"""WGAN-GP objectives of appendix A.1 (Eq. 10–11), after Gulrajani et al. (2017)."""
from __future__ import annotations

import contextlib
import numbers

import torch
from torch import nn


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``E[(‖∇_x̂ D(x̂)‖₂ − 1)²]`` over interpolates ``x̂ = ε·real + (1 − ε)·fake``, one
    ``ε ~ U[0, 1)`` per sample (the bracket of Eq. 10, without its weight λ).

    Parameters
    ----------
    critic : module mapping ``(M, *shape)`` to ``(M,)`` (or ``(M, 1)``) scores
    real, fake : (M, *shape) paired samples (fake is used without its gradient)
    generator : torch.Generator, optional; source of ε

    Returns
    -------
    Scalar, differentiable in the critic's parameters (the input gradient is taken
    with ``create_graph=True``).
    """
    _check_pair(real, fake)
    dev = generator.device if generator is not None else real.device
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator, dtype=real.dtype, device=dev)
    eps = eps.to(real.device)
    x = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    # Scores of different samples do not interact, so the gradient of their sum holds
    # each sample's own input gradient.
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, gp_weight: float = 10.0,
                generator: torch.Generator | None = None):
    """Critic objective (Eq. 10): ``E[D(fake)] − E[D(real)] + λ·GP``, to minimise.

    ``fake`` is detached: the critic step does not train the embedding network.

    Returns
    -------
    loss : scalar
    terms : dict of detached scalars ``wasserstein`` (``E[D(real)] − E[D(fake)]``, the
        critic's estimate of the Wasserstein distance) and ``gradient_penalty``
    """
    _check_pair(real, fake)
    if not isinstance(gp_weight, numbers.Real) or isinstance(gp_weight, bool) or not gp_weight >= 0:
        raise ValueError(f"gp_weight must be a number >= 0, got {gp_weight!r}")
    wasserstein = critic(real.detach()).mean() - critic(fake.detach()).mean()
    gp = gradient_penalty(critic, real, fake, generator=generator)
    loss = -wasserstein + gp_weight * gp
    return loss, {"wasserstein": wasserstein.detach(), "gradient_penalty": gp.detach()}


def generator_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """``L_wgan = −E[D(fake)]`` (Eq. 11).

    The critic's parameters are frozen while the graph is built, so backpropagating
    this loss reaches ``fake`` (and the embedding network behind it) but leaves the
    critic's ``.grad`` untouched.
    """
    if not isinstance(fake, torch.Tensor) or not fake.is_floating_point():
        raise TypeError(f"fake must be a floating point torch.Tensor, got {getattr(fake, 'dtype', type(fake))}")
    if fake.shape[0] == 0:
        raise ValueError("fake holds no masks (M = 0)")
    with frozen(critic):
        return -critic(fake).mean()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Temporarily set ``requires_grad=False`` on the parameters of ``module``."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def _check_pair(real, fake) -> None:
    for name, t in (("real", real), ("fake", fake)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape (paired masks), got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if real.shape[0] == 0:
        raise ValueError("real and fake hold no masks (M = 0)")
    if real.device != fake.device:
        raise ValueError(f"real is on {real.device} but fake is on {fake.device}")
