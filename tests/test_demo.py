"""The demo runs end to end (with a few training steps) and writes what it promises."""
import numpy as np
import pytest

from spoco.demo import DATA_DIR, run_demo


@pytest.mark.parametrize("data", ["nuclei", "synthetic"])
def test_demo_writes_figure_labels_and_scores(tmp_path, data):
    result = run_demo(tmp_path, data=data, iters=3, progress=False)
    for name in ("demo.png", "metrics.csv", "run/best.pt", "run/val_log.csv", "run/train_log.csv", "run/config.yaml"):
        assert (tmp_path / name).exists(), name
    n_test = len(list((DATA_DIR / "test" / "images").iterdir())) if data == "nuclei" else 8
    assert len(list(tmp_path.glob("*_seg.tif"))) == n_test
    assert len(list(tmp_path.glob("*_gt.tif"))) == n_test
    assert set(result) >= {"sbd", "abs_dic", "ap50", "are", "seconds", "baseline_ap50"}
    assert 0 <= result["ap50"] <= 1 and 0 <= result["sbd"] <= 1
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * n_test  # header + (spoco, baseline) per held-out image
    assert np.isfinite(result["are"])


def test_demo_rejects_unknown_data(tmp_path):
    with pytest.raises(ValueError, match="data"):
        run_demo(tmp_path, data="imagenet", iters=1)


def test_demo_stops_at_its_time_limit(tmp_path):
    """The schedule ends after --iters steps or --minutes, whichever comes first: the demo's
    10-minute bound holds on a slow host too."""
    import yaml

    run_demo(tmp_path, data="synthetic", iters=10**6, minutes=0.02, progress=False)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["max_minutes"] == 0.02 and config["max_iters"] == 10**6
    last = (tmp_path / "run" / "val_log.csv").read_text().strip().splitlines()[-1]
    assert 0 < int(last.split(",")[0]) < 10**6
