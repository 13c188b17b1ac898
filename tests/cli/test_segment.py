"""``spoco segment`` end to end: files in, labels out, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import spoco
from spoco.cli import main
from spoco.clustering import default_offsets
from spoco.data.io import open_array

BLOCKS = ["--block-shape", "10", "24", "24", "--halo", "9", "--long-range", "3", "9"]


@pytest.fixture
def files(volume, rng, tmp_path):
    _, emb = volume(rng, (20, 50, 60), 12)
    zarr.open_group(str(tmp_path / "emb.zarr"), mode="w").create_array("emb", data=emb.astype(np.float16),
                                                                      chunks=(8, 10, 32, 32))
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["pred/emb"] = emb
    off, n_att = default_offsets(3, (3, 9))
    expected = spoco.cluster_blockwise(emb, block_shape=(10, 24, 24), halo=9, offsets=off, n_attractive=n_att)
    expected16 = spoco.cluster_blockwise(emb.astype(np.float16), block_shape=(10, 24, 24), halo=9, offsets=off,
                                         n_attractive=n_att)
    return tmp_path, expected, expected16


def spoco_cli(*commands):
    """Run ``spoco segment`` commands in one fresh interpreter (one import of torch);
    returns the exit codes and the captured stderr."""
    code = ("import sys, json; from spoco.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    print('rc', main(['segment', *argv]), flush=True); print('--', file=sys.stderr, flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code, json.dumps([list(map(str, c)) for c in commands])],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("rc ")], res.stderr.split("--\n")


def test_segment_zarr_and_hdf5_subprocess(files):
    tmp, expected, expected16 = files
    codes, errs = spoco_cli(
        [tmp / "emb.zarr", "--key", "emb", *BLOCKS, "--threads", "2", "--out", tmp / "lab.zarr", "--out-key", "seg"],
        [tmp / "emb.h5", *BLOCKS, "--quiet", "--out", tmp / "lab.h5"],  # the file's only dataset: no --key
        [tmp / "emb.h5", "--key", "nope", *BLOCKS, "--out", tmp / "x.zarr"])
    assert codes == [0, 0, 2], errs
    assert "segment" in errs[0] and errs[1] == ""  # a progress bar, unless --quiet
    assert errs[2].strip() == f"spoco segment: error: {tmp / 'emb.h5'}: no dataset 'nope'; datasets in the file: ['pred/emb']"
    np.testing.assert_array_equal(open_array(str(tmp / "lab.zarr"), "seg")[:], expected16)
    with h5py.File(tmp / "lab.h5", "r") as f:
        np.testing.assert_array_equal(f["labels"][:], expected)
        assert bool(f["labels"].attrs["spoco_complete"])


def test_segment_tif_in_process(files, capsys):
    tmp, expected, _ = files
    with h5py.File(tmp / "emb.h5", "r") as f:
        tifffile.imwrite(tmp / "emb.tif", f["pred/emb"][:])
    assert main(["segment", str(tmp / "emb.tif"), *BLOCKS, "--quiet", "--out", str(tmp / "lab.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp / "lab.tif"), expected)
    assert not (tmp / "lab.tif.partial").exists()


@pytest.mark.parametrize("args, message", [
    (["missing.zarr", "--key", "emb", "--block-shape", "8"], "missing.zarr: no such file or directory"),
    (["{tmp}/emb.zarr", "--key", "nope", "--block-shape", "8"], "no array 'nope'; arrays in the store: ['emb']"),
    (["{tmp}/emb.zarr", "--key", "emb", "--block-shape", "8", "8"], "--block-shape needs 1 or 3 integers"),
    (["{tmp}/emb.zarr", "--key", "emb", "--block-shape", "0"], "--block-shape must be positive"),
    (["{tmp}/emb.zarr", "--key", "emb", "--block-shape", "8", "--halo", "5"],
     "halo must be at least the longest offset along every axis, (19, 27, 27), got (5, 5, 5)"),
    (["{tmp}/emb.txt", "--block-shape", "8"], "unsupported file type '.txt'"),
])
def test_segment_errors_are_one_line(files, capsys, args, message):
    tmp, _, _ = files
    args = [a.format(tmp=tmp) for a in args] + ["--out", str(tmp / "out.zarr")]
    assert main(["segment", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spoco segment: error: ") and message in err and err.count("\n") == 1, err


def test_stored_merge_distance_is_named_when_block_wise(files, capsys):
    """A merge distance chosen by the training run travels with the embeddings; block-wise
    segmentation cannot apply it and says so on stderr; a merge distance given here with
    --block-shape is an error."""
    tmp, expected, _ = files
    with h5py.File(tmp / "emb.h5", "a") as f:
        f["pred/emb"].attrs["spoco_segmentation"] = json.dumps({"merge_distance": 4.0})
    argv = ["segment", str(tmp / "emb.h5"), *BLOCKS, "--quiet", "--out"]
    assert main(argv + [str(tmp / "a.h5")]) == 0
    err = capsys.readouterr().err
    assert "does not apply the training run's post-processing" in err and "merge distance 4" in err, err
    with h5py.File(tmp / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["labels"][:], expected)
    assert main(argv + [str(tmp / "b.h5"), "--merge-distance", "0"]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv + [str(tmp / "c.h5"), "--merge-distance", "1"]) == 2
    assert "omit --block-shape" in capsys.readouterr().err


def test_failed_run_leaves_output_marked_incomplete(files, capsys):
    tmp, _, _ = files
    # the halo error is raised after the output array exists
    assert main(["segment", str(tmp / "emb.zarr"), "--key", "emb", "--block-shape", "8", "--halo", "5",
                 "--out", str(tmp / "o.zarr")]) == 2
    with pytest.raises(ValueError, match="incomplete"):
        open_array(str(tmp / "o.zarr"), "labels")
