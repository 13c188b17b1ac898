"""``spoco predict``: embeddings of images or volumes with a trained network, tile by tile."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, check_disk_space, folder_jobs, naming_errors

EMB_KEY = "embeddings"
# Attribute of the embeddings that holds (as JSON) the segmentation settings the training
# run validated; spoco segment applies them unless told otherwise.
SEGMENTATION_ATTR = "spoco_segmentation"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict pixel embeddings with a trained checkpoint (tiled, any image size)",
        description="Predict embeddings (D, *spatial) of one image/volume or of every image in a folder with a "
        "checkpoint written by spoco train. Large inputs are processed in tiles with a halo of context and "
        "written tile by tile, so neither input nor output has to fit in memory. Output: HDF5 (.h5) or zarr "
        "(.zarr) with the embeddings under --out-key (a network with a foreground head adds the foreground "
        "probability as the last channel) and the run's validated segmentation settings as an attribute that "
        "spoco segment applies; for a folder input, --out is a folder receiving <name>.h5 per image.")
    p.add_argument("--checkpoint", "--model", required=True, dest="checkpoint",
                   help="checkpoint (.pt) from spoco train, a bioimage.io package from spoco export (.zip, its "
                   "folder or rdf.yaml), or the name of a model shipped with spoco (nuclei: see the README)")
    p.add_argument("--images", required=True, help="image file (tif/png/h5/zarr; 'file.h5:key' or --key) or folder")
    p.add_argument("--key", help="dataset key of the input inside HDF5/zarr files")
    p.add_argument("--out", required=True, help="output .h5/.zarr file, or folder for a folder input")
    p.add_argument("--out-key", default=EMB_KEY, help=f"dataset key of the embeddings (default {EMB_KEY})")
    p.add_argument("--eval-network", choices=("f", "g"),
                   help="f: the trained network; g: its moving average (EMA); default: the one the training "
                   "run validated and kept as best (its eval_network, f unless set)")
    p.add_argument("--tile-shape", type=int, nargs="+", help="tile core size per axis (default: whole image)")
    p.add_argument("--halo", type=int, nargs="+", help="context added around each tile (default 16 per axis)")
    p.add_argument("--border", choices=("zero", "mirror"), help="past the image border: the network's zero "
                   "padding, or --halo pixels of mirrored image (default: the training run's --border, zero "
                   "unless set)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average the predictions of the 8 orientations of each image "
                   "(8 times the work; default: what the training run chose on its validation images)")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--dask", metavar="SCHEDULER",
                   help="run the tiles as Dask tasks: 'threads', 'processes', or the address of a dask.distributed "
                   "scheduler (e.g. tcp://host:8786; one GPU per worker). Needs a .zarr output; --tile-shape "
                   "sets the chunks")
    p.add_argument("--restart", action="store_true",
                   help="a run interrupted by a kill or power cut resumes from <out>.spoco-progress when the same "
                   "command is run again (tiles already written are kept); --restart starts from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _inputs(args):
    return folder_jobs(args.images, args.out, ".h5", "image") or [(args.images, Path(args.out))]


def predict_file(model, src, dst: Path, *, key, out_key, tile_shape, halo, border, device, progress,
                 segmentation=None, restart: bool = False, dask: bool = False, tta: bool = False) -> None:
    """Predict one input file into an HDF5/zarr output dataset, written tile by tile; a run
    killed before the end resumes from ``<dst>.spoco-progress`` (:mod:`._resume`). An error
    about the image (shape, channels, dtype, NaN, a damaged chunk) names ``src``."""
    with naming_errors(src):
        _predict_file(model, src, dst, key=key, out_key=out_key, tile_shape=tile_shape, halo=halo, border=border,
                      device=device, progress=progress, segmentation=segmentation, restart=restart, dask=dask,
                      tta=tta)


def _predict_file(model, src, dst: Path, *, key, out_key, tile_shape, halo, border, device, progress,
                  segmentation=None, restart: bool = False, dask: bool = False, tta: bool = False) -> None:

    from ..data import io
    from ..predict import predict, tile_cores
    from ._resume import ResumableOutput, source_identity

    image = io.open_array(src, key)
    if image.ndim not in (model.ndim, model.ndim + 1):
        raise CLIError(f"{src}: shape {tuple(image.shape)} does not fit a {model.ndim}D network "
                       f"(expected {model.ndim} spatial axes, optionally channels first)")
    spatial = tuple(image.shape[-model.ndim:])
    shape = (model.config["out_channels"] + int(model.foreground),) + spatial
    check_disk_space(dst, shape, 4)
    chunks = (shape[0],) + tuple(min(s, 64 if model.ndim == 3 else 512) for s in spatial)
    if dask:  # every task writes whole chunks: chunks = the tiles' cores
        if dst.suffix.lower() not in io.ZARR:
            raise CLIError(f"--dask writes from several processes into one output: use a .zarr --out, got {dst}")
        chunks = (shape[0],) + tile_cores(model, spatial, tile_shape)
    if dst.suffix.lower() not in io.HDF5 + io.ZARR:
        raise CLIError(f"--out must end in .h5 or .zarr, got {dst}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    job = {"what": "predict", "input": source_identity(src), "input_key": key}
    with ResumableOutput(dst, out_key, job, restart, not progress) as resumable:
        # marked incomplete until done; the input's voxel size travels to spoco segment
        out = resumable.array(shape, "float32", chunks, voxel_size=io.voxel_size(src, key), channels=True)
        if out.attrs.get(io.COMPLETE_ATTR) is not True:  # else killed while copying to HDF5
            predict(model, image, out=out, tile_shape=tile_shape, halo=halo, border=border, device=device,
                    progress=progress, journal=resumable.folder / "tiles", dask=dask, tta=tta)
        attrs = {} if segmentation is None else {SEGMENTATION_ATTR: json.dumps(segmentation)}
        resumable.finish(out, attrs)


def run(args) -> int:
    from ..predict import select_device

    model, config = load_network(args.checkpoint, args.eval_network)
    border = args.border or config.border
    tta = config.prediction()["tta"] if args.tta is None else args.tta
    device = select_device(args.device)
    model.to(device)
    if tta and not args.quiet:
        why = "--tta" if args.tta else "chosen by the training run on its validation images"
        print(f"test-time augmentation ({why}): 8 predictions per tile, averaged; --no-tta predicts once")
    with _scheduler(args.dask):
        for src, dst in _inputs(args):
            predict_file(model, src, dst, key=args.key, out_key=args.out_key, tile_shape=args.tile_shape,
                         halo=args.halo, border=border, device=None if args.dask and not args.device else device,
                         progress=not args.quiet, segmentation=config.segmentation(), restart=args.restart,
                         dask=bool(args.dask), tta=tta)
            if not args.quiet:
                print(f"{src} -> {dst}:{args.out_key}")
    return 0


def _scheduler(name):
    """The Dask scheduler of ``--dask`` as a context (nothing without it)."""
    import contextlib

    if not name:
        return contextlib.nullcontext()
    import dask

    if name in ("threads", "processes", "synchronous"):
        return dask.config.set(scheduler=name)
    try:
        from distributed import Client
    except ImportError:
        raise CLIError("--dask with a scheduler address needs dask.distributed (pip install 'spoco[dask]')") from None
    return Client(name)


def load_network(checkpoint, network=None):
    """``(model, TrainConfig)`` of a checkpoint of spoco train, a shipped model's name
    (``nuclei``: :mod:`spoco.models.pretrained`) or a bioimage.io package of spoco export."""
    from ..export import is_package, load_package
    from ..models.pretrained import resolve
    from ..training import TrainConfig, load_checkpoint, model_from_checkpoint

    checkpoint = resolve(checkpoint)
    if is_package(checkpoint):  # a bioimage.io package of spoco export: its U-Net and settings
        return load_package(checkpoint, network=network)
    state = load_checkpoint(checkpoint)
    with naming_errors(checkpoint):  # a spoco checkpoint whose model is broken
        return model_from_checkpoint(state, network=network), TrainConfig.from_saved(state.get("config"))
