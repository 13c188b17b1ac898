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
    foreground: bool = False          # a foreground head trained positive-unlabeled (spoco.foreground)
    foreground_weight: float = 1.0    # weight of its loss next to the SPOCO loss
    # label value painted on background pixels (scribbles): the foreground head learns objects
    # against them (spoco.foreground.scribble_foreground_loss); None: no scribbles
    background_label: int | None = None
    # width in pixels of the ring just outside every labelled object that counts as painted
    # background (like scribbles): for objects that never touch, separated by background
    # (boundary-stained EM, isolated cells); 0: off
    border_background: int = 0
    spatial_scale: float | None = None  # spatial embeddings: pixels per embedding unit (UNet)
    # data
    patch_shape: tuple = (128, 128)
    batch_size: int = 4
    fraction: float | None = None     # SPOCO@p: keep this fraction of objects; None: labels as given
    workers: int = 0
    samples_per_epoch: int | None = None  # random patches per epoch; None: 4 per training image
    augment: bool = True
    # loss (spoco.SPOCOLoss arguments)
    sparse: bool = True
    consistency: bool = True          # g-network and consistency term (sparse mode)
    delta_v: float = 0.5
    delta_d: float = 2.0
    loss: dict = field(default_factory=dict)  # further SPOCOLoss keyword arguments
    data: dict = field(default_factory=dict)  # where the training data came from (recorded, not used)
    momentum: float = 0.999           # EMANet momentum m
    eval_network: str = "f"           # network validated, kept as best and predicted with: "f" or "g" (EMA)
    ema_buffers: str = "copy"         # g's BatchNorm statistics: f's ("copy"), averaged ("ema"), g's own ("own")
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 1e-5
    lr_schedule: str = "plateau"      # "plateau": x lr_factor when validation stalls; "cosine": to 0 over the run
    warmup: int = 0                   # steps of linear learning-rate warm-up ("cosine")
    lr_factor: float = 0.2
    lr_patience: int = 10             # validations without improvement before the lr drops
    min_lr: float = 1e-6
    max_iters: int = 10000
    max_minutes: float | None = None  # stop training after this much wall-clock time (then validate)
    amp: bool = True                  # mixed precision on CUDA
    # adversarial term (appendix A.1): L + ζ·L_wgan with a WGAN-GP critic on object masks
    adversarial: bool = False
    adversarial_weight: float = 0.1   # ζ
    critic_steps: int = 5             # n_critic critic updates per embedding step
    critic_lr: float = 1e-4
    adversarial_betas: tuple = (0.5, 0.9)  # Adam β of the critic and, when adversarial, of f
    adversarial_warmup: int = 50000   # iterations of plain SPOCO training before L_wgan (paper: 50K)
    adversarial_patch_shape: tuple | None = None  # critic crop; None: Table 9's (40, 64, 64) / (64, 64)
    adversarial_max_objects: int = 32  # most objects per step shown to the critic (random subset)
    gp_weight: float = 10.0           # λ of the gradient penalty
    critic_f_maps: int = 64           # channels of the critic's first block (Table 9: 64)
    # validation and logging
    val_every: int = 500
    # also write last.pt every this many steps without validating (validations write it as
    # well, so it is at most min(checkpoint_every, val_every) steps old): a killed run resumes
    # losing at most that many steps. On a CPU 100 steps take tens of seconds or more; a checkpoint is
    # written in less than a step (docs/training.md, "Checkpoints and resume").
    checkpoint_every: int = 100
    log_every: int = 10
    # the image border at validation (and the default of ``spoco predict`` with this run's
    # checkpoints): "zero" padding or 16 pixels of "mirror"ed image (spoco.predict.predict)
    border: str = "zero"
    # segmentation used by validation (and stored for ``spoco segment``)
    background: str = "none"
    background_radius: float = 2.0    # "embedding" background: within this of the largest segment (δ_d)
    # merge touching segments with closer mean embeddings; None: chosen on the validation
    # images after training (MERGE_DISTANCES, in units of delta_d), 0 without them
    merge_distance: float | None = None
    min_size: int = 0
    # with a foreground head: pixels above this probability are clustered; None: chosen on the
    # validation images after training (FOREGROUND_THRESHOLDS), 0.5 without them
    foreground_threshold: float | None = None
    # test-time augmentation in prediction (spoco.predict.predict(tta=...)): the mean over the
    # 8 orientations of the YX plane; None: chosen on the validation images after training
    # (with and without), False without them
    tta: bool | None = False
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        values = dict(values)
        for name in ("patch_shape", "adversarial_patch_shape", "adversarial_betas"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if "patch_shape" in values:
            values["patch_shape"] = tuple(int(v) for v in values["patch_shape"])
        config = cls(**values)
        config.check()
        return config

    @classmethod
    def from_saved(cls, values: dict | None) -> "TrainConfig":
        """The config stored in a checkpoint, keys that this version no longer knows dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in dict(values or {}).items() if k in names})

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        """The config of a YAML file: its keys, TrainConfig's defaults for the rest."""
        return cls.from_dict(cls.read_yaml(path))

    @staticmethod
    def read_yaml(path) -> dict:
        """The keys a YAML config file sets (checked: unknown keys and bad values raise)."""
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
        TrainConfig.from_dict(values)  # raises on unknown keys and bad values
        return values

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("patch_shape", "adversarial_patch_shape", "adversarial_betas"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    def check(self) -> None:
        if len(self.patch_shape) not in (2, 3) or min(self.patch_shape) < 1:
            raise ValueError(f"patch_shape must be 2 or 3 positive sizes, got {self.patch_shape}")
        if self.samples_per_epoch is not None and int(self.samples_per_epoch) < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {self.samples_per_epoch}")
        for name in ("embedding_dim", "f_maps", "batch_size", "max_iters", "val_every", "checkpoint_every",
                     "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_minutes is not None and not 0 < self.max_minutes < float("inf"):
            raise ValueError(f"max_minutes must be a positive number, got {self.max_minutes!r}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"lr must be > 0 and min_lr >= 0, got {self.lr}, {self.min_lr}")
        if self.lr_schedule not in ("plateau", "cosine"):
            raise ValueError(f"lr_schedule must be 'plateau' or 'cosine', got {self.lr_schedule!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.border not in ("zero", "mirror"):
            raise ValueError(f"border must be 'zero' or 'mirror', got {self.border!r}")
        if self.eval_network not in ("f", "g"):
            raise ValueError(f"eval_network must be 'f' or 'g', got {self.eval_network!r}")
        if self.ema_buffers not in ("copy", "ema", "own"):
            raise ValueError(f"ema_buffers must be 'copy', 'ema' or 'own', got {self.ema_buffers!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.foreground_threshold is not None and not 0 < self.foreground_threshold < 1:
            raise ValueError(f"foreground_threshold must be in (0, 1) or None, got {self.foreground_threshold!r}")
        if self.tta is not None and not isinstance(self.tta, bool):
            raise ValueError(f"tta must be true, false or None (chosen on the validation images), got {self.tta!r}")
        if self.merge_distance is not None and not self.merge_distance >= 0:
            raise ValueError(f"merge_distance must be >= 0 or None, got {self.merge_distance!r}")
        if self.background_label is not None and (not isinstance(self.background_label, int)
                                                  or isinstance(self.background_label, bool)
                                                  or not 0 < self.background_label < 2 ** 31):
            raise ValueError(f"background_label must be an integer in [1, 2**31) or None, got {self.background_label!r}")
        if self.background_label is not None and not self.foreground:
            raise ValueError("background_label (scribbles) trains the foreground head: it needs foreground=True")
        if not isinstance(self.border_background, int) or isinstance(self.border_background, bool) \
                or self.border_background < 0:
            raise ValueError(f"border_background must be an integer >= 0, got {self.border_background!r}")
        if self.border_background and not self.foreground:
            raise ValueError("border_background trains the foreground head: it needs foreground=True")
        if self.norm not in (None, "batch", "group", "none"):
            raise ValueError(f"norm must be batch, group or none, got {self.norm!r}")
        self._check_adversarial()

    def _check_adversarial(self) -> None:
        for name in ("critic_steps", "adversarial_max_objects", "critic_f_maps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.adversarial_warmup, int) or self.adversarial_warmup < 0:
            raise ValueError(f"adversarial_warmup must be an integer >= 0, got {self.adversarial_warmup!r}")
        for name in ("adversarial_weight", "gp_weight"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not self.critic_lr > 0:
            raise ValueError(f"critic_lr must be > 0, got {self.critic_lr!r}")
        betas = self.adversarial_betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"adversarial_betas must be two numbers in [0, 1), got {betas!r}")
        shape = self.adversarial_patch_shape
        if shape is not None and (len(shape) != self.ndim or not all(isinstance(p, int) and p >= 8 for p in shape)):
            raise ValueError(f"adversarial_patch_shape must be {self.ndim} integers >= 8 (the critic pools 3 "
                             f"times) for patch_shape {tuple(self.patch_shape)}, got {shape!r}")

    @property
    def critic_patch_shape(self) -> tuple:
        """The critic's crop: ``adversarial_patch_shape``, or Table 9's crop limited to
        the training patch (at least 8 per axis, the critic's three poolings)."""
        if self.adversarial_patch_shape is not None:
            return tuple(self.adversarial_patch_shape)
        from ..adversarial import PAPER_PATCH

        return tuple(max(8, min(p, s)) for p, s in zip(PAPER_PATCH[self.ndim], self.patch_shape))

    @property
    def painted_background(self) -> bool:
        """Whether the foreground head learns objects against painted background (scribbles
        or object borders) rather than positive-unlabeled."""
        return self.background_label is not None or self.border_background > 0

    def segmentation(self) -> dict:
        """Keyword arguments of :func:`spoco.clustering.segment` that validation uses, and
        that ``spoco predict`` stores with the embeddings for ``spoco segment``."""
        return dict(delta_d=self.delta_d, foreground=self.foreground,
                    foreground_threshold=0.5 if self.foreground_threshold is None else self.foreground_threshold,
                    background=self.background, background_radius=self.background_radius,
                    merge_distance=0.0 if self.merge_distance is None else self.merge_distance,
                    min_size=self.min_size)

    def prediction(self) -> dict:
        """Keyword arguments of :func:`spoco.predict.predict` that validation uses, and the
        defaults of ``spoco predict`` with this run's checkpoints."""
        return dict(border=self.border, tta=bool(self.tta))

    @property
    def ndim(self) -> int:
        return len(self.patch_shape)
