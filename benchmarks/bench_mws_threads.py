#!/usr/bin/env python
"""The mutex watershed on 1 and on 2+ threads, and embeddings -> labels end to end.

    python benchmarks/bench_mws_threads.py               # full sizes
    python benchmarks/bench_mws_threads.py --quick       # small sizes, a few seconds

Thread scaling (same inputs as ``bench_mws.py``: Eq. 12 float32 affinities of
synthetic 16-D embeddings): ``mutex_watershed(aff, threads=t)`` for t = 1 and the
given thread counts, runs interleaved (1, 2, 1, 2, ...) so that a change of machine
load hits both; median of ``--repeats``; the labels of every thread count must be
bit-identical to threads=1 (checked on every run). "hand-overs": in how many runs the
loop on stripes handed the rest of its edges to the sequential loop (its threads got
less than 3/4 of their time on a core).

End to end: 2D 512x512, D = 16, 40 objects, C-contiguous float32:
``spoco.cluster(emb, threads=1)`` (argument checks, Eq. 12 weights, the mutex
watershed, labels), median.

Run it on a quiet machine; the load average is printed before and after.

``--busy``: the thread scaling again while another process keeps one core busy (a
spinning Python process, started before and killed after those runs): the case of a
shared machine, where the loop on stripes hands over to the sequential loop
(``csrc/core/mutex_watershed_parallel.hpp``, "Hand-over"); the largest thread count is
also timed with the hand-over disabled, for comparison.

``--huge-pages``: the three cases again at 1 thread and the largest thread count, with
the union-find and mutex-list arrays in transparent huge pages (the default on Linux)
and with ``SPOCO_HUGE_PAGES=0`` (normal 4 KiB pages), interleaved, labels checked equal.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mws import DELTA_D, make_embeddings  # noqa: E402

import spoco  # noqa: E402
from spoco import _core  # noqa: E402
from spoco.clustering import default_offsets, embedding_affinities, mutex_watershed  # noqa: E402
from spoco.data.synthetic import random_instances, synthetic_embeddings  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


NEVER = 2**32 - 1  # _core._set_mws_handover_after(NEVER): a hand-over after batch 2^32 - 1, i.e. none


@functools.lru_cache(maxsize=2)
def affinities(shape, seed):
    """Eq. 12 affinities of ``bench_mws.py``'s synthetic embeddings (made once per shape:
    ~1 min for the 3D one)."""
    offsets, na = default_offsets(len(shape))
    return embedding_affinities(make_embeddings(shape, seed), offsets, na, delta_d=DELTA_D)


def thread_scaling(tag, shape, threads, repeats, seed, handover_off=False):
    """Interleaved runs of 1 and each of ``threads`` threads (and, with ``handover_off``,
    of the largest of them with the hand-over disabled); prints a table row for each."""
    offsets, na = default_offsets(len(shape))
    aff = affinities(shape, seed)
    runs = [(str(t), t, 0) for t in [1, *threads]]
    if handover_off:
        runs.append((f"{max(threads)}, hand-over off", max(threads), NEVER))
    times = {name: [] for name, _, _ in runs}
    handovers = dict.fromkeys(times, 0)
    ref = mutex_watershed(aff, offsets, na, threads=1)  # warm-up
    try:
        for _ in range(repeats):
            for name, t, setting in runs:
                _core._set_mws_handover_after(setting)
                before = _core._mws_handovers()
                t0 = time.perf_counter()
                labels = mutex_watershed(aff, offsets, na, threads=t)
                times[name].append(time.perf_counter() - t0)
                handovers[name] += _core._mws_handovers() - before
                if not np.array_equal(labels, ref):
                    raise SystemExit(f"{tag}: threads={name} gave labels different from threads=1")
    finally:
        _core._set_mws_handover_after(0)
    base = statistics.median(times["1"])
    size = "x".join(map(str, shape))
    for name, t, _ in runs:
        med = statistics.median(times[name])
        handed = f"{handovers[name]} of {repeats}" if t > 1 else "-"
        print(f"| {tag} | {size} | {len(offsets)} | {name} | {med:.3f} | {base / med:.2f} | {handed} | identical |")


def huge_pages_ab(tag, shape, run, threads, repeats):
    """Interleaved runs of ``run(t)`` with SPOCO_HUGE_PAGES=0 and unset, for each thread
    count; prints a table row per thread count (medians and the change)."""
    before = os.environ.pop("SPOCO_HUGE_PAGES", None)
    settings = {"4 KiB pages": "0", "huge pages": None}
    times = {(t, name): [] for t in threads for name in settings}
    try:
        ref = run(1)  # warm-up
        for _ in range(repeats):
            for t in threads:
                for name, value in settings.items():
                    if value is None:
                        os.environ.pop("SPOCO_HUGE_PAGES", None)
                    else:
                        os.environ["SPOCO_HUGE_PAGES"] = value
                    t0 = time.perf_counter()
                    labels = run(t)
                    times[(t, name)].append(time.perf_counter() - t0)
                    if not np.array_equal(labels, ref):
                        raise SystemExit(f"{tag}: labels differ with {name} at threads={t}")
    finally:
        os.environ.pop("SPOCO_HUGE_PAGES", None)
        if before is not None:
            os.environ["SPOCO_HUGE_PAGES"] = before
    size = "x".join(map(str, shape))
    for t in threads:
        small, huge = (statistics.median(times[(t, name)]) for name in settings)
        print(f"| {tag} | {size} | {t} | {small:.3f} | {huge:.3f} | {100 * (huge / small - 1):+.1f} % |")


def e2e_embeddings(shape, n_objects, seed):
    labels = random_instances(shape, n_objects, rng=seed)
    # C-contiguous (D, Y, X), as a network and spoco predict return them (the generator gives a
    # transposed view, whose copy would be timed otherwise: ~7 ms)
    return np.ascontiguousarray(synthetic_embeddings(labels, 16, delta_d=DELTA_D, rng=seed + 1), dtype=np.float32)


def end_to_end(shape, n_objects, repeats, seed):
    emb = e2e_embeddings(shape, n_objects, seed)
    spoco.cluster(emb, threads=1)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        spoco.cluster(emb, threads=1)
        ts.append(time.perf_counter() - t0)
    size = "x".join(map(str, shape))
    print(f"| end to end | {size} | D = 16, {n_objects} objects | 1 | {1e3 * statistics.median(ts):.1f} ms |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for testing the script")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts besides 1 (default 2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--busy", action="store_true", help="also time the thread scaling beside a busy process")
    p.add_argument("--huge-pages", action="store_true", help="also time huge pages against 4 KiB pages")
    args = p.parse_args(argv)
    shape2, shape3, e2e = ((128, 128), (32, 64, 64), (128, 128)) if args.quick else \
        ((1024, 1024), (64, 256, 256), (512, 512))
    print(f"{os.cpu_count()} CPUs, load {load()} at start; spoco {spoco.__version__}")
    print("| case | size | channels | threads | median s | speed-up vs 1 thread | hand-overs | labels |")
    print("|---|---|---|---|---|---|---|---|")
    thread_scaling("2D", shape2, args.threads, args.repeats, args.seed)
    thread_scaling("3D", shape3, args.threads, args.repeats, args.seed)
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            thread_scaling("2D, beside a busy process", shape2, args.threads, args.repeats, args.seed, True)
            thread_scaling("3D, beside a busy process", shape3, args.threads, args.repeats, args.seed, True)
        finally:
            busy.kill()
            busy.wait()
    print()
    print("| case | size | input | threads | median |")
    print("|---|---|---|---|---|")
    end_to_end(e2e, 40, max(args.repeats, 11), args.seed)
    if args.huge_pages:
        print()
        print("| case | size | threads | 4 KiB pages, median s | huge pages, median s | change |")
        print("|---|---|---|---|---|---|")
        ab_threads = [1, max(args.threads)]
        for tag, shape in (("2D", shape2), ("3D", shape3)):
            offsets, na = default_offsets(len(shape))
            aff = affinities(shape, args.seed)
            huge_pages_ab(tag, shape, lambda t: mutex_watershed(aff, offsets, na, threads=t), ab_threads,
                          args.repeats)
        emb = e2e_embeddings(e2e, 40, args.seed)
        huge_pages_ab("end to end", e2e, lambda t: spoco.cluster(emb, threads=t), ab_threads,
                      max(args.repeats, 11))
    print(f"load {load()} at the end")


if __name__ == "__main__":
    main()
