#!/usr/bin/env python
"""Where a training step's time goes: the demo's network and data on the CPU.

    python benchmarks/bench_train_step.py [--steps 60] [--threads N]

Builds the run that ``spoco demo`` trains (the BBBC039 subset shipped with spoco,
SPOCO@0.1, the default recipe: U-Net f_maps 8, D 16, foreground head, spatial
embeddings, EMA g-network), then times ``--steps`` steps phase by phase, after 5
warm-up steps. The phases mirror ``Trainer.train_step`` with one change that does not
alter the gradients: the loss is evaluated on a detached copy of f's output, so that
the loss's backward and the network's backward are timed apart. Also measured: one
plain ``Trainer.train_step`` (to check that the phases add up), the data loader (patch
sampling, augmentation, collation), and validation and checkpointing, amortised over
``val_every`` and ``checkpoint_every`` steps. Prints a table with ms per step and
shares; "network" = f's forward and backward and g's forward.

``--workers-ab N``: then times whole steps (next batch + ``Trainer.train_step``) with the
data loaded in the training process (``workers=0``) and in one loader process
(``workers=1``, prefetching while the network runs), in alternating blocks of N steps
of two otherwise identical trainers, and prints the median step of each.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spoco import threads
from spoco.cli.train import read_labels
from spoco.data import InstanceDataset, io
from spoco.data.sampling import sparsify
from spoco.demo import DATA_DIR
from spoco.foreground import pu_foreground_loss
from spoco.models.outputs import add_coordinates, split_output
from spoco.training import Trainer
from spoco.training.recipe import auto_config, summarize_labels


def build_trainer(out_dir: Path, fraction: float = 0.1, seed: int = 0, workers: int = 0) -> Trainer:
    """The demo's training run: default recipe sized from the SPOCO@0.1 labels."""
    pairs = io.list_pairs(DATA_DIR / "train" / "images", DATA_DIR / "train" / "labels")
    images = [io.read_array(p) for p, _ in pairs]
    labels = [read_labels(q) for _, q in pairs]
    seen = [sparsify(lab, fraction, seed, image_index=i) for i, lab in enumerate(labels)]
    config, _ = auto_config(summarize_labels(seen), {"fraction": fraction, "seed": seed, "workers": workers})
    train = InstanceDataset(images, labels, patch_shape=config.patch_shape, fraction=fraction, seed=seed,
                            augment=config.augment, length=1)
    train.length = config.samples_per_epoch or 4 * len(train.images)
    val_pairs = io.list_pairs(DATA_DIR / "val" / "images", DATA_DIR / "val" / "labels")
    val = [(io.read_array(p), read_labels(q)) for p, q in val_pairs]
    return Trainer(config, train, val, out_dir=out_dir, device="cpu", progress=False)


