"""The trainer learns, checkpoints, resumes, fine-tunes and runs under torchrun (gloo)."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._helpers.data import TinySet
from spoco import metrics
from spoco.clustering import segment
from spoco.predict import predict
from spoco.training import TrainConfig, Trainer, load_checkpoint, model_from_checkpoint


def _config(**kw):
    base = dict(patch_shape=(48, 48), batch_size=4, f_maps=8, embedding_dim=8, log_every=10, val_every=1000,
                lr=1e-3, min_size=10, background="largest")
    return TrainConfig(**{**base, **kw})


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_overfits_tiny_set(tiny_data, tmp_path):
    train, _ = tiny_data
    torch.manual_seed(0)
    trainer = Trainer(_config(max_iters=300, val_every=300, sparse=False), TinySet(train, 1.0), train[:4],
                      out_dir=tmp_path, progress=False)
    before = trainer.validate()
    result = trainer.fit()
    after = _rows(tmp_path / "val_log.csv")[-1]
    losses = [float(r["total"]) for r in _rows(tmp_path / "train_log.csv")]
    assert result["iterations"] == 300
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    assert float(after["ap50"]) > before["ap50"] + 0.3, (before, after)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert result["best_score"] == pytest.approx(float(after["ap50"]))


def test_sparse_training_logs_every_term(tiny_data, tmp_path):
    train, _ = tiny_data
    Trainer(_config(max_iters=20, log_every=5), TinySet(train, 0.3), None, out_dir=tmp_path, progress=False).fit()
    rows = _rows(tmp_path / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 5, 10, 15, 20]
    for term in ("pull", "push", "reg", "instance", "unlabeled_push", "consistency"):
        assert all(np.isfinite(float(r[term])) for r in rows)
    assert any(float(r["consistency"]) > 0 for r in rows)
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def _same_tensors(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_checkpoint_resume_restores_state(tiny_data, tmp_path):
    train, val = tiny_data
    cfg = _config(max_iters=12, val_every=6)
    first = Trainer(cfg, TinySet(train), val[:1], out_dir=tmp_path, progress=False)
    first.fit()
    saved = first.state_dict()
    resumed = Trainer(_config(max_iters=12, val_every=6), TinySet(train), val[:1], out_dir=tmp_path,
                      progress=False, resume=True)
    state = resumed.state_dict()
    assert 0 < state.pop("seconds") <= saved.pop("seconds")  # training time up to the checkpoint
    # after training, the trainer holds the post-processing chosen on validation (and its
    # score), which best.pt stores; last.pt holds the state before that choice
    assert saved["config"].pop("merge_distance") is not None and state["config"].pop("merge_distance") is None
    assert saved.pop("best_score") >= state.pop("best_score")
    assert _same_tensors(state, saved)
    assert resumed.iteration == 12
    resumed.config.max_iters = 15
    result = resumed.fit()
    assert resumed.iteration == 15
    assert (result["iterations"], result["steps_this_run"]) == (15, 3)  # 3 steps ran in this call
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 15


def test_finetune_starts_from_weights_with_new_lr(tiny_data, tmp_path):
    train, _ = tiny_data
    src = Trainer(_config(max_iters=5), TinySet(train), None, out_dir=tmp_path / "src", progress=False)
    src.fit()
    tuned = Trainer(_config(max_iters=5, lr=2e-5), TinySet(train), None, out_dir=tmp_path / "ft", progress=False,
                    init_from=tmp_path / "src" / "last.pt")
    assert _same_tensors(tuned.model.state_dict(), src.model.state_dict())
    assert tuned.iteration == 0 and tuned.optimizer.param_groups[0]["lr"] == 2e-5
    model = model_from_checkpoint(load_checkpoint(tmp_path / "src" / "last.pt"), network="g")
    assert _same_tensors(model.state_dict(), src.ema.g.state_dict())


def test_eval_network_g_validates_and_loads_the_moving_average(tiny_data, tmp_path, monkeypatch):
    train, val = tiny_data
    trainer = Trainer(_config(max_iters=4, val_every=2, eval_network="g", momentum=0.5), TinySet(train), val[:1],
                      out_dir=tmp_path, progress=False)
    validated = []
    original = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self, network="f": validated.append(network) or
                        original(self, network))
    trainer.fit()
    assert validated == ["g", "g"]
    state = load_checkpoint(tmp_path / "last.pt")
    # Without network=..., a checkpoint gives the network its run validated.
    assert _same_tensors(model_from_checkpoint(state).state_dict(), trainer.ema.g.state_dict())
    assert _same_tensors(model_from_checkpoint(state, network="f").state_dict(), trainer.model.state_dict())
    assert not _same_tensors(trainer.ema.g.state_dict(), trainer.model.state_dict())
    with pytest.raises(ValueError, match="eval_network"):
        _config(eval_network="h").check()
    with pytest.raises(ValueError, match="momentum"):
        _config(momentum=1.0).check()
    with pytest.raises(ValueError, match="border"):
        _config(border="reflect").check()


def _running_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize("sparse", [True, False])
def test_ema_buffers_give_g_its_own_batchnorm_statistics(tiny_data, tmp_path, sparse):
    """"own": g's running statistics come from g's own training-mode forwards (the
    consistency term), not from f; without g forwards (dense labels) it averages f's
    (the averaging itself: tests/test_ema.py). Other buffers are f's in every mode."""
    train, _ = tiny_data
    stats = {}
    for mode in ("copy", "own"):
        trainer = Trainer(_config(max_iters=3, eval_network="g", momentum=0.9, ema_buffers=mode, sparse=sparse,
                                  foreground=True),
                          TinySet(train, 0.5), None, out_dir=tmp_path / mode, progress=False)
        g_before = _running_stats(trainer.ema.g)
        trainer.fit()
        f_after, g_after = _running_stats(trainer.model), _running_stats(trainer.ema.g)
        assert trainer.ema.buffers_mode == (mode if sparse or mode == "copy" else "ema")
        # the foreground head's labelled rate c is no statistic g measures: it comes from f
        if trainer.ema.buffers_mode != "ema":
            assert float(trainer.ema.g.label_rate) == float(trainer.model.label_rate) != 1.0
        stats[mode] = (g_before, f_after, g_after)
    _, f_after, g_after = stats["copy"]
    assert _same_tensors(f_after, g_after)
    g_before, f_after, g_after = stats["own"]
    assert not _same_tensors(f_after, g_after)  # g measured itself, or averaged f
    assert not _same_tensors(g_before, g_after)  # and its statistics moved from the initial ones
    with pytest.raises(ValueError, match="ema_buffers"):
        _config(ema_buffers="mean").check()


