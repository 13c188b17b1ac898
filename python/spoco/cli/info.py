"""``spoco info``: how spoco was built."""
from __future__ import annotations


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="print how spoco was built (version, CUDA, threads, torch)",
                       description="Print the spoco version, whether the CUDA kernels were built and for which "
                       "architectures, the OpenMP threads, and the torch version and devices.")
    i.set_defaults(func=run)


def run(args) -> int:
    from .. import show_config

    show_config()
    return 0
