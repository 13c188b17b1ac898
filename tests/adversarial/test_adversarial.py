"""spoco.adversarial: WGAN-GP critic, its objectives and the object mask crops (appendix A.1)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from spoco.adversarial import (AdversarialTerm, Critic, critic_loss, generator_loss, gradient_penalty,
                               object_mask_patches)
from spoco.data.synthetic import random_instances
from spoco.loss.terms import kernel_sigma2, soft_mask

SIGMA2 = kernel_sigma2(0.5, 0.9)


def _t(seed: int) -> int:
    """A test seed in the range torch generators accept."""
    return seed % 2**63


def _critic(ndim, shape, seed, f_maps=3, levels=2):
    torch.manual_seed(_t(seed))
    return Critic(ndim, shape, f_maps=f_maps, levels=levels).double()


# ----------------------------------------------------------------------------- gradient penalty
@pytest.mark.parametrize("shape", [(8, 10), (4, 8, 6)])
def test_gradient_penalty_equals_per_sample_autograd(seed, shape, torch_single_thread):
    rng = np.random.default_rng(seed)
    critic = _critic(len(shape), shape, seed)
    real = torch.from_numpy((rng.random((5, 1) + shape) > 0.5).astype(np.float64))
    fake = torch.from_numpy(rng.random((5, 1) + shape))
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(_t(seed)))
    # Direct computation: the same ε draws, one sample at a time.
    eps = torch.rand((5,) + (1,) * (len(shape) + 1), generator=torch.Generator().manual_seed(_t(seed)),
                     dtype=torch.float64)
    terms = []
    for i in range(5):
        x = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).requires_grad_(True)
        grad, = torch.autograd.grad(critic(x[None])[0], x, create_graph=True)
        terms.append((torch.sqrt((grad ** 2).sum()) - 1) ** 2)
    direct = torch.stack(terms).mean()
    assert gp.item() == pytest.approx(direct.item(), rel=1e-10), seed
    params = list(critic.parameters())
    # (The dense layer's bias does not change input gradients: no gradient for it.)
    grads = [torch.autograd.grad(v, params, allow_unused=True) for v in (gp, direct)]
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(a is not None for a in grads[0]) == len(params) - 1


def test_gradient_penalty_of_linear_critic_is_closed_form(seed):
    rng = np.random.default_rng(seed)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1)).double()
    real, fake = (torch.from_numpy(rng.random((4, 1, 3, 4))) for _ in range(2))
    w = linear[1].weight.detach()
    expected = (torch.linalg.vector_norm(w) - 1) ** 2  # ∇D = w everywhere
    assert gradient_penalty(linear, real, fake).item() == pytest.approx(expected.item(), rel=1e-12), seed


def test_critic_loss_is_eq_10(seed, torch_single_thread):
    rng = np.random.default_rng(seed)
    critic = _critic(2, (8, 8), seed)
    real, fake = (torch.from_numpy(rng.random((3, 1, 8, 8))) for _ in range(2))
    loss, terms = critic_loss(critic, real, fake, gp_weight=10.0, generator=torch.Generator().manual_seed(_t(seed)))
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(_t(seed)))
    with torch.no_grad():
        w = critic(real).mean() - critic(fake).mean()
    assert loss.item() == pytest.approx((-w + 10 * gp).item(), rel=1e-10)
    assert terms["wasserstein"].item() == pytest.approx(w.item(), rel=1e-10)
    assert terms["gradient_penalty"].item() == pytest.approx(gp.item(), rel=1e-10)


def _discs(rng, n, size=16):
    """Binary discs of random centre and radius (the "real" masks)."""
    yy, xx = np.mgrid[:size, :size]
    c = rng.uniform(5, size - 5, (n, 2))
    r = rng.uniform(3, 5, n)
    return ((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2 <= r[:, None, None] ** 2).astype(np.float32)


def test_critic_separates_sharp_from_soft_masks(seed, torch_single_thread):
    rng = np.random.default_rng(seed)
    torch.manual_seed(_t(seed))
    critic = Critic(2, (16, 16), f_maps=4, levels=2)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))

    def sample(n):
        real = _discs(rng, n)
        fake = 0.7 * ndimage.gaussian_filter(_discs(rng, n), sigma=(0, 1.5, 1.5))  # blurred, never reaching 1
        return torch.from_numpy(real)[:, None], torch.from_numpy(fake.astype(np.float32))[:, None]

    for _ in range(200):
        real, fake = sample(16)
        loss, _ = critic_loss(critic, real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake = sample(64)
    with torch.no_grad():
        d_real, d_fake = critic(real).flatten(), critic(fake).flatten()
    # The share of (real, fake) pairs the critic ranks the right way round (ROC AUC; 0.5
    # untrained): free of a threshold, which the mean of the two means set badly when one
    # class had a few outliers (a perfect ranking scored 0.945 as an accuracy).
    ranked = (d_real[:, None] > d_fake[None, :]).float().mean()
    assert ranked > 0.95, (seed, ranked)
    assert d_real.mean() - d_fake.mean() > 0.5, seed


# ----------------------------------------------------------------------------- object mask crops
def _labels(rng, B, spatial, ignore=0.05):
    labs = [random_instances(spatial, 5, background=0.3, rng=rng) for _ in range(B)]
    lab = np.stack(labs)
    lab[rng.random(lab.shape) < ignore] = -1
    return torch.from_numpy(lab)


def _reference_crops(emb, target, p, sigma2, ignore_index=-1):
    """Full-image soft masks (reference kernel) and truths, cropped (zero padding)."""
    D = emb.shape[1]
    spatial = tuple(emb.shape[2:])
    patch = tuple(p.fake.shape[2:])
    fakes, reals = [], []
    for m in range(p.fake.shape[0]):
        b, k = int(p.image[m]), int(p.label[m])
        e = emb[b].reshape(D, -1).T
        counted = (target[b] != ignore_index).to(emb.dtype)
        full = soft_mask(e, p.anchor[m], sigma2).reshape(spatial) * counted
        truth = (target[b] == k).to(emb.dtype)
        pad = [(q, q) for q in patch]
        sl = tuple(slice(int(o) + q, int(o) + q + s) for o, q, s in zip(p.origin[m], patch, patch))
        fakes.append(torch.nn.functional.pad(full, [v for q in reversed(patch) for v in (q, q)])[sl])
        reals.append(np.pad(truth.numpy(), pad)[sl])
    return torch.stack(fakes)[:, None], torch.from_numpy(np.stack(reals))[:, None]


@pytest.mark.parametrize("spatial, patch", [((11, 13), (8, 20)), ((5, 9, 7), (8, 4, 5))])
def test_crops_equal_cropped_full_image_soft_masks(seed, spatial, patch):
    rng = np.random.default_rng(seed)
    target = _labels(rng, 2, spatial)
    emb = torch.from_numpy(rng.normal(size=(2, 3) + spatial)).requires_grad_(True)
    p = object_mask_patches(emb, target, patch, SIGMA2, generator=torch.Generator().manual_seed(_t(seed)))
    # Every (image, label) object appears once, ordered by label, then image.
    objects = sorted(((b, int(k)) for b in range(2) for k in np.unique(target[b]) if k > 0), key=lambda o: o[::-1])
    assert list(zip(p.image.tolist(), p.label.tolist())) == objects, seed
    fake_ref, real_ref = _reference_crops(emb, target, p, SIGMA2)
    torch.testing.assert_close(p.fake, fake_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p.real, real_ref)
    flat = target.reshape(2, -1)
    coords = np.indices(spatial).reshape(len(spatial), -1)
    for m, (b, k) in enumerate(objects):
        assert flat[b, p.anchor_pixel[m]] == k  # the anchor is a pixel of its object
        torch.testing.assert_close(p.anchor[m], emb[b].reshape(3, -1)[:, p.anchor_pixel[m]])
        centroid = coords[:, (flat[b] == k).numpy()].mean(1)
        np.testing.assert_array_equal(p.origin[m].numpy() + np.array(patch) // 2, np.floor(centroid + 0.5))
    # Gradients to the embeddings (through masks and anchors) agree as well.
    w = torch.from_numpy(rng.normal(size=p.fake.shape))
    g_crop, = torch.autograd.grad((p.fake * w).sum(), emb, retain_graph=True)  # fake_ref shares the anchors
    g_ref, = torch.autograd.grad((fake_ref * w).sum(), emb)
    torch.testing.assert_close(g_crop, g_ref, rtol=1e-10, atol=1e-12)


def test_mean_anchors_and_object_subset(seed):
    rng = np.random.default_rng(seed)
    target = _labels(rng, 3, (12, 12), ignore=0.0)
    emb = torch.from_numpy(rng.normal(size=(3, 2, 12, 12)))
    p = object_mask_patches(emb, target, (8, 8), SIGMA2, anchor="mean", max_objects=4,
                            generator=torch.Generator().manual_seed(_t(seed)))
    n_objects = sum(len(np.unique(t[t > 0])) for t in target.numpy())
    assert p.fake.shape == (min(4, n_objects), 1, 8, 8)
    assert (p.anchor_pixel == -1).all()
    for m in range(p.fake.shape[0]):
        b, k = int(p.image[m]), int(p.label[m])
        mean = emb[b].reshape(2, -1)[:, (target[b] == k).reshape(-1)].mean(1)
        torch.testing.assert_close(p.anchor[m], mean)
    fake_ref, real_ref = _reference_crops(emb, target, p, SIGMA2)
    torch.testing.assert_close(p.fake, fake_ref)
    torch.testing.assert_close(p.real, real_ref)


def test_no_objects_gives_empty_crops_and_zero_term():
    emb = torch.randn(2, 3, 10, 10, requires_grad=True)
    target = torch.zeros(2, 10, 10, dtype=torch.int64)
    p = object_mask_patches(emb, target, (8, 8), SIGMA2)
    assert p.fake.shape == (0, 1, 8, 8) and p.real.shape == (0, 1, 8, 8)
    term = AdversarialTerm(2, patch_shape=(8, 8), sigma2=SIGMA2, warmup=0, f_maps=2, levels=2)
    loss, logged = term(emb, target, iteration=0)
    assert loss.item() == 0 and loss.requires_grad and math.isnan(logged["wasserstein"])


# ----------------------------------------------------------------------------- generator term
def test_generator_loss_reaches_embeddings_not_critic(seed, torch_single_thread):
    rng = np.random.default_rng(seed)
    torch.manual_seed(_t(seed))
    net = torch.nn.Conv2d(1, 4, 3, padding=1)
    target = _labels(rng, 2, (16, 16), ignore=0.0)
    image = torch.from_numpy(rng.normal(size=(2, 1, 16, 16)).astype(np.float32))
    term = AdversarialTerm(2, patch_shape=(8, 8), sigma2=SIGMA2, warmup=3, critic_steps=2, f_maps=2, levels=2,
                           seed=_t(seed))
    before = term(net(image), target, iteration=2)[0]  # still warming up: nothing
    assert before.item() == 0 and all(p.grad is None for p in term.critic.parameters())
    critic_before = {k: v.clone() for k, v in term.critic.state_dict().items()}
    loss, logged = term(net(image), target, iteration=3)
    # The critic stepped (n_critic updates) and left gradients from its last update ...
    assert any(not torch.equal(v, critic_before[k]) for k, v in term.critic.state_dict().items())
    critic_grads = [p.grad.clone() for p in term.critic.parameters()]
    assert np.isfinite(logged["wasserstein"]) and logged["wgan"] != 0
    loss.backward()
    # ... which the generator loss does not touch, while the embedding network gets one.
    for p, g in zip(term.critic.parameters(), critic_grads):
        assert torch.equal(p.grad, g) and p.requires_grad
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(0.1 * logged["wgan"])


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ndim=4, patch_shape=(8, 8)), ValueError, "ndim"),
    (dict(ndim=2, patch_shape=(8, 4)), ValueError, "patch_shape must be 2 integers >= 8"),
    (dict(ndim=2, patch_shape=(8, 8, 8)), ValueError, "patch_shape"),
    (dict(ndim=2, patch_shape=(8, 8), f_maps=0), ValueError, "f_maps"),
    (dict(ndim=3, patch_shape=(8, 8, 8), negative_slope=2.0), ValueError, "negative_slope"),
])
def test_bad_critic_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Critic(**kwargs)


def test_bad_critic_and_objective_inputs():
    critic = Critic(2, (8, 8), f_maps=2, levels=2)
    with pytest.raises(ValueError, match=r"masks must have shape \(M, 1, 8, 8\)"):
        critic(torch.zeros(3, 1, 8, 9))
    with pytest.raises(TypeError, match="masks must be a floating point"):
        critic(torch.zeros(3, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, torch.zeros(3, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="no masks"):
        critic_loss(critic, torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="gp_weight"):
        critic_loss(critic, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), gp_weight=-1)
    with pytest.raises(TypeError, match="fake must be a floating point"):
        generator_loss(critic, torch.zeros(1, 1, 8, 8, dtype=torch.int32))


@pytest.mark.parametrize("change, error, match", [
    (dict(emb=torch.zeros(2, 3, 10, dtype=torch.float32)), ValueError, "emb must have shape"),
    (dict(emb=torch.zeros(2, 3, 10, 10, dtype=torch.int64)), TypeError, "emb must be a floating point"),
    (dict(target=torch.zeros(2, 10, 10)), TypeError, "target must be an integer"),
    (dict(target=torch.zeros(2, 10, 9, dtype=torch.int64)), ValueError, "target must have shape"),
    (dict(patch_shape=(8,)), ValueError, "patch_shape must be 2 positive integers"),
    (dict(patch_shape=(8, 0)), ValueError, "patch_shape"),
    (dict(sigma2=0.0), ValueError, "sigma2"),
    (dict(anchor="median"), ValueError, "anchor"),
    (dict(max_objects=0), ValueError, "max_objects"),
    (dict(generator=1), TypeError, "generator"),
])
def test_bad_mask_inputs(change, error, match):
    args = dict(emb=torch.zeros(2, 3, 10, 10), target=torch.zeros(2, 10, 10, dtype=torch.int64),
                patch_shape=(8, 8), sigma2=SIGMA2)
    args.update(change)
    kw = {k: args.pop(k) for k in ("anchor", "max_objects", "generator") if k in args}
    with pytest.raises(error, match=match):
        object_mask_patches(args["emb"], args["target"], args["patch_shape"], args["sigma2"], **kw)
