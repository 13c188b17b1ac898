"""The ``spoco`` command line: one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)`` and sets ``func`` on
its parser; ``func(args) -> int`` runs it. Errors a user can fix (bad paths,
missing keys, shape mismatches) are raised as :class:`CLIError` and printed as
one line, without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

# Subcommand modules, in the order ``spoco --help`` lists them.
SUBCOMMANDS = ("demo", "train", "predict", "segment", "evaluate", "export", "info")


class CLIError(Exception):
    """An error in the user's input, reported as ``spoco <cmd>: error: <message>``."""


class OutputError(CLIError):
    """An output file that cannot be opened or written; its message names the output, and
    :func:`naming_errors` passes it on unchanged (it is not about the input)."""


@contextlib.contextmanager
def naming_errors(path):
    """Report an error about one input's data (a wrong shape or dtype, NaN, a damaged chunk met
    while reading) as a :class:`CLIError` that names ``path``, unless its message already does."""
    from .._journal import OutputLockedError

    try:
        yield
    except (OutputLockedError, OutputError, KeyboardInterrupt):
        raise
    except (CLIError, ValueError, TypeError, RuntimeError, OSError, MemoryError) as err:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        first = text.splitlines()[0] if text else type(err).__name__
        if str(path) in first or Path(str(path)).name in first:
            raise
        raise CLIError(f"{path}: {first}") from None


def check_disk_space(out, shape, itemsize: int) -> None:
    """Refuse an output that cannot fit on its disk: more than 10x the free space even if
    compressed (a header declaring petabytes would otherwise run tile by tile for ever)."""
    import shutil

    need = itemsize
    for n in shape:
        need *= int(n)
    folder = Path(out).resolve().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > 10 * free:
        raise CLIError(f"the output {out} of shape {tuple(int(n) for n in shape)} needs {need / 2**30:.4g} GiB "
                       f"uncompressed, more than 10x the {free / 2**30:.4g} GiB free on its disk")


def folder_jobs(input_path, out, out_suffix: str, what: str):
    """``[(file, out / (file.stem + out_suffix))]`` for every supported file of the folder
    ``input_path``, or None when ``input_path`` is a file (or a zarr store)."""
    from ..data import io

    src = Path(io.split_key(input_path)[0])
    if not src.is_dir() or src.suffix.lower() == ".zarr":
        return None
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in io.SUFFIXES and not p.name.startswith("."))
    if not files:
        raise CLIError(f"{src}: no {what} files ({', '.join(io.SUFFIXES)})")
    out = Path(out)
    if out.suffix.lower() in io.SUFFIXES:
        raise CLIError(f"the input is a folder, so --out must be a folder, got {out}")
    return [(f, out / (f.stem + out_suffix)) for f in files]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spoco", description="Instance segmentation with pixel embeddings "
                                "trained from sparse object annotations (SPOCO).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return p


def main(argv=None) -> int:
    from .._journal import OutputLockedError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, KeyError, ValueError, TypeError, OutputLockedError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"spoco {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