def timed_step(tr: Trainer, batch) -> dict:
    """One optimizer step of ``Trainer.train_step``'s computation, timed by phase (s)."""
    t = {}
    clock = time.perf_counter
    tr.net.train()
    tr.ema.train()
    t0 = clock()
    raw = tr.net(batch["image_f"])
    t["forward f"] = clock() - t0
    t0 = clock()
    g = split_output(tr.ema(batch["image_g"]), tr.model)[0]
    t["forward g"] = clock() - t0
    t0 = clock()
    leaf = raw.detach().requires_grad_()
    f, fg_logits = split_output(leaf, tr.model)
    scale = tr.model.spatial_scale
    loss = tr.criterion(add_coordinates(f.float(), scale), batch["labels"], add_coordinates(g.float(), scale))
    loss = loss + tr.config.foreground_weight * pu_foreground_loss(fg_logits, batch["labels"])
    t["loss forward"] = clock() - t0
    t0 = clock()
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t["loss backward"] = clock() - t0
    t0 = clock()
    raw.backward(leaf.grad)
    t["backward f"] = clock() - t0
    t0 = clock()
    tr.optimizer.step()
    t["optimizer"] = clock() - t0
    t0 = clock()
    tr.ema.update()
    t["EMA update"] = clock() - t0
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=None, help="default: the CPUs available to this process")
    p.add_argument("--workers-ab", type=int, default=0, metavar="N",
                   help="also compare whole steps with 0 and 1 loader workers, in alternating blocks of N steps")
    args = p.parse_args(argv)
    n_threads = threads.set_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {n_threads} threads, "
          f"load {os.getloadavg()[0]:.2f} at start; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(Path(tmp))
        cfg = tr.config
        batches = tr._batches()
        phases, data, plain = {}, [], []
        for i in range(args.steps + 5):
            t0 = time.perf_counter()
            batch = next(batches)
            loaded = time.perf_counter() - t0
            if i % 2:  # every other step: the trainer's own step, to check the sum of the phases
                t0 = time.perf_counter()
                tr.train_step(batch)
                if i >= 5:
                    plain.append(time.perf_counter() - t0)
                continue
            step = timed_step(tr, batch)
            if i >= 5:
                data.append(loaded)
                for k, v in step.items():
                    phases.setdefault(k, []).append(v)
        t0 = time.perf_counter()
        tr.validate(cfg.eval_network)
        validation = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr.save("last.pt")
        checkpoint = time.perf_counter() - t0
    ms = {"data loading + augmentation": 1e3 * statistics.median(data)}
    ms |= {k: 1e3 * statistics.median(v) for k, v in phases.items()}
    ms[f"validation / {cfg.val_every} steps"] = 1e3 * validation / cfg.val_every
    ms[f"checkpoint / {cfg.checkpoint_every} steps"] = 1e3 * checkpoint / cfg.checkpoint_every
    network = ("forward f", "forward g", "backward f")
    total = sum(ms.values())
    print(f"patch {cfg.patch_shape}, batch {cfg.batch_size}, f_maps {cfg.f_maps}, D {cfg.embedding_dim}; "
          f"median of {len(data)} steps per phase")
    print("| phase | ms per step | share |")
    print("|---|---|---|")
    for k, v in ms.items():
        print(f"| {k}{' (network)' if k in network else ''} | {v:.1f} | {100 * v / total:.1f} % |")
    other = total - sum(ms[k] for k in network)
    print(f"| **all** | {total:.1f} | 100 % |")
    print(f"network's own forward/backward: {total - other:.1f} ms; everything else {other:.1f} ms "
          f"= {100 * other / total:.1f} % of the step")
    print(f"Trainer.train_step alone (median, without data): {1e3 * statistics.median(plain):.1f} ms; "
          f"the phases above without data, validation and checkpoint: "
          f"{sum(v for k, v in ms.items() if k in phases):.1f} ms; load {os.getloadavg()[0]:.2f} at the end")
    if args.workers_ab:
        compare_workers(args.workers_ab)


def compare_workers(block: int, rounds: int = 4) -> None:
    """Median whole step (next batch + train_step) with 0 and 1 loader workers, in
    alternating blocks of ``block`` steps (the first 5 steps of each trainer not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {w: build_trainer(Path(tmp) / f"w{w}", workers=w) for w in (0, 1)}
        batches = {w: tr._batches() for w, tr in runs.items()}
        times = {w: [] for w in runs}
        for w, tr in runs.items():  # warm-up: loader start, first allocations
            for _ in range(5):
                tr.train_step(next(batches[w]))
        for _ in range(rounds):
            for w, tr in runs.items():
                for _ in range(block):
                    t0 = time.perf_counter()
                    tr.train_step(next(batches[w]))
                    times[w].append(time.perf_counter() - t0)
    for w, t in times.items():
        print(f"whole step, {w} loader workers: median {1e3 * statistics.median(t):.1f} ms "
              f"(mean {1e3 * statistics.mean(t):.1f} ms, {len(t)} steps)")
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    sys.exit(main())
