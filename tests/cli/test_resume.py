"""Fault injection: ``spoco segment`` (block-wise) and ``spoco predict`` (tiled) killed with
SIGKILL at random moments, then run again with the same command, give exactly the output
of an uninterrupted run, and never recompute a block or tile that had been finished.

The commands run in a child interpreter whose pieces are slowed down (a sleep per block,
tile and relabelled block), so that kills land in every phase: segmentation, stitching,
the writing of the labels, the copy of a staged HDF5 output, the cleanup. The child logs
``start <i>`` when it begins a piece and ``done <i>`` when the piece is recorded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from spoco._journal import Journal, output_lock
from spoco.cli import main
from spoco.cli._resume import PROGRESS_SUFFIX, ResumableOutput

_CHILD = textwrap.dedent("""
    import json, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    import spoco._journal as journal
    import spoco.clustering.blockwise as blockwise
    import spoco.predict as predict
    from spoco.cli import main

    mark = journal.Journal.mark
    def logged_mark(self, kind, index, data=b""):
        mark(self, kind, index, data)
        if kind in ("blocks", "tiles"):
            log.write(f"done {index}\\n")
    journal.Journal.mark = logged_mark

    segment = blockwise._Run._segment
    def slow_segment(self, flat):
        log.write(f"start {flat}\\n")
        time.sleep(0.02)
        return segment(self, flat)
    blockwise._Run._segment = slow_segment

    relabel = blockwise._Run._relabel
    def slow_relabel(self, *args):
        time.sleep(0.01)
        return relabel(self, *args)
    blockwise._Run._relabel = slow_relabel

    tiles = predict._predict_tiles
    def slow_tiles(model, image, todo, *args):
        def logged():
            for index, item in todo:
                log.write(f"start {index}\\n")
                time.sleep(0.02)
                yield index, item
        return tiles(model, image, logged(), *args)
    predict._predict_tiles = slow_tiles

    sys.exit(main(json.loads(sys.argv[2])))
""")

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(argv, log, kill_after=None):
    """Run the slowed-down CLI. With ``kill_after``, SIGKILL it that many seconds after it
    began its first piece. Returns (return code, seconds from the first piece to the end)."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(log), json.dumps([str(a) for a in argv])], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and log.exists() and "start" in log.read_text():
            first = time.perf_counter()
        if first is not None and kill_after is not None and time.perf_counter() - first >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=300)
    if kill_after is None:
        assert proc.returncode == 0, err[-3000:]
    return proc.returncode, time.perf_counter() - (first or time.perf_counter())


def _events(log: Path, what: str) -> set:
    if not log.exists():
        return set()
    return {int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(what + " ")}


def _read(path: Path, key: str) -> np.ndarray:
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            assert f[key].attrs["spoco_complete"]
            return f[key][...]
    arr = zarr.open_group(str(path), mode="r")[key]
    assert arr.attrs["spoco_complete"] is True
    return arr[...]


def _kill_and_resume(tmp_path, rng, argv_for, key, n_kills):
    """The reference run, then ``n_kills`` killed runs each followed by a resumed one; checks
    equality and that no finished piece was computed twice."""
    ref_out = tmp_path / f"reference{argv_for.suffix}"
    _, seconds = _run(argv_for(ref_out), tmp_path / "reference.log")
    reference = _read(ref_out, key)
    for trial in range(n_kills):
        out = tmp_path / f"out{trial}{argv_for.suffix}"
        killed_log, resumed_log = tmp_path / f"killed{trial}.log", tmp_path / f"resumed{trial}.log"
        kill_after = float(rng.uniform(0, 1.05)) * seconds
        code, _ = _run(argv_for(out), killed_log, kill_after=kill_after)
        finished = _events(killed_log, "done")
        print(f"trial {trial}: killed after {kill_after:.2f} s of {seconds:.2f} s (exit {code}); "
              f"{len(finished)} pieces finished, {len(_events(killed_log, 'start') - finished)} in flight")
        finished_job = not Path(f"{out}{PROGRESS_SUFFIX}").exists() and out.exists()  # killed after the end
        _run(argv_for(out), resumed_log)
        if code == 0 or finished_job:  # the kill came after the job had ended: the second run is a fresh job
            assert not Path(f"{out}{PROGRESS_SUFFIX}").exists()
        else:
            redone = _events(resumed_log, "start") & finished
            assert not redone, f"finished pieces computed again: {sorted(redone)}"
        np.testing.assert_array_equal(_read(out, key), reference)
        assert not Path(f"{out}{PROGRESS_SUFFIX}").exists()


class _Argv:
    def __init__(self, make, suffix):
        self.make, self.suffix = make, suffix

    def __call__(self, out):
        return self.make(out)


@pytest.fixture
def embeddings(volume, rng, tmp_path):
    _, emb = volume(rng, (12, 60, 60), 10)
    path = tmp_path / "emb.zarr"
    zarr.open_group(str(path), mode="w").create_array("emb", data=emb.astype(np.float32), chunks=(8, 6, 30, 30))
    return path


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_segment_killed_anywhere_resumes_to_the_same_labels(embeddings, tmp_path, rng, suffix):
    argv = _Argv(lambda out: ["segment", embeddings, "--key", "emb", "--out", out, "--block-shape", 4, 15, 15,
                              "--halo", 9, "--long-range", 3, 9, "--threads", 2, "--quiet"], suffix)
    _kill_and_resume(tmp_path, rng, argv, "labels", n_kills=2)


