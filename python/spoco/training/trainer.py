"""The SPOCO trainer: U-Net f + EMA g-network, SPOCOLoss, Adam with ReduceLROnPlateau,
validation by clustering and scoring, atomic checkpoints, resume, torchrun/DDP.

Resume is exact: ``last.pt`` holds, besides the networks and optimisers, the position in
the data order (epoch and batches of it consumed), every random generator of training
and the training time so far, so a run killed at any moment and resumed from its last
checkpoint reaches the weights of an uninterrupted run, bit for bit on the CPU with the
same number of threads (docs/training.md, "Checkpoints and resume")."""
from __future__ import annotations

import contextlib
import csv
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import metrics
from ..adversarial import AdversarialTerm
from ..clustering.postprocess import segment, segment_variants
from ..ema import EMANet, unwrap
from ..foreground import BACKGROUND_SCRIBBLE, labelled_mean_probability, pu_foreground_loss, scribble_foreground_loss
from ..loss import TERMS, SPOCOLoss
from ..models import UNet
from ..models.outputs import add_coordinates, split_output
from ..predict import predict, select_device
from . import distributed as dist_utils
from .checkpoint import load_checkpoint, remove_partial_checkpoints, save_checkpoint
from .config import TrainConfig
from .samplers import EpochSampler, ResumableDistributedSampler


# Post-processing tried on the validation images after training (Trainer.fit), where the
# config leaves it open: foreground thresholds, and merge distances in units of delta_d.
FOREGROUND_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MERGE_DISTANCES = (0.0, 1.0, 2.0, 3.0)


def build_model(config: TrainConfig, in_channels: int) -> UNet:
    """The U-Net of ``config`` (batch norm in 2D, group norm in 3D unless set)."""
    norm = config.norm or ("batch" if config.ndim == 2 else "group")
    return UNet(config.ndim, in_channels, config.embedding_dim, f_maps=config.f_maps, depth=config.depth,
                patch_shape=config.patch_shape, norm=norm, foreground=config.foreground,
                spatial_scale=config.spatial_scale)


