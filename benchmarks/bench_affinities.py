"""Eq. 12 embedding affinities: spoco's kernels vs the pure-PyTorch reference.

Prints one markdown table: median time of >= 5 runs after warm-up for spoco's CPU
kernel (1 thread and all threads), the reference on the CPU, and, when a GPU is
present, spoco's CUDA kernel and the reference on the GPU, with the GPU kernel's
effective bandwidth against the bytes it must move (embeddings read once, the
affinities written once).

    python benchmarks/bench_affinities.py [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import spoco
from spoco.clustering import default_offsets, embedding_affinities
from spoco.ops import embedding_affinities as affinities_op
from spoco.ops import reference


def median_time(fn, repeats, sync=None):
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small sizes, to check that the script runs")
    args = p.parse_args()
    cases = [("2D", (1024, 1024)), ("3D", (64, 256, 256))]
    if args.quick:
        cases = [("2D", (128, 128)), ("3D", (16, 32, 32))]
    D = 16
    gpu = torch.cuda.is_available()
    print(f"# embedding affinities (Eq. 12), D={D}, float32 — {time.strftime('%Y-%m-%d')}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none'}; spoco {spoco.__version__}")
    print("| case | shape | channels | implementation | median ms | vs reference (same device) | GB/s |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, shape in cases:
        emb = rng.standard_normal((D,) + shape).astype(np.float32)
        offs, n_att = default_offsets(len(shape))
        flat = offs.ravel().tolist()
        C = len(offs)
        nbytes = (D + C) * int(np.prod(shape)) * 4
        t_emb = torch.from_numpy(emb)
        ref_cpu = median_time(lambda: reference.embedding_affinities(t_emb, offs.tolist(), n_att, 2.0), args.repeats)
        rows = [("torch reference, CPU", ref_cpu, ref_cpu, None)]
        for threads in (1, os.cpu_count()):
            t = median_time(lambda: embedding_affinities(emb, offs, n_att, threads=threads), args.repeats)
            rows.append((f"spoco _core, {threads} thread(s)", t, ref_cpu, None))
        if gpu:
            g = t_emb.cuda()
            sync = torch.cuda.synchronize
            ref_gpu = median_time(lambda: reference.embedding_affinities(g, offs.tolist(), n_att, 2.0),
                                  args.repeats, sync)
            t = median_time(lambda: affinities_op(g, flat, len(shape), n_att, 2.0), args.repeats, sync)
            rows.append(("torch reference, CUDA", ref_gpu, ref_gpu, nbytes / ref_gpu))
            rows.append(("spoco _cuda", t, ref_gpu, nbytes / t))
        for impl, t, ref, bw in rows:
            bw_s = f"{bw / 1e9:.0f}" if bw else ""
            print(f"| {name} | {'×'.join(map(str, shape))} | {C} | {impl} | {1e3 * t:.2f} | {ref / t:.1f}× | {bw_s} |")


if __name__ == "__main__":
    main()
