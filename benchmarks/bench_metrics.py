"""Contingency table and metrics on large 3D label volumes.

A volume of ~10^8 voxels with ~10^5 objects (boxes of a jittered grid, random
64-bit ids, 10% background) against a prediction with shifted boundaries and
some merged neighbours. Times spoco's C++ contingency table (1 and all threads;
and with the voxels shuffled, so that no two neighbours share a pair) and
``spoco.metrics.evaluate`` there; on a 10^7-voxel crop, the same against
numpy (``np.unique`` of combined pair keys) and scikit-image's
``contingency_table``. Medians of ``--repeats`` runs after one warm-up.

    python benchmarks/bench_metrics.py [--voxels 1e8] [--objects 1e5] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import spoco
from spoco import _core, metrics


def boxes(shape, cuts, lut):
    """Label volume: the box of grid cell (i, j, k) gets lut[cell index]."""
    idx = [np.searchsorted(c, np.arange(s), side="right") - 1 for c, s in zip(cuts, shape)]
    n = [len(c) for c in cuts]
    cell = (idx[0][:, None, None] * n[1] + idx[1][None, :, None]) * n[2] + idx[2][None, None, :]
    return lut[cell]


def volumes(n_voxels: float, n_objects: float, rng):
    side = round(n_voxels ** (1 / 3))
    shape = (side, side, side)
    per_axis = max(2, round(n_objects ** (1 / 3)))
    cuts = [np.r_[0, np.sort(rng.choice(np.arange(1, side), per_axis - 1, replace=False))] for _ in shape]
    n_cells = per_axis ** 3
    gt_ids = rng.choice(2**62, n_cells, replace=False).astype(np.int64) + 1
    gt_ids[rng.random(n_cells) < 0.1] = 0
    gt = boxes(shape, cuts, gt_ids)
    # Prediction: boundaries moved by up to 2 voxels, every 20th cell merged with its x-neighbour.
    moved = [np.r_[0, np.clip(c[1:] + rng.integers(-2, 3, len(c) - 1), 1, side - 1)] for c in cuts]
    moved = [np.maximum.accumulate(c) for c in moved]
    pred_ids = rng.choice(2**62, n_cells, replace=False).astype(np.int64) + 1
    merge = np.flatnonzero(rng.random(n_cells - 1) < 0.05)
    pred_ids[merge + 1] = pred_ids[merge]
    return gt, boxes(shape, moved, pred_ids)


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def compact(a):
    return np.unique(a, return_inverse=True)[1].reshape(a.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=float, default=1e8)
    ap.add_argument("--objects", type=float, default=1e5)
    ap.add_argument("--crop", type=float, default=1e7, help="voxels of the crop compared with numpy/skimage")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    gt, pred = volumes(args.voxels, args.objects, rng)
    print(f"# data: {gt.shape} = {gt.size:.3g} voxels, generated in {time.perf_counter() - t:.1f} s")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"spoco {spoco.__version__}, OpenMP threads {_core.max_threads()}")
    rows = []
    a, b = gt.reshape(-1), pred.reshape(-1)
    for threads in (1, None):
        name = f"spoco contingency_table, {'1 thread' if threads == 1 else 'all threads'}"
        rows.append((name, gt.size, median_time(lambda: metrics.contingency_table(a, b, threads=threads),
                                                args.repeats)))
    rows.append(("spoco metrics.evaluate (all metrics)", gt.size,
                 median_time(lambda: metrics.evaluate(gt, pred), args.repeats)))
    r = metrics.evaluate(gt, pred)
    # Worst case for the run-length shortcut: the same voxels in random order.
    perm = rng.permutation(a.size)
    sa, sb = a[perm], b[perm]
    del perm
    rows.append(("spoco contingency_table, shuffled voxels", gt.size,
                 median_time(lambda: metrics.contingency_table(sa, sb), args.repeats)))
    del sa, sb
    # 10^7 crop: compare with numpy and scikit-image on compact ids (they allocate up to the largest id).
    side = round(args.crop ** (1 / 3))
    g, p = compact(gt[:side, :side, :side]), compact(pred[:side, :side, :side])
    rows.append(("spoco contingency_table, all threads", g.size,
                 median_time(lambda: metrics.contingency_table(g, p), args.repeats)))
    k = int(p.max()) + 1

    def numpy_table():
        return np.unique(g.reshape(-1).astype(np.int64) * k + p.reshape(-1), return_counts=True)

    rows.append(("numpy np.unique(gt * K + pred)", g.size, median_time(numpy_table, args.repeats)))
    from skimage.metrics import contingency_table as skimage_table
    rows.append(("skimage.metrics.contingency_table", g.size,
                 median_time(lambda: skimage_table(g, p), args.repeats)))
    print()
    print(f"| {'what':<40} | {'voxels':>8} | {'median t [s]':>12} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 14}|")
    for name, n, sec in rows:
        print(f"| {name:<40} | {n:>8.3g} | {sec:>12.3f} |")
    print()
    print(f"# evaluate on the full volume: n_gt={r['n_gt']} n_pred={r['n_pred']} sbd={r['sbd']:.4f} "
          f"are={r['are']:.4f} ap50={r['ap50']:.4f} map={r['map']:.4f}")


if __name__ == "__main__":
    main()
