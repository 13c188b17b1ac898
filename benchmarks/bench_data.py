"""Data pipeline: synthetic image generation (spoco.data.synthetic_images) and
training samples (spoco.data.InstanceDataset, two augmented views), timed (medians
of --repeat runs after one warm-up, single process); and how hard the synthetic
images are: AP@0.5 of Otsu thresholding + connected components (best polarity,
objects < 20 px dropped) against a watershed seeded inside the true objects (an
upper reference: what the image holds once the objects are found), 2D 128x128;
per image means of the objects, the thresholding's components, merges (components
holding most of two or more objects) and spurious components (mostly background).

    python benchmarks/bench_data.py
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import sobel, threshold_otsu
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries, watershed

from spoco.data import InstanceDataset, synthetic_images
from spoco.metrics import average_precision


def otsu_ap(x, gt):
    """AP@0.5 of the better thresholding side, and for that side: components,
    components holding most of >= 2 true objects (merges), components mostly on
    background (spurious)."""
    x = ndimage.gaussian_filter(x, 1.0)
    t = threshold_otsu(x)
    best = (-1.0,)
    for fg in (x > t, x <= t):
        cc = connected_components(fg, connectivity=1)
        cc[np.bincount(cc.ravel())[cc] < 20] = 0
        ap = average_precision(gt, cc, 0.5)
        if ap > best[0]:
            table = np.zeros((cc.max() + 1, gt.max() + 1))
            np.add.at(table, (cc.ravel(), gt.ravel()), 1)
            table = table[np.unique(cc[cc > 0])]
            share = table[:, 1:] / np.maximum(table[:, 1:].sum(0), 1)
            merges = int(((share > 0.5).sum(1) >= 2).sum())
            spurious = int((table[:, 0] > 0.5 * table.sum(1)).sum())
            best = (ap, len(table), merges, spurious)
    return best


def seeded_ap(x, gt):
    inner = (gt > 0) & ~ndimage.binary_dilation(find_boundaries(gt), iterations=1)
    markers = np.where(inner, gt, 0)
    markers[(gt == 0) & ~ndimage.binary_dilation(gt > 0)] = gt.max() + 1
    seg = watershed(sobel(ndimage.gaussian_filter(x, 0.5)), markers)
    seg[seg == gt.max() + 1] = 0
    return average_precision(gt, seg, 0.5)


def _median_ms(fn, repeat, per):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / per)
    return 1e3 * float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--images", type=int, default=160, help="images per kind for the AP comparison")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print("| what | shape | patch | ms per image/sample | objects per image (mean) |")
    print("|---|---|---|---|---|")
    for kind in ("boundary", "intensity"):
        for shape in ((128, 128), (256, 256), (32, 64, 64)):
            n = 10 if len(shape) == 2 else 3
            ms = _median_ms(lambda: synthetic_images(n, shape, kind=kind, rng=0), args.repeat, n)
            _, lab = synthetic_images(20, shape, kind=kind, rng=1)
            count = lab.reshape(20, -1).max(1).mean()
            print(f"| synthetic_images {kind} | {shape} | - | {ms:.1f} | {count:.1f} |")
    for shape, patch in (((128, 128), (96, 96)), ((256, 256), (128, 128)), ((32, 64, 64), (24, 48, 48))):
        img, lab = synthetic_images(4, shape, kind="boundary", rng=0)
        ds = InstanceDataset(list(img), list(lab), patch_shape=patch, fraction=0.1, length=16)
        ms = _median_ms(lambda: [ds[i] for i in range(16)], args.repeat, 16)
        print(f"| InstanceDataset sample (f, g, labels) | {shape} | {patch} | {ms:.1f} | - |")
    print()
    print(f"AP@0.5 on {args.images} images of 128x128 per kind (mean, min-max over images)")
    print("| kind | objects | Otsu + connected components | components | merges | spurious | seeded watershed (reference) |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("boundary", "intensity"):
        img, lab = synthetic_images(args.images, (128, 128), kind=kind, rng=123)
        o = np.array([otsu_ap(x, y) for x, y in zip(img[:, 0], lab)])
        w = [seeded_ap(x, y) for x, y in zip(img[:, 0], lab)]
        ap, comps, merges, spurious = o.T
        print(f"| {kind} | {lab.reshape(len(lab), -1).max(1).mean():.1f} | {ap.mean():.3f} ({ap.min():.2f}-{ap.max():.2f}) "
              f"| {comps.mean():.1f} | {merges.mean():.1f} | {spurious.mean():.1f} "
              f"| {np.mean(w):.3f} ({min(w):.2f}-{max(w):.2f}) |")


if __name__ == "__main__":
    main()
