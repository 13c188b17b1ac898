"""The napari dock widget, headless: paint a few objects, Train a tiny network through
the widget's fields, Segment into layers, Cancel a run; the GUI thread keeps serving
events throughout (training and prediction run in worker threads)."""
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is not installed (pip install 'spoco[test-napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install 'spoco[test-napari]')")

from qtpy.QtCore import QTimer  # noqa: E402

from spoco.napari._segment import segment_image  # noqa: E402
from spoco.napari._widget import SpocoWidget  # noqa: E402
from tests._helpers.data import make_discs  # noqa: E402

# A GUI thread that trained itself would stall for the whole run (the first step alone
# takes seconds); one that hands the work to a thread stalls only while the worker holds
# the GIL in one stretch (0.3-0.7 s measured at the first step, on a loaded 2-core machine).
MAX_STALL_S = 2.0
TIMEOUT_MS = 60_000


class Heartbeat:
    """Ticks of a 20 ms timer on the GUI thread: the longest gap is how long the event
    loop was blocked."""

    def __init__(self):
        self.ticks = [time.perf_counter()]
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(20)

    def stop(self) -> float:
        self.timer.stop()
        return float(np.diff(self.ticks).max()) if len(self.ticks) > 1 else float("inf")


def make_widget(make_napari_viewer, tmp_path, seed=1):
    """A viewer with a 64x64 image of 6 discs, 3 of them painted, and the widget set up
    for a tiny network trained on the CPU."""
    viewer = make_napari_viewer()
    image, labels = make_discs((64, 64), 6, seed=seed)
    viewer.add_image(image, name="discs")
    painted = np.where(np.isin(labels, [1, 2, 3]), labels, 0).astype(np.int32)
    viewer.add_labels(painted, name="painted")
    widget = SpocoWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_box.setCurrentText("discs")
    widget.labels_box.setCurrentText("painted")
    widget.minutes.setValue(0)
    widget.patch.setValue(32)
    widget.f_maps.setValue(4)
    widget.batch.setValue(2)
    widget.device_box.setCurrentText("cpu")
    widget.runs_dir.setText(str(tmp_path / "runs"))
    return viewer, widget, labels


def test_train_then_segment_an_image_and_a_stack(make_napari_viewer, qtbot, tmp_path):
    viewer, widget, _ = make_widget(make_napari_viewer, tmp_path)
    assert widget.ndim_box.currentText() == "2D"
    widget.steps.setValue(4)
    widget.val_every.setValue(2)
    beat = Heartbeat()
    widget.train_button.click()
    assert widget.train_worker is not None and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: widget.train_worker is None, timeout=TIMEOUT_MS)
    stall = beat.stop()
    assert widget.last_error is None, widget.last_error
    result = widget.last_result
    assert not result["cancelled"] and result["iterations"] == 4
    assert result["checkpoint"].name == "best.pt" and result["checkpoint"].exists()
    assert {"config.yaml", "train_log.csv", "val_log.csv", "last.pt"} <= {p.name for p in result["run"].iterdir()}
    assert [s for s, _ in widget.plot.loss] == list(range(1, 5))
    assert [s for s, _ in widget.plot.score] == [2, 4]  # the validation curve
    assert widget.progress.value() == 1000
    assert not widget.plot.grab().isNull()  # the plot paints its curves without an error
    assert stall < MAX_STALL_S, f"the GUI thread stalled for {stall:.2f} s"
    assert widget.run is result["loaded"] and widget.run.config.patch_shape == (32, 32)

    widget.segment_button.click()
    qtbot.waitUntil(lambda: widget.segment_worker is None, timeout=TIMEOUT_MS)
    assert widget.last_error is None, widget.last_error
    segmentation = viewer.layers["discs segmentation"]
    assert segmentation.data.shape == (64, 64) and segmentation.data.dtype == np.int32
    pca = viewer.layers["discs embeddings (PCA)"]
    assert pca.rgb and pca.data.shape == (64, 64, 3) and 0 <= pca.data.min() and pca.data.max() <= 1

    # Large images go tile by tile and block by block: the same objects, for this one.
    image = viewer.layers["discs"].data[None]
    blockwise, _ = segment_image(widget.run, image, blockwise_above=100)
    whole, _ = segment_image(widget.run, image)
    assert blockwise.max() == whole.max()

    # A 2D network on a stack: the slice on view, then every slice.
    viewer.add_image(np.stack([viewer.layers["discs"].data] * 3), name="stack")
    widget.image_box.setCurrentText("stack")
    assert widget.ndim_box.currentText() == "3D"
    widget.scope_box.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 1)
    widget.segment_button.click()
    qtbot.waitUntil(lambda: widget.segment_worker is None, timeout=TIMEOUT_MS)
    stack = viewer.layers["stack segmentation"].data
    assert stack.shape == (3, 64, 64) and not stack[0].any() and not stack[2].any()
    assert np.array_equal(stack[1] > 0, whole > 0)
    widget.scope_box.setCurrentText("whole stack")
    widget.segment_button.click()
    qtbot.waitUntil(lambda: widget.segment_worker is None, timeout=TIMEOUT_MS)
    stack = viewer.layers["stack segmentation"].data
    assert all(np.array_equal(stack[z] > 0, whole > 0) for z in range(3))
    assert viewer.layers["stack embeddings (PCA)"].data.shape == (3, 64, 64, 3)


