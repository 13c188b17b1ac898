"""Training with the adversarial term: config, warm-up, checkpoints and resume."""
import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests._helpers.data import TinySet
from spoco.training import TrainConfig, Trainer, load_checkpoint


def _config(**kw):
    base = dict(patch_shape=(48, 48), batch_size=2, f_maps=4, embedding_dim=4, log_every=1, val_every=1000,
                adversarial=True, adversarial_warmup=2, critic_steps=2, critic_f_maps=2,
                adversarial_patch_shape=(16, 16), adversarial_max_objects=8)
    return TrainConfig(**{**base, **kw})


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_resume_restores_both_optimisers(tiny_data, tmp_path, torch_single_thread):
    train, _ = tiny_data
    cfg = _config(max_iters=4, val_every=4)
    first = Trainer(cfg, TinySet(train[:4]), None, out_dir=tmp_path, progress=False)
    # The critic's soft masks use the instance term's kernel width and anchor rule.
    assert first.adversarial.sigma2 == first.criterion.sigma2 and first.adversarial.anchor == first.criterion.anchor
    first.fit()
    saved = first.state_dict()
    # Both networks use Adam with β = (0.5, 0.9); the critic took n_critic steps per step after the warm-up.
    assert saved["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.9)
    critic_opt = saved["adversarial"]["optimizer"]
    assert critic_opt["param_groups"][0]["betas"] == (0.5, 0.9) and critic_opt["param_groups"][0]["lr"] == 1e-4
    assert int(next(iter(critic_opt["state"].values()))["step"]) == 2 * 2  # 2 active iterations x 2 critic steps
    resumed = Trainer(cfg, TinySet(train[:4]), None, out_dir=tmp_path, progress=False, resume=True)
    state = resumed.state_dict()
    assert 0 < state.pop("seconds") <= saved.pop("seconds")  # training time up to the checkpoint
    assert _same(state, saved)
    resumed.config.max_iters = 5
    resumed.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 5
    assert int(next(iter(state["adversarial"]["optimizer"]["state"].values()))["step"]) == 3 * 2
    with open(tmp_path / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5]
    # Warm-up (iterations 1-2): no critic, no L_wgan; afterwards both, and total = L_SSO + ζ·L_wgan.
    assert all(float(r["wgan"]) == 0 and math.isnan(float(r["wasserstein"])) for r in rows[:2])
    for r in rows[2:]:
        assert np.isfinite(float(r["wasserstein"])) and float(r["wgan"]) != 0
        spoco = sum(float(r[k]) * w for k, w in resumed.criterion.weights.items())
        assert float(r["total"]) == pytest.approx(spoco + 0.1 * float(r["wgan"]), rel=1e-4, abs=1e-5)


def test_resume_needs_the_critic(tiny_data, tmp_path, torch_single_thread):
    train, _ = tiny_data
    Trainer(_config(adversarial=False, max_iters=1), TinySet(train[:2]), None, out_dir=tmp_path,
            progress=False).fit()
    with pytest.raises(ValueError, match="holds no critic"):
        Trainer(_config(max_iters=3), TinySet(train[:2]), None, out_dir=tmp_path, progress=False, resume=True)


def test_warmup_longer_than_training_warns(tiny_data, tmp_path):
    train, _ = tiny_data
    with pytest.warns(UserWarning, match="never starts"):
        Trainer(_config(max_iters=2, adversarial_warmup=2), TinySet(train[:2]), None, out_dir=tmp_path,
                progress=False)


def test_default_critic_patch_follows_table_9():
    assert TrainConfig(patch_shape=(32, 128, 128)).critic_patch_shape == (32, 64, 64)
    assert TrainConfig(patch_shape=(256, 256)).critic_patch_shape == (64, 64)
    assert TrainConfig(patch_shape=(4, 48)).critic_patch_shape == (8, 48)


@pytest.mark.parametrize("change, match", [
    (dict(critic_steps=0), "critic_steps"),
    (dict(adversarial_warmup=-1), "adversarial_warmup"),
    (dict(adversarial_weight=-0.1), "adversarial_weight"),
    (dict(critic_lr=0.0), "critic_lr"),
    (dict(adversarial_betas=(0.5, 1.0)), "adversarial_betas"),
    (dict(adversarial_patch_shape=(16, 16, 16)), "adversarial_patch_shape must be 2 integers >= 8"),
    (dict(adversarial_patch_shape=(4, 16)), "adversarial_patch_shape"),
    (dict(adversarial_max_objects=0), "adversarial_max_objects"),
])
def test_bad_adversarial_config(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**_config().to_dict(), **change})


def test_config_round_trips_through_dict():
    cfg = _config()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


_DDP_SCRIPT = """
import torch, torch.distributed as dist
from spoco.adversarial import AdversarialTerm
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
term = AdversarialTerm(2, patch_shape=(8, 8), sigma2=0.5, warmup=0, critic_steps=2, f_maps=2, levels=2, seed=rank)
start = [p.detach().clone() for p in term.critic.parameters()]
f = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(rank), requires_grad=True)
target = torch.zeros(1, 16, 16, dtype=torch.int64)
if rank == 0:  # only rank 0 has objects: rank 1 must still join every gradient average
    target[0, 2:9, 3:12], target[0, 10:15, 1:7] = 1, 2
loss, _ = term(f, target, iteration=0)
loss.backward()
w = torch.cat([p.detach().flatten() for p in term.critic.parameters()])
moved = any(not torch.equal(p, q) for p, q in zip(term.critic.parameters(), start))
torch.save((w, moved), {out!r} + f"/critic_{{rank}}.pt")
dist.barrier()  # no process leaves while the other still talks to it
dist.destroy_process_group()
"""


def test_critic_stays_in_sync_across_processes(tmp_path):
    script = tmp_path / "ddp_critic.py"
    script.write_text(_DDP_SCRIPT.format(out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (w0, moved0), (w1, moved1) = (torch.load(tmp_path / f"critic_{r}.pt") for r in (0, 1))
    assert moved0 and moved1 and torch.equal(w0, w1)
