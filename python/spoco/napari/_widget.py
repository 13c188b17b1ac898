"""The dock widget: pick an image and a labels layer with some objects painted, Train,
Segment. Training and segmentation run in napari worker threads; the widget only
starts them, shows what they report and adds their results as layers."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                            QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
                            QWidget)

from ._data import channels_first, painted_pairs
from ._plot import CurvePlot

STEPS = 10_000        # the default recipe's max_iters (spoco.training.recipe.RECIPE)
MINUTES = 5.0         # a first look in a few minutes; 0 = only the steps limit


class _Reports(QObject):
    """Signals that carry the training thread's reports to the GUI thread (Qt queues a
    signal emitted in another thread to the receiver's thread)."""
    planned = Signal(object)             # reasons (list of str)
    step = Signal(int, object, float)    # iteration, loss terms, share of the budget used
    validated = Signal(int, object)      # iteration, scores


def _devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return devices + (["mps"] if mps is not None and mps.is_available() else [])


def _train_job(request, reports, should_stop):
    """Worker body: train, then load the run's network (off the GUI thread as well)."""
    from ._segment import load_run
    from ._training import train

    result = train(request, on_plan=lambda config, reasons: reports.planned.emit(reasons),
                   on_step=reports.step.emit, on_validation=reports.validated.emit, should_stop=should_stop)
    result["loaded"] = load_run(result["checkpoint"])
    return result


def _segment_job(run, image, device, slices):
    from ._segment import segment_image

    return segment_image(run, image, device=device, slices=slices)


