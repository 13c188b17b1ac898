"""``spoco train``: train an embedding network on a folder of images and (partial) label images."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError

# Flags that override config keys of the same name (None = not given).
_OVERRIDES = ("fraction", "patch_shape", "batch_size", "max_iters", "max_minutes", "lr", "val_every",
              "checkpoint_every", "embedding_dim", "f_maps", "depth", "norm", "workers", "seed", "momentum",
              "eval_network", "ema_buffers", "border", "background", "min_size", "merge_distance", "spatial_scale",
              "foreground_threshold", "samples_per_epoch", "adversarial_weight", "critic_steps", "adversarial_warmup",
              "adversarial_patch_shape", "critic_lr", "background_label", "border_background", "tta")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train an embedding network (SPOCO loss + EMA g-network)",
        description="Train a U-Net embedding network with the SPOCO loss on pairs of images and label images "
        "matched by file name. Labels: 0 = unlabeled (or background), objects > 0; objects that are not painted "
        "stay 0 (sparse, positive-unlabeled supervision); label images without objects are fine. The default "
        "recipe derives its sizes from the labelled objects and prints what it chose and why (--recipe paper: "
        "the paper's settings). Writes last.pt, best.pt (best validation AP@0.5, scored with the post-processing "
        "that spoco segment will apply), config.yaml, train_log.csv (every loss term) and val_log.csv to --out. "
        "Precedence: options, then --config, then the recipe.")
    p.add_argument("--images", required=True, help="folder of training images (tif/png/h5/zarr)")
    p.add_argument("--labels", required=True, help="folder of label images with the same file names")
    p.add_argument("--val-images", help="folder of validation images (densely labelled); enables best.pt")
    p.add_argument("--val-labels", help="folder of validation label images")
    p.add_argument("--key", help="dataset key of the images inside HDF5/zarr files")
    p.add_argument("--label-key", help="dataset key of the labels inside HDF5/zarr files")
    p.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    p.add_argument("--config", help="YAML file with TrainConfig keys (see spoco.training.TrainConfig)")
    p.add_argument("--recipe", choices=("auto", "paper"), default="auto",
                   help="auto (default): the measured CPU-friendly recipe with spatial embeddings and a foreground "
                   "head, sizes derived from the labelled objects; paper: the paper's settings (appendix A.1)")
    p.add_argument("--fraction", type=float, help="SPOCO@p: keep this fraction of the objects of each image "
                   "(default: use the labels as they are)")
    p.add_argument("--dense", action="store_true", help="labels are dense: 0 is background, not unlabeled")
    p.add_argument("--no-consistency", action="store_true", help="train without the g-network consistency term")
    p.add_argument("--patch-shape", type=int, nargs="+", help="training patch (2 or 3 sizes)")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--iters", dest="max_iters", type=int, help="maximum optimizer steps")
    p.add_argument("--minutes", dest="max_minutes", type=float,
                   help="stop after this many minutes of training (then validate and save)")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--val-every", type=int, help="validate and checkpoint every N steps")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="also write last.pt every N steps without "
                   "validating, so that --resume after a crash or kill loses at most N steps (default 100)")
    p.add_argument("--embedding-dim", type=int, help="embedding dimension D")
    p.add_argument("--f-maps", type=int, help="channels of the first U-Net level")
    p.add_argument("--depth", type=int, help="U-Net levels (default: receptive field covers the patch)")
    p.add_argument("--norm", choices=("batch", "group", "none"), help="normalisation (default: batch 2D, group 3D)")
    p.add_argument("--momentum", type=float, help="EMA momentum of the g-network")
    p.add_argument("--eval-network", choices=("f", "g"), help="network that validation scores, best.pt keeps and "
                   "spoco predict uses by default: f or its moving average g, smoother once training "
                   "has run for several times 1 / (1 - momentum) steps")
    p.add_argument("--ema-buffers", choices=("copy", "ema", "own"), help="g's BatchNorm statistics: copied from f "
                   "(the paper's settings), averaged, or g's own, measured by its forwards in training mode "
                   "(default recipe)")
    p.add_argument("--border", choices=("zero", "mirror"), help="past the image border when validating and, by "
                   "default, in spoco predict: the network's zero padding or 16 pixels of mirrored image")
    p.add_argument("--background", choices=("none", "largest", "embedding"),
                   help="background rule of the validation segmentation (see spoco segment)")
    p.add_argument("--min-size", type=int, help="smallest object kept in validation segmentations (pixels)")
    p.add_argument("--merge-distance", type=float, help="merge touching segments with closer mean embeddings")
    p.add_argument("--spatial-scale", type=float, help="spatial embeddings: pixels per embedding unit (auto: "
                   "a quarter of the median labelled object diameter)")
    p.add_argument("--no-foreground", action="store_true", help="no foreground head: cluster every pixel")
    p.add_argument("--foreground-threshold", type=float, help="foreground probability above which pixels are "
                   "clustered (default 0.5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation in validation and, by default, in spoco predict: average the "
                   "predictions of the 8 orientations of each image (8 times the prediction time); default "
                   "recipe: chosen with and without on the validation images after training")
    p.add_argument("--background-label", type=int, metavar="VALUE",
                   help="label value painted on background (scribbles, a few strokes are enough): the "
                   "foreground head learns the objects against them instead of against all unlabeled pixels; "
                   "helps most where the background is structured (membranes in EM)")
    p.add_argument("--border-background", type=int, metavar="PIXELS",
                   help="count the unlabeled pixels within this distance of a labelled object as painted "
                   "background, like scribbles: for objects that never touch (membranes between EM cells, "
                   "isolated cells); 0: off")
    p.add_argument("--workers", type=int, help="data loading processes (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the CPUs available to this process)")
    p.add_argument("--samples-per-epoch", type=int, help="random patches per epoch")
    p.add_argument("--seed", type=int, help="seed of sampling, augmentation and initialisation (default 0)")
    adv = p.add_argument_group("adversarial term (appendix A.1)")
    adv.add_argument("--adversarial", action="store_true", help="add zeta * L_wgan: a WGAN-GP critic learns to tell "
                     "the soft object masks from ground-truth masks and the network learns to fool it")
    adv.add_argument("--adversarial-weight", type=float, metavar="ZETA", help="zeta, weight of L_wgan (default 0.1)")
    adv.add_argument("--critic-steps", type=int, metavar="N",
                     help="critic updates per embedding step, n_critic (default 5)")
    adv.add_argument("--critic-lr", type=float, metavar="LR", help="Adam learning rate of the critic (default 1e-4)")
    adv.add_argument("--adversarial-warmup", type=int, metavar="STEPS", help="steps of plain SPOCO training before "
                     "the critic and L_wgan start (default 50000, the paper's)")
    adv.add_argument("--adversarial-patch", dest="adversarial_patch_shape", type=int, nargs="+", metavar="SIZE",
                     help="crop around each object given to the critic (default 40 64 64 / 64 64, at most the "
                     "training patch)")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt, with the same data order "
                   "and random draws as a run that was never interrupted (give the same options, --threads included)")
    p.add_argument("--finetune", metavar="CHECKPOINT", help="start from this checkpoint's weights (new optimizer); "
                   "'nuclei' starts from the nuclei model shipped with spoco")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args, summary):
    """The run's TrainConfig and the reasons for its derived values: the recipe for
    ``summary`` (a :class:`spoco.training.recipe.LabelSummary`), then ``--config``,
    then the options."""
    from ..training import TrainConfig
    from ..training.recipe import RECIPES

    values = {}
    if args.config:
        values = TrainConfig.read_yaml(args.config)
    for name in _OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.dense:
        values["sparse"] = False
    if args.no_consistency:
        values["consistency"] = False
    if args.no_foreground:
        values["foreground"] = False
    if args.adversarial:
        values["adversarial"] = True
    return RECIPES[args.recipe](summary, values, voxel_size=getattr(args, "voxel_size", None))


def read_pairs(image_dir, label_dir, key, label_key):
    """Validation pairs ``[(image, labels)]`` read from two folders."""
    from ..data import io

    return [(read_image(p, key), read_labels(q, label_key)) for p, q in io.list_pairs(image_dir, label_dir)]


def _without(labels, value):
    """Label images with pixels equal to ``value`` (scribbles) set to 0; unchanged for None."""
    import numpy as np

    return labels if value is None else [np.where(lab == value, 0, lab) for lab in labels]


def read_image(path, key=None):
    """The image of ``path``, refused (naming the file) when training could only fail
    later without saying which file: complex pixels (their imaginary part would be
    dropped) and NaN or infinite values (the network's output would be NaN)."""
    import numpy as np

    from ..data import io

    image = io.read_array(path, key)
    if image.dtype.kind == "c":
        raise CLIError(f"{path}: complex pixels ({image.dtype}) cannot be trained on")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise CLIError(f"{path}: the image holds NaN or infinite values")
    return image


def read_labels(path, key=None, background_label=None):
    """The label image of ``path`` as training and validation use it, checked here so that
    an error names the file: integer ids (floats holding integers are accepted, as some
    tools write label tifs so), none negative; ids too large to count in a table are
    renumbered 1..K in ascending order (:func:`spoco._labels.compact_ids`), which keeps
    the objects, their order and so the SPOCO@p draw. Pixels equal to
    ``background_label`` (scribbles) keep that value."""
    import numpy as np

    from .._labels import compact_ids, label_array
    from ..data import io

    labels = io.read_array(path, key)
    if labels.dtype.kind == "f" and labels.size and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    label_array(labels, f"labels {path}")  # floats, bools, negative ids, ids >= 2**63
    if background_label is None:
        return compact_ids(labels)
    scribbles = labels == background_label
    painted_zero = np.where(scribbles, 0, labels)
    objects = compact_ids(painted_zero)
    if objects is not painted_zero and objects.max(initial=0) >= background_label:  # renumbered onto the value
        objects = np.where(objects >= background_label, objects + 1, objects)
    return np.where(scribbles, background_label, objects)


def run(args) -> int:
    from .. import threads

    if args.resume and args.finetune:
        raise CLIError("--resume and --finetune exclude each other")
    if (args.val_images is None) != (args.val_labels is None):
        raise CLIError("--val-images and --val-labels go together")
    threads.set_threads(args.threads)
    from ..data import InstanceDataset, io
    from ..training import Trainer
    from ..data.sampling import sparsify
    from ..training.recipe import summarize_labels

    pairs = io.list_pairs(args.images, args.labels)
    args.voxel_size = io.voxel_size(pairs[0][0], args.key)  # OME-Zarr metadata of the first image, if any
    images = [read_image(p, args.key) for p, _ in pairs]
    scribble_value = args.background_label
    if scribble_value is None and args.config:
        from ..training import TrainConfig

        scribble_value = TrainConfig.read_yaml(args.config).get("background_label")
    labels = [read_labels(q, args.label_key, scribble_value) for _, q in pairs]
    objects = _without(labels, scribble_value)
    # Sizes come from the labels the network will see: after SPOCO@p when --fraction is given
    # (known once the config is read; its first build needs no neighbouring pairs).
    config, _ = build_config(args, summarize_labels(objects, pairs=False))
    if config.fraction is not None:
        objects = [sparsify(lab, config.fraction, config.seed, image_index=i) for i, lab in enumerate(objects)]
    config, reasons = build_config(args, summarize_labels(objects))
    if args.finetune:
        reasons.append(_adopt_network(config, _finetune(args.finetune)))
    train = InstanceDataset(images, labels, patch_shape=config.patch_shape, fraction=config.fraction,
                            seed=config.seed, augment=config.augment, length=1,
                            names=[f"{p} / {q}" for p, q in pairs], background_label=config.background_label,
                            border_background=config.border_background)
    train.length = config.samples_per_epoch or 4 * len(train.images)
    quiet = args.quiet
    used = summarize_labels(train.object_labels(), pairs=False)  # after SPOCO@p
    # recorded with the checkpoints, so that an exported model says what it was trained on
    scribbles = (f", {train.scribble_pixels} painted background pixels"
                 + (f" (value {config.background_label})" if config.background_label is not None else "")
                 + (f" (object borders of {config.border_background} px)" if config.border_background else "")
                 if config.painted_background else "")
    config.data = {"images": str(args.images), "labels": str(args.labels), "summary": used.line() + scribbles,
                   **({"val_images": str(args.val_images), "val_labels": str(args.val_labels)}
                      if args.val_images else {})}
    if not quiet:
        print(f"spoco train: {used.line()}" + (f" (SPOCO@{config.fraction:g})" if config.fraction else "")
              + scribbles)
        for reason in reasons:
            print(f"  {reason}")
    val = None
    if args.val_images:
        val = read_pairs(args.val_images, args.val_labels, args.key, args.label_key)  # raw: predict() normalises
        if config.background_label is not None:  # painted background in validation labels is background
            val = [(img, _without([lab], config.background_label)[0]) for img, lab in val]
    with _run_folder_lock(args.out):  # a second spoco train into the same folder is refused
        trainer = Trainer(config, train, val, out_dir=args.out, device=args.device, resume=args.resume,
                          init_from=_finetune(args.finetune), progress=not quiet)
        result = trainer.fit()
    if trainer.rank == 0:
        best = f", best validation AP@0.5 {result['best_score']:.3f}" if val else ""
        if val:
            chosen = trainer.config.segmentation()
            threshold = f"foreground threshold {chosen['foreground_threshold']:g}, " if config.foreground else ""
            tta = ", test-time augmentation" if trainer.config.tta else ""
            best += f" ({threshold}merge distance {chosen['merge_distance']:g}{tta})"
        steps = result["steps_this_run"]
        resumed = f" (step {result['iterations']} in all)" if steps != result["iterations"] else ""
        print(f"trained {steps} steps in {result['seconds']:.0f} s{resumed}{best}; checkpoints in {args.out}")
    return 0


def _finetune(checkpoint):
    """The checkpoint file of ``--finetune``: a path, or a shipped model's name."""
    if checkpoint is None:
        return None
    from ..models.pretrained import resolve

    return resolve(checkpoint)


def _adopt_network(config, checkpoint) -> str:
    """Give ``config`` the network of the checkpoint ``--finetune`` starts from (its weights only
    fit that shape: levels, widths, embedding size, norm, foreground head and the scale of the
    position channels it learned with); returns the line that says so."""
    from ..training import load_checkpoint

    model = load_checkpoint(checkpoint).get("model_config") or {}
    keys = {"embedding_dim": "out_channels", "f_maps": "f_maps", "depth": "depth", "norm": "norm",
            "foreground": "foreground", "spatial_scale": "spatial_scale"}
    for key, source in keys.items():
        if source in model:
            setattr(config, key, model[source])
    return (f"--finetune {checkpoint}: its network (depth {model.get('depth')}, f_maps {model.get('f_maps')}, "
            f"D {model.get('out_channels')}, spatial_scale {model.get('spatial_scale')})")


def _run_folder_lock(out):
    """The lock of the run folder, held by the process that writes it (rank 0 under torchrun)."""
    import contextlib
    import os

    from .._journal import output_lock

    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return output_lock(Path(out), f"the run folder {out}")
