"""Training survives kill -9: ``spoco train`` killed at random moments and continued with
``--resume`` ends with the weights, checkpoints and logs of a run that was never
interrupted, bit for bit (CPU, one thread)."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spoco.training import Trainer, TrainConfig, load_checkpoint
from tests._helpers.data import TinySet, write_image_folders

ITERS = 40
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    write_image_folders(root, shape=(40, 40))
    (root / "cfg.yaml").write_text("log_every: 1\n")  # a log row per step: the kill points can be watched
    return root


def _command(out, resume):
    # 4 training images, 2 per batch: epochs of 2 batches, so checkpoints fall inside and at the end of epochs.
    return [sys.executable, "-m", "spoco", "train", "--images", "images", "--labels", "labels",
            "--val-images", "val_images", "--val-labels", "val_labels", "--out", out, "--config", "cfg.yaml",
            "--iters", str(ITERS), "--patch-shape", "32", "32", "--f-maps", "4", "--batch-size", "2",
            "--samples-per-epoch", "4", "--val-every", "20", "--checkpoint-every", "5", "--threads", "1",
            "--workers", "0", "--quiet"] + (["--resume"] if resume else [])


def _logged(path) -> int:
    """The last iteration of a (growing) train_log.csv, 0 before the first row."""
    try:
        lines = path.read_text().split("\n")[1:-1]  # whole rows only
    except FileNotFoundError:
        return 0
    return int(lines[-1].split(",")[0]) if lines else 0


def _iterations(path) -> list:
    with open(path) as fh:
        return [int(row["iteration"]) for row in csv.DictReader(fh)]


def _run(cwd, out, resume):
    proc = subprocess.run(_command(out, resume), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_and_kill(cwd, out, step, delay):
    """Start the run (resumed if it has a checkpoint), kill it with SIGKILL ``delay``
    seconds after it logged ``step``; returns whether it finished before that."""
    resume = (cwd / out / "last.pt").exists()  # killed before the first checkpoint: start again
    proc = subprocess.Popen(_command(out, resume), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and _logged(cwd / out / "train_log.csv") < step:
            time.sleep(0.002)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # only if the test failed on the way
    assert not finished or proc.returncode == 0, err.decode()[-3000:]
    return finished


def test_killed_and_resumed_run_equals_uninterrupted(run_folder, rng):
    _run(run_folder, "ref", resume=False)
    assert load_checkpoint(run_folder / "ref" / "last.pt")["iteration"] == ITERS
    # Three kills, each a random moment (0-80 ms, up to a few steps) after a random step:
    # before the first checkpoint, between or during checkpoint writes, during a
    # validation or, after the last step, during the choice of the foreground threshold.
    # Each kill comes after the steps that the previous run logged.
    steps = sorted(rng.choice(np.arange(1, ITERS + 1), 3, replace=False).tolist())
    kills = []
    for step in steps:
        step = max(step, _logged(run_folder / "run" / "train_log.csv") + 1)
        if step > ITERS:
            break
        delay = float(rng.uniform(0, 0.08))
        finished = _run_and_kill(run_folder, "run", step, delay)
        last = run_folder / "run" / "last.pt"
        kills.append((step, round(delay * 1000), load_checkpoint(last)["iteration"] if last.exists() else None,
                      _logged(run_folder / "run" / "train_log.csv"), finished))
    print("kills (after step, + ms, last.pt iteration, last logged step, finished first):", kills)
    _run(run_folder, "run", resume=True)

    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run_folder / "ref" / name), load_checkpoint(run_folder / "run" / name)
        assert a["iteration"] == b["iteration"]
        for key in ("model", "ema"):
            assert _equal(a[key], b[key]), f"{name}: {key} differs after kills {kills}"
        assert _equal(a["optimizer"]["state"], b["optimizer"]["state"])
        assert a["config"]["foreground_threshold"] == b["config"]["foreground_threshold"]
    for name in ("train_log.csv", "val_log.csv", "postprocessing.csv"):
        assert (run_folder / "run" / name).read_text() == (run_folder / "ref" / name).read_text(), name
    steps_logged = _iterations(run_folder / "run" / "train_log.csv")
    assert steps_logged == list(range(1, ITERS + 1))  # no step twice
    assert not list((run_folder / "run").glob("*.tmp"))


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


# ---------------------------------------------------------------- in-process crashes
class _Crash(Exception):
    pass


def _crash_at(trainer, iteration, monkeypatch):
    step = trainer.train_step

    def train_step(batch):
        if trainer.iteration == iteration:
            raise _Crash
        return step(batch)

    monkeypatch.setattr(trainer, "train_step", train_step)


@pytest.mark.parametrize("workers, adversarial", [(2, False), (0, True)])
def test_resume_after_crash_continues_the_data_order_and_draws(tiny_data, tmp_path, monkeypatch, workers,
                                                               adversarial, torch_single_thread):
    """A crash at step 7 loses the steps since last.pt (step 4, written without
    validating); the resumed run skips the batch of the epoch it had trained on, without
    loading it, and continues the random draws (loss anchors, critic) of an uninterrupted
    run; its DataLoader workers get other batches than before, and the same samples."""
    from spoco.data import InstanceDataset

    train, _ = tiny_data
    cfg = dict(patch_shape=(32, 32), batch_size=2, f_maps=4, embedding_dim=4, max_iters=12, val_every=100,
               checkpoint_every=4, log_every=1, workers=workers, foreground=not adversarial, spatial_scale=4.0,
               adversarial=adversarial, adversarial_warmup=2, critic_steps=1, critic_f_maps=2,
               adversarial_patch_shape=(16, 16))

    def trainer(out, **kw):
        data = InstanceDataset([im for im, _ in train[:3]], [lab for _, lab in train[:3]], patch_shape=(32, 32),
                               fraction=0.5, length=6)  # 3 batches per epoch: step 4 is inside the 2nd epoch
        return Trainer(TrainConfig(**cfg), data, None, out_dir=tmp_path / out, progress=False, **kw)

    reference = trainer("ref")
    reference.fit()
    crashed = trainer("run")
    _crash_at(crashed, 7, monkeypatch)
    with pytest.raises(_Crash):
        crashed.fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["iteration"], state["epoch"], state["epoch_batches"]) == (4, 1, 1)
    assert not (tmp_path / "run" / "val_log.csv").exists()
    resumed = trainer("run", resume=True)
    loaded = []
    original = resumed.train_data.__getitem__
    monkeypatch.setattr(type(resumed.train_data), "__getitem__", lambda self, i: loaded.append(i) or original(i))
    resumed.fit()
    if not workers:  # only the batches of steps 5 to 12 are loaded, not the skipped one
        assert len(loaded) == 2 * (12 - 4)
    for ours, theirs in [(resumed.model, reference.model), (resumed.ema, reference.ema)]:
        assert _equal(ours.state_dict(), theirs.state_dict())
    assert _iterations(tmp_path / "run" / "train_log.csv") == list(range(1, 13))
    # A run started afresh in the folder starts new logs.
    cfg["max_iters"] = 3
    trainer("run").fit()
    assert _iterations(tmp_path / "run" / "train_log.csv") == [1, 2, 3]


def test_time_limit_counts_the_time_of_earlier_runs(tiny_data, tmp_path):
    """A resumed time-limited run continues its clock (and cosine schedule): with the
    time already spent, it trains no further step."""
    train, _ = tiny_data
    cfg = TrainConfig(patch_shape=(48, 48), batch_size=2, f_maps=4, embedding_dim=4, max_iters=10**6,
                      max_minutes=0.01, val_every=10**5, checkpoint_every=3, lr_schedule="cosine")
    first = Trainer(cfg, TinySet(train), None, out_dir=tmp_path, progress=False)
    result = first.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == result["iterations"] and state["seconds"] >= 0.6
    again = Trainer(cfg, TinySet(train), None, out_dir=tmp_path, progress=False, resume=True)
    assert again.seconds == state["seconds"]
    assert again.fit()["steps_this_run"] == 0


def test_samplers_enter_an_epoch_in_the_middle():
    from spoco.training.samplers import EpochSampler, ResumableDistributedSampler

    full = list(EpochSampler(10, seed=3, epoch=2))
    assert sorted(full) == list(range(10)) and full != list(EpochSampler(10, seed=3, epoch=3))
    later = EpochSampler(10, seed=3, epoch=2, start=4)
    assert list(later) == full[4:] and len(later) == 6
    data = list(range(11))
    for rank in range(2):
        share = list(ResumableDistributedSampler(data, seed=3, epoch=2, num_replicas=2, rank=rank))
        later = ResumableDistributedSampler(data, seed=3, epoch=2, start=2, num_replicas=2, rank=rank)
        assert len(share) == 5 and list(later) == share[2:] and len(later) == 3