def model_from_checkpoint(state: dict, *, network: str | None = None) -> UNet:
    """The U-Net stored in a checkpoint: ``network="f"`` the trained network, ``"g"`` its
    moving average (EMA); ``None``: the one the run validated (its ``eval_network``)."""
    if network is None:
        config = state.get("config") if isinstance(state, dict) else None
        network = config.get("eval_network", "f") if isinstance(config, dict) else "f"
    if network not in ("f", "g"):
        raise ValueError(f"network must be 'f' or 'g', got {network!r}")
    try:
        model = UNet(**state["model_config"])
        model.load_state_dict(state["model"] if network == "f" else state["ema"]["g"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"checkpoint does not hold a valid spoco model ({str(err).splitlines()[0]})") from None
    return model


class Trainer:
    """Trains ``f`` with :class:`spoco.SPOCOLoss` and keeps ``g`` as its EMA.

    With ``config.adversarial`` the objective is ``L_SO + ζ·L_wgan`` (``L_SSO`` in sparse
    mode, appendix A.1): an :class:`spoco.adversarial.AdversarialTerm` trains a WGAN-GP
    critic on the object masks of each batch and returns ``ζ·L_wgan``; both networks use
    Adam with ``config.adversarial_betas``.

    Parameters
    ----------
    config : TrainConfig
    train_data : torch Dataset
        Items are dicts with ``image_f``, ``image_g`` (float ``(C, *patch)``) and
        ``labels`` (int64 ``(*patch)``, 0 = unlabeled), e.g. :class:`spoco.data.InstanceDataset`.
    val_data : list of (image ``(C, *spatial)``, labels ``(*spatial)``), optional
        Densely labelled images; validation predicts, segments (mutex watershed +
        ``config``'s post-processing) and scores them; the best checkpoint is kept by
        mean AP@0.5 and the learning rate drops when it stops improving.
    out_dir : path
        Receives ``last.pt`` (every ``config.checkpoint_every`` steps and at validation),
        ``best.pt``, ``train_log.csv``, ``val_log.csv``, ``config.yaml``. A run that does
        not resume starts the logs afresh.
    device : str, optional
        Default: cuda, then mps, then cpu.
    resume : bool
        Continue from ``out_dir/last.pt`` (model, EMA, optimizer, scheduler, iteration,
        position in the data order, random generators, training time, and with
        ``config.adversarial`` the critic and its optimizer); the log rows of the steps
        after that checkpoint, which an interrupted run wrote, are dropped. For the
        data order to continue exactly, a training sample must depend only on its
        index and the epoch (``set_epoch``), as :class:`spoco.data.InstanceDataset`'s do.
    init_from : path, optional
        Fine-tune: start from this checkpoint's weights with a fresh optimizer
        (the paper's transfer setting uses ``lr=2e-5``).
    """

    def __init__(self, config: TrainConfig, train_data, val_data=None, *, out_dir, device=None,
                 resume: bool = False, init_from=None, progress: bool = True):
        config.check()
        self.config, self.train_data, self.val_data = config, train_data, list(val_data or [])
        self.out_dir, self.progress = Path(out_dir), progress
        self.rank, self.world, self.device = dist_utils.init_from_env(select_device(device))
        in_channels = int(train_data[0]["image_f"].shape[0])
        torch.manual_seed(config.seed)
        self.model = build_model(config, in_channels).to(self.device)
        self.use_g = config.sparse and config.consistency
        self.ema = EMANet(self.model, momentum=config.momentum, buffers=self._ema_buffers())
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        betas = tuple(config.adversarial_betas) if config.adversarial else (0.9, 0.999)  # A.1: β = (0.5, 0.9)
        # fused: one kernel for all parameters (the default for CPU tensors loops over them in Python)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                          betas=betas, fused=self.device.type in ("cpu", "cuda") or None)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience)
        gen = torch.Generator(device=self.device).manual_seed(config.seed * 1000 + self.rank)
        weights = dict(config.loss)
        if not config.consistency:
            weights["consistency_weight"] = 0.0
        self.criterion = SPOCOLoss(sparse=config.sparse, delta_v=config.delta_v, delta_d=config.delta_d,
                                   generator=gen, **weights)
        self.adversarial = self._adversarial_term() if config.adversarial else None
        self.iteration, self.best_score, self.epoch = 0, -math.inf, 0
        self.epoch_batches = 0  # batches of the current epoch trained on
        self.validated_at = 0  # iteration of the latest validation
        self._seconds, self._started = 0.0, None  # training time of earlier runs; start of this one
        self.autocast = self.device.type == "cuda" and config.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast and not torch.cuda.is_bf16_supported())
        if resume:
            self.load_state_dict(load_checkpoint(self.out_dir / "last.pt", map_location=self.device))
        elif init_from is not None:
            state = load_checkpoint(init_from, map_location=self.device)
            self.model.load_state_dict(model_from_checkpoint(state, network="f").state_dict())
            self.ema.g.load_state_dict(self.model.state_dict())

    def _ema_buffers(self) -> str:
        """``config.ema_buffers``; "own" needs g to run in training mode every step (the
        consistency term) to measure its statistics, so without it g averages f's."""
        mode = self.config.ema_buffers
        return "ema" if mode == "own" and not self.use_g else mode

    def _adversarial_term(self) -> AdversarialTerm:
        cfg = self.config
        if cfg.adversarial_warmup >= cfg.max_iters:
            warnings.warn(f"adversarial_warmup={cfg.adversarial_warmup} >= max_iters={cfg.max_iters}: the "
                          "adversarial term never starts", stacklevel=3)
        return AdversarialTerm(
            cfg.ndim, patch_shape=cfg.critic_patch_shape, sigma2=self.criterion.sigma2, anchor=self.criterion.anchor,
            ignore_index=self.criterion.ignore_index, weight=cfg.adversarial_weight, critic_steps=cfg.critic_steps,
            gp_weight=cfg.gp_weight, lr=cfg.critic_lr, betas=cfg.adversarial_betas, warmup=cfg.adversarial_warmup,
            max_objects=cfg.adversarial_max_objects, f_maps=cfg.critic_f_maps, device=self.device,
            seed=cfg.seed * 1000 + self.rank + 500)

    # ----------------------------------------------------------------- state
    @property
    def seconds(self) -> float:
        """Training time so far, of this run and the runs it resumed (drives the cosine
        schedule of a time-limited run)."""
        return self._seconds + (0.0 if self._started is None else time.perf_counter() - self._started)

    def _rng_state(self) -> dict:
        """This process's random generators: torch's global one (initialisation; a
        dataset may draw from it) and those of the loss and the adversarial term."""
        state = {"torch": torch.get_rng_state(), "loss": self.criterion.generator.get_state()}
        if self.adversarial is not None:
            state["adversarial"] = self.adversarial.generator.get_state()
        return state

    def _set_rng_state(self, states: list) -> None:
        if len(states) != self.world:  # another number of processes: keep the fresh seeds
            warnings.warn(f"the checkpoint holds the random generators of {len(states)} processes, this run has "
                          f"{self.world}: the resumed run draws other random numbers", stacklevel=3)
            return
        state = states[self.rank]
        torch.set_rng_state(state["torch"].cpu())
        self.criterion.generator.set_state(state["loss"].cpu())
        if self.adversarial is not None:
            self.adversarial.generator.set_state(state["adversarial"].cpu())

    def state_dict(self) -> dict:
        state = {"model_config": self.model.config, "model": self.model.state_dict(),
                 "ema": self.ema.state_dict() | {"g": self.ema.g.state_dict()},
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "iteration": self.iteration, "epoch": self.epoch,
                 "epoch_batches": self.epoch_batches, "validated_at": self.validated_at,
                 "seconds": self.seconds, "rng": [self._rng_state()],
                 "best_score": self.best_score, "config": self.config.to_dict()}
        if self.adversarial is not None:
            state["adversarial"] = self.adversarial.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            ema_state = {k: v for k, v in state["ema"].items() if k != "g"}
            self.ema.load_state_dict(ema_state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
            self.best_score = float(state["best_score"])
            if self.adversarial is not None:
                if "adversarial" not in state:
                    raise ValueError("the checkpoint holds no critic but the config has adversarial=True")
                self.adversarial.load_state_dict(state["adversarial"])
            # Checkpoints of earlier versions lack these: their runs resume at the start of
            # the epoch with fresh generators and clock.
            self.epoch_batches = int(state.get("epoch_batches", 0))
            self.validated_at = int(state.get("validated_at", self.iteration))  # they checkpointed at validations
            self._seconds = float(state.get("seconds", 0.0))
            if "rng" in state:
                self._set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"checkpoint does not match this model/config ({str(err).splitlines()[0]})") from None

    def save(self, name: str) -> None:
        """Write ``out_dir/name`` (rank 0). Every rank must call it: the checkpoint holds
        the random generators of all of them."""
        rng = dist_utils.gather_objects(self._rng_state())
        if self.rank == 0:
            save_checkpoint(self.out_dir / name, self.state_dict() | {"rng": rng})

    # -------------------------------------------------------------- training
    def _sampler(self, start: int = 0):
        """The order of the current epoch (this process's share), from position ``start``."""
        cfg = self.config
        if self.world > 1:
            return ResumableDistributedSampler(self.train_data, seed=cfg.seed, epoch=self.epoch, start=start)
        return EpochSampler(len(self.train_data), seed=cfg.seed, epoch=self.epoch, start=start)

    def _batches(self):
        """Endless stream of batches; each epoch reshuffles (sharded across ranks). Starts
        after the ``epoch_batches`` batches of the current epoch already trained on,
        without loading them; counts the batches it hands out."""
        cfg = self.config
        worker_init = getattr(self.train_data, "worker_init_fn", None)
        if len(self._sampler()) < cfg.batch_size:
            raise ValueError(f"the training set yields {len(self._sampler())} samples per epoch per process, "
                             f"fewer than batch_size={cfg.batch_size}")
        while True:
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(self.epoch)
            # Given a sampler, the loader's generator only draws its workers' base seed:
            # seeded, it leaves torch's global generator alone.
            loader = DataLoader(self.train_data, batch_size=cfg.batch_size, drop_last=True, num_workers=cfg.workers,
                                worker_init_fn=worker_init, persistent_workers=False,
                                sampler=self._sampler(self.epoch_batches * cfg.batch_size),
                                generator=torch.Generator().manual_seed(cfg.seed + self.epoch))
            for batch in loader:
                self.epoch_batches += 1
                yield batch
            self.epoch, self.epoch_batches = self.epoch + 1, 0

    def train_step(self, batch) -> dict:
        self.net.train()
        self.ema.train()
        x_f = batch["image_f"].to(self.device, non_blocking=True)
        painted = batch["labels"].to(self.device, non_blocking=True)
        labels = painted.masked_fill(painted == BACKGROUND_SCRIBBLE, 0)  # scribbles: unlabeled for SPOCO
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
               if self.autocast else contextlib.nullcontext())
        with ctx:
            f, fg_logits = split_output(self.net(x_f), self.model)
            g = split_output(self.ema(batch["image_g"].to(self.device, non_blocking=True)), self.model)[0] \
                if self.use_g else None
        scale = self.model.spatial_scale
        f = add_coordinates(f.float(), scale)
        g = None if g is None else add_coordinates(g.float(), scale)
        loss, terms = self.criterion(f, labels, g, return_terms=True)
        terms = {k: float(v) for k, v in terms.items()}
        if fg_logits is not None:
            if self.config.painted_background:  # objects against scribbles: c = 1
                fg_loss = scribble_foreground_loss(fg_logits, painted)
                self.model.label_rate.fill_(1.0)  # also after --finetune from a positive-unlabeled head
            else:
                fg_loss = pu_foreground_loss(fg_logits, labels, ignore_index=self.criterion.ignore_index)
            loss = loss + self.config.foreground_weight * fg_loss
            terms["foreground"], terms["total"] = float(fg_loss.detach()), float(loss.detach())
            rate = None if self.config.painted_background else labelled_mean_probability(fg_logits, labels)
            if rate is not None:  # a running mean over ~100 steps of c (spoco.foreground)
                self.model.label_rate.lerp_(torch.tensor(rate, device=self.device), 0.01 if self.iteration else 1.0)
        if self.adversarial is not None:  # critic updates, then ζ·L_wgan (appendix A.1)
            adv_loss, adv_terms = self.adversarial(f.float(), labels, self.iteration)
            loss = loss + adv_loss
            terms |= adv_terms
            terms["total"] = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update()
        self.iteration += 1
        return terms

    @property
    def _extra_terms(self) -> tuple:
        extra = ("foreground",) if self.config.foreground else ()
        return extra + (("wgan", "critic", "wasserstein", "gradient_penalty") if self.adversarial is not None else ())

    def fit(self) -> dict:
        """Train until ``max_iters`` or the learning rate falls below ``min_lr``.
        Returns ``{"iterations", "steps_this_run", "best_score", "seconds"}``: the total step
        count (with ``--resume``, including the earlier runs' steps), the steps and wall time
        of this call."""
        cfg = self.config
        first_step = self.iteration
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            # The log rows that an interrupted run wrote after its last checkpoint (after
            # iteration 0: all, for a run started afresh in its folder) are redone.
            remove_partial_checkpoints(self.out_dir)
            for name in ("train_log.csv", "val_log.csv"):
                _drop_rows_after(self.out_dir / name, self.iteration)
        start = self._started = time.perf_counter()
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_iters, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True)
        batches = self._batches()
        budget = math.inf if cfg.max_minutes is None else 60 * cfg.max_minutes
        while self.iteration < cfg.max_iters and (cfg.lr_schedule != "plateau" or
                                                  self.optimizer.param_groups[0]["lr"] >= cfg.min_lr):
            # the share of the run done: of its steps or of its time, whichever is further
            progress = dist_utils.broadcast_float(max(self.iteration / cfg.max_iters, self.seconds / budget),
                                                  self.device)
            if progress >= 1:  # out of time
                if self.iteration != self.validated_at:  # validate what was trained since the last validation
                    self._validate_and_checkpoint()
                break
            if cfg.lr_schedule == "cosine":
                self._set_lr(progress)
            terms = self.train_step(next(batches))
            if self.rank == 0 and (self.iteration % cfg.log_every == 0 or self.iteration == 1):
                self._log("train_log.csv", {"iteration": self.iteration, "lr": self.optimizer.param_groups[0]["lr"],
                                            **{k: terms.get(k, 0.0) for k in ("total",) + TERMS + self._extra_terms}})
                if bar is not None:
                    bar.set_postfix(loss=f"{terms['total']:.3f}")
            if bar is not None:
                bar.update(1)
            if self.iteration % cfg.val_every == 0 or self.iteration == cfg.max_iters:
                self._validate_and_checkpoint()
            elif self.iteration % cfg.checkpoint_every == 0:
                self.save("last.pt")
        self._seconds, self._started = self.seconds, None
        if bar is not None:
            bar.close()
        if self.rank == 0 and self.val_data and (self.out_dir / "best.pt").exists() and \
                ((cfg.foreground and cfg.foreground_threshold is None) or cfg.merge_distance is None
                 or cfg.tta is None):
            with torch.random.fork_rng(devices=[]):  # building the networks draws weights: keep training's stream
                self._choose_postprocessing()
        dist_utils.barrier()
        return {"iterations": self.iteration, "steps_this_run": self.iteration - first_step,
                "best_score": self.best_score, "seconds": time.perf_counter() - start}

    def _choose_postprocessing(self) -> None:
        """:func:`choose_postprocessing` for this run; the config and best score follow it."""
        chosen, self.best_score = choose_postprocessing(self.out_dir, self.config, self.val_data, self.device)
        for key, value in chosen.items():
            setattr(self.config, key, value)
        self._write_config()

    def _write_config(self) -> None:
        import yaml

        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    def _set_lr(self, progress: float) -> None:
        """Cosine decay from ``lr`` to 0 over the run, after a linear warm-up."""
        cfg = self.config
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if self.iteration < cfg.warmup:
            lr *= (self.iteration + 1) / cfg.warmup
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _validate_and_checkpoint(self) -> None:
        improved, self.validated_at = False, self.iteration
        if self.val_data:
            score = math.nan
            if self.rank == 0:
                scores = self.validate(self.config.eval_network)
                score = scores["ap50"]
                self._log("val_log.csv", {"iteration": self.iteration, **scores})
            # Every rank steps its scheduler with rank 0's score, so the learning rates agree.
            score = dist_utils.broadcast_float(score, self.device)
            if self.config.lr_schedule == "plateau":
                self.scheduler.step(score)
            improved = score > self.best_score
            self.best_score = max(self.best_score, score)
        if improved:
            self.save("best.pt")
        self.save("last.pt")
        dist_utils.barrier()

    def validate(self, network: str = "f") -> dict:
        """Mean SBD, |DiC|, AP@0.5 and adapted Rand error of the segmentations of the
        validation images (f, or the EMA network g with ``network="g"``)."""
        model = unwrap(self.model) if network == "f" else self.ema.g
        cfg = self.config
        rows = []
        for image, labels in self.val_data:
            emb = predict(model, image, **cfg.prediction(), device=self.device)
            seg = segment(emb, **cfg.segmentation())
            rows.append(metrics.evaluate(np.asarray(labels), seg))
        return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}

    def _log(self, name: str, row: dict) -> None:
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)