class SpocoWidget(QWidget):
    """Train a SPOCO network on sparsely painted labels and segment with it."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = None                  # the loaded network (spoco.napari._segment.Run)
        self.train_worker = self.segment_worker = None
        self.last_result = self.last_error = None
        self._stop = threading.Event()
        self._reports = _Reports()
        self._reports.planned.connect(self._on_planned)
        self._reports.step.connect(self._on_step)
        self._reports.validated.connect(self._on_validated)
        self._build()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.moved):
            event.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch_name)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.image_box, self.labels_box = QComboBox(), QComboBox()
        self.image_box.currentTextChanged.connect(self._image_changed)
        self.ndim_box = QComboBox()
        self.ndim_box.addItems(["2D", "3D"])
        self.ndim_box.setToolTip("2D on a stack: trains on the slices with painted objects, segments slice by slice")
        self.minutes = _double(0, 10_000, MINUTES, "minutes of training (0: no time limit)")
        self.minutes.setSpecialValueText("no limit")
        self.steps = _int(1, 10_000_000, STEPS, "most optimizer steps")
        # 0 (shown as "recipe") leaves the value to the recipe, as an omitted flag of spoco train
        self.patch = _int(0, 4096, 0, "patch side in pixels (recipe: twice the typical object, at least 64)")
        self.f_maps = _int(0, 256, 0, "feature maps of the first U-Net level (recipe: 8)")
        self.batch = _int(0, 1024, 0, "patches per step (recipe: as many pixels as 8 patches of 64x64)")
        self.val_every = _int(0, 1_000_000, 0, "validate and checkpoint every N steps (recipe: 500)")
        for box in (self.patch, self.f_maps, self.batch, self.val_every):
            box.setSpecialValueText("recipe")
        self.background_label = _int(0, 2**31 - 1, 0, "label value you painted on background (a few strokes): "
                                     "the foreground head learns the objects against it (spoco train "
                                     "--background-label); 0: none painted")
        self.background_label.setSpecialValueText("none")
        self.device_box = QComboBox()
        self.device_box.addItems(_devices())
        self.runs_dir = QLineEdit(str(Path.home() / "spoco-runs"))
        self.runs_dir.setToolTip("every training run writes a new folder here (best.pt, last.pt, logs)")
        self.finetune = QCheckBox("fine-tune the loaded run")
        self.finetune.setToolTip("start from the loaded run's weights (spoco train --finetune)")
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Cancel")
        self.train_button.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_training)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("paint some objects, then Train")
        self.status.setWordWrap(True)
        self.plot = CurvePlot()
        self.run_label = QLabel("no run loaded")
        self.run_label.setWordWrap(True)
        load, save = QPushButton("Load run…"), QPushButton("Save run as…")
        load.clicked.connect(self._ask_load)
        save.clicked.connect(self._ask_save)
        self.scope_box = QComboBox()
        self.scope_box.addItems(["whole stack", "current slice"])
        self.scope_box.setToolTip("a 2D network on a stack: segment every slice or the one shown")
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.start_segmentation)

        data = QFormLayout()
        data.addRow("image", self.image_box)
        data.addRow("painted labels", self.labels_box)
        data.addRow("network", self.ndim_box)
        training = QFormLayout()
        training.addRow("minutes", self.minutes)
        training.addRow("steps", self.steps)
        training.addRow("patch", self.patch)
        training.addRow("feature maps", self.f_maps)
        training.addRow("batch", self.batch)
        training.addRow("validate every", self.val_every)
        training.addRow("background label", self.background_label)
        training.addRow("device", self.device_box)
        browse = QPushButton("…")
        browse.clicked.connect(self._ask_runs_dir)
        training.addRow("runs folder", _row(self.runs_dir, browse))
        training.addRow(self.finetune)
        training.addRow(_row(self.train_button, self.cancel_button))
        runs = QVBoxLayout()
        runs.addWidget(self.run_label)
        runs.addWidget(_row(load, save))
        segmenting = QFormLayout()
        segmenting.addRow("stack", self.scope_box)
        segmenting.addRow(self.segment_button)
        layout = QVBoxLayout(self)
        for title, inner in (("Data", data), ("Training", training)):
            layout.addWidget(_group(title, inner))
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(_group("Run", runs))
        layout.addWidget(_group("Segment", segmenting))
        layout.addStretch(1)

    # ------------------------------------------------------------------ layers
    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self._refresh_layers)

    def _refresh_layers(self, *_) -> None:
        for box, kind in ((self.image_box, Image), (self.labels_box, Labels)):
            current = box.currentText()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)
            box.blockSignals(False)
        self._image_changed()

    def _image_changed(self, *_) -> None:
        """A 2D image takes a 2D network; a stack defaults to a 3D one."""
        layer = self._layer(self.image_box, Image, required=False)
        if layer is not None:
            self.ndim_box.setCurrentText("3D" if layer.ndim == 3 else "2D")  # an RGB layer's ndim has no colours

    def _layer(self, box, kind, required=True):
        name = box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or not isinstance(layer, kind):
            if required:
                raise ValueError(f"choose a{'n image' if kind is Image else ' labels'} layer")
            return None
        return layer

    # ---------------------------------------------------------------- training
    def overrides(self) -> dict:
        """The fields as TrainConfig keys (what spoco train's flags would set)."""
        ndim = 3 if self.ndim_box.currentText() == "3D" else 2
        values = {"max_iters": self.steps.value(),
                  "max_minutes": self.minutes.value() or None}
        for name, field in (("f_maps", self.f_maps), ("batch_size", self.batch), ("val_every", self.val_every)):
            if field.value():
                values[name] = field.value()
        if self.patch.value():
            values["patch_shape"] = (self.patch.value(),) * ndim
        if self.background_label.value():
            values["background_label"] = self.background_label.value()
        return values

    def start_training(self) -> None:
        """Train on the chosen layers in a worker thread, into a new folder of the runs folder."""
        from ._training import TrainRequest

        if self.train_worker is not None:
            return
        try:
            image_layer = self._layer(self.image_box, Image)
            labels_layer = self._layer(self.labels_box, Labels)
            image = channels_first(image_layer.data, image_layer.rgb)
            # a copy: painting on while training must not change the training data under it
            labels = np.array(labels_layer.data, copy=True)
            ndim = 3 if self.ndim_box.currentText() == "3D" else 2
            pairs = painted_pairs(image, labels, ndim)
            init_from = None
            if self.finetune.isChecked():
                if self.run is None:
                    raise ValueError("load a run to fine-tune first")
                init_from = str(self.run.checkpoint)
        except ValueError as err:
            self._error(err)
            return
        out = _new_run_folder(Path(self.runs_dir.text()).expanduser())
        device = self.device_box.currentText()
        request = TrainRequest(pairs, out, self.overrides(), None if device == "auto" else device, init_from)
        self._stop.clear()
        self.plot.clear()
        self.progress.setValue(0)
        self.last_result = self.last_error = None
        self.status.setText(f"training into {out} …")
        worker = create_worker(_train_job, request, self._reports, self._should_stop, _start_thread=False)
        worker.returned.connect(self._on_trained)
        worker.errored.connect(self._error)
        worker.finished.connect(self._on_training_finished)
        self.train_worker = worker
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _should_stop(self) -> bool:
        """Cancel was pressed, or napari asked its workers to quit (the application
        closes): either way the run ends at the next step, with last.pt written."""
        worker = self.train_worker
        return self._stop.is_set() or (worker is not None and worker.abort_requested)

    def cancel_training(self) -> None:
        """Stop at the next step; the run keeps last.pt with the weights trained so far."""
        if self.train_worker is not None:
            self._stop.set()
            self.status.setText("stopping after this step …")

    def _on_planned(self, reasons) -> None:
        # the recipe's choices stay readable under the step-by-step numbers
        self.status.setToolTip("the recipe's choices:\n" + "\n".join(reasons))
        self.status.setText("recipe: " + "; ".join(reasons))

    def _on_step(self, iteration: int, terms: dict, used: float) -> None:
        self.progress.setValue(int(round(1000 * used)))
        loss = float(terms.get("total", float("nan")))
        self.plot.add_loss(iteration, loss)
        score = f", validation AP@0.5 {self.plot.score[-1][1]:.3f}" if self.plot.score else ""
        self.status.setText(f"step {iteration}: loss {loss:.4f}{score}")

    def _on_validated(self, iteration: int, scores: dict) -> None:
        self.plot.add_score(iteration, float(scores.get("ap50", float("nan"))))

    def _on_trained(self, result: dict) -> None:
        self.last_result = result
        self._set_run(result["loaded"])
        how = "stopped" if result["cancelled"] else "finished"
        self.status.setText(f"{how} after {result['iterations']} steps; {result['checkpoint']}")

    def _on_training_finished(self) -> None:
        self.train_worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # -------------------------------------------------------------------- runs
    def load_run(self, checkpoint) -> None:
        """Use the network of ``checkpoint`` (best.pt or last.pt of a run folder)."""
        from ._segment import load_run

        try:
            self._set_run(load_run(checkpoint))
        except (OSError, ValueError) as err:
            self._error(err)

    def save_run(self, folder) -> Path:
        """Copy the loaded run's folder (checkpoints, config, logs) into ``folder``."""
        from ._segment import Run

        if self.run is None:
            raise ValueError("no run to save: train or load one first")
        source = self.run.checkpoint.parent
        target = Path(folder) / source.name
        shutil.copytree(source, target)
        self._set_run(Run(target / self.run.checkpoint.name, self.run.model, self.run.config))
        return target

    def _set_run(self, run) -> None:
        self.run = run
        self.run_label.setText(run.describe())

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a spoco run", self.runs_dir.text(), "checkpoints (*.pt)")
        if path:
            self.load_run(path)

    def _ask_save(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the run into", self.runs_dir.text())
        if folder:
            try:
                self.status.setText(f"saved to {self.save_run(folder)}")
            except (OSError, ValueError) as err:
                self._error(err)

    def _ask_runs_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.runs_dir.text())
        if folder:
            self.runs_dir.setText(folder)

    # ------------------------------------------------------------ segmentation
    def start_segmentation(self) -> None:
        """Segment the chosen image with the loaded run in a worker thread; the result
        becomes (or replaces) a labels layer and an RGB layer of the embeddings' PCA."""
        if self.segment_worker is not None:
            return
        try:
            if self.run is None:
                raise ValueError("train or load a run first")
            layer = self._layer(self.image_box, Image)
            image = channels_first(layer.data, layer.rgb)
            slices = None
            if image.ndim - 1 == 3 and self.run.ndim == 2 and self.scope_box.currentText() == "current slice":
                z = int(round(layer.world_to_data(self.viewer.dims.point)[0]))
                slices = [min(max(z, 0), image.shape[1] - 1)]
        except ValueError as err:
            self._error(err)
            return
        device = self.device_box.currentText()
        worker = create_worker(_segment_job, self.run, image, None if device == "auto" else device, slices,
                               _start_thread=False)
        worker.returned.connect(lambda result: self._on_segmented(layer, slices, *result))
        worker.errored.connect(self._error)
        worker.finished.connect(self._on_segmentation_finished)
        self.segment_worker = worker
        self.segment_button.setEnabled(False)
        self.status.setText(f"segmenting {layer.name} …")
        self._started = time.perf_counter()
        worker.start()

    def _on_segmented(self, layer, slices, labels, rgb) -> None:
        name = f"{layer.name} segmentation"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if slices is not None and isinstance(existing, Labels) and existing.data.shape == labels.shape:
            # one slice more of a stack segmented before: keep the others, ids stay unique
            data = np.asarray(existing.data).copy()
            for z in slices:
                data[z] = 0
                data[z] = np.where(labels[z] > 0, labels[z] + data.max(), 0)
            labels = data
        spatial = dict(scale=layer.scale, translate=layer.translate)
        _show(self.viewer, Labels, name, labels, **spatial)
        _show(self.viewer, Image, f"{layer.name} embeddings (PCA)", rgb, rgb=True, contrast_limits=(0, 1),
              **spatial)
        self.status.setText(f"{int(np.unique(labels).size - 1)} objects in {layer.name} "
                            f"({time.perf_counter() - self._started:.1f} s)")

    def _on_segmentation_finished(self) -> None:
        self.segment_worker = None
        self.segment_button.setEnabled(True)

    # ------------------------------------------------------------------ errors
    def _error(self, err) -> None:
        from napari.utils.notifications import show_error

        self.last_error = err
        self.status.setText(f"error: {err}")
        show_error(str(err))


def _show(viewer, kind, name, data, **kwargs) -> None:
    """Replace the data of the layer ``name`` if it is a ``kind`` layer of the same
    dimensionality, else add a new layer."""
    layer = viewer.layers[name] if name in viewer.layers else None
    if isinstance(layer, kind) and layer.data.shape == data.shape:
        layer.data = data
        return
    if kind is Labels:
        viewer.add_labels(data, name=name, **kwargs)
    else:
        viewer.add_image(data, name=name, **kwargs)


def _new_run_folder(parent: Path) -> Path:
    """A fresh ``run-<date>-<time>`` folder name under ``parent`` (a run never writes into
    another run's folder, so best.pt always belongs to it)."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    folder, n = parent / stamp, 1
    while folder.exists():
        n += 1
        folder = parent / f"{stamp}-{n}"
    return folder


def _int(lo, hi, value, tip) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _double(lo, hi, value, tip) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(1)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _row(*widgets) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row


def _group(title, layout) -> QGroupBox:
    group = QGroupBox(title)
    group.setLayout(layout)
    return group
