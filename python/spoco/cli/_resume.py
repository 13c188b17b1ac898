"""Outputs of ``spoco predict`` and ``spoco segment`` that survive ``kill -9``.

Running the same command again after a kill finishes the job: finished tiles or blocks
are recorded in ``<out>.spoco-progress/`` (:mod:`spoco._journal`) and skipped, and the
output equals an uninterrupted run's. ``--restart`` throws the progress away.

zarr outputs are written in place: zarr writes every chunk to a temporary file and
renames it, so a kill never leaves a torn chunk. HDF5 is not safe that way: a process
killed while writing compressed chunks leaves chunks that can no longer be read or
overwritten (12 of 20 kills in a test of this), so an HDF5 output is staged in a zarr
array inside the progress folder and copied into the HDF5 file at the end; a kill
during the copy repeats the copy only (an HDF5 file that the job itself created is made
again, since a kill while HDF5 writes can leave it unreadable; a file that existed before
is never deleted). A lock on the output makes a second process
writing the same output fail at once.
"""
from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import numpy as np

from .._journal import JOB_ATTR, Journal, output_lock, write_atomic

PROGRESS_SUFFIX = ".spoco-progress"
CREATES_OUTPUT = "creates_output"  # in the progress folder: the HDF5 output file did not exist before the job


def source_identity(path) -> dict:
    """What identifies an input file for the journal: path, size and modification time
    (a changed input is another job)."""
    from ..data import io

    path = Path(io.split_key(path)[0]).resolve()
    stat = path.stat()
    if path.is_dir():  # a zarr store: the newest entry's time
        stat = max((p.stat() for p in path.rglob("*")), key=lambda s: s.st_mtime_ns, default=stat)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class ResumableOutput:
    """The output array of one job, resumed from ``<out>.spoco-progress`` when it exists.

    Use as ``with ResumableOutput(out, key, job, restart) as res: arr = res.array(...); ...;
    res.finish(attrs)``. ``res.folder`` is the progress folder (the job puts its own
    journal of tiles/blocks inside).
    """

    def __init__(self, out, key, job: dict, restart: bool = False, quiet: bool = False):
        from ..data import io

        # an OME-Zarr output is one image: the array is its level "0", whatever the key
        key = None if io.is_ome(out) else key
        self.out, self.key, self.job, self.restart, self.quiet = Path(out), key, job, restart, quiet
        self.folder = Path(f"{self.out}{PROGRESS_SUFFIX}")
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        self._stack.enter_context(output_lock(self.out, f"the output {self.out}"))
        if self.restart:
            shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.journal = Journal(self.folder, {"out": str(self.out), "key": self.key, **self.job})
        except BaseException:
            self._stack.close()
            raise
        if not self.journal.resumed and self.staged and not self.out.exists():
            write_atomic(self.folder / CREATES_OUTPUT, b"", True)
        if self.journal.resumed and not self.quiet:
            print(f"resuming the interrupted run recorded in {self.folder} (--restart to start again)")
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    @property
    def staged(self) -> bool:
        from ..data import io

        return self.out.suffix.lower() in io.HDF5

    def array(self, shape, dtype, chunks, **metadata):
        """The array to write into: the zarr output itself, or the zarr staging array of
        an HDF5 output; the one of the interrupted run when resuming and it fits.
        ``metadata``: voxel_size, channels, labels (see :func:`spoco.data.io.create_array`)."""
        from ..data import io

        path, key = (self.folder / "staging.zarr", None) if self.staged else (self.out, self.key)
        with self._naming_output():
            if self.journal.resumed:
                existing = io.open_for_update(path, key)
                if existing is not None and tuple(existing.shape) == tuple(shape) \
                        and np.dtype(existing.dtype) == np.dtype(dtype):
                    return existing
            return io.create_array(path, shape, dtype, key=key, chunks=chunks, **metadata)

    @contextlib.contextmanager
    def _naming_output(self):
        """An output that cannot be opened or written (a damaged file, no permission, a full
        disk) is reported as such, naming the output, not the job's input."""
        from . import OutputError

        try:
            yield
        except OSError as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise OutputError(f"the output {self.out} cannot be written ({first}); "
                              "delete it or choose another --out") from None

    def finish(self, array, attrs: dict | None = None) -> None:
        """Mark ``array`` (from :meth:`array`) complete, copy a staged HDF5 output into place,
        and delete the progress folder."""
        with self._naming_output():
            self._finish(array, attrs)

    def _finish(self, array, attrs) -> None:
        from ..data import io

        for name, value in (attrs or {}).items():
            array.attrs[name] = value
        if JOB_ATTR in array.attrs:  # the journal's stamp: of no use once the job is done
            del array.attrs[JOB_ATTR]
        if self.staged:
            io.set_complete(array, True)
            voxel = array.attrs.get(io.VOXEL_ATTR)
            if (self.folder / CREATES_OUTPUT).exists():  # ours: a kill while it was written may have torn it
                self.out.unlink(missing_ok=True)
            target = io.create_array(self.out, array.shape, array.dtype, key=self.key, chunks=array.chunks,
                                     voxel_size=voxel)
            try:
                _copy(array, target)
                for name, value in (attrs or {}).items():
                    target.attrs[name] = value
                io.set_complete(target, True)
            finally:
                target.file.close()
        else:
            io.set_complete(array, True)
        self.journal.remove()


def _copy(src, dst) -> None:
    """``dst[...] = src[...]`` a chunk row at a time (bounded memory)."""
    chunks = src.chunks
    for starts in np.ndindex(*(math.ceil(s / c) for s, c in zip(src.shape, chunks))):
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(starts, chunks, src.shape))
        dst[sl] = src[sl]
