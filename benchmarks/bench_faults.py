#!/usr/bin/env python
"""Kill-and-resume benchmark of block-wise segmentation: ``spoco segment`` on a zarr volume
(the data of ``bench_blockwise.py``) is killed with SIGKILL at random moments, the same
command is run again until it finishes, and the labels are compared with an uninterrupted
run's::

    python benchmarks/bench_faults.py --quick            # 32x128x128, blocks 16x64x64
    python benchmarks/bench_faults.py                    # 64x256x256, blocks 32x64x64, 8-D float16
    python benchmarks/bench_faults.py --out labels.h5    # an HDF5 output (staged in zarr)

Printed: the uninterrupted run's wall time, then one row per kill (when, how many blocks
were recorded, how many recorded blocks the attempt computed again: a recomputed block's
record is a new file), and the totals: kills survived, outputs equal. (That the final
attempt recomputes no recorded block is checked by tests/cli/test_resume.py.) Kills are drawn uniformly over the
uninterrupted run's duration after start-up (so they fall in every phase: segmentation,
stitching, writing, cleanup); a job may be killed several times before it finishes.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_blockwise import make_volume  # noqa: E402


def command(emb, out, block, threads):
    return [sys.executable, "-m", "spoco", "segment", str(emb), "--key", "emb", "--out", str(out),
            "--block-shape", *map(str, block), "--threads", str(threads), "--quiet"]


def recorded_blocks(out) -> dict:
    """Block id -> inode of its record (a recomputed block's record is a new file)."""
    folder = Path(f"{out}.spoco-progress") / "blocks" / "blocks"
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_ino for p in folder.iterdir() if p.name.isdigit()}


def run(cmd, kill_after=None):
    """Run ``cmd``; SIGKILL it ``kill_after`` seconds after start. Returns (rc, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"spoco segment failed: {err[-2000:]}")
    return proc.returncode, time.perf_counter() - start


def read(out):
    if str(out).endswith(".h5"):
        import h5py

        with h5py.File(out, "r") as f:
            return f["labels"][...]
    import zarr

    return zarr.open_group(str(out), mode="r")["labels"][...]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    p.add_argument("--block", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--objects", type=int, default=400)
    p.add_argument("--jobs", type=int, default=5, help="killed jobs (each killed 1-3 times)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="labels.zarr", help="output name: .zarr or .h5")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.shape, args.block, args.objects, args.jobs = [32, 128, 128], [16, 64, 64], 60, 2
    rng = np.random.default_rng(args.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; volume {args.shape}, blocks {args.block}, {args.threads} threads, "
          f"output {Path(args.out).suffix}")
    with tempfile.TemporaryDirectory(prefix="spoco-faults-") as tmp:
        tmp = Path(tmp)
        make_volume(str(tmp / "emb.zarr"), args.shape, args.objects, 8, args.seed)
        n_blocks = int(np.prod([-(-s // b) for s, b in zip(args.shape, args.block)]))
        _, startup = run([sys.executable, "-m", "spoco", "segment", "--help"])
        ref = tmp / f"reference{Path(args.out).suffix}"
        _, seconds = run(command(tmp / "emb.zarr", ref, args.block, args.threads))
        reference = read(ref)
        print(f"uninterrupted: {seconds:.2f} s ({n_blocks} blocks, start-up {startup:.2f} s), "
              f"{reference.max()} objects")
        kills = equal = redone_total = 0
        for job in range(args.jobs):
            out = tmp / f"job{job}{Path(args.out).suffix}"
            recorded = {}
            for _ in range(int(rng.integers(1, 4))):
                kill_after = startup + float(rng.uniform(0, 1.05)) * (seconds - startup)
                rc, _ = run(command(tmp / "emb.zarr", out, args.block, args.threads), kill_after)
                if rc == 0:
                    break
                kills += 1
                now = recorded_blocks(out)
                redone = sum(now.get(b) not in (None, ino) for b, ino in recorded.items())
                redone_total += redone
                recorded = now
                print(f"  job {job}: killed at {kill_after:5.2f} s with {len(now):3d}/{n_blocks} blocks recorded "
                      f"({redone} recorded blocks computed again)")
            run(command(tmp / "emb.zarr", out, args.block, args.threads))
            ok = np.array_equal(read(out), reference) and not Path(f"{out}.spoco-progress").exists()
            equal += ok
            print(f"  job {job}: finished by the same command; labels equal to the uninterrupted run's: {ok}")
            shutil.rmtree(out, ignore_errors=True)
        print(f"kills: {kills}, jobs: {args.jobs}, outputs equal to the uninterrupted run: {equal}/{args.jobs}, "
              f"recorded blocks computed again between kills: {redone_total}")


if __name__ == "__main__":
    main()
