"""SPOCOLoss forward+backward: naive loops vs the PyTorch path vs the fused kernels
(CPU, or a GPU with ``--device cuda``).

    python benchmarks/bench_loss.py                     # 2D, 3D and the sweep over the number of objects
    python benchmarks/bench_loss.py --cases 2d --repeats 7 --threads 1

Cases (sparse mode with consistency, K = 20 anchors, D = 16, float32):
  2d:    B=4, 448x448, ~20 objects/image
  3d:    B=2, 40x64x64, ~100 objects/image
  sweep: B=4, 448x448, 10 -> 1000 objects/image (naive only up to --naive-max-objects)
Backends: "naive" = benchmarks/naive_loss.py (Python loops over instances and anchors,
one-hot (C, D, N) tensors, as the paper's code), "torch" = ``SPOCOLoss(backend="torch")``,
"fused" = ``SPOCOLoss(backend="fused")`` (the default).

Each (case, backend) runs in a fresh subprocess: inputs are built, the resident set size
is read, then ``--warmup`` + ``--repeats`` calls of ``loss(f, target, g).backward()`` are
timed (median after warm-up). Peak memory = the process's peak RSS (VmHWM, reset after
the inputs are built) above the RSS before the first call (GPU: peak allocated above the
inputs); it includes f's gradient.
"emb" in the ratios is the size of the embedding tensors f and g together.
Embeddings are N(0, 1) like an untrained network's (every image uses all K anchors);
``--embeddings synthetic`` gives clustered ones like a trained network's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

CASES = {"2d": dict(batch=4, shape=(448, 448), objects=[20]),
         "3d": dict(batch=2, shape=(40, 64, 64), objects=[100]),
         "sweep": dict(batch=4, shape=(448, 448), objects=[10, 30, 100, 300, 1000])}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so that building the inputs is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(args):
    import numpy as np
    import torch

    from spoco.data.synthetic import random_instances, synthetic_embeddings

    shape = tuple(args.shape)
    n_seeds = round(args.objects / 0.7)  # random_instances drops ~30% of its cells to background
    labels = [random_instances(shape, n_seeds, background=0.3, rng=100 + b) for b in range(args.batch)]
    if args.embeddings == "synthetic":
        f = torch.from_numpy(np.stack([synthetic_embeddings(lab, args.dim, rng=200 + b)
                                       for b, lab in enumerate(labels)]))
    else:
        f = torch.randn((args.batch, args.dim) + shape, generator=torch.Generator().manual_seed(1))
    g = f + 0.1 * torch.randn(f.shape, generator=torch.Generator().manual_seed(2))
    return f.contiguous(), torch.from_numpy(np.stack(labels)), g.contiguous()


def worker(args) -> dict:
    import torch

    import spoco
    from spoco.ops import consistency_anchors

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from naive_loss import naive_spoco_loss

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    f, target, g = (t.to(dev) for t in make_inputs(args))
    cuda = dev.type == "cuda"
    B, D = f.shape[:2]
    if args.worker == "naive":
        def loss_fn(x, target, g, i):
            keys = torch.rand(target.reshape(B, -1).shape, generator=torch.Generator().manual_seed(i),
                              dtype=torch.float64).to(dev)
            return naive_spoco_loss(x, target, g, keys, max_anchors=args.anchors)
    else:
        module = spoco.SPOCOLoss(sparse=True, max_anchors=args.anchors, backend=args.worker)

        def loss_fn(x, target, g, i):
            return module(x, target, g, generator=torch.Generator().manual_seed(i))
    keys = torch.rand(target.reshape(B, -1).shape, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64).to(dev)
    _, ok = consistency_anchors(f.reshape(B, D, -1), g.reshape(B, D, -1), (target == 0).reshape(B, -1), keys,
                                args.anchors, 0.5, 0.05)
    n_obj = sum(len(torch.unique(t[t > 0])) for t in target) / B
    x = f.requires_grad_()
    reset_peak_rss()
    base = rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, value = [], None
    for i in range(args.warmup + args.repeats):
        x.grad = None
        t0 = time.perf_counter()
        loss = loss_fn(x, target, g, i)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if i == 0:
            value = float(loss)
        del loss
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss_bytes() - base
    return {"times": times, "peak": peak, "loss0": value, "objects": n_obj, "anchors": float(ok.sum(1).float().mean()),
            "emb_bytes": 2 * f.numel() * f.element_size()}


def run_worker(args, backend, batch, shape, objects, repeats, warmup) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, "--embeddings", args.embeddings[0], "--batch", str(batch),
           "--shape", *map(str, shape), "--objects", str(objects), "--repeats", str(repeats), "--warmup", str(warmup)]
    for name in ("dim", "anchors", "threads", "device"):
        cmd += [f"--{name}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_table(head, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["2d", "3d", "sweep"], choices=list(CASES))
    p.add_argument("--backends", nargs="+", default=["naive", "torch", "fused"], choices=["naive", "torch", "fused"])
    p.add_argument("--dim", type=int, default=16, help="embedding dimension D")
    p.add_argument("--anchors", type=int, default=20, help="K, the most consistency anchors per image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--naive-max-objects", type=int, default=100, help="skip the naive loops above this")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU memory: peak allocated above the inputs)")
    p.add_argument("--embeddings", nargs=1, default=["random"], choices=["synthetic", "random"])
    p.add_argument("--worker", choices=["naive", "torch", "fused", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--objects", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.embeddings = args.embeddings[0]
        print(json.dumps(worker(args)))
        return

    import torch
    args.threads = args.threads or torch.get_num_threads()
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "the CPU"
    print(f"SPOCOLoss forward+backward on {where}, {date.today()}: sparse + consistency (K={args.anchors}), "
          f"D={args.dim}, float32, {args.embeddings[0]} embeddings")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}; median of {args.repeats} runs after {args.warmup} warm-up")
    head = ("case", "obj/img", "anchors/img", "backend", "s", "MiB", "MiB/emb", "naive/this", "torch/this", "loss")
    for case in args.cases:
        c = CASES[case]
        rows = []
        for objects in c["objects"]:
            res = {}
            for backend in args.backends:
                if backend == "naive" and objects > args.naive_max_objects:
                    continue
                res[backend] = run_worker(args, backend, c["batch"], c["shape"], objects, args.repeats, args.warmup)
            for backend, r in res.items():
                t = statistics.median(r["times"])
                ratio = lambda other: f"{statistics.median(res[other]['times']) / t:.1f}x" if other in res else "-"  # noqa: E731
                rows.append((f"{case} B={c['batch']} {'x'.join(map(str, c['shape']))}", f"{r['objects']:.1f}",
                             f"{r['anchors']:.1f}", backend, f"{t:.3f}", f"{r['peak'] / 2**20:.0f}",
                             f"{r['peak'] / r['emb_bytes']:.2f}", ratio("naive"), ratio("torch"), f"{r['loss0']:.6g}"))
        print(f"\n{case}: embeddings f and g = {next(iter(res.values()))['emb_bytes'] / 2**20:.0f} MiB")
        print_table(head, rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
