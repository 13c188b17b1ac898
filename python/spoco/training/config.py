"""Training configuration: one dataclass, loadable from YAML, overridable by flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: the paper's appendix A.1).

    Sizes are in pixels; iterations count optimizer steps.
    """
    # model
    embedding_dim: int = 16
    f_maps: int = 16
    depth: int | None = None          # None: chosen so the receptive field covers the patch
    norm: str | None = None           # None: "batch" for 2D, "group" for 3D
    # data
    patch_shape: tuple = (128, 128)
    batch_size: int = 4
    fraction: float | None = None     # SPOCO@p: keep this fraction of objects; None: labels as given
    workers: int = 0
    augment: bool = True
    # loss (spoco.SPOCOLoss arguments)
    sparse: bool = True
    consistency: bool = True          # g-network and consistency term (sparse mode)
    delta_v: float = 0.5
    delta_d: float = 2.0
    loss: dict = field(default_factory=dict)  # further SPOCOLoss keyword arguments
    momentum: float = 0.999           # EMANet momentum m
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 1e-5
    lr_factor: float = 0.2
    lr_patience: int = 10             # validations without improvement before the lr drops
    min_lr: float = 1e-6
    max_iters: int = 10000
    amp: bool = True                  # mixed precision on CUDA
    # validation and logging
    val_every: int = 500
    log_every: int = 10
    # segmentation used by validation (and stored for ``spoco segment``)
    background: str = "none"
    merge_distance: float = 0.0
    min_size: int = 0
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        values = dict(values)
        if "patch_shape" in values:
            values["patch_shape"] = tuple(int(v) for v in values["patch_shape"])
        config = cls(**values)
        config.check()
        return config

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        import yaml  # safe_load: a config file never executes code

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_shape"] = list(self.patch_shape)
        return d

    def check(self) -> None:
        if len(self.patch_shape) not in (2, 3) or min(self.patch_shape) < 1:
            raise ValueError(f"patch_shape must be 2 or 3 positive sizes, got {self.patch_shape}")
        for name in ("embedding_dim", "f_maps", "batch_size", "max_iters", "val_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"lr must be > 0 and min_lr >= 0, got {self.lr}, {self.min_lr}")
        if self.norm not in (None, "batch", "group", "none"):
            raise ValueError(f"norm must be batch, group or none, got {self.norm!r}")

    @property
    def ndim(self) -> int:
        return len(self.patch_shape)
