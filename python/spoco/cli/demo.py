"""``spoco demo``: the end-to-end demo on generated data."""
from __future__ import annotations


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="end-to-end demo on generated data",
                       description="Generate a 2D image and a 3D volume of synthetic embeddings, cluster them "
                       "with the mutex watershed, and write label images (tif) and a PNG figure.")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the generated data (default: 0)")
    d.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, seed=args.seed)
    return 0
