"""The demo runs end to end (with a few training steps) and writes what it promises."""
import numpy as np

from spoco.demo import run_demo


def test_demo_writes_figure_labels_and_scores(tmp_path):
    result = run_demo(tmp_path, iters=3, progress=False)
    for name in ("demo.png", "metrics.csv", "test_0_image.tif", "test_0_seg.tif", "test_0_gt.tif", "run/best.pt",
                 "run/val_log.csv", "run/train_log.csv"):
        assert (tmp_path / name).exists(), name
    assert set(result) >= {"sbd", "abs_dic", "ap50", "are", "seconds"}
    assert 0 <= result["ap50"] <= 1 and 0 <= result["sbd"] <= 1
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 9  # header + 8 held-out images
    assert np.isfinite(result["are"])
