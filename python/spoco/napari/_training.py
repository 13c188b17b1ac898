"""Training from painted layers with spoco's own trainer and default recipe.

:func:`plan` makes the choices ``spoco train --images … --labels …`` makes for the same
labels (:func:`spoco.training.recipe.auto_config` on their summary, the widget's
fields applied as the flags would be); :func:`train` builds the same
:class:`spoco.data.InstanceDataset` and runs :class:`spoco.training.Trainer`, with
three additions the widget needs: every step is reported, a stop request ends the
run at the next step (``last.pt`` is written there), and validation scores the painted
objects of the training images (:func:`._data.sparse_scores`), since painted labels
are all there is to validate on. Called from a worker thread; no Qt here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..clustering import segment
from ..data import InstanceDataset
from ..ema import unwrap
from ..predict import predict
from ..training import Trainer, TrainConfig, load_checkpoint
from ..training.recipe import auto_config, summarize_labels
from ._data import sparse_scores, validation_crops

# Keys of the U-Net that a fine-tuned run takes from the run it starts from, so that its
# weights fit whatever the recipe would choose for the new labels.
_ARCHITECTURE = {"out_channels": "embedding_dim", "f_maps": "f_maps", "depth": "depth", "norm": "norm",
                 "foreground": "foreground"}


class Cancelled(Exception):
    """Raised inside the training loop when a stop was requested."""


@dataclass
class TrainRequest:
    """What the widget asks for: training pairs ``(image (C, *spatial), labels)``, a run
    folder, and the fields that override the recipe (``TrainConfig`` keys, as
    ``spoco train``'s flags do; e.g. ``max_iters``, ``max_minutes``, ``patch_shape``)."""
    pairs: list
    out_dir: Path
    overrides: dict = field(default_factory=dict)
    device: str | None = None
    init_from: str | None = None


def plan(pairs, overrides: dict | None = None, init_from=None) -> tuple[TrainConfig, list[str]]:
    """The run's config and the reasons for its derived values: the default recipe for
    the painted labels, then ``overrides``. Validation sees only painted labels, which
    cannot rank foreground thresholds or merge distances (every unpainted object found
    would count against them), so the threshold is 0.5 and nothing is merged, as
    ``spoco train`` does without validation images. Fine-tuning keeps the architecture of
    the run it starts from."""
    values = {"foreground_threshold": 0.5, "merge_distance": 0.0}
    reasons = []
    if init_from is not None:
        values.update(architecture_of(init_from, pairs))
        reasons.append(f"fine-tuning {init_from}: its network ({values['f_maps']} feature maps, depth "
                       f"{values['depth']}, D = {values['embedding_dim']})")
    values.update(overrides or {})
    scribbles = values.get("background_label")  # painted background is no object
    config, recipe_reasons = auto_config(summarize_labels([lab for _, lab in pairs], ignore_index=scribbles),
                                         values)
    return config, reasons + recipe_reasons


def architecture_of(checkpoint, pairs) -> dict:
    """TrainConfig keys that rebuild the network of ``checkpoint``; raises ``ValueError``
    when it cannot take these images (other dimensionality or channel count)."""
    state = load_checkpoint(checkpoint)
    model_config = state.get("model_config") or {}
    image = pairs[0][0]
    if model_config.get("ndim") != image.ndim - 1 or model_config.get("in_channels") != image.shape[0]:
        raise ValueError(f"{checkpoint} holds a {model_config.get('ndim')}D network with "
                         f"{model_config.get('in_channels')} input channel(s); these images are "
                         f"{image.ndim - 1}D with {image.shape[0]}")
    return {key: model_config[name] for name, key in _ARCHITECTURE.items() if name in model_config}


class LayerTrainer(Trainer):
    """:class:`spoco.training.Trainer` that reports every step and validation, stops when
    asked, and scores validation crops on their painted objects only.

    ``val_data`` items are ``(image, labels)`` crops; ``norm_ranges`` holds, per crop,
    the intensity range of the whole image it was cut from."""

    def __init__(self, *args, norm_ranges=(), on_step: Callable | None = None,
                 on_validation: Callable | None = None, should_stop: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm_ranges = list(norm_ranges)
        self.on_step, self.on_validation = on_step, on_validation
        self.should_stop = should_stop or (lambda: False)
        self.started = None

    def budget_used(self) -> float:
        """Share of the budget used: of the steps or of the minutes, whichever is further."""
        cfg = self.config
        done = self.iteration / cfg.max_iters
        if cfg.max_minutes and self.started is not None:
            done = max(done, (time.perf_counter() - self.started) / (60 * cfg.max_minutes))
        return min(done, 1.0)

    def train_step(self, batch) -> dict:
        if self.should_stop():
            raise Cancelled
        if self.started is None:
            self.started = time.perf_counter()
        terms = super().train_step(batch)
        if self.on_step is not None:
            self.on_step(self.iteration, terms, self.budget_used())
        return terms

    def validate(self, network: str = "f") -> dict:
        model = unwrap(self.model) if network == "f" else self.ema.g
        cfg = self.config
        rows = []
        for (image, labels), norm_range in zip(self.val_data, self.norm_ranges):
            emb = predict(model, image, **cfg.prediction(), device=self.device, norm_range=norm_range)
            rows.append(sparse_scores(labels, segment(emb, **cfg.segmentation())))
        scores = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        if self.on_validation is not None:
            self.on_validation(self.iteration, scores)
        return scores


def train(request: TrainRequest, *, on_step=None, on_validation=None, should_stop=None,
          on_plan=None) -> dict:
    """Train on ``request`` into ``request.out_dir``.

    Returns ``{"run": folder, "checkpoint": best.pt (else last.pt), "iterations",
    "cancelled", "reasons"}``. A stop request (``should_stop()`` true) ends the run
    before the next step and writes ``last.pt`` with the weights trained so far.
    ``on_plan(config, reasons)`` is called once the config is known."""
    config, reasons = plan(request.pairs, request.overrides, request.init_from)
    if on_plan is not None:
        on_plan(config, reasons)
    images = [image for image, _ in request.pairs]
    labels = [lab for _, lab in request.pairs]
    # As spoco train builds it: the labels as painted, one random patch per sample.
    dataset = InstanceDataset(images, labels, patch_shape=config.patch_shape, fraction=config.fraction,
                              seed=config.seed, augment=config.augment, length=1,
                              background_label=config.background_label, border_background=config.border_background)
    dataset.length = config.samples_per_epoch or 4 * len(images)
    # Context around the painted objects: half a patch, what the network sees in training;
    # painted background is scored as background.
    objects = [(image, lab if config.background_label is None else np.where(lab == config.background_label, 0, lab))
               for image, lab in request.pairs]
    crops = validation_crops(objects, [p // 2 for p in config.patch_shape])
    out_dir = Path(request.out_dir)
    trainer = LayerTrainer(config, dataset, [(image, lab) for image, lab, _ in crops],
                           norm_ranges=[r for _, _, r in crops], out_dir=out_dir, device=request.device,
                           init_from=request.init_from, progress=False, on_step=on_step,
                           on_validation=on_validation, should_stop=should_stop)
    cancelled = False
    try:
        if trainer.should_stop():
            raise Cancelled
        trainer.fit()
    except Cancelled:
        cancelled = True
        trainer.save("last.pt")
    best = out_dir / "best.pt"
    return {"run": out_dir, "checkpoint": best if best.exists() else out_dir / "last.pt",
            "iterations": trainer.iteration, "cancelled": cancelled, "reasons": reasons}