def test_resume_with_other_model_gives_clear_error(tiny_data, tmp_path):
    train, _ = tiny_data
    Trainer(_config(max_iters=2), TinySet(train), None, out_dir=tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="does not match"):
        Trainer(_config(max_iters=2, f_maps=4), TinySet(train), None, out_dir=tmp_path, progress=False, resume=True)


def test_lr_drops_on_plateau_and_stops_below_min_lr(tiny_data, tmp_path):
    train, val = tiny_data
    cfg = _config(max_iters=1000, val_every=1, lr_patience=0, lr=1e-5, min_lr=1e-6, lr_factor=0.2)
    result = Trainer(cfg, TinySet(train), val[:1], out_dir=tmp_path, progress=False).fit()
    # lr 1e-5 -> 2e-6 -> 4e-7 < min_lr after at most a few non-improving validations.
    assert result["iterations"] < 20


_DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from tests._helpers.data import TinySet, make_images
from spoco.training import TrainConfig, Trainer
torch.set_num_threads(1)
train = make_images(8, seed=1)
cfg = TrainConfig(patch_shape=(48, 48), batch_size=2, f_maps=4, embedding_dim=4, max_iters=4, val_every=2,
                  log_every=1)
t = Trainer(cfg, TinySet(train), train[:1], out_dir={out!r}, progress=False, device="cpu")
t.fit()
w = torch.cat([p.detach().flatten() for p in t.model.parameters()])
torch.save(w, {out!r} + f"/weights_{{t.rank}}.pt")
# A crash at step 4 and a resume from step 3 (inside the 2nd epoch of each rank's 2
# batches) continue every rank's data order and loss anchors: the weights of a run
# that was never interrupted.
cfg = TrainConfig(patch_shape=(48, 48), batch_size=2, f_maps=4, embedding_dim=4, max_iters=6, checkpoint_every=3)
def weights(resume=False, crash=None):
    t = Trainer(cfg, TinySet(train), None, out_dir={out!r} + "/resume", progress=False, device="cpu",
                resume=resume)
    step = t.train_step
    t.train_step = lambda batch: step(batch) if t.iteration != crash else sys.exit()
    try:
        t.fit()
    except SystemExit:
        pass
    return torch.cat([p.detach().flatten() for p in t.model.parameters()])
