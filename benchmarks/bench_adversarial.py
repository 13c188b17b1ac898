"""SPOCO with and without the adversarial term (appendix A.1) on synthetic 3D boundary data.

Trains the same small 3D U-Net for the same number of iterations from the same
initialisation and data order, (1) with the plain SPOCO loss (Adam β = (0.9, 0.999)),
(2) the same with β = (0.5, 0.9) (the optimiser setting of the adversarial runs, so
that any difference in (3) is not just the optimiser), and (3) with ``+ ζ·L_wgan``
after a warm-up; then segments held-out volumes (mutex watershed) and scores them
with :mod:`spoco.metrics`. Dense supervision (label 0 = background), as the paper's
ovules experiment (Table 3).

    python benchmarks/bench_adversarial.py            # the run recorded in notebook.md
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from spoco import metrics
from spoco.clustering import segment
from spoco.data import InstanceDataset, synthetic_images
from spoco.predict import predict
from spoco.training import TrainConfig, Trainer

RUNS = ("spoco", "spoco_betas", "adversarial")


def train_and_score(name, args, train_data, test):
    config = TrainConfig(
        patch_shape=tuple(args.patch), batch_size=args.batch, max_iters=args.iters, val_every=10 ** 9,
        log_every=10 ** 9, f_maps=args.f_maps, embedding_dim=8, lr=args.lr, sparse=False, consistency=False,
        augment=False, norm="group", seed=args.seed, adversarial=name == "adversarial",
        adversarial_warmup=args.warmup, critic_steps=args.critic_steps, adversarial_weight=args.weight,
        adversarial_patch_shape=tuple(args.critic_patch), critic_f_maps=args.critic_f_maps,
        adversarial_max_objects=args.max_objects, critic_lr=args.critic_lr)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, train_data, None, out_dir=out, device="cpu", progress=False)
        if name == "spoco_betas":
            trainer.optimizer.param_groups[0]["betas"] = tuple(config.adversarial_betas)
        wasserstein = []
        start = time.perf_counter()
        batches = trainer._batches()
        while trainer.iteration < config.max_iters:
            terms = trainer.train_step(next(batches))
            if np.isfinite(terms.get("wasserstein", np.nan)):
                wasserstein.append(terms["wasserstein"])
        seconds = time.perf_counter() - start
        scores = []
        for image, gt in test:
            emb = predict(trainer.model, image, device="cpu")
            seg = segment(emb, delta_d=config.delta_d, background="largest", min_size=20)
            scores.append(metrics.evaluate(gt, seg))
    row = {k: float(np.mean([s[k] for s in scores])) for k in ("ap50", "map", "sbd", "are")}
    row["seconds"] = seconds
    row["w_first"] = float(np.mean(wasserstein[:10])) if wasserstein else np.nan
    row["w_last"] = float(np.mean(wasserstein[-10:])) if wasserstein else np.nan
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=3)
    p.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    p.add_argument("--patch", type=int, nargs=3, default=(16, 32, 32))
    p.add_argument("--critic-patch", type=int, nargs=3, default=(16, 24, 24))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--f-maps", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight", type=float, default=0.1)
    p.add_argument("--critic-steps", type=int, default=5)
    p.add_argument("--critic-f-maps", type=int, default=8)
    p.add_argument("--critic-lr", type=float, default=1e-4)
    p.add_argument("--max-objects", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    args = p.parse_args()
    torch.set_num_threads(1)

    images, labels = synthetic_images(args.n_train, tuple(args.shape), kind="boundary", rng=args.seed)
    test_images, test_labels = synthetic_images(args.n_test, tuple(args.shape), kind="boundary",
                                                rng=args.seed + 10_000)
    train = InstanceDataset(list(images), list(labels), patch_shape=tuple(args.patch), seed=args.seed,
                            augment=False, length=4 * args.n_train)
    test = list(zip(test_images, test_labels))
    print(f"synthetic boundary volumes {tuple(args.shape)}: {args.n_train} train, {args.n_test} held out; "
          f"patch {tuple(args.patch)}, batch {args.batch}, U-Net f_maps {args.f_maps}, D=8, lr {args.lr:g}, "
          f"{args.iters} iterations; adversarial: zeta {args.weight:g}, n_critic {args.critic_steps}, warm-up "
          f"{args.warmup}, critic crop {tuple(args.critic_patch)}, critic f_maps {args.critic_f_maps}, "
          f"critic lr {args.critic_lr:g}, <= {args.max_objects} objects/step")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f}")
    print("| run | AP@0.5 | mAP | SBD | adapted Rand error | train s | W (first 10) | W (last 10) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        r = train_and_score(name, args, train, test)
        print(f"| {name} | {r['ap50']:.3f} | {r['map']:.3f} | {r['sbd']:.3f} | {r['are']:.3f} | {r['seconds']:.0f} "
              f"| {r['w_first']:.3f} | {r['w_last']:.3f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
