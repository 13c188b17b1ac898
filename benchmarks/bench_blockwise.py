#!/usr/bin/env python
"""Block-wise clustering benchmark: ``spoco.cluster_blockwise`` on a zarr volume
on disk (1 and 2 threads) against whole-volume MWS (``spoco.cluster``, input in
memory), wall time, throughput and peak memory::

    python benchmarks/bench_blockwise.py --quick     # 32x128x128, a few seconds
    python benchmarks/bench_blockwise.py             # 128x512x512, 8-D float16
    python benchmarks/bench_blockwise.py --stitching 10   # agreement with whole-volume MWS

Data: a Voronoi tessellation of random seeds (``--objects``), 30 % of the cells
background, computed chunk by chunk (scipy cKDTree), embeddings = a random
centre per cell (as ``spoco.data.synthetic``) + Gaussian noise (sd 0.15), stored
as 8-D float16 zarr. Default offsets (nearest neighbours, 3, 9, 27 on every
axis), halo 27.

Each configuration runs in its own subprocess; "peak MiB" is the peak RSS of
that process (``VmHWM`` of /proc/self/status; not ``ru_maxrss``, which on Linux keeps the
high-water mark of the process before ``exec``, i.e. of this script's fork with the
volume-making arrays in memory, and so reported up to 3.7 GiB for a block-wise run whose
own peak was 1.5 GiB), "work MiB" the peak minus the RSS after imports
(whole volume: includes its float32 input held in memory; block-wise: the input
stays on disk). cpu/wall is the process's CPU time over its wall time during
the call: with 2 threads it stays near 1 when the machine has no free second
core. "ARE vs whole" is the adapted Rand error of the block-wise labels against
the whole-volume labels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np, zarr, spoco
cfg = json.loads(sys.argv[1])
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))
root = zarr.open_group(cfg["path"], mode="a")
src = root["emb"]
if cfg["mode"] == "whole":
    emb = np.asarray(src[:], dtype=np.float32)
    base = rss() - emb.nbytes / 2**20  # count the in-memory input as work
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t = time.perf_counter()
    labels = spoco.cluster(emb, threads=cfg["threads"])
    wall = time.perf_counter() - t
    root.create_array("whole", data=labels.astype(np.uint32), chunks=(64, 256, 256), overwrite=True)
else:
    out = root.create_array(cfg["name"], shape=src.shape[1:], chunks=tuple(cfg["block"]), dtype="u4",
                            overwrite=True)
    base = rss()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t = time.perf_counter()
    spoco.cluster_blockwise(src, block_shape=tuple(cfg["block"]), halo=cfg["halo"], out=out,
                            threads=cfg["threads"], memory_limit=cfg.get("memory_limit"))
    wall = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_SELF)
with open("/proc/self/status") as f:  # this process's own high-water mark (not ru_maxrss: see the docstring)
    peak = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM"))
print(json.dumps({"wall": wall, "peak": peak, "work": peak - base, "cpu": usage.ru_utime + usage.ru_stime - cpu0}))
"""


def make_volume(path, shape, n_objects, dim, seed):
    import zarr
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (n_objects, 3)) * np.asarray(shape)
    tree = cKDTree(seeds)
    centres = rng.normal(size=(n_objects + 1, dim)) * (2.5 * 2.0 / np.sqrt(dim) * 1.5)
    background = rng.random(n_objects) < 0.3
    cell_label = np.where(background, 0, np.arange(1, n_objects + 1))
    z = zarr.open_group(path, mode="w").create_array("emb", shape=(dim,) + tuple(shape),
                                                     chunks=(dim, 16, 128, 128), dtype="f2")
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    step = 16
    for z0 in range(0, shape[0], step):
        zs = np.arange(z0, min(z0 + step, shape[0]))
        pts = np.stack(np.broadcast_arrays(zs[:, None, None], yy[None], xx[None]), -1).reshape(-1, 3)
        lab = cell_label[tree.query(pts, workers=-1)[1]].reshape(len(zs), *shape[1:])
        e = centres[lab] + rng.normal(scale=0.15, size=lab.shape + (dim,))
        z[:, z0:z0 + len(zs)] = np.moveaxis(e, -1, 0).astype(np.float16)
    return z


