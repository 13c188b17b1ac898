"""SPOCOLoss forward+backward: the default path vs the loop reference (CPU, or a GPU
with ``--device cuda``).

    python benchmarks/bench_loss.py                    # B=4, 448x448, D=16, ~20 objects, sparse + consistency
    python benchmarks/bench_loss.py --size 224 --repeats 9 --threads 1

Each (embeddings, backend) pair runs in a fresh subprocess: inputs are built, the
resident set size is read, then ``--warmup`` + ``--repeats`` calls of
``loss(f, target, g).backward()`` are timed; the peak memory is the process's peak
RSS above the RSS before the first call. Times are medians after warm-up.
Embeddings: "synthetic" = clustered like a trained network (spoco.data.synthetic),
"random" = N(0, 1) like an untrained one (every image uses all K anchors).
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


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_inputs(args):
    import numpy as np
    import torch

    from spoco.data.synthetic import random_instances, synthetic_embeddings

    shape = (args.size, args.size)
    n_seeds = round(args.objects / 0.7)  # random_instances drops ~30% of its cells to background
    labels = [random_instances(shape, n_seeds, background=0.3, rng=100 + b) for b in range(args.batch)]
    if args.embeddings == "synthetic":
        f = np.stack([synthetic_embeddings(lab, args.dim, rng=200 + b) for b, lab in enumerate(labels)])
        f = torch.from_numpy(f)
    else:
        f = torch.randn((args.batch, args.dim) + shape, generator=torch.Generator().manual_seed(1))
    g = f + 0.1 * torch.randn(f.shape, generator=torch.Generator().manual_seed(2))
    return f.contiguous(), torch.from_numpy(np.stack(labels)), g.contiguous()


def worker(args) -> dict:
    import torch

    import spoco
    from spoco.ops.anchors import consistency_anchors

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    f, target, g = (t.to(dev) for t in make_inputs(args))
    cuda = dev.type == "cuda"
    loss_fn = spoco.SPOCOLoss(sparse=True, max_anchors=args.anchors, backend=args.worker)
    keys = torch.rand(target.reshape(args.batch, -1).shape, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64).to(dev)
    B, D = f.shape[:2]
    _, ok = consistency_anchors(f.reshape(B, D, -1), g.reshape(B, D, -1), (target == 0).reshape(B, -1), keys,
                                args.anchors, loss_fn.delta_v, loss_fn.coverage_stop)
    n_obj = sum(len(torch.unique(t[t > 0])) for t in target) / B
    base = rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, value = [], None
    for i in range(args.warmup + args.repeats):
        x = f.clone().requires_grad_()
        t0 = time.perf_counter()
        loss = loss_fn(x, target, g, generator=torch.Generator().manual_seed(i))
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if i == 0:
            value = float(loss)
        del x, loss
    if cuda:  # peak device memory above the inputs
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"times": times, "peak": peak, "loss0": value, "objects": n_obj, "anchors": float(ok.sum(1).float().mean())}


def run_worker(args, embeddings, backend) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, "--embeddings", embeddings]
    for name in ("batch", "size", "dim", "objects", "anchors", "repeats", "warmup", "threads", "device"):
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=448, help="image side (pixels)")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension D")
    p.add_argument("--objects", type=int, default=20, help="labelled objects per image (approximately)")
    p.add_argument("--anchors", type=int, default=20, help="K, the most consistency anchors per image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU memory: peak allocated above the inputs)")
    p.add_argument("--embeddings", nargs="+", default=["synthetic", "random"], choices=["synthetic", "random"])
    p.add_argument("--worker", choices=["torch", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.embeddings = args.embeddings[0]
        print(json.dumps(worker(args)))
        return

    import torch
    args.threads = args.threads or torch.get_num_threads()
    load = os.getloadavg()[0]
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "the CPU"
    print(f"SPOCOLoss forward+backward on {where}, {date.today()}: B={args.batch}, {args.size}x{args.size}, "
          f"D={args.dim}, ~{args.objects} objects/image, sparse + consistency (K={args.anchors}), float32")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"load average {load:.2f}; median of {args.repeats} runs after {args.warmup} warm-up")
    head = ("embeddings", "obj/img", "anchors/img", "default s", "reference s", "time ratio", "default MiB",
            "reference MiB", "memory ratio", "|Δloss|/loss")
    rows = []
    for emb in args.embeddings:
        fast, ref = run_worker(args, emb, "torch"), run_worker(args, emb, "reference")
        tf, tr = statistics.median(fast["times"]), statistics.median(ref["times"])
        mf, mr = fast["peak"] / 2**20, ref["peak"] / 2**20
        rows.append((emb, f"{fast['objects']:.1f}", f"{fast['anchors']:.1f}", f"{tf:.2f}", f"{tr:.2f}",
                     f"{tr / tf:.1f}x", f"{mf:.0f}", f"{mr:.0f}", f"{mr / max(mf, 1):.1f}x",
                     f"{abs(fast['loss0'] - ref['loss0']) / abs(ref['loss0']):.1e}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
