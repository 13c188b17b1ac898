"""A shipped model (``spoco segment --model nuclei``) on a folder of labelled images, next to
the classic pipelines, with zero training::

    python benchmarks/bench_pretrained.py --model nuclei --data ../shared/data/bbbc039/val

``--data`` holds ``images/`` and ``labels/`` (dense). Segments every image as
``spoco segment IMAGE --model NAME`` does (the network, then the segmentation settings it
was validated with) and prints mean AP@0.5, SBD, |DiC| and adapted Rand error beside
Otsu + connected components and Otsu + distance-transform watershed (``spoco.baselines``),
and the time per image.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_realdata import HEADER, METRICS, baselines, read_folder, score  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nuclei", help="a shipped model's name or a checkpoint")
    p.add_argument("--data", required=True, type=Path, help="folder with images/ and labels/")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    from spoco.cli.predict import load_network
    from spoco.clustering import segment
    from spoco.predict import predict

    if args.threads:
        torch.set_num_threads(args.threads)
    names, images, gts = read_folder(args.data)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}; {len(images)} images "
          f"of {args.data}")
    model, config = load_network(args.model)
    model.eval()
    start = time.perf_counter()
    segs = [segment(predict(model, img, border=config.border, device="cpu"), **config.segmentation())
            for img in images]
    ours = score(gts, segs) | {"seconds": time.perf_counter() - start}
    rows = {f"spoco --model {args.model}": ours, **baselines(images, gts)}
    print("| method | " + " | ".join(HEADER) + " | s / image |")
    print("|---" * (len(HEADER) + 2) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" if k != "abs_dic" else f"{r[k]:.1f}" for k in METRICS)
              + f" | {r['seconds'] / len(images):.2f} |")


if __name__ == "__main__":
    main()