def test_train_with_painted_background(make_napari_viewer, qtbot, tmp_path):
    """Strokes painted with the "background label" value train the foreground head as
    background (spoco train --background-label) and are no object of the recipe."""
    viewer, widget, labels = make_widget(make_napari_viewer, tmp_path)
    painted = viewer.layers["painted"].data
    painted[np.nonzero(labels == 0)[0][:30], np.nonzero(labels == 0)[1][:30]] = 99
    widget.background_label.setValue(99)
    assert widget.overrides()["background_label"] == 99
    widget.steps.setValue(2)
    widget.val_every.setValue(2)
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.train_worker is None, timeout=TIMEOUT_MS)
    assert widget.last_error is None, widget.last_error
    text = (widget.last_result["run"] / "config.yaml").read_text()
    assert "background_label: 99" in text and widget.last_result["iterations"] == 2


def test_cancel_stops_at_the_next_step_and_keeps_the_run(make_napari_viewer, qtbot, tmp_path):
    viewer, widget, _ = make_widget(make_napari_viewer, tmp_path, seed=2)
    widget.steps.setValue(100_000)
    beat = Heartbeat()
    widget.train_button.click()
    worker = widget.train_worker
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 2, timeout=TIMEOUT_MS)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.train_worker is None, timeout=TIMEOUT_MS)
    stall = beat.stop()
    assert widget.last_error is None, widget.last_error
    assert not worker.is_running
    result = widget.last_result
    assert result["cancelled"] and 2 <= result["iterations"] <= 10
    assert result["checkpoint"] == result["run"] / "last.pt" and result["checkpoint"].exists()
    assert widget.run.checkpoint == result["checkpoint"]  # the stopped run is the one to segment with
    assert stall < MAX_STALL_S, f"the GUI thread stalled for {stall:.2f} s"
    assert widget.train_button.isEnabled() and not widget.cancel_button.isEnabled()

    # Save the run elsewhere, load it back and fine-tune it for two steps.
    saved = widget.save_run(tmp_path / "saved")
    assert (saved / "last.pt").exists()
    widget.load_run(saved / "last.pt")
    assert widget.run.checkpoint == saved / "last.pt"
    widget.finetune.setChecked(True)
    widget.steps.setValue(2)
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.train_worker is None, timeout=TIMEOUT_MS)
    assert widget.last_error is None, widget.last_error
    finetuned = widget.last_result
    assert finetuned["iterations"] == 2 and not finetuned["cancelled"]
    assert any(reason.startswith(f"fine-tuning {saved / 'last.pt'}") for reason in finetuned["reasons"])
    assert Path(finetuned["run"]).parent == tmp_path / "runs"


def test_errors_are_reported_not_raised(make_napari_viewer, tmp_path):
    viewer, widget, _ = make_widget(make_napari_viewer, tmp_path)
    widget.segment_button.click()  # no run yet
    assert "train or load a run first" in str(widget.last_error)
    viewer.layers["painted"].data = np.zeros((64, 64), np.int32)
    widget.train_button.click()  # nothing painted
    assert "no object is painted" in str(widget.last_error) and widget.train_worker is None
