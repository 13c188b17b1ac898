"""EMANet: the momentum update, buffer modes, no gradients, state_dict, DDP / compile unwrapping."""
import copy

import pytest
import torch
from torch import nn

import spoco
from spoco import EMANet, SPOCOLoss
from spoco.data.synthetic import random_instances

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def net(bn=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(),
                                                                                     nn.Conv2d(4, 3, 1)]
    return nn.Sequential(*layers)


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("m", [0.999, 0.9, 0.0, 1.0])
def test_update_formula(m):
    f = net()
    ema = EMANet(f, momentum=m)
    g0 = {k: v.clone() for k, v in ema.g.named_parameters()}
    perturb(f)
    ema.update()
    for name, p in ema.g.named_parameters():
        expected = m * g0[name] + (1 - m) * dict(f.named_parameters())[name]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
    assert int(ema.num_updates) == 1


def test_default_momentum_is_0999():
    assert EMANet(net()).momentum == 0.999


def _bn_stats(model):
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("mode", ["copy", "ema", "own"])
def test_buffer_modes(mode):
    f = net()
    ema = EMANet(f, momentum=0.9, buffers=mode)
    g_before = _bn_stats(ema.g)
    f.train()
    f(torch.randn(4, 1, 8, 8) * 3 + 1)  # f's running statistics move
    ema.update()
    f_bufs, g_bufs = _bn_stats(f), _bn_stats(ema.g)
    for k in f_bufs:
        if mode == "copy" or (mode == "ema" and not f_bufs[k].is_floating_point()):
            torch.testing.assert_close(g_bufs[k], f_bufs[k])
        elif mode == "ema":
            torch.testing.assert_close(g_bufs[k], 0.9 * g_before[k] + 0.1 * f_bufs[k])
        else:
            torch.testing.assert_close(g_bufs[k], g_before[k])
    assert not torch.equal(f_bufs["1.running_mean"], g_before["1.running_mean"])


def test_own_mode_copies_the_buffers_no_forward_measures():
    """"own" leaves g's BatchNorm statistics to g, but a buffer no forward pass updates
    (the foreground head's labelled rate c) still comes from f; without it g's
    foreground probabilities would be divided by a stale c."""
    f = net()
    f.register_buffer("label_rate", torch.ones(()))
    ema = EMANet(f, momentum=0.9, buffers="own")
    g_stats = _bn_stats(ema.g)
    f.train()
    f(torch.randn(4, 1, 8, 8) * 3 + 1)
    f.label_rate.fill_(0.1)
    ema.update()
    assert float(ema.g.label_rate) == pytest.approx(0.1)
    torch.testing.assert_close(ema.g[1].running_mean, g_stats["1.running_mean"])
    ema.train()
    ema(torch.randn(4, 1, 8, 8) * 3 + 1)  # g measures its own statistics in train mode
    assert not torch.equal(ema.g[1].running_mean, g_stats["1.running_mean"])
    before = ema.g[1].running_mean.clone()
    ema.update()
    torch.testing.assert_close(ema.g[1].running_mean, before)  # and update() keeps them


def test_g_has_no_gradients():
    f = net()
    ema = EMANet(f)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    y = ema(x)
    assert not y.requires_grad
    assert all(not p.requires_grad for p in ema.g.parameters())
    assert all(p.requires_grad for p in f.parameters())
    assert [p for p in ema.parameters() if p.requires_grad] == []  # f is not a submodule
    (f(x).sum()).backward()
    assert all(p.grad is None for p in ema.g.parameters())


def test_state_dict_round_trip():
    f = net()
    ema = EMANet(f, momentum=0.5)
    for _ in range(3):
        perturb(f)
        ema.update()
    state = copy.deepcopy(ema.state_dict())
    assert set(state) == {"num_updates"} | {f"g.{k}" for k in f.state_dict()}
    fresh = EMANet(net(), momentum=0.5)
    fresh.load_state_dict(state)
    for k, v in ema.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    x = torch.randn(2, 1, 8, 8)
    ema.eval()
    fresh.eval()
    assert torch.equal(ema(x), fresh(x))


def test_train_eval_mode_follows_the_emanet():
    ema = EMANet(net())
    ema.eval()
    assert not ema.g.training
    ema.train()
    assert ema.g.training


def test_unwraps_torch_compile():
    f = net(bn=False)
    compiled = torch.compile(f, backend="eager")
    ema = EMANet(compiled, momentum=0.0)
    assert ema.f is f and not hasattr(ema.g, "_orig_mod")
    perturb(f)
    ema.update()
    x = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(ema(x), compiled(x).detach())


def test_unwraps_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        f = net(bn=False)
        ddp = nn.parallel.DistributedDataParallel(f)
        ema = EMANet(ddp, momentum=0.5)
        assert ema.f is f and set(ema.g.state_dict()) == set(f.state_dict())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ddp(torch.randn(2, 1, 6, 6)).square().mean().backward()
        g0 = [p.clone() for p in ema.g.parameters()]
        opt.step()
        ema.update()
        for p, q, p0 in zip(ema.g.parameters(), f.parameters(), g0):
            torch.testing.assert_close(p, 0.5 * p0 + 0.5 * q)
    finally:
        dist.destroy_process_group()


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum must be a number in"):
        EMANet(net(), momentum=1.5)
    with pytest.raises(ValueError, match="buffers must be one of"):
        EMANet(net(), buffers="mean")
    with pytest.raises(TypeError, match="f must be a torch.nn.Module"):
        EMANet(lambda x: x)
    ema = EMANet(net())
    ema._f.add_module("extra", nn.Linear(2, 2))
    del ema._f[0]
    with pytest.raises(RuntimeError, match="no counterpart"):
        ema.update()


def test_g_loss_tracks_f_loss_in_a_tiny_training_run():
    torch.manual_seed(0)
    labels = [torch.from_numpy(random_instances((24, 24), 5, background=0.3, rng=i)) for i in range(4)]
    images = [((lab * 0.37) % 1.0).float()[None] for lab in labels]
    f = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))
    ema = EMANet(f, momentum=0.9)
    loss_fn = SPOCOLoss(anchor="mean")
    opt = torch.optim.Adam(f.parameters(), lr=5e-3)
    x, y = torch.stack(images), torch.stack(labels)
    g_losses, f_losses = [], []
    for _ in range(60):
        loss = loss_fn(f(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        with torch.no_grad():
            f_losses.append(float(loss_fn(f(x), y)))
            g_losses.append(float(loss_fn(ema(x), y)))
    assert g_losses[-1] < 0.7 * g_losses[0]  # g improves by following f
    assert abs(g_losses[-1] - f_losses[-1]) < 0.25 * f_losses[-1]  # and stays close to it
    assert all(a >= b - 1e-3 for a, b in zip(g_losses[5:], f_losses[5:]))  # lagging behind f, not ahead


def test_public_api():
    assert spoco.EMANet is EMANet and spoco.SPOCOLoss is SPOCOLoss