ref = weights()
weights(crash=4)
torch.save(torch.equal(ref, weights(resume=True)), {out!r} + f"/resumed_{{t.rank}}.pt")
"""


def test_torchrun_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(root=str(Path(__file__).parents[2]), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = torch.load(tmp_path / "weights_0.pt"), torch.load(tmp_path / "weights_1.pt")
    assert torch.equal(w0, w1)  # DDP keeps the replicas identical
    assert torch.load(tmp_path / "resumed_0.pt") and torch.load(tmp_path / "resumed_1.pt")
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4
    assert len(_rows(tmp_path / "train_log.csv")) == 4  # only rank 0 logs


def test_cosine_schedule_warmup_and_time_limit(tiny_data, tmp_path):
    train, _ = tiny_data
    cfg = _config(max_iters=40, log_every=1, lr_schedule="cosine", warmup=10, lr=1e-3)
    Trainer(cfg, TinySet(train, 0.5), None, out_dir=tmp_path / "cos", progress=False).fit()
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "cos" / "train_log.csv")]
    assert lrs[0] == pytest.approx(1e-4)  # first of 10 warm-up steps
    assert lrs[8] < lrs[9] and max(lrs) <= 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.05 * max(lrs)
    # A time limit ends the run early, validates and saves what was trained.
    cfg = _config(max_iters=10**6, max_minutes=0.02, val_every=10**5, lr_schedule="cosine")
    result = Trainer(cfg, TinySet(train, 0.5), train[:2], out_dir=tmp_path / "t", progress=False).fit()
    assert 0 < result["iterations"] < 10**6
    assert (tmp_path / "t" / "best.pt").exists()
    assert int(_rows(tmp_path / "t" / "val_log.csv")[-1]["iteration"]) == result["iterations"]


def test_foreground_head_and_spatial_embeddings_train(tiny_data, tmp_path):
    train, _ = tiny_data
    cfg = _config(max_iters=30, foreground=True, spatial_scale=4.0, val_every=30, eval_network="g")
    trainer = Trainer(cfg, TinySet(train, 0.3), train[:2], out_dir=tmp_path, progress=False)
    trainer.fit()
    rows = _rows(tmp_path / "train_log.csv")
    assert all(np.isfinite(float(r["foreground"])) for r in rows)
    rate = float(trainer.model.label_rate)
    assert 0 < rate < 1 and float(trainer.ema.g.label_rate) == rate  # c travels to g and to checkpoints
    model = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    assert model.foreground and model.spatial_scale == 4.0 and float(model.label_rate) == pytest.approx(rate)


def test_postprocessing_chosen_on_validation(tiny_data, tmp_path):
    """Without a threshold, merge distance or test-time augmentation in the config, best.pt
    gets the candidate (of best.pt's and last.pt's networks) that scores best on the
    validation images, and its stored score is that candidate's."""
    from spoco.training.trainer import FOREGROUND_THRESHOLDS, MERGE_DISTANCES

    train, _ = tiny_data
    cfg = _config(max_iters=20, foreground=True, spatial_scale=4.0, val_every=10, tta=None)
    trainer = Trainer(cfg, TinySet(train, 0.3), train[:2], out_dir=tmp_path, progress=False)
    result = trainer.fit()
    rows = _rows(tmp_path / "postprocessing.csv")
    tried = {(r["checkpoint"], r["tta"] == "True", float(r["foreground_threshold"]), float(r["merge_distance"])):
             float(r["ap50"]) for r in rows}
    checkpoints = {r["checkpoint"] for r in rows}
    assert checkpoints <= {"best.pt", "last.pt"} and "best.pt" in checkpoints
    assert {r["tta"] for r in rows} == {"False", "True"}
    assert len(tried) == len(checkpoints) * 2 * len(FOREGROUND_THRESHOLDS) * len(MERGE_DISTANCES)
    state = load_checkpoint(tmp_path / "best.pt")
    saved = TrainConfig.from_saved(state["config"])
    chosen = saved.segmentation()
    assert chosen["foreground_threshold"] in FOREGROUND_THRESHOLDS
    assert chosen["merge_distance"] in [m * cfg.delta_d for m in MERGE_DISTANCES]
    assert saved.tta in (False, True) and trainer.config.tta == saved.tta
    best = max(tried.values())
    assert best == pytest.approx(result["best_score"]) == pytest.approx(state["best_score"])
    assert any(score == best and a == saved.tta and t == chosen["foreground_threshold"]
               and m == chosen["merge_distance"] for (_, a, t, m), score in tried.items())
    # the stored network is the one that scored: segmenting with it reproduces the score
    model = model_from_checkpoint(state)
    again = np.mean([metrics.evaluate(np.asarray(lab), segment(predict(model, img, **saved.prediction()),
                                                               **chosen))["ap50"]
                     for img, lab in train[:2]])
    assert again == pytest.approx(best)
    # what the user gives is kept
    cfg = _config(max_iters=10, foreground=True, val_every=10, foreground_threshold=0.45, merge_distance=0.0)
    Trainer(cfg, TinySet(train, 0.3), train[:2], out_dir=tmp_path / "fixed", progress=False).fit()
    saved = load_checkpoint(tmp_path / "fixed" / "best.pt")["config"]
    assert saved["foreground_threshold"] == 0.45 and saved["merge_distance"] == 0.0 and saved["tta"] is False
    assert not (tmp_path / "fixed" / "postprocessing.csv").exists()