STITCH_CASES = [  # (shape, objects, block shape, long-range offsets); halo = the longest offset
    ((200, 230), 40, (64, 64), (3, 9, 27)),
    ((256, 256), 60, (50, 70), (3, 9, 27)),
    ((40, 96, 100), 30, (16, 40, 40), (3, 9)),
    ((48, 64, 64), 25, (20, 32, 32), (3, 9)),
    ((32, 60, 70), 20, (16, 32, 32), (3, 9)),
]


def stitching(n_seeds: int):
    """Agreement of block-wise with whole-volume MWS on ``spoco.data.synthetic`` volumes:
    clean background, textured background, textured background with a foreground mask."""
    import spoco
    from spoco.clustering import default_offsets
    from spoco.data.synthetic import random_instances, synthetic_embeddings
    from spoco.metrics import adapted_rand_error

    print(f"# stitching vs whole-volume MWS, {n_seeds} seeds per case, halo = longest offset\n")
    print("| shape | blocks | background | max ARE | mean ARE | seeds ARE > 0.01 | seeds with face splits |")
    print("|---|---|---|---|---|---|---|")
    for shape, n, block, long_range in STITCH_CASES:
        off, n_att = default_offsets(len(shape), long_range)
        for kind in ("clean", "textured", "textured+mask"):
            are, split = [], []
            for seed in range(n_seeds):
                rng = np.random.default_rng(seed)
                lab = random_instances(shape, n, rng=rng)
                emb = synthetic_embeddings(lab, 8, rng=rng, background_texture=0.0 if kind == "clean" else 0.3)
                mask = lab > 0 if kind.endswith("mask") else None
                kw = dict(offsets=off, n_attractive=n_att, mask=mask)
                whole = spoco.cluster(emb, **kw)
                got = spoco.cluster_blockwise(emb, block_shape=block, halo=max(long_range), **kw)
                are.append(adapted_rand_error(whole, got)[0])
                split.append(_face_splits(whole, got, block))
            are = np.array(are)
            print(f"| {'x'.join(map(str, shape))} | {'x'.join(map(str, block))} | {kind} | {are.max():.4f} | "
                  f"{are.mean():.4f} | {(are > 0.01).sum()} | {sum(x > 0 for x in split)} |", flush=True)
    print("\nface splits: pixel pairs across a block face inside one whole-volume object but with different "
          "block-wise labels")


def _face_splits(whole, got, block):
    n = 0
    for axis in range(whole.ndim):
        for f in range(block[axis], whole.shape[axis], block[axis]):
            lo, hi = np.take(whole, f - 1, axis), np.take(whole, f, axis)
            same = (lo == hi) & (lo > 0)
            n += int((same & (np.take(got, f - 1, axis) != np.take(got, f, axis))).sum())
    return n


