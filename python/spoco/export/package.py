"""Writing a bioimage.io model package (model spec 0.5) of a spoco checkpoint.

The description is built and validated with ``bioimageio.spec`` (the ``export`` extra);
reading a package back (:mod:`.load`) needs only spoco.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.normalize import normalize_image
from ..training import TrainConfig, load_checkpoint, model_from_checkpoint
from . import _document
from .load import FORMAT
from .network import EmbeddingNetwork

INPUT, OUTPUT = "raw", "embeddings"
# Largest test image per spatial axis: enough context to be meaningful, small enough to ship.
_TEST_SIZE = {2: 256, 3: 64}
# spoco.data.normalize_image's percentiles: 1st → 0, 99.8th → 1.
_LOW, _HIGH = 1.0, 99.8
# What bioimage.io allows in a model's name.
_NAME = re.compile(r"[A-Za-z0-9_+\- ()]{5,128}")


def export_bioimageio(checkpoint, out, *, name: str | None = None, test_image=None, network: str | None = None,
                      authors=(), license: str = "CC-BY-4.0", description: str | None = None) -> Path:
    """Write the network of a ``spoco train`` checkpoint as a bioimage.io model package.

    The package's network is :class:`.network.EmbeddingNetwork`: its output on an image equals
    ``spoco predict``'s (embeddings with the coordinates added, foreground probability), given
    the preprocessing in rdf.yaml (per-channel percentiles 1 → 0, 99.8 → 1). ``config.spoco`` in
    rdf.yaml holds the model and training configuration and the segmentation settings.

    Parameters
    ----------
    checkpoint : path
        A checkpoint of ``spoco train`` (``best.pt``, ``last.pt``).
    out : path
        ``*.zip``: the package as one file; any other path: the package as a folder.
    name : str, optional
        The model's name (letters, digits, ``_+- ()``; default from the checkpoint's file name).
    test_image : path or array ``([C,] *spatial)``, optional
        Raw image whose (centre crop of at most 256² / 64³ pixels) goes into the package with
        the network's output on it. Default: a generated image of nuclei-like blobs.
    network : "f" | "g", optional
        The trained network or its moving average (default: the one the run validated).
    authors : list of str
        Names of the people who trained the model.
    license : str
        SPDX id of the weights' license.
    description : str, optional
        One or two sentences for bioimage.io (default: what the network outputs and how it was trained).

    Returns
    -------
    Path
        ``out``, written whole or not at all (under a temporary name, then renamed).
    """
    try:
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
    except ImportError:
        raise ImportError("spoco export needs bioimageio.spec: pip install 'spoco[export]'") from None
    if name is not None and not _NAME.fullmatch(name):
        raise ValueError(f"name must be 5 to 128 letters, digits, spaces or _+-() (bioimage.io), got {name!r}")
    out = Path(out)
    if out.suffix.lower() != ".zip" and out.exists() and any(out.iterdir()) and not (out / "rdf.yaml").is_file():
        raise ValueError(f"{out} is a folder that is not a package: give a new folder or a .zip file")
    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_saved(state.get("config"))
    network = network or config.eval_network
    unet = model_from_checkpoint(state, network=network).eval()
    net = EmbeddingNetwork(unet).eval()
    image, image_name = _test_image(test_image, unet, config)
    with torch.no_grad():
        output = net(torch.from_numpy(normalize_image(image))[None]).numpy()
    name = name or _default_name(checkpoint, config)
    description = description or _default_description(config, unet)
    spoco = _spoco_config(unet, config, network)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name in the same folder and renamed when whole.
    partial = out.with_name(f".{out.name}.partial" + (".zip" if out.suffix.lower() == ".zip" else ""))
    _remove(partial)  # left by a killed export
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = _write_files(Path(tmp), net, image, output, spoco, name=name, test_image=image_name,
                                 description=description, best_score=state.get("best_score"))
            descr = _describe(files, unet, spoco, name=name, authors=authors, license=license,
                              description=description)
            if out.suffix.lower() == ".zip":
                save_bioimageio_package(descr, output_path=partial)
            else:
                save_bioimageio_package_as_folder(descr, output_path=partial)
                shutil.rmtree(out, ignore_errors=True)  # a package written before (checked above)
        partial.replace(out)
    finally:
        _remove(partial)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)


def _default_name(checkpoint, config: TrainConfig) -> str:
    """E.g. ``spoco 2D embeddings SPOCO 10 percent (best)`` (bioimage.io names allow no dots)."""
    frac = f" SPOCO {100 * config.fraction:g} percent" if config.fraction else ""
    stem = re.sub(r"[^A-Za-z0-9_+\- ]", "-", Path(checkpoint).stem)
    return f"spoco {len(config.patch_shape)}D embeddings{frac} ({stem})"


def _default_description(config: TrainConfig, unet) -> str:
    what = (f"SPOCO@{config.fraction:g} from sparse object annotations" if config.fraction else
            "SPOCO from sparse object annotations" if config.sparse else "the SPOCO loss from dense labels")
    head = " and a foreground probability" if unet.foreground else ""
    return (f"{unet.ndim}D pixel embeddings{head} for instance segmentation, trained with {what}; cluster them "
            "with spoco segment.")


def _spoco_config(unet, config: TrainConfig, network: str) -> dict:
    """``config.spoco`` of rdf.yaml: what spoco needs to predict and segment as with the checkpoint."""
    from ..clustering.offsets import default_offsets

    offsets, n_attractive = default_offsets(unet.ndim)
    label_rate = float(unet.label_rate) if unet.foreground else 1.0
    return {"format": FORMAT, "spoco_version": __version__, "network": network,
            "model_config": dict(unet.config), "label_rate": label_rate,
            "segmentation": config.segmentation(),
            "offsets": offsets.tolist(), "n_attractive": int(n_attractive),
            "border": config.border, "fraction": config.fraction, "sparse": config.sparse,
            "train_config": config.to_dict()}


def _test_image(source, unet, config: TrainConfig) -> tuple[np.ndarray, str]:
    """A raw test image ``(C, *spatial)`` float32 whose sides are multiples of the U-Net's
    pooling factor (at most ``_TEST_SIZE``), and words saying where it comes from."""
    ndim, channels, divisor = unet.ndim, unet.config["in_channels"], unet.divisor
    if source is None:
        from ..data import synthetic_images

        side = max(64, *config.patch_shape) if ndim == 2 else max(32, *config.patch_shape)
        shape = (-(-min(side, _TEST_SIZE[ndim]) // divisor) * divisor,) * ndim
        size = 4 * config.spatial_scale if config.spatial_scale else None  # the recipe's diameter / 4
        image = synthetic_images(1, shape, kind="intensity", rng=0, object_size=size)[0][0, 0]
        return np.repeat(image[None], channels, axis=0), "a generated image of blobs (spoco.data.synthetic_images)"
    if isinstance(source, (str, Path)):
        from ..data import io

        what, image = f"`{Path(source).name}`", io.read_array(source)
    else:
        what, image = "an image given as an array", source
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == ndim and channels == 1:
        image = image[None]
    if image.ndim != ndim + 1 or image.shape[0] != channels:
        raise ValueError(f"test image of shape {image.shape} does not fit a {ndim}D network with {channels} "
                         f"input channel(s): give ({channels}, *spatial)" + " or (*spatial)" * (channels == 1))
    crop = []
    for s in image.shape[1:]:
        n = min(s, _TEST_SIZE[ndim]) // divisor * divisor
        if n < divisor:
            raise ValueError(f"test image of shape {image.shape} is smaller than the network's pooling factor "
                             f"{divisor} along an axis")
        crop.append(slice((s - n) // 2, (s - n) // 2 + n))
    return np.ascontiguousarray(image[(slice(None),) + tuple(crop)]), f"a crop of {what}"


def _write_files(folder: Path, net, image, output, spoco, **doc) -> dict:
    """The package's files in ``folder``: weights (TorchScript, state dict), test tensors
    (with the batch axis), sample tensors, README.md, cover.png. Returns their paths by role."""
    import tifffile

    files = {"state_dict": folder / "weights.pt", "torchscript": folder / "weights_torchscript.pt",
             "test_input": folder / f"test_{INPUT}.npy", "test_output": folder / f"test_{OUTPUT}.npy",
             "sample_input": folder / f"sample_{INPUT}.tif", "sample_output": folder / f"sample_{OUTPUT}.tif",
             "readme": folder / "README.md", "cover": folder / "cover.png"}
    torch.save(net.state_dict(), files["state_dict"])
    with warnings.catch_warnings():  # torch deprecates TorchScript, the format bioimage.io consumers run
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(files["torchscript"]))
    np.save(files["test_input"], image[None].astype(np.float32))
    np.save(files["test_output"], output.astype(np.float32))
    # The same arrays as images for people (bioimage.io's sample tensors: no batch axis).
    tifffile.imwrite(files["sample_input"], image.astype(np.float32))
    tifffile.imwrite(files["sample_output"], output[0].astype(np.float32))
    files["readme"].write_text(_document.readme(spoco=spoco, **doc))
    _document.write_cover(files["cover"], image, output[0], net.foreground)
    return files


def _describe(files: dict, unet, spoco: dict, *, name, authors, license, description):
    """The ``bioimageio.spec`` model description (validated when built)."""
    from bioimageio.spec.model import v0_5 as bio

    ndim, channels, dim = unet.ndim, unet.config["in_channels"], unet.config["out_channels"]
    space = [bio.AxisId(a) for a in ("z", "y", "x")[3 - ndim:]]
    out_names = [f"embedding{i}" for i in range(dim)] + ["foreground"] * unet.foreground
    float32 = bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32"))
    inputs = [bio.InputTensorDescr(
        id=bio.TensorId(INPUT), description="raw image, channels first",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(f"channel{i}") for i in range(channels)]),
              *[bio.SpaceInputAxis(id=a, size=bio.ParameterizedSize(min=unet.divisor, step=unet.divisor))
                for a in space]],
        test_tensor=bio.FileDescr(source=files["test_input"]),
        sample_tensor=bio.FileDescr(source=files["sample_input"]),
        preprocessing=[float32, bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
            axes=space, min_percentile=_LOW, max_percentile=_HIGH)), float32])]
    outputs = [bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT), description="pixel embeddings" + " (the first ndim channels include the pixel "
        "coordinates / spatial_scale)" * (unet.spatial_scale is not None)
        + ", then the foreground probability" * unet.foreground,
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in out_names]),
              *[bio.SpaceOutputAxis(id=a, size=bio.SizeReference(tensor_id=bio.TensorId(INPUT), axis_id=a))
                for a in space]],
        test_tensor=bio.FileDescr(source=files["test_output"]),
        sample_tensor=bio.FileDescr(source=files["sample_output"]))]
    version = bio.Version(torch.__version__.split("+")[0])
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=version,
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier("EmbeddingNetwork"), import_from="spoco.export.network",
                kwargs=dict(unet.config))),
        torchscript=bio.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=version,
                                                parent="pytorch_state_dict"))
    return bio.ModelDescr(
        name=name, description=description, authors=[bio.Author(name=a) for a in authors],
        cite=[bio.CiteEntry(text=_document.SPOCO_CITATION, doi=bio.Doi(_document.SPOCO_DOI))],
        license=bio.LicenseId(license), documentation=bio.FileDescr(source=files["readme"]),
        covers=[bio.FileDescr(source=files["cover"])],
        tags=["instance-segmentation", "pixel-embeddings", "spoco", "sparse-annotations", f"{ndim}d", "pytorch"],
        inputs=inputs, outputs=outputs, weights=weights,
        config=bio.Config(bioimageio=bio.BioimageioConfig(
            architecture_type=f"{ndim}D U-Net", task="instance segmentation (pixel embeddings)",
            model_parameter_count=sum(p.numel() for p in unet.parameters())), spoco=spoco))
