"""Checkpoints: written atomically, read without executing code from the file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "spoco-checkpoint-1"


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically:
    a temporary file in the same folder is written, flushed to disk, then renamed over
    ``path``, so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_checkpoints(folder) -> None:
    """Delete the temporary files that :func:`save_checkpoint` calls in ``folder`` cut
    short (a killed run leaves them; the checkpoints themselves are whole)."""
    for tmp in Path(folder).glob("*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``torch.load(weights_only=True)`` only reconstructs tensors and plain containers,
    so a tampered file cannot run code; anything else raises ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to parse an untrusted file means "not a checkpoint"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable spoco checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a spoco checkpoint (format {FORMAT!r} expected)")
    return state
