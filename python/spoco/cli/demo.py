"""``spoco demo``: the end-to-end demo on real nuclei (or generated images)."""
from __future__ import annotations


def add_parser(sub) -> None:
    d = sub.add_parser(
        "demo", help="end-to-end demo: train SPOCO@0.1 on real nuclei, segment, score against Otsu, draw",
        description="Train spoco's default recipe on 16 fields of BBBC039 nuclei (shipped with spoco, CC0) with "
        "the labels of 10%% of the nuclei (SPOCO@0.1), on the CPU; segment 4 held-out fields, print AP@0.5, SBD, "
        "|DiC| and adapted Rand error next to the classic Otsu + distance-transform watershed, and write "
        "demo.png (image | PCA of the embeddings | segmentation | ground truth | a training image with the labels "
        "used), the label images, metrics.csv and the training run to --out.")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--data", choices=("nuclei", "synthetic"), default="nuclei",
                   help="nuclei: the bundled BBBC039 fields (default); synthetic: generated images")
    d.add_argument("--seed", type=int, default=0, help="seed of sampling and training (default: 0)")
    d.add_argument("--iters", type=int, help="training steps (default 5000)")
    d.add_argument("--minutes", type=float, default=8.0, help="training time limit: the schedule ends after "
                   "--iters steps or this many minutes, whichever comes first (default 8, which keeps the "
                   "whole demo within 10 minutes on 2 CPU cores)")
    d.add_argument("--fraction", type=float, help="fraction of labelled objects (default 0.1)")
    d.add_argument("--device", default="cpu", help="device for training (default cpu)")
    d.add_argument("--threads", type=int, help="CPU threads (default: the CPUs available to this process)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo
    from ..threads import set_threads

    set_threads(args.threads)
    run_demo(args.out, data=args.data, seed=args.seed, iters=args.iters, fraction=args.fraction,
             device=args.device, progress=not args.quiet, minutes=args.minutes)
    return 0
