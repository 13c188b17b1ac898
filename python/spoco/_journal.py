"""Jobs that survive ``kill -9``: a journal folder of finished pieces, and an output lock.

Block-wise segmentation and tiled prediction write large outputs piece by piece for
hours. A :class:`Journal` is a folder next to the output that records which pieces
(blocks, tiles) are finished, durably (each record is written to a temporary file,
flushed to disk and renamed, so it exists whole or not at all). A run that finds the
journal of the same job skips the finished pieces; a killed run therefore loses only
the pieces in flight. The journal is deleted when the job completes.

A journal belongs to one job: ``job.json`` holds everything the pieces depend on
(shapes, settings, the input's identity); a run with different settings refuses the
folder instead of mixing two jobs' pieces.

Markers of pieces written into an output array are only trusted while that array is
the one they were written to: the journal stamps the array with its id
(:meth:`Journal.bind`); an output created anew (no stamp) starts its pieces again.

:func:`output_lock` makes a second process that writes the same output fail at once
with a clear error instead of interleaving its writes (an advisory ``flock`` lock the
kernel releases when the holder dies, so a killed job leaves no stale lock).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

JOB_FILE = "job.json"
JOB_ATTR = "spoco_job"  # attribute of an output array: the id of the journal writing it


class OutputLockedError(RuntimeError):
    """Another process holds the lock of an output."""


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open directories; rename is durable enough there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds all of it or does not exist; with
    ``durable``, also on disk (fsync) before returning, so a power cut keeps it too."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


class Journal:
    """The journal folder of one job.

    Parameters
    ----------
    folder : path
        Created if missing. If it holds another job's ``job.json``, ValueError.
    job : dict (JSON-serialisable)
        Everything the job's pieces depend on.
    durable : bool
        Flush every record to disk (fsync). ``False`` for scratch folders that die with the run.
    """

    def __init__(self, folder, job: dict, durable: bool = True):
        self.folder, self.durable = Path(folder), bool(durable)
        job = json.loads(json.dumps(job))  # normalise (tuples -> lists) for the comparison
        path = self.folder / JOB_FILE
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = None
            if not isinstance(stored, dict) or stored.get("job") != job:
                raise ValueError(f"{self.folder} holds the progress of another job (different input or "
                                 f"settings: {_difference(stored, job)}); delete the folder to start again")
            self.id, self.resumed = stored["id"], True
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.id, self.resumed = uuid.uuid4().hex, False
            write_atomic(path, json.dumps({"id": self.id, "job": job}, indent=1).encode(), self.durable)

    @classmethod
    def reopen(cls, folder, durable: bool = True) -> "Journal":
        """The existing journal ``folder``, e.g. in a worker process of the run that opened it."""
        self = cls.__new__(cls)
        self.folder, self.durable = Path(folder), bool(durable)
        stored = json.loads((self.folder / JOB_FILE).read_text())
        self.id, self.resumed = stored["id"], True
        return self

    # ------------------------------------------------------------------ pieces
    def _kind(self, kind: str) -> Path:
        folder = self.folder / kind
        folder.mkdir(exist_ok=True)
        return folder

    def done(self, kind: str) -> set:
        """The integer ids of the finished pieces of ``kind`` ("blocks", "tiles", ...)."""
        folder = self.folder / kind
        if not folder.is_dir():
            return set()
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}

    def mark(self, kind: str, index: int, data: bytes = b"") -> None:
        """Record piece ``index`` of ``kind`` as finished (with an optional payload)."""
        write_atomic(self._kind(kind) / str(int(index)), data, self.durable)

    def path(self, kind: str, index: int) -> Path:
        """The file holding the payload of piece ``index`` of ``kind``."""
        return self.folder / kind / str(int(index))

    def forget(self, kind: str) -> None:
        """Drop every record of ``kind``."""
        shutil.rmtree(self.folder / kind, ignore_errors=True)

    def bind(self, array, kind: str) -> None:
        """Trust the records of ``kind`` (pieces written into ``array``) only if ``array`` is the
        array they were written to; stamp ``array`` with this journal's id."""
        attrs = getattr(array, "attrs", None)
        if attrs is None or attrs.get(JOB_ATTR) != self.id:
            self.forget(kind)
        if attrs is not None:
            attrs[JOB_ATTR] = self.id

    def remove(self) -> None:
        """Delete the journal (the job is complete). The folder is renamed first, so a kill
        during the deletion never leaves a half-deleted journal that looks like a job."""
        gone = self.folder.with_name(f".{self.folder.name}.removed-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(self.folder, gone)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)


def _difference(stored, job) -> str:
    if not isinstance(stored, dict) or not isinstance(stored.get("job"), dict):
        return "unreadable job.json"
    old = stored["job"]
    keys = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} then, {job.get(k)!r} now" for k in keys[:4])


def flush_array(array) -> None:
    """Push an h5py dataset's writes to the file before a journal records them (HDF5 keeps
    them in memory until a flush: killed before it, the file may hold none of them; zarr
    writes each chunk as it goes)."""
    f = getattr(array, "file", None)
    if f is not None and hasattr(f, "flush"):
        f.flush()


@contextlib.contextmanager
def output_lock(output, what: str | None = None):
    """Hold an exclusive lock on ``output`` (a file or folder path) while the block runs.

    The lock is the hidden file ``.<name>.lock`` next to ``output`` (kept afterwards: deleting
    a lock file races with a process about to lock it). A second process raises
    :class:`OutputLockedError` naming ``output`` at once. Locks are advisory: they
    serialise spoco's writers, not other programs.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.with_name(f".{output.name}.lock")
    fh = open(path, "a+b")
    try:
        try:
            _lock(fh)
        except OSError:
            raise OutputLockedError(f"{what or output} is being written by another process (lock {path}); "
                                    "wait for it to finish or choose another output") from None
        yield
    finally:
        fh.close()  # closing releases the lock


def _lock(fh) -> None:
    if os.name == "posix":
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
