"""The shipped nuclei model: present, small, loadable by name, and it segments nuclei."""
from __future__ import annotations

from spoco import metrics
from spoco.cli import main
from spoco.data import io
from spoco.models.pretrained import FOLDER, MODELS, resolve

DEMO = FOLDER.parents[1] / "demo_data" / "bbbc039"


def test_shipped_models_are_small_and_named():
    for name, file in MODELS.items():
        path = resolve(name)
        assert path == FOLDER / file and path.stat().st_size <= 5 * 2**20
        assert (FOLDER / f"{name}.md").exists()  # its model card
    assert str(resolve("some/checkpoint.pt")) == "some/checkpoint.pt"


def test_segment_with_the_nuclei_model_needs_no_training(tmp_path):
    image, label_file = io.list_pairs(DEMO / "test" / "images", DEMO / "test" / "labels")[0]
    labels = io.read_array(label_file)
    assert main(["segment", str(image), "--model", "nuclei", "--device", "cpu", "--out", str(tmp_path / "s.tif"),
                 "--quiet"]) == 0
    score = metrics.evaluate(labels, io.read_array(tmp_path / "s.tif"))
    print(f"AP@0.5 of the nuclei model on {image.name}: {score['ap50']:.3f}")
    assert score["ap50"] > 0.7


def test_unknown_names_are_paths(capsys):
    assert main(["segment", "x.tif", "--model", "no-such-model", "--out", "y.tif"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_finetune_from_the_nuclei_model_adopts_its_network(tmp_path):
    from spoco.training import load_checkpoint

    images, labels = DEMO / "val" / "images", DEMO / "val" / "labels"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--finetune", "nuclei", "--iters", "2",
                 "--val-every", "2", "--threads", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    shipped = load_checkpoint(resolve("nuclei"))["model_config"]
    tuned_state = load_checkpoint(tmp_path / "run" / "last.pt")
    tuned = tuned_state["model_config"]
    assert tuned_state["config"]["data"]["images"] == str(images)  # recorded for spoco export's README
    assert {k: tuned[k] for k in ("depth", "f_maps", "out_channels", "spatial_scale")} == \
        {k: shipped[k] for k in ("depth", "f_maps", "out_channels", "spatial_scale")}