def run_child(cfg):
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32x128x128 with blocks 16x64x64 (tests the script)")
    p.add_argument("--shape", type=int, nargs=3, default=[128, 512, 512])
    p.add_argument("--blocks", nargs="+", default=["64,256,256"],
                   help="block shapes to try, e.g. 64,256,256 128,256,256")
    p.add_argument("--objects", type=int, default=2000)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-whole", action="store_true", help="skip whole-volume MWS (when it does not fit)")
    p.add_argument("--memory-limit", default=None, help="cluster_blockwise(memory_limit=...), e.g. 2GiB")
    p.add_argument("--dir", default=None, help="where to put the zarr volume (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="use the volume already in --dir (same --shape/--objects)")
    p.add_argument("--stitching", type=int, default=0, metavar="SEEDS",
                   help="instead: compare block-wise with whole-volume MWS on small synthetic volumes")
    args = p.parse_args()
    if args.stitching:
        return stitching(args.stitching)
    if args.quick:
        args.shape, args.blocks, args.objects = [32, 128, 128], ["16,64,64"], 60
    blocks = [[int(v) for v in b.split(",")] for b in args.blocks]
    import spoco
    from spoco.metrics import adapted_rand_error

    folder = args.dir or tempfile.mkdtemp(prefix="spoco-bench-")
    path = os.path.join(folder, "volume.zarr")
    t = time.perf_counter()
    if args.reuse and os.path.exists(path):
        import zarr

        z = zarr.open_group(path, mode="r")["emb"]
        if tuple(z.shape[1:]) != tuple(args.shape):
            raise SystemExit(f"--reuse: {path} holds shape {z.shape[1:]}, not {args.shape}")
    else:
        z = make_volume(path, args.shape, args.objects, 8, seed=0)
    n_vox = int(np.prod(args.shape))
    print(f"# block-wise clustering benchmark, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"- spoco {spoco.__version__}, Python {platform.python_version()}")
    print(f"- volume {'x'.join(map(str, args.shape))} ({n_vox / 1e6:.1f} M voxels), 8-D float16 zarr "
          f"({z.nbytes / 2**20:.0f} MiB uncompressed), {args.objects} cells; made in {time.perf_counter() - t:.1f} s")
    print("- halo 27, default offsets (12 channels); ext = core + halo, clipped to the volume\n")
    rows = []
    if not args.no_whole:
        for th in args.threads:
            r = run_child(dict(path=path, mode="whole", threads=th))
            rows.append(("whole volume (in memory)", th, r, None))
    import zarr

    root = zarr.open_group(path, mode="r")
    whole = None if args.no_whole else root["whole"][:]
    from spoco.clustering.blocks import BlockGrid

    for block in blocks:
        grid = BlockGrid(tuple(args.shape), tuple(block), (27, 27, 27))
        ext = [int(np.prod([s.stop - s.start for s in grid.ext(f)])) for f in range(grid.n_blocks)]
        label = f"block-wise {'x'.join(map(str, block))} (ext/core {sum(ext) / n_vox:.2f}, max ext {max(ext) / 1e6:.1f} M)"
        if args.memory_limit:
            label += f", memory_limit {args.memory_limit}"
        for th in args.threads:
            name = f"blockwise_{th}"
            r = run_child(dict(path=path, mode="blockwise", threads=th, block=block, halo=27, name=name,
                               memory_limit=args.memory_limit))
            are = None if whole is None else adapted_rand_error(whole, root[name][:])[0]
            rows.append((label, th, r, are))
    print("| method | threads | wall s | cpu/wall | M voxels/s | peak MiB | work MiB | ARE vs whole |")
    print("|---|---|---|---|---|---|---|---|")
    for name, th, r, are in rows:
        print(f"| {name} | {th} | {r['wall']:.2f} | {r['cpu'] / r['wall']:.2f} | {n_vox / r['wall'] / 1e6:.2f} | "
              f"{r['peak']:.0f} | {r['work']:.0f} | {'-' if are is None else f'{are:.4f}'} |")
    wh = {th: r["wall"] for name, th, r, _ in rows if name.startswith("whole")}
    print()
    for label in dict.fromkeys(name for name, *_ in rows if name.startswith("block")):
        bw = {th: r["wall"] for name, th, r, _ in rows if name == label}
        peak = max(r["peak"] for name, th, r, _ in rows if name == label)
        print(f"{label}:")
        if 1 in bw and 2 in bw:
            print(f"  speed-up 1 -> 2 threads: {bw[1] / bw[2]:.2f}x (target >= 1.8x)")
        for th in sorted(set(bw) & set(wh)):
            print(f"  block-wise / whole-volume time, {th} thread(s) each: {bw[th] / wh[th]:.2f} (target <= 1.5)")
        if 2 in bw and 1 in wh:
            print(f"  block-wise 2 threads / whole-volume 1 thread: {bw[2] / wh[1]:.2f}")
        print(f"  peak RSS {peak:.0f} MiB (target <= 2048 MiB)")
    print(f"(load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
