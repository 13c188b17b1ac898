"""``spoco demo``: the end-to-end demo on generated data."""
from __future__ import annotations


def add_parser(sub) -> None:
    from ..demo import DEFAULTS

    d = sub.add_parser(
        "demo", help="end-to-end demo: train SPOCO@0.1 on generated images, segment, score, draw",
        description="Generate 2D microscopy-like images with instance labels, keep 10% of the objects' labels "
        "(SPOCO@0.1), train a U-Net with the SPOCO loss on the CPU, segment held-out images with the mutex "
        "watershed and print SBD, |DiC|, AP@0.5 and adapted Rand error. Writes demo.png (image | PCA of the "
        "embeddings | segmentation | ground truth), label images and the training run to --out.")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--seed", type=int, default=0, help="seed of data, sampling and training (default: 0)")
    d.add_argument("--iters", type=int, help=f"training steps (default {DEFAULTS['iters']})")
    d.add_argument("--kind", choices=("intensity", "boundary"),
                   help=f"generated data: nuclei on textured background or cells with stained membranes "
                   f"(default {DEFAULTS['kind']})")
    d.add_argument("--fraction", type=float, help=f"fraction of labelled objects (default {DEFAULTS['fraction']})")
    d.add_argument("--device", default="cpu", help="device for training (default cpu)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, seed=args.seed, iters=args.iters, kind=args.kind, fraction=args.fraction,
             device=args.device, progress=not args.quiet)
    return 0
