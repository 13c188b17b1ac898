"""Training SPOCO networks: configuration, trainer, checkpoints, multi-process runs."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import Trainer, build_model, model_from_checkpoint

__all__ = ["TrainConfig", "Trainer", "build_model", "load_checkpoint", "model_from_checkpoint", "save_checkpoint"]
