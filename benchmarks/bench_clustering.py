"""Clustering methods on synthetic embeddings: runtime and accuracy (the shape of
the paper's Table 14).

Data (spoco.data.synthetic): touching curved instances (split into connected
pieces, each its own object; pieces under 200 pixels in 2D, 1000 voxels in 3D
become background), 8-D embeddings with cluster centres typically
> 2 δ_d apart, smooth per-pixel noise of std ``--spreads`` per dimension and a
structured (smooth random) background texture. Spread 0.05 is what a trained
SPOCO network aims for (an object fits in a δ_v-ball around any of its pixels);
0.15 is looser than δ_v = 0.5. Two views with shared centres and independent
noise/texture play the f- and g-embeddings (g is only used by "consistency").
2D 512x512 and 3D 64x128x128.

By default the methods see no foreground mask, as in the paper's CVPPP runs
without mask: the background has to come out as one cluster, and any segment
there counts against the method (``--mask`` clusters inside the gt foreground
instead). Metrics against the ground truth (0 = background): SBD, |DiC|, AP@0.5,
mAP, adapted Rand error. Runtime: median of ``--repeats`` runs after one warm-up.

    python benchmarks/bench_clustering.py [--repeats 5] [--spreads 0.05 0.15] [--mask] [--only 2d]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import time

import numpy as np
from skimage.measure import label as connected_components

import spoco
from spoco import metrics
from spoco.data.synthetic import random_instances, synthetic_embedding_views

# shape, Voronoi seeds, smallest object kept (pixels), HDBSCAN min_size (the paper's CVPPP / Ovules values)
DATA = {"2d": ((512, 512), 40, 200, 200), "3d": ((64, 128, 128), 60, 1000, 600)}


def instances(shape, n_seeds, smallest, rng):
    """random_instances split into connected pieces; pieces below ``smallest``
    pixels become background; ids 1..K."""
    gt = connected_components(random_instances(shape, n_seeds, background=0.3, rng=rng), connectivity=1)
    sizes = np.bincount(gt.ravel())
    keep = sizes >= smallest
    keep[0] = False
    lut = np.zeros(len(sizes), dtype=np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[gt]


def methods(min_size, g):
    return {
        "mws": dict(),
        "hdbscan": dict(min_size=min_size),
        "meanshift": dict(),
        "consistency": dict(emb_g=g, iou_threshold=0.6),
        "meanshift_merge": dict(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spreads", type=float, nargs="+", default=[0.05, 0.15])
    ap.add_argument("--texture", type=float, default=0.3)
    ap.add_argument("--mask", action="store_true", help="cluster inside the ground-truth foreground only")
    ap.add_argument("--only", choices=sorted(DATA), help="run one data set")
    args = ap.parse_args()
    print(f"# {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, spoco {spoco.__version__}, "
          f"OpenMP threads {spoco._core.max_threads()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# background texture {args.texture}, "
          f"{'gt foreground mask' if args.mask else 'no mask'}, delta_v 0.5, delta_d 2.0, "
          f"point methods fitted on <= 20000 pixels; median of {args.repeats} runs")
    print()
    print("| data | spread | method          |   SBD | abs DiC | AP@0.5 |   mAP |   ARE | objects (gt) | t [s] |")
    print("|------|--------|-----------------|-------|---------|--------|-------|-------|--------------|-------|")
    for (name, (shape, n_seeds, smallest, min_size)), spread in itertools.product(DATA.items(), args.spreads):
        if args.only and name != args.only:
            continue
        rng = np.random.default_rng(0)
        gt = instances(shape, n_seeds, smallest, rng)
        f, g = synthetic_embedding_views(gt, 8, spread=spread, background_texture=args.texture, rng=rng)
        mask = gt > 0 if args.mask else None
        for method, kw in methods(min_size, g).items():
            def run():
                return spoco.cluster(f, method, mask=mask, **kw)
            labels = run()  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                labels = run()
                times.append(time.perf_counter() - t)
            r = metrics.evaluate(gt, labels)
            print(f"| {name:<4} | {spread:>6.2f} | {method:<15} | {r['sbd']:.3f} | {r['abs_dic']:>7} | "
                  f"{r['ap50']:>6.3f} | {r['map']:.3f} | {r['are']:.3f} | {r['n_pred']:>5} ({r['n_gt']:>3}) | "
                  f"{np.median(times):>5.2f} |", flush=True)


if __name__ == "__main__":
    main()
