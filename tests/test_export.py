"""spoco export: a checkpoint as a bioimage.io model package that passes bioimage.io's
validation and test run, whose output equals spoco predict's, and that spoco predict
accepts in place of the checkpoint."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
import torch
import yaml

from spoco.data import normalize_image, synthetic_images, write_array
from spoco.export import is_package, load_package
from spoco.export.network import EmbeddingNetwork
from spoco.models import UNet
from spoco.predict import _embeddings, predict

ENV = dict(os.environ, OMP_NUM_THREADS="1")
# bioimage.io runs TorchScript, which torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit:DeprecationWarning")


def _bioimageio_core():
    """bioimageio.core, or a skip where it is missing; in CI (where the test command installs
    the ``export`` extra) its absence is a failure."""
    try:
        import bioimageio.core
    except ImportError as err:
        if os.environ.get("CI"):
            raise AssertionError(f"bioimageio.core must be installed in CI (the export extra): {err}") from None
        pytest.skip("bioimageio.core is not installed (pip install -e '.[export]'; scripts/setup_env.sh does)")
    return bioimageio.core


def spoco(*args, cwd, capsys, ok=True):
    """The command line, run in this process (a subprocess per command would double the
    test's time); returns ``(exit code, stdout, stderr)``."""
    from spoco.cli import main

    capsys.readouterr()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code = main([str(a) for a in args])
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    if ok:
        assert code == 0, err[-3000:]
    return code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint of a tiny 2D network with a foreground head and spatial embeddings whose
    run validated the EMA network g (f and g differ), and a raw uint16 image."""
    from spoco.training import TrainConfig, save_checkpoint
    from spoco.training.trainer import build_model

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = TrainConfig(patch_shape=(32, 32), f_maps=4, embedding_dim=4, foreground=True, spatial_scale=4.0,
                         fraction=0.1, eval_network="g", foreground_threshold=0.4, min_size=5)
    f = build_model(config, 1)
    g = build_model(config, 1)
    for model, rate in ((f, 0.5), (g, 0.3)):
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # as after training
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
        model.label_rate.fill_(rate)
    save_checkpoint(root / "best.pt", {"model_config": f.config, "model": f.state_dict(), "ema": {"g": g.state_dict()},
                                       "config": config.to_dict(), "best_score": 0.75})
    image = synthetic_images(1, (70, 90), kind="intensity", rng=1)[0][0, 0]
    write_array(root / "image.tif", (1000 + 300 * image).clip(0, 65535).astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def package(run):
    _bioimageio_core()  # the export extra
    from spoco.export import export_bioimageio

    return export_bioimageio(run / "best.pt", run / "model.zip", test_image=run / "image.tif", authors=["A. Person"])


def _checkpoint_model(run, network=None):
    from spoco.training import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(run / "best.pt"), network=network).eval()


@pytest.mark.parametrize("ndim, foreground, scale", [(2, True, 4.0), (2, False, None), (3, True, 2.0)])
def test_exported_network_is_the_unet_plus_what_predict_adds(ndim, foreground, scale):
    torch.manual_seed(0)
    unet = UNet(ndim, 2, 4, f_maps=4, depth=3, foreground=foreground, spatial_scale=scale).eval()
    if foreground:
        unet.label_rate.fill_(0.3)
    scripted = torch.jit.script(EmbeddingNetwork(unet).eval())
    x = torch.randn(1, 2, *((9, 17, 20) if ndim == 3 else (37, 50)))  # not multiples of the pooling factor
    with torch.no_grad():
        np.testing.assert_array_equal(scripted(x)[0].numpy(), _embeddings(unet, x, (0,) * ndim))
    assert set(EmbeddingNetwork(unet).state_dict()) == set(unet.state_dict())


def test_package_passes_bioimageio_validation_and_test_run(package):
    core = _bioimageio_core()
    from spoco.export.check import check_package

    descr = core.load_description(package, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    assert descr.format_version.startswith("0.5")
    status, report = check_package(package)
    assert status == "passed", report
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "README.md", "cover.png", "weights.pt", "weights_torchscript.pt"} <= names
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    pre = rdf["inputs"][0]["preprocessing"][1]
    assert pre["id"] == "scale_range" and (pre["kwargs"]["min_percentile"], pre["kwargs"]["max_percentile"]) == (1, 99.8)
    spoco_config = rdf["config"]["spoco"]
    assert spoco_config["network"] == "g" and spoco_config["fraction"] == 0.1
    assert spoco_config["segmentation"]["foreground_threshold"] == 0.4 and spoco_config["segmentation"]["min_size"] == 5
    assert "SPOCO@0.1" in readme and "spoco segment" in readme and "--foreground-threshold 0.4" in readme


def test_package_output_equals_spoco_predict(run, package):
    core = _bioimageio_core()
    with zipfile.ZipFile(package) as zf:
        image = np.load(zf.open("test_raw.npy"))[0]  # (C, Y, X): the crop of image.tif
        script = torch.jit.load(zf.open("weights_torchscript.pt"))
    expected = predict(_checkpoint_model(run), image, device="cpu")  # g, the network the run validated
    # the TorchScript file alone (no spoco), given spoco's normalisation
    with torch.no_grad():
        alone = script(torch.from_numpy(normalize_image(image))[None])[0].numpy()
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    # the whole package run by bioimage.io: its preprocessing, then each weights format
    descr = core.load_description(package)
    for weights in ("torchscript", "pytorch_state_dict"):
        pipeline = core.create_prediction_pipeline(descr, weight_format=weights)
        out = core.predict(model=pipeline, inputs=image[None]).members["embeddings"].data.values[0]
        diff = np.abs(out - expected).max()
        assert diff < 1e-4, (weights, diff)


def test_predict_and_segment_from_the_package(run, package, tmp_path, capsys):
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(package, folder)
    kinds = {"ckpt": run / "best.pt", "zip": package, "folder": folder, "rdf": folder / "rdf.yaml"}
    embeddings = {}
    for kind, source in kinds.items():
        spoco("predict", "--checkpoint", source, "--images", run / "image.tif", "--out", f"{kind}.h5",
              "--tile-shape", 32, 32, "--halo", 8, "--device", "cpu", "--quiet", cwd=tmp_path, capsys=capsys)
        with h5py.File(tmp_path / f"{kind}.h5") as f:
            embeddings[kind] = (f["embeddings"][:], json.loads(f["embeddings"].attrs["spoco_segmentation"]))
        np.testing.assert_array_equal(embeddings[kind][0], embeddings["ckpt"][0])
        assert embeddings[kind][1] == embeddings["ckpt"][1]
    assert embeddings["zip"][1]["foreground_threshold"] == 0.4 and embeddings["zip"][1]["min_size"] == 5
    labels = []
    for kind in ("ckpt", "zip"):  # segment applies the settings the embeddings carry
        spoco("segment", f"{kind}.h5", "--out", f"{kind}_labels.h5", "--quiet", cwd=tmp_path, capsys=capsys)
        with h5py.File(tmp_path / f"{kind}_labels.h5") as f:
            labels.append(f["labels"][:])
    np.testing.assert_array_equal(labels[0], labels[1])


def test_package_without_state_dict_loads_the_torchscript_weights(run, package, tmp_path):
    shutil.unpack_archive(package, tmp_path)
    rdf = yaml.safe_load((tmp_path / "rdf.yaml").read_text())
    del rdf["weights"]["pytorch_state_dict"]
    (tmp_path / "weights.pt").unlink()
    rdf["config"]["spoco"]["segmentation"]["min_size"] = 9  # settings edited in rdf.yaml apply
    (tmp_path / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    model, config = load_package(tmp_path)
    reference = _checkpoint_model(run, "g")
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    assert config.segmentation()["min_size"] == 9 and config.eval_network == "g"


def test_export_command(run, tmp_path, capsys):
    _bioimageio_core()  # the export extra
    _, out, _ = spoco("export", "--checkpoint", run / "best.pt", "--out", "pkg", "--eval-network", "f", "--no-test",
                      cwd=tmp_path, capsys=capsys)
    assert "best.pt -> pkg" in out
    model, _ = load_package(tmp_path / "pkg")
    for name, tensor in _checkpoint_model(run, "f").state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    # a generated test image when none is given
    assert np.load(tmp_path / "pkg" / "test_raw.npy").shape[-2:] == (64, 64)


def test_help_loads_no_torch():
    code = ("import sys; from spoco.cli import main\ntry: main(['export', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'bioimageio' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0 and "--test-image" in proc.stdout, proc.stderr


def _zip(folder, files):
    with zipfile.ZipFile(folder / "x.zip", "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return folder / "x.zip"


def _text(folder, text):
    (folder / "x.zip").write_text(text)
    return folder / "x.zip"


def _folder(folder):
    (folder / "run").mkdir()
    return folder / "run"


@pytest.mark.parametrize("make, message", [
    (lambda d: _zip(d, {"notes.txt": "hello"}), "is not a bioimage.io package (no rdf.yaml"),
    (lambda d: _text(d, "not a zip"), "is not a zip file"),
    (lambda d: _zip(d, {"rdf.yaml": "type: model\nname: other\n"}), "not one exported by spoco"),
    (lambda d: _zip(d, {"rdf.yaml": "type: dataset\n"}), "is not a bioimage.io model package"),
    (_folder, "for a training run give its checkpoint"),
])
def test_what_is_not_a_spoco_package_is_a_clear_error(tmp_path, make, message, capsys):
    source = make(tmp_path)
    write_array(tmp_path / "image.tif", np.zeros((16, 16), np.uint16))
    code, _, err = spoco("predict", "--checkpoint", source, "--images", "image.tif", "--out", "e.h5", cwd=tmp_path,
                         capsys=capsys, ok=False)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_package_holds_one_network(package, tmp_path):
    assert is_package(package) and is_package(tmp_path) and not is_package(tmp_path / "best.pt")
    with pytest.raises(ValueError, match="holds network 'g' only"):
        load_package(package, network="f")
    model, _ = load_package(package, network="g")
    assert model.foreground and model.spatial_scale == 4.0 and float(model.label_rate) == pytest.approx(0.3)
