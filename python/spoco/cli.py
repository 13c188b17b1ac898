"""The ``spoco`` command line."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed)
    return 0


def _info(args) -> int:
    from . import show_config

    show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spoco", description="Instance segmentation with pixel embeddings "
                                "trained from sparse object annotations (SPOCO).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="end-to-end demo on generated data",
                       description="Generate a 2D image and a 3D volume of synthetic embeddings, cluster them "
                       "with the mutex watershed, and write label images (tif) and a PNG figure.")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the generated data (default: 0)")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="print how spoco was built (version, CUDA, threads, torch)")
    i.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
