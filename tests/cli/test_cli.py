"""The command line on tiny data, as a user runs it (subprocesses), including errors."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from spoco.data import read_array, synthetic_images, write_array
from tests._helpers.data import write_image_folders

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def spoco(*args, cwd, ok=True):
    proc = subprocess.run([sys.executable, "-m", "spoco", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    labels = write_image_folders(root)
    write_array(root / "seg.h5", labels[0], key="seg")
    return root


def test_train_predict_evaluate(folders):
    spoco("train", "--images", "images", "--labels", "labels", "--val-images", "val_images", "--val-labels",
          "val_labels", "--out", "run", "--fraction", "0.5", "--patch-shape", "48", "48", "--iters", "4",
          "--val-every", "2", "--f-maps", "4", "--embedding-dim", "4", "--border", "mirror", "--quiet", cwd=folders)
    for name in ("last.pt", "best.pt", "config.yaml", "train_log.csv", "val_log.csv"):
        assert (folders / "run" / name).exists(), name
    spoco("predict", "--checkpoint", "run/best.pt", "--images", "val_images", "--out", "emb", "--tile-shape", "32",
          "--halo", "8", "--quiet", cwd=folders)
    emb = read_array(folders / "emb" / "img4.h5", "embeddings")
    # 4 embedding channels and the foreground probability of the default recipe's head
    assert emb.shape == (5, 48, 48) and np.isfinite(emb).all()
    assert 0 <= emb[-1].min() and emb[-1].max() <= 1
    spoco("predict", "--checkpoint", "run/last.pt", "--images", "val_images/img5.tif", "--out", "one.zarr",
          "--eval-network", "g", "--quiet", cwd=folders)
    one = read_array(folders / "one.zarr", "embeddings")
    assert one.shape == (5, 48, 48)
    # Without --border, predict uses the run's (here: mirror).
    from spoco.predict import predict
    from spoco.training import load_checkpoint, model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(folders / "run" / "last.pt"), network="g")
    image = read_array(folders / "val_images" / "img5.tif")
    np.testing.assert_allclose(one, predict(model, image, border="mirror", device="cpu"), atol=1e-5)
    assert not np.allclose(one, predict(model, image, device="cpu"), atol=1e-5)
    # --tta: the mean over the 8 orientations, as the library computes it
    said = spoco("predict", "--checkpoint", "run/last.pt", "--images", "val_images/img5.tif", "--out", "tta.zarr",
                 "--eval-network", "g", "--tta", cwd=folders).stdout
    assert "test-time augmentation (--tta): 8 predictions per tile" in said
    np.testing.assert_allclose(read_array(folders / "tta.zarr", "embeddings"),
                               predict(model, image, border="mirror", tta=True, device="cpu"), atol=1e-5)
    # The README's chain: a folder of embeddings -> a folder of label tifs -> scores.
    spoco("segment", "emb", "--key", "embeddings", "--out", "seg", "--min-size", "5",
          "--quiet", cwd=folders)
    seg = read_array(folders / "seg" / "img4.tif")
    assert seg.shape == (48, 48) and seg.dtype == np.uint32
    # Without options, segment applies the settings the training run validated (stored by predict).
    from spoco.clustering import segment
    from spoco.training import TrainConfig
    config = TrainConfig.from_saved(load_checkpoint(folders / "run" / "best.pt")["config"])
    assert config.foreground and config.min_size > 0
    assert config.tta in (False, True)  # chosen on the validation images, with and without
    spoco("segment", "emb/img4.h5", "--key", "embeddings", "--out", "seg4.tif", "--quiet", cwd=folders)
    emb4 = read_array(folders / "emb" / "img4.h5", "embeddings")
    np.testing.assert_array_equal(read_array(folders / "seg4.tif"), segment(emb4, **config.segmentation()))
    # Block-wise, the foreground channel masks the blocks the same way.
    spoco("segment", "emb/img4.h5", "--key", "embeddings", "--out", "seg4b.tif", "--block-shape", "24",
          "--halo", "27", "--quiet", cwd=folders)
    blocks = read_array(folders / "seg4b.tif")
    assert ((blocks > 0) == (read_array(folders / "seg4.tif") > 0)).mean() > 0.99
    proc = spoco("evaluate", "--gt", "val_labels", "--pred", "seg", "--csv", "scores.csv", cwd=folders)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "sbd", "abs_dic", "ap50", "map", "are", "n_gt", "n_pred"]
    assert [line.split()[0] for line in lines[1:]] == ["img4", "img5", "mean"]
    assert (folders / "scores.csv").read_text().count("\n") == 3
    proc = spoco("evaluate", "--gt", "val_labels", "--pred", "val_labels", cwd=folders)
    assert proc.stdout.strip().splitlines()[-1].split()[:4] == ["mean", "1.000", "0.000", "1.000"]


def test_segment_postprocessing_matches_library(folders, tmp_path):
    from spoco.clustering import segment

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 30, 40)).astype(np.float32)
    write_array(tmp_path / "e.h5", emb, key="emb")
    spoco("segment", str(tmp_path / "e.h5"), "--key", "emb", "--out", str(tmp_path / "s.h5"), "--background",
          "embedding", "--background-radius", "1.0", "--merge-distance", "0.8", "--min-size", "3", "--quiet",
          cwd=folders)
    expected = segment(emb, background="embedding", background_radius=1.0, merge_distance=0.8, min_size=3)
    np.testing.assert_array_equal(read_array(tmp_path / "s.h5", "labels"), expected)
    proc = spoco("segment", str(tmp_path / "e.h5"), "--key", "emb", "--out", str(tmp_path / "b.h5"),
                 "--block-shape", "16", "--background", "largest", cwd=folders, ok=False)
    assert proc.returncode == 2 and "omit --block-shape" in proc.stderr


def test_train_prints_its_choices_and_takes_real_world_folders(folders, tmp_path):
    # An empty field of view and one image larger than the others: both train.
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images, labels = synthetic_images(1, (160, 200), kind="intensity", rng=5)
    write_array(tmp_path / "images/big.tif", (images[0, 0] * 4000).astype(np.uint16))
    write_array(tmp_path / "labels/big.tif", labels[0].astype(np.uint16))
    write_array(tmp_path / "images/empty.tif", np.full((48, 48), 100, np.uint16))
    write_array(tmp_path / "labels/empty.tif", np.zeros((48, 48), np.uint16))
    proc = spoco("train", "--images", "images", "--labels", "labels", "--out", "run", "--iters", "2",
                 "--f-maps", "4", "--batch-size", "2", "--threads", "1", cwd=tmp_path)
    out = proc.stdout
    assert "2 training images, 1 without labelled objects" in out, out
    assert "spatial_scale" in out and "min_size" in out and "patches per epoch" in out, out
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "foreground: true" in text and "spatial_scale:" in text and "samples_per_epoch:" in text
    assert "ema_buffers: own" in text
    proc = spoco("train", "--images", "images", "--labels", "labels", "--out", "run_paper", "--iters", "1",
                 "--recipe", "paper", "--patch-shape", "32", "32", "--f-maps", "4", "--quiet", cwd=tmp_path)
    text = (tmp_path / "run_paper" / "config.yaml").read_text()
    assert "foreground: false" in text and "lr: 0.0002" in text and "ema_buffers: copy" in text
    spoco("train", "--images", "images", "--labels", "labels", "--out", "run_ema", "--iters", "1",
          "--ema-buffers", "ema", "--tta", "--patch-shape", "32", "32", "--f-maps", "4", "--quiet", cwd=tmp_path)
    text = (tmp_path / "run_ema" / "config.yaml").read_text()
    assert "ema_buffers: ema" in text and "tta: true" in text


def test_train_with_background_scribbles(tmp_path):
    """--background-label: strokes of that value are background for the foreground head,
    survive --fraction, are counted in the summary and recorded in config.yaml."""
    labels = write_image_folders(tmp_path, n=3, n_val=1)
    for i in range(2):
        lab = labels[i].astype(np.uint16)
        lab[np.nonzero(lab == 0)[0][:40], np.nonzero(lab == 0)[1][:40]] = 65535
        write_array(tmp_path / f"labels/img{i}.tif", lab)
    proc = spoco("train", "--images", "images", "--labels", "labels", "--val-images", "val_images",
                 "--val-labels", "val_labels", "--out", "run", "--iters", "2", "--val-every", "2",
                 "--fraction", "0.5", "--background-label", "65535", "--f-maps", "4", "--batch-size", "2",
                 "--threads", "1", cwd=tmp_path)
    assert "80 painted background pixels (value 65535)" in proc.stdout, proc.stdout
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "background_label: 65535" in text
    proc = spoco("train", "--images", "images", "--labels", "labels", "--out", "r2", "--iters", "1",
                 "--background-label", "7", "--no-foreground", cwd=tmp_path, ok=False)
    assert proc.returncode != 0 and "foreground" in proc.stderr, proc.stderr


def test_read_labels_keeps_the_scribble_value_through_renumbering(tmp_path):
    from spoco.cli.train import read_labels

    lab = np.zeros((4, 5), np.int64)
    lab[0, :2] = 2**40  # ids this large are renumbered 1..K
    lab[1, :2] = 2**41
    lab[3] = 2  # the scribble value, lower than the renumbered ids would reach
    write_array(tmp_path / "l.tif", lab.astype(np.uint64))
    got = read_labels(tmp_path / "l.tif", background_label=2)
    assert (got[3] == 2).all() and (got[:3] != 2).all()
    assert len(np.unique(got[:2, :2])) == 2 and got[2].max() == 0


def test_config_file_and_flag_override(folders):
    (folders / "cfg.yaml").write_text("patch_shape: [32, 32]\nf_maps: 4\nembedding_dim: 3\nmax_iters: 2\n")
    spoco("train", "--images", "images", "--labels", "labels", "--out", "run_cfg", "--config", "cfg.yaml",
          "--embedding-dim", "5", "--quiet", cwd=folders)
    text = (folders / "run_cfg" / "config.yaml").read_text()
    assert "embedding_dim: 5" in text and "f_maps: 4" in text and "max_iters: 2" in text


def test_train_adversarial(folders):
    spoco("train", "--images", "images", "--labels", "labels", "--out", "run_adv", "--dense", "--patch-shape", "32",
          "32", "--iters", "3", "--f-maps", "4", "--embedding-dim", "4", "--adversarial", "--adversarial-warmup", "1",
          "--critic-steps", "2", "--adversarial-weight", "0.5", "--adversarial-patch", "16", "16", "--quiet",
          cwd=folders)
    text = (folders / "run_adv" / "config.yaml").read_text()
    for line in ("adversarial: true", "adversarial_weight: 0.5", "critic_steps: 2", "adversarial_warmup: 1"):
        assert line in text, line
    with open(folders / "run_adv" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["wgan"]) == 0 and all(float(r["wgan"]) != 0 for r in rows[1:])
    assert all(np.isfinite(float(r["wasserstein"])) for r in rows[1:])


@pytest.mark.parametrize("args, message", [
    (["train", "--images", "missing", "--labels", "labels", "--out", "r"], "missing: no such folder"),
    (["train", "--images", "images", "--labels", "labels", "--out", "r", "--config", "nope.yaml"],
     "config file not found"),
    (["train", "--images", "images", "--labels", "labels", "--out", "r", "--patch-shape", "8", "8", "8"],
     "for a 3D patch_shape (8, 8, 8)"),
    (["train", "--images", "images", "--labels", "labels", "--out", "r", "--resume"], "checkpoint not found"),
    (["predict", "--checkpoint", "none.pt", "--images", "images", "--out", "e"], "checkpoint not found"),
    (["predict", "--checkpoint", "labels/img0.tif", "--images", "images", "--out", "e"],
     "not a readable spoco checkpoint"),
    (["evaluate", "--gt", "labels", "--pred", "labels/img0.tif"], "both be files or both be folders"),
    (["evaluate", "--gt", "labels/img0.tif", "--pred", "seg.h5", "--pred-key", "x"], "'x'"),
])
def test_errors_are_one_line(folders, args, message):
    proc = spoco(*args, cwd=folders, ok=False)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_config_keys(folders):
    (folders / "bad.yaml").write_text("patch_shape: [32, 32]\nlearning_rate: 0.1\n")
    proc = spoco("train", "--images", "images", "--labels", "labels", "--out", "r", "--config", "bad.yaml",
                 cwd=folders, ok=False)
    assert proc.returncode == 2 and "unknown config keys: learning_rate" in proc.stderr


def test_help_explains_every_option():
    from spoco.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)
    for name, cmd in sub.choices.items():
        assert cmd.description, name
        for action in cmd._actions:
            assert action.help, f"spoco {name} {action.option_strings}: no help text"
    out = subprocess.run([sys.executable, "-m", "spoco", "train", "--help"], capture_output=True, text=True,
                         env=ENV).stdout
    assert "--fraction" in out and "SPOCO@p" in out
