"""Every file of the malformed-file corpus (``tests/data/corpus``, see its README) through
the readers, ``load_checkpoint`` and the ``spoco`` command line (train, predict, segment,
evaluate, in process). Each must end in a result or in a clear error that names the
file: ``ValueError``/``TypeError``/``KeyError``/``FileNotFoundError`` from the library,
exit code 2 with a one-line message from the command line.

Known failures would be strict xfails with their reason (:data:`KNOWN`, empty now: the 46
found when the corpus was written are fixed); cases that hang would not be run (:data:`HANGS`,
empty now too).
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spoco.cli import main
from spoco.data import io
from spoco.training import load_checkpoint
from tests._helpers.fuzz import CLEAR

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name not in ("README.md", "make_corpus.py", "__pycache__"))
IMAGES = [f for f in FILES if Path(f).suffix in io.SUFFIXES]  # what the readers take
CHECKPOINTS = [f for f in FILES if Path(f).suffix in (".pt", ".zip")] + ["image.tif", "empty.h5"]
KEY = "embeddings"  # the dataset of every HDF5 file of the corpus

#: Files holding valid data, however odd (complex, 1-D, NaN, huge ids): read_array reads them.
READABLE = {"complex.h5", "complex.tif", "complex.zarr", "compound.h5", "emb_1d.h5", "emb_2d.tif", "emb_5d.h5",
            "emb_int.h5", "emb_nan.h5", "emb_ok.tif", "image.tif", "image_1d.h5", "image_5ch.tif", "image_5d.tif",
            "image_nan.tif", "image_tiny.tif", "labels_all_zero.tif", "labels_bool.tif", "labels_float.tif",
            "labels_float_nan.tif", "labels_huge.tif", "labels_negative.tif", "labels_ok.tif",
            "labels_one_pixel.tif", "labels_rgb.tif", "labels_uint64_max.tif", "pair_mismatch_image.tif",
            "pair_mismatch_labels.tif", "scalar.h5", "strings.h5", "zero_size.h5"}
#: Checkpoints in spoco's format (load_checkpoint reads them; the model in them may be broken).
SPOCO_FORMAT = {"valid_tiny.pt", "no_model.pt", "bad_model_config.pt", "huge_model_config.pt",
                "mismatched_weights.pt"}

KNOWN = {}  # known failures: none left (each file that failed here was fixed)
#: Cases that hang instead of failing: not run.
HANGS = {}  # none left: a header declaring 2**48 pixels is refused by the output's disk-space check


def cases(entry: str, files):
    """``files`` as parameters, the known failures of ``entry`` marked."""
    out = []
    for f in files:
        if f in HANGS.get(entry, {}):
            out.append(pytest.param(f, marks=pytest.mark.xfail(run=False, reason=HANGS[entry][f])))
        elif f in KNOWN.get(entry, {}):
            out.append(pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=KNOWN[entry][f])))
        else:
            out.append(f)
    return out


def _key(name: str):
    return KEY if Path(name).suffix in io.HDF5 else None


def _key_args(name: str, flag: str = "--key") -> list:
    return [flag, KEY] if _key(name) else []


def _names_the_file(err: BaseException, name: str) -> None:
    assert isinstance(err, CLEAR), f"{type(err).__name__}: {err}"
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    assert name in message, f"{type(err).__name__} does not name {name}: {message}"


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of ``spoco <argv>`` run in this process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _refused(code: int, err: str, name: str) -> None:
    """Exit code 2 and, last on stderr (after any library warning), one line naming the file."""
    assert code == 2, (code, err)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith("spoco ") and name in last and "Traceback" not in err, err


@pytest.fixture
def restore_threads():
    """``spoco train --threads 1`` sets torch's and spoco's thread counts for the process."""
    from spoco import _core

    before = torch.get_num_threads(), _core.max_threads()
    yield
    torch.set_num_threads(before[0])
    _core.set_max_threads(before[1])


# ---- the corpus itself -------------------------------------------------------------------

def test_the_corpus_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    assert FILES == sorted(make_corpus.FILES)
    readme = (CORPUS / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in FILES)
    for name in FILES:
        path = CORPUS / name
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        assert size <= 8192, (name, size)


# ---- library entry points ----------------------------------------------------------------

@pytest.mark.parametrize("name", IMAGES)
def test_read_array(name):
    try:
        array = io.read_array(CORPUS / name, _key(name))
    except Exception as err:  # noqa: BLE001 - the test is what was raised
        assert name not in READABLE, f"{name} holds valid data, yet: {err}"
        _names_the_file(err, name)
        return
    assert name in READABLE, f"{name} is broken, yet read_array gave {type(array).__name__}"
    assert isinstance(array, np.ndarray)


@pytest.mark.parametrize("name", cases("open_array", IMAGES))
def test_open_array(name):
    try:
        lazy = io.open_array(CORPUS / name, _key(name))
    except Exception as err:  # noqa: BLE001
        _names_the_file(err, name)
        return
    assert hasattr(lazy, "shape") and hasattr(lazy, "dtype")
    if name in READABLE:  # the lazy view and the whole array agree
        whole = io.read_array(CORPUS / name, _key(name))
        assert tuple(lazy.shape) == whole.shape and np.dtype(lazy.dtype) == whole.dtype


@pytest.mark.parametrize("name", FILES)
def test_load_checkpoint(name):
    try:
        state = load_checkpoint(CORPUS / name)
    except Exception as err:  # noqa: BLE001
        assert name not in SPOCO_FORMAT, err
        _names_the_file(err, name)
        return
    assert name in SPOCO_FORMAT and isinstance(state, dict)


# ---- the command line --------------------------------------------------------------------

@pytest.mark.parametrize("name", cases("segment", IMAGES))
def test_cli_segment(name, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    code, err = cli(capsys, "segment", CORPUS / name, *_key_args(name), "--out", out, "--quiet")
    if code == 0:
        emb = io.read_array(CORPUS / name, _key(name))
        assert io.read_array(out).shape == emb.shape[1:]
    else:
        _refused(code, err, name)


@pytest.mark.parametrize("name", cases("predict_checkpoint", CHECKPOINTS))
def test_cli_predict_checkpoint(name, tmp_path, capsys):
    code, err = cli(capsys, "predict", "--checkpoint", CORPUS / name, "--images", CORPUS / "image.tif",
                    "--out", tmp_path / "emb.h5", "--device", "cpu", "--quiet")
    if name == "valid_tiny.pt":
        assert code == 0, err
    else:
        _refused(code, err, name)


@pytest.mark.parametrize("name", cases("predict_image", IMAGES))
def test_cli_predict_image(name, tmp_path, capsys):
    """Images for a 2D network with one input channel (``valid_tiny.pt``)."""
    out = tmp_path / "emb.h5"
    code, err = cli(capsys, "predict", "--checkpoint", CORPUS / "valid_tiny.pt", "--images", CORPUS / name,
                    *_key_args(name), "--out", out, "--device", "cpu", "--quiet")
    if code == 0:
        emb = io.read_array(out, KEY)
        assert emb.shape[0] == 2 and np.isfinite(emb).all(), (emb.shape, np.isfinite(emb).mean())
    else:
        _refused(code, err, name)


@pytest.mark.parametrize("name", IMAGES)
def test_cli_evaluate(name, capsys):
    """Each file as ground truth and as prediction against a valid label image."""
    ok = CORPUS / "labels_ok.tif"
    for args in (("--gt", CORPUS / name, *_key_args(name, "--gt-key"), "--pred", ok),
                 ("--gt", ok, "--pred", CORPUS / name, *_key_args(name, "--pred-key"))):
        code, err = cli(capsys, "evaluate", *args)
        if code != 0:
            _refused(code, err, name)


# label files paired with image.tif, images paired with labels_ok.tif
TRAIN = [(f, "labels") for f in FILES if f.startswith("labels_")] + [("pair_mismatch_labels.tif", "labels")] + \
    [(f, "images") for f in ("image_nan.tif", "image_5d.tif", "image_tiny.tif", "image_5ch.tif", "complex.tif",
                             "truncated.tif", "huge_dims.tif", "corrupt_chunk.h5")]
#: Pairs that must train: huge ids are legal labels, an image may have several channels.
MUST_TRAIN = {"labels_ok.tif", "labels_all_zero.tif", "labels_huge.tif", "image_5ch.tif"}


@pytest.mark.parametrize("name, role", TRAIN)
def test_cli_train(name, role, tmp_path, capsys, restore_threads):
    stem = Path(name).stem
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    partner = "pair_mismatch_image.tif" if name.startswith("pair") else "image.tif"
    image, labels = (partner, name) if role == "labels" else (name, "labels_ok.tif")
    shutil.copy(CORPUS / image, tmp_path / "images" / (stem + Path(image).suffix))
    shutil.copy(CORPUS / labels, tmp_path / "labels" / (stem + ".tif"))
    code, err = cli(capsys, "train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                    *_key_args(image), "--out", tmp_path / "run", "--iters", "1", "--f-maps", "2", "--depth", "1",
                    "--embedding-dim", "2", "--patch-shape", "16", "16", "--batch-size", "1", "--threads", "1",
                    "--quiet")
    if name in MUST_TRAIN:
        assert code == 0 and (tmp_path / "run" / "last.pt").is_file(), err
    elif code != 0:
        _refused(code, err, stem)


@pytest.mark.parametrize("name", ["huge_shape.h5", "huge_shape.zarr"])
def test_block_wise_segment_of_a_petabyte_header_is_refused(name, tmp_path, capsys):
    """A header declaring 2**48 pixels would be segmented block by block for ever: its output
    cannot fit on the disk, and the command says so before starting."""
    code, err = cli(capsys, "segment", CORPUS / name, *_key_args(name), "--block-shape", "8", "--out",
                    tmp_path / "labels.zarr", "--quiet")
    _refused(code, err, name)
    if name.endswith(".zarr"):  # (D, Z, Y, X): refused for its size (the .h5 one is 2-D: refused for its shape)
        assert "free on its disk" in err
