"""``spoco segment``: pixel embeddings on disk -> instance labels on disk, block by block.

The work is in :func:`segment_array` (array in, labels out); ``run`` only opens
files and checks arguments, so further steps (post-processing of the labels)
can be added to ``segment_array`` and exposed as flags here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..clustering.postprocess import BACKGROUND_MODES
from . import CLIError, check_disk_space, folder_jobs, naming_errors


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment", help="cluster pixel embeddings into instances (block-wise mutex watershed)",
        description="Cluster pixel embeddings (D, [Z,] Y, X) from an HDF5/zarr dataset or a tif into instance "
        "labels with the block-wise mutex watershed: bounded memory, any volume size. Embeddings written by "
        "spoco predict carry the segmentation settings their training run validated (foreground threshold, "
        "min size, ...); they apply unless an option overrides them. Example: "
        "spoco segment emb.zarr --key emb --block-shape 64 256 256 --halo 27 --out labels.zarr --out-key labels")
    p.add_argument("input", help="embeddings (D, [Z,] Y, X): .h5/.hdf5 or .zarr (with --key) or .tif, or a folder "
                   "of such files (e.g. the output of spoco predict); then --out is a folder of label tifs")
    p.add_argument("--key", help="dataset key of the embeddings in an HDF5 file / zarr group (default: the only one)")
    p.add_argument("--model", help="segment IMAGES instead of embeddings: predict them with this network (a "
                   "shipped model's name, e.g. nuclei, a checkpoint of spoco train or a bioimage.io package) and "
                   "segment with the settings it was validated with (in memory)")
    p.add_argument("--device", help="with --model: cuda, mps or cpu (default: best available)")
    p.add_argument("--out", required=True, help="output labels: .h5/.hdf5, .zarr (with --out-key) or .tif")
    p.add_argument("--out-key", default="labels", help="dataset key of the labels (default: labels)")
    p.add_argument("--block-shape", type=int, nargs="+", default=None, metavar="N",
                   help="block core size, one integer per spatial axis (or one for all); default: the whole "
                   "array at once, in memory")
    p.add_argument("--halo", type=int, nargs="+", default=None, metavar="N",
                   help="context around every block, at least the longest offset (default: the longest offset)")
    p.add_argument("--threads", type=int, default=None, help="blocks processed at once (default: all CPUs)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="memory the blocks in flight may use, e.g. 2GiB: fewer blocks run at once and the spare "
                   "threads work inside a block (same result)")
    p.add_argument("--delta-d", type=float, default=None,
                   help="push margin of the loss (Eq. 12; default: the training run's, 2.0)")
    p.add_argument("--long-range", type=int, nargs="+", default=[3, 9, 27], metavar="R",
                   help="repulsive offsets along every axis (default: 3 9 27)")
    p.add_argument("--voxel-size", type=float, nargs="+", default=None, metavar="S",
                   help="size of a voxel along each spatial axis (e.g. 2 0.5 0.5 µm): the repulsive offsets "
                   "reach the same physical distance along every axis (--long-range counts voxels of the finest "
                   "axis). Default: the embeddings' own (OME-Zarr metadata, or written by spoco predict), else "
                   "isotropic")
    p.add_argument("--strides", type=int, nargs="+", default=None, metavar="S",
                   help="keep every S-th repulsive edge (one per axis or one for all)")
    p.add_argument("--randomize-strides", action="store_true", help="keep repulsive edges at random instead")
    p.add_argument("--min-size", type=int, default=None, help="objects smaller than this (pixels) become 0")
    p.add_argument("--foreground-threshold", type=float, default=None,
                   help="embeddings from a network with a foreground head (last channel): cluster only pixels "
                   "whose foreground probability is above this")
    p.add_argument("--background", choices=BACKGROUND_MODES, default=None,
                   help="networks trained on sparse labels without a foreground head have no background class: "
                   "'largest' makes the largest segment background, 'embedding' also every segment whose mean "
                   "embedding is within --background-radius of it")
    p.add_argument("--background-radius", type=float, default=None,
                   help="embedding distance for --background embedding (default: delta_d)")
    p.add_argument("--merge-distance", type=float, default=None,
                   help="merge touching segments whose mean embeddings are closer than this (0: off)")
    p.add_argument("--preview", action="store_true",
                   help="also write <out>.preview.png: instance outlines over --image (or black) | the embeddings' "
                   "PCA (volumes: the middle slice)")
    p.add_argument("--rois", action="store_true",
                   help="also write <out>.rois.zip: every instance as an ImageJ polygon ROI (volumes: one per slice)")
    p.add_argument("--image", help="the raw image under the preview's outlines (for a folder input: a folder "
                   "with images of the same names)")
    p.add_argument("--restart", action="store_true",
                   help="block-wise runs into .h5/.zarr resume after an interruption (kill, power cut) from "
                   "<out>.spoco-progress when the same command is run again; --restart starts from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress bars (as in every subcommand)")
    p.set_defaults(func=run)


def segment_array(emb, *, block_shape, halo=None, out=None, threads=None, delta_d=2.0, long_range=(3, 9, 27),
                  strides=None, randomize_strides=False, min_size=0, mask=None, progress=True, journal=None,
                  voxel_size=None, memory_limit=None):
    """Instance labels of embeddings ``emb (D, *spatial)`` (any array-like), written to ``out``
    (an integer array of ``spatial`` shape) or returned as an int64 numpy array.

    ``halo`` defaults to the longest offset; ``voxel_size`` scales the repulsive offsets per
    axis (:func:`spoco.clustering.default_offsets`); other arguments (``journal``: resume
    after a kill) as in :func:`spoco.cluster_blockwise`.
    """
    from ..clustering import cluster_blockwise

    ndim = len(emb.shape) - 1
    if ndim not in (2, 3):
        raise CLIError(f"the embeddings must have shape (D, Y, X) or (D, Z, Y, X), got {tuple(emb.shape)}")
    offsets, n_att = _offsets(ndim, long_range, voxel_size)
    if halo is None:
        halo = int(np.abs(offsets).max())
    return cluster_blockwise(emb, block_shape=_per_axis(block_shape, ndim, "--block-shape"),
                             halo=_per_axis(halo, ndim, "--halo"), out=out, threads=threads, delta_d=delta_d,
                             offsets=offsets, n_attractive=n_att,
                             strides=None if strides is None else _per_axis(strides, ndim, "--strides"),
                             randomize_strides=randomize_strides, min_size=min_size, mask=mask, progress=progress,
                             journal=journal, memory_limit=memory_limit)


def _per_axis(values, ndim, flag):
    if isinstance(values, int):
        return (values,) * ndim
    values = list(values)
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise CLIError(f"{flag} needs 1 or {ndim} integers (one per spatial axis), got {len(values)}")
    if any(v < 0 for v in values) or (flag != "--halo" and any(v < 1 for v in values)):
        raise CLIError(f"{flag} must be positive, got {values}")
    return tuple(values)


def run(args) -> int:
    from pathlib import Path

    network = None
    if args.model:
        if args.block_shape is not None:
            raise CLIError("--model segments images in memory; for volumes larger than memory run spoco predict, "
                           "then spoco segment --block-shape on the embeddings")
        from .predict import load_network

        network = load_network(args.model)
    jobs = folder_jobs(args.input, args.out, ".tif", "image" if network else "embedding")
    if jobs is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for src, out in jobs:
            segment_file(src, args.key, out, None, args, network)
        return 0
    segment_file(args.input, args.key, Path(args.out), args.out_key, args, network)
    return 0


def segmentation_settings(emb, args, validated: dict | None = None) -> dict:
    """Keyword arguments of :func:`spoco.clustering.segment`: what the embeddings carry
    from their training run (attribute written by ``spoco predict``, or ``validated``, the
    network's own with ``--model``), then the options."""
    from .predict import SEGMENTATION_ATTR

    settings = dict(delta_d=2.0, foreground=False, foreground_threshold=0.5, background="none",
                    background_radius=None, merge_distance=0.0, min_size=0)
    stored = getattr(emb, "attrs", {}).get(SEGMENTATION_ATTR)
    if stored:
        settings.update({k: v for k, v in json.loads(stored).items() if k in settings})
    if validated:
        settings.update({k: v for k, v in validated.items() if k in settings})
    for name in settings:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if args.foreground_threshold is not None:
        settings["foreground"] = True
    if settings["background_radius"] is None:
        settings["background_radius"] = settings["delta_d"]
    return settings


def segment_file(src, key, out: Path, out_key, args, network=None) -> None:
    """Segment one embedding file into ``out`` (tif written whole; HDF5/zarr block by block);
    with ``network`` (model, TrainConfig), ``src`` is an image predicted in memory first.
    An error about the data (shape, values, a damaged chunk read on the way) names ``src``."""
    with naming_errors(src):
        _segment_file(src, key, out, out_key, args, network)


def _segment_file(src, key, out: Path, out_key, args, network=None) -> None:
    from ..clustering import segment
    from ..data import io
    from .._journal import output_lock
    from .._validation import check_fits_in_memory
    from ._resume import ResumableOutput, source_identity

    if out.suffix.lower() not in io.TIFF + io.HDF5 + io.ZARR:
        raise CLIError(f"--out must be a .tif, .h5 or .zarr path, got {out}")
    if io.is_ome(out):  # one label image at the store's level "0"
        out_key = None
    if network is not None:
        emb = _embeddings_of_image(src, key, network, args)
    else:
        emb = io.open_array(src, key)
    if not np.issubdtype(np.dtype(emb.dtype), np.floating):
        raise CLIError(f"{src}: the embeddings must be floats, got dtype {emb.dtype}")
    settings = segmentation_settings(emb, args, None if network is None else network[1].segmentation())
    spatial = tuple(emb.shape[1:])
    if settings["foreground"] and emb.shape[0] < 2:
        raise CLIError(f"{src}: a foreground channel needs embeddings with at least 2 channels, got {emb.shape}")
    postprocessing = settings["background"] != "none" or settings["merge_distance"] > 0
    features = _LeadingChannels(emb, emb.shape[0] - 1) if settings["foreground"] else emb  # for the preview
    voxel = _voxel_size(src, key, args)
    if args.block_shape is None:
        if len(spatial) not in (2, 3):
            raise CLIError(f"the embeddings must have shape (D, Y, X) or (D, Z, Y, X), got {tuple(emb.shape)}")
        offsets, n_att = _offsets(len(spatial), args.long_range, voxel)
        check_fits_in_memory(int(np.prod(emb.shape)) * 4, "the embeddings in memory (float32; use --block-shape)")
        labels = segment(np.asarray(emb), **settings, offsets=offsets, n_attractive=n_att, threads=args.threads,
                         strides=None if args.strides is None else _per_axis(args.strides, len(spatial), "--strides"),
                         randomize_strides=args.randomize_strides)
        with output_lock(out, f"the output {out}"):
            _write_labels(out, out_key, labels, voxel)
    elif postprocessing and (args.background not in (None, "none") or (args.merge_distance or 0) > 0):
        raise CLIError("--background and --merge-distance apply to segmentation in memory; omit --block-shape")
    else:
        if postprocessing:  # chosen by the training run, not here: say what block-wise leaves out
            print(f"spoco segment: warning: block-wise segmentation does not apply the training run's "
                  f"post-processing (background {settings['background']!r}, merge distance "
                  f"{settings['merge_distance']:g}); omit --block-shape to apply it", file=sys.stderr)
        mask = None
        if settings["foreground"]:  # the last channel is the foreground probability
            emb, mask = _LeadingChannels(emb, emb.shape[0] - 1), _Above(emb, emb.shape[0] - 1,
                                                                         settings["foreground_threshold"])
        options = dict(_options(args), delta_d=settings["delta_d"], min_size=settings["min_size"], mask=mask,
                       voxel_size=voxel)
        if out.suffix.lower() in io.TIFF:
            labels = segment_array(emb, **options)
            with output_lock(out, f"the output {out}"):
                _write_labels(out, out_key, labels, voxel)
        else:
            chunks = _per_axis(args.block_shape, len(spatial), "--block-shape")  # fails before the output exists
            check_disk_space(out, spatial, 4)
            job = {"what": "segment", "input": source_identity(src), "input_key": key}
            with ResumableOutput(out, out_key, job, args.restart, args.quiet) as resumable:
                labels_out = resumable.array(spatial, np.uint32, chunks, voxel_size=voxel, labels=True)
                if labels_out.attrs.get(io.COMPLETE_ATTR) is not True:  # else killed while copying to HDF5
                    segment_array(emb, out=labels_out, journal=resumable.folder / "blocks", **options)
                resumable.finish(labels_out)
    if not args.quiet:
        print(f"{src} -> {out}" + (f":{out_key}" if out_key and out.suffix.lower() not in io.TIFF else ""))
    if args.preview or args.rois:
        _pictures(src, out, out_key, features, args, own_image=network is not None)


def _embeddings_of_image(src, key, network, args) -> np.ndarray:
    """The embeddings ``(D[+1], *spatial)`` of the image ``src`` by ``network`` (model, config)."""
    from ..data import io
    from ..predict import predict, select_device

    model, config = network
    device = select_device(args.device)
    model.to(device)
    try:
        return predict(model, io.open_array(src, key), **config.prediction(), device=device)
    except ValueError as err:  # an image that does not fit the network: name the file
        raise CLIError(f"{src}: {err}") from None


def _pictures(src, out: Path, out_key, features, args, own_image: bool = False) -> None:
    """The PNG preview and the ImageJ ROIs of a finished segmentation (``--preview``, ``--rois``);
    ``own_image``: ``src`` is the image (``--model``), shown unless ``--image`` is given."""
    from .. import visualize
    from ..data import io

    labels = io.open_array(out, None if out.suffix.lower() in io.TIFF else out_key)
    stem = out.with_name(out.name.rsplit(".", 1)[0])
    if args.preview:
        image = io.open_array(src, args.key) if own_image and not args.image else None
        if args.image:
            image = io.open_array(_matching_image(Path(src), Path(args.image)))
            if tuple(image.shape[-labels.ndim:]) != tuple(labels.shape):
                raise CLIError(f"--image {args.image}: spatial shape {tuple(image.shape[-labels.ndim:])} differs from "
                               f"the labels' {tuple(labels.shape)}")
        path = visualize.write_preview(f"{stem}.preview.png", labels, image, features)
        if not args.quiet:
            print(f"preview -> {path}")
    if args.rois:
        n = visualize.write_imagej_rois(f"{stem}.rois.zip", labels)
        if not args.quiet:
            print(f"{n} ImageJ ROIs -> {stem}.rois.zip")


def _matching_image(src: Path, image: Path) -> Path:
    """``image`` itself, or for a folder the file with the stem of ``src``."""
    if not image.is_dir() or image.suffix.lower() == ".zarr":
        return image
    from ..data import io

    found = [p for p in sorted(image.iterdir()) if p.stem == src.stem and p.suffix.lower() in io.SUFFIXES]
    if not found:
        raise CLIError(f"--image {image}: no image named {src.stem}.* for {src}")
    return found[0]


class _LeadingChannels:
    """A lazy view of the first ``n`` channels of a ``(C, *spatial)`` array-like."""

    def __init__(self, array, n: int):
        self.array, self.n = array, n
        self.shape, self.dtype = (n,) + tuple(array.shape[1:]), array.dtype

    def __getitem__(self, index):
        return np.asarray(self.array[(slice(0, self.n),) + tuple(index[1:])])


class _Above:
    """A lazy boolean ``array[channel] > threshold`` of a ``(C, *spatial)`` array-like."""

    def __init__(self, array, channel: int, threshold: float):
        self.array, self.channel, self.threshold = array, channel, float(threshold)
        self.shape, self.dtype, self.ndim = tuple(array.shape[1:]), np.dtype(bool), len(array.shape) - 1

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        return np.asarray(self.array[(self.channel,) + index]) > self.threshold


def _offsets(ndim, long_range, voxel_size=None):
    from ..clustering import default_offsets

    if any(r < 1 for r in long_range):
        raise CLIError(f"--long-range must be positive, got {list(long_range)}")
    if voxel_size is not None and len(voxel_size) != ndim:
        raise CLIError(f"--voxel-size needs {ndim} values (one per spatial axis), got {list(voxel_size)}")
    return default_offsets(ndim, tuple(long_range), voxel_size)


def _voxel_size(src, key, args):
    """``--voxel-size``, else the embeddings' own (OME-Zarr or spoco's attribute), else None."""
    from ..data import io

    if args.voxel_size is not None:
        if any(v <= 0 for v in args.voxel_size):
            raise CLIError(f"--voxel-size must be positive, got {args.voxel_size}")
        return tuple(args.voxel_size)
    return io.voxel_size(src, key)


def _write_labels(out: Path, out_key, labels: np.ndarray, voxel_size=None) -> None:
    from ..data import io

    labels = labels.astype(np.uint32 if labels.max(initial=0) < 2 ** 32 else np.int64)
    if out.suffix.lower() in io.TIFF:
        io.write_array(out, labels)
    else:
        array = io.create_array(out, labels.shape, labels.dtype, key=out_key, voxel_size=voxel_size, labels=True)
        array[...] = labels
        io.set_complete(array, True)


def _options(args) -> dict:
    return dict(block_shape=args.block_shape, halo=args.halo, threads=args.threads, memory_limit=args.memory_limit,
                long_range=tuple(args.long_range), strides=args.strides, randomize_strides=args.randomize_strides,
                progress=not args.quiet)