@pytest.fixture
def checkpoint(tmp_path):
    from tests._helpers.data import tiny_checkpoint

    return tiny_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_predict_killed_anywhere_resumes_to_the_same_embeddings(checkpoint, rng, tmp_path, suffix):
    image = tmp_path / "image.tif"
    import tifffile

    tifffile.imwrite(image, rng.integers(0, 4000, (96, 128), dtype=np.uint16))
    argv = _Argv(lambda out: ["predict", "--checkpoint", checkpoint, "--images", image, "--out", out,
                              "--tile-shape", 16, 16, "--halo", 8, "--device", "cpu", "--quiet"], suffix)
    _kill_and_resume(tmp_path, rng, argv, "embeddings", n_kills=2)


def test_progress_of_another_job_is_refused_and_restart_discards_it(embeddings, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    Journal(Path(f"{out}{PROGRESS_SUFFIX}"), {"out": str(out), "key": "labels", "what": "something else"})
    argv = ["segment", str(embeddings), "--key", "emb", "--out", str(out), "--block-shape", "6", "30", "30",
            "--halo", "9", "--long-range", "3", "9", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out}{PROGRESS_SUFFIX} holds the progress of another job" in err and "what" in err
    assert main(argv + ["--restart"]) == 0
    assert not Path(f"{out}{PROGRESS_SUFFIX}").exists()
    assert _read(out, "labels").max() > 0


def test_second_writer_of_an_output_is_refused(embeddings, tmp_path, capsys):
    out = tmp_path / "labels.h5"
    argv = ["segment", str(embeddings), "--key", "emb", "--out", str(out), "--block-shape", "6", "30", "30",
            "--halo", "9", "--long-range", "3", "9", "--quiet"]
    with output_lock(out):  # another process (a lock held on another open file description)
        assert main(argv) == 2
        assert f"{out} is being written by another process" in capsys.readouterr().err
        assert not out.exists()
    assert main(argv) == 0


def test_in_memory_output_is_locked_too(embeddings, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    with output_lock(out):
        assert main(["segment", str(embeddings), "--key", "emb", "--out", str(out), "--quiet"]) == 2
    assert "being written by another process" in capsys.readouterr().err


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, capsys):
    from spoco.demo import DATA_DIR

    images, labels = DATA_DIR / "val" / "images", DATA_DIR / "val" / "labels"
    with output_lock(tmp_path / "run"):  # another spoco train holds the folder
        assert main(["train", "--images", str(images), "--labels", str(labels), "--iters", "1", "--threads", "1",
                     "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert f"the run folder {tmp_path / 'run'} is being written by another process" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "segment"])
def test_damaged_output_file_is_named_not_the_input(checkpoint, embeddings, rng, tmp_path, capsys, command):
    """A torn HDF5 output (a kill while the file was created) is reported as the output's
    problem, with the way out, not as an error of the input."""
    out = tmp_path / "out.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))  # 96 bytes: an HDF5 signature, no file
    if command == "predict":
        import tifffile

        src = tmp_path / "image.tif"
        tifffile.imwrite(src, rng.integers(0, 4000, (32, 32), dtype=np.uint16))
        argv = ["predict", "--checkpoint", str(checkpoint), "--images", str(src), "--out", str(out),
                "--device", "cpu", "--quiet"]
    else:
        src = embeddings
        argv = ["segment", str(src), "--key", "emb", "--out", str(out), "--block-shape", "6", "30", "30",
                "--halo", "9", "--long-range", "3", "9", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: the output {out} cannot be written" in err and "delete it or choose another --out" in err
    assert f"error: {src}" not in err


@pytest.mark.parametrize("existed", [False, True])
def test_hdf5_output_torn_while_copied_is_made_again_only_if_the_job_created_it(rng, tmp_path, existed):
    """A kill while the staged result is copied into the HDF5 file can leave the file
    unreadable. The resumed job makes a file it created itself again; a file that existed
    before the job (it may hold other datasets) is never deleted: the error names it."""
    out = tmp_path / "out.h5"
    if existed:
        with h5py.File(out, "w") as f:
            f["other"] = np.arange(3)
    data = rng.standard_normal((2, 8, 8)).astype(np.float32)
    job = {"what": "test"}
    with ResumableOutput(out, "emb", job, quiet=True) as res:  # killed after the last tile
        res.array(data.shape, "float32", (2, 8, 8))[...] = data
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))  # what a kill during h5py's file creation leaves
    from spoco.cli import OutputError

    with ResumableOutput(out, "emb", job, quiet=True) as res:
        arr = res.array(data.shape, "float32", (2, 8, 8))
        if existed:
            with pytest.raises(OutputError, match="cannot be written"):
                res.finish(arr)
            assert out.stat().st_size == 96
            return
        res.finish(arr)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["emb"][...], data)
    assert not Path(f"{out}{PROGRESS_SUFFIX}").exists()