def choose_postprocessing(out_dir: Path, config: TrainConfig, val_data, device) -> tuple[dict, float]:
    """Give ``out_dir/best.pt`` the post-processing under which its network scores best on
    the validation images ``val_data`` (pairs of image and labels), so that segmentation
    uses it: the foreground threshold (of FOREGROUND_THRESHOLDS), the merge distance
    (MERGE_DISTANCES · delta_d) and whether prediction averages the image's 8 orientations
    (test-time augmentation), each where ``config`` leaves it None. The network of
    ``last.pt`` competes too: a checkpoint chosen by the score without merging need not be
    the best with it. Logs every candidate's score to ``postprocessing.csv``.

    Returns the chosen values (config keys) and their AP@0.5."""
    cfg = config
    thresholds = (FOREGROUND_THRESHOLDS if cfg.foreground and cfg.foreground_threshold is None
                  else (cfg.segmentation()["foreground_threshold"],))
    distances = (tuple(m * cfg.delta_d for m in MERGE_DISTANCES) if cfg.merge_distance is None
                 else (cfg.merge_distance,))
    augmentations = (False, True) if cfg.tta is None else (cfg.tta,)
    log = Path(out_dir) / "postprocessing.csv"
    log.unlink(missing_ok=True)  # a resumed run redoes this step
    labels = [np.asarray(lab) for _, lab in val_data]
    best, rows = None, []
    for name in dict.fromkeys(("best.pt", "last.pt")):
        state = load_checkpoint(Path(out_dir) / name, map_location=device)
        if name == "last.pt" and state["iteration"] == best[1]["iteration"]:
            continue  # the same network
        model = model_from_checkpoint(state).to(device)
        base = TrainConfig.from_saved(state["config"]).segmentation()
        del base["merge_distance"]  # the candidates below
        for tta in augmentations:
            embeddings = [predict(model, image, border=cfg.border, tta=tta, device=device) for image, _ in val_data]
            for threshold in thresholds:
                variants = [segment_variants(emb, distances, **base | {"foreground_threshold": threshold})
                            for emb in embeddings]
                for i, distance in enumerate(distances):
                    score = float(np.mean([metrics.evaluate(gt, segs[i])["ap50"] for gt, segs in zip(labels, variants)]))
                    rows.append({"checkpoint": name, "iteration": state["iteration"], "tta": tta,
                                 "foreground_threshold": threshold if cfg.foreground else "",
                                 "merge_distance": distance, "ap50": score})
                    # ties: the earlier checkpoint, one prediction (8 times cheaper), the
                    # threshold nearest 0.5, the smaller distance
                    key = (score, not tta, -abs(threshold - 0.5), -distance)
                    if best is None or key > best[0]:
                        best = (key, state, threshold, distance, tta)
    with open(log, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (score, *_), state, threshold, distance, tta = best
    chosen = {}
    if cfg.foreground and cfg.foreground_threshold is None:
        chosen["foreground_threshold"] = threshold
    if cfg.merge_distance is None:
        chosen["merge_distance"] = distance
    if cfg.tta is None:
        chosen["tta"] = tta
    state["config"] |= chosen
    state["best_score"] = score
    save_checkpoint(Path(out_dir) / "best.pt", state)
    return chosen, score


def _drop_rows_after(path: Path, iteration: int) -> None:
    """Keep the rows of the csv log ``path`` up to ``iteration`` (and drop a row cut
    short by a kill), replacing the file atomically; remove it when no row is left."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    col = header.index("iteration") if "iteration" in header else None

    def kept(row):
        try:
            return len(row) == len(header) and int(row[col]) <= iteration
        except (TypeError, ValueError):
            return False

    body = [row for row in body if kept(row)]
    if not body:  # a fresh run starts a new log, with its own columns
        path.unlink()
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows([header] + body)
    tmp.replace(path)
