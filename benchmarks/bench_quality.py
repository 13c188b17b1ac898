"""Segmentation quality vs annotation sparsity (the shape of the paper's Tables 1 and 10).

On the synthetic 2D boundary and intensity sets: SPOCO@{0.1, 0.4, 1.0} (sparse mode,
0 = unlabeled) and dense SPOCO (0 = background), each with and without the
consistency term, the same number of iterations, several seeds. Prints mean ± std of
SBD, |DiC|, AP@0.5 and adapted Rand error on held-out images, segmented with the
mutex watershed and the demo's post-processing.

    python benchmarks/bench_quality.py                 # full table (about an hour per 1000 iters on 2 cores)
    python benchmarks/bench_quality.py --iters 300 --seeds 1 --kinds intensity   # smoke run
"""
from __future__ import annotations

import argparse
import itertools
import platform
import time

import numpy as np
import torch

from spoco import metrics
from spoco.clustering import segment
from spoco.data import InstanceDataset, synthetic_images
from spoco.demo import SEGMENT_DEFAULTS
from spoco.predict import predict
from spoco.training import TrainConfig, Trainer

SETTINGS = [("SPOCO@0.1", 0.1, True), ("SPOCO@0.4", 0.4, True), ("SPOCO@1.0", None, True), ("dense", None, False)]
KEYS = ("sbd", "abs_dic", "ap50", "are")


def run_one(kind, fraction, sparse, consistency, seed, args, out_root):
    images, labels = synthetic_images(args.n_train, (args.size, args.size), kind=kind, rng=seed)
    test_images, test_labels = synthetic_images(args.n_test, (args.size, args.size), kind=kind, rng=seed + 10_000)
    data = InstanceDataset(list(images), list(labels), patch_shape=(args.patch, args.patch), fraction=fraction,
                           seed=seed, length=4 * args.n_train)
    config = TrainConfig(patch_shape=(args.patch, args.patch), batch_size=args.batch_size, max_iters=args.iters,
                         val_every=10 ** 9, f_maps=args.f_maps, embedding_dim=8, lr=args.lr, sparse=sparse,
                         consistency=consistency, seed=seed)
    torch.manual_seed(seed)
    trainer = Trainer(config, data, None, out_dir=out_root / f"{kind}_{fraction}_{sparse}_{consistency}_{seed}",
                      device=args.device, progress=False)
    trainer.fit()
    rows = [metrics.evaluate(gt, segment(predict(trainer.model, im, device=args.device), **SEGMENT_DEFAULTS))
            for im, gt in zip(test_images, test_labels)]
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS}


def main():
    from pathlib import Path
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["boundary", "intensity"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--f-maps", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {args.device}; {args.iters} iterations, {args.n_train} training / {args.n_test} "
          f"held-out {args.size}² images, patches {args.patch}², batch {args.batch_size}; mean ± std over "
          f"{args.seeds} seeds")
    print(f"{'data':<10} {'setting':<10} {'consistency':<11} " + " ".join(f"{k:>13}" for k in KEYS) + "  time/run")
    out_root = Path(tempfile.mkdtemp(prefix="spoco_quality_"))
    for kind, (name, fraction, sparse), consistency in itertools.product(args.kinds, SETTINGS, (True, False)):
        if not sparse and consistency:
            continue  # the consistency term exists in sparse mode only
        start = time.perf_counter()
        runs = [run_one(kind, fraction, sparse, consistency, seed, args, out_root) for seed in range(args.seeds)]
        cells = " ".join(f"{np.mean([r[k] for r in runs]):6.3f}±{np.std([r[k] for r in runs]):5.3f}" for k in KEYS)
        print(f"{kind:<10} {name:<10} {str(consistency):<11} {cells}  {(time.perf_counter() - start) / args.seeds:6.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
