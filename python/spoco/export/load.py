"""Reading a package of :func:`spoco.export.export_bioimageio` back into spoco: the U-Net and
the training configuration, so that ``spoco predict`` and ``spoco segment`` work as with the
checkpoint. Needs only spoco: rdf.yaml is read with PyYAML's safe loader, the weights with
``torch.load(weights_only=True)`` (a TorchScript file only for its parameters), so loading
a package runs no code from it.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
import zipfile
from pathlib import Path

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
FORMAT = "spoco-bioimageio-1"  # config.spoco.format of the packages spoco writes and reads


def is_package(path) -> bool:
    """Whether ``path`` names a package (a .zip file, a folder, or its rdf.yaml) rather than
    a checkpoint (.pt; a torch checkpoint is a zip archive too, so the name decides)."""
    path = Path(path)
    return path.suffix.lower() in (".zip", ".yaml", ".yml") or path.is_dir()


def load_package(path, *, network: str | None = None):
    """``(UNet, TrainConfig)`` of a package: the exported network with the weights of its
    ``pytorch_state_dict`` entry (or, without one, those of its TorchScript file), and the
    training configuration with the segmentation settings of ``config.spoco.segmentation``
    (edit them in rdf.yaml to change what ``spoco segment`` applies).

    ``network`` ("f" or "g") is checked against the network the package holds (it holds one).
    Raises ``FileNotFoundError`` or ``ValueError`` (not a package, not spoco's, bad weights).
    """
    import torch

    from ..models import UNet
    from ..training import TrainConfig

    with _Files(Path(path)) as files:
        spoco, weights = _read_rdf(files)
        held = spoco.get("network")
        if network is not None and held is not None and network != held:
            raise ValueError(f"{files.name} holds network {held!r} only (exported from the checkpoint); "
                             f"--eval-network {network} needs the checkpoint")
        try:
            model = UNet(**spoco["model_config"])
            wanted = model.state_dict()  # a TorchScript module has label_rate also without a foreground head
            model.load_state_dict({k: v for k, v in _state_dict(files, weights, torch).items() if k in wanted})
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"{files.name} does not hold valid spoco weights ({str(err).splitlines()[0]})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in dict(spoco.get("segmentation") or {}).items() if k in names and k != "foreground"}
    return model.eval(), TrainConfig.from_saved({**dict(spoco.get("train_config") or {}), **settings})


class _Files:
    """The files of a package, zipped or in a folder, read by their names in rdf.yaml."""

    def __init__(self, path: Path):
        self.name = path
        if not path.exists():
            raise FileNotFoundError(f"package not found: {path}")
        if path.is_file() and path.suffix.lower() == ".zip":
            if not zipfile.is_zipfile(path):
                raise ValueError(f"{path} is not a zip file (a bioimage.io package is a zip archive)")
            self.zip = zipfile.ZipFile(path)
            self.rdf = next((n for n in RDF_NAMES if n in self.zip.namelist()), None)
        else:
            self.zip, folder = None, path if path.is_dir() else path.parent
            self.folder = folder
            candidates = [path.name] if path.is_file() else list(RDF_NAMES)
            self.rdf = next((n for n in candidates if (folder / n).is_file()), None)
        if self.rdf is None:
            if self.zip is not None:
                self.zip.close()
            hint = "; for a training run give its checkpoint, e.g. best.pt" if path.is_dir() else ""
            raise ValueError(f"{path} is not a bioimage.io package (no {' or '.join(RDF_NAMES)} in it{hint})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str) -> bytes:
        if "://" in name:
            raise ValueError(f"{self.name}: {name} is a remote file; download the package as a zip first")
        try:
            return self.zip.read(name) if self.zip is not None else (self.folder / name).read_bytes()
        except (KeyError, OSError):
            raise ValueError(f"{self.name}: the file {name} named in {self.rdf} is missing") from None


def _read_rdf(files: _Files) -> tuple[dict, dict]:
    """``(config.spoco, weights)`` of the package's rdf.yaml, checked."""
    import yaml

    try:
        rdf = yaml.load(files.read(files.rdf), Loader=_yaml12_loader())
    except yaml.YAMLError as err:
        raise ValueError(f"{files.name}: {files.rdf} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ValueError(f"{files.name} is not a bioimage.io model package ({files.rdf} has no 'type: model')")
    spoco = (rdf.get("config") or {}).get("spoco")
    if not isinstance(spoco, dict) or spoco.get("format") != FORMAT:
        raise ValueError(f"{files.name} is a bioimage.io model but not one exported by spoco "
                         f"(no config.spoco with format {FORMAT!r} in {files.rdf})")
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    return spoco, {fmt: str(e["source"]) for fmt, e in weights.items() if isinstance(e, dict) and e.get("source")}


def _yaml12_loader():
    """PyYAML's safe loader reading floats as YAML 1.2 does (rdf.yaml is written as YAML 1.2:
    ``1e-05`` is a float there, a string for YAML 1.1)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    float_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")
    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in list("-+0123456789."):
        Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_12, [first])
    return Loader


def _state_dict(files: _Files, weights: dict, torch) -> dict:
    """The state dict of the package: its ``pytorch_state_dict`` file, else the parameters
    and buffers of its TorchScript module (same names; the module's code is never run)."""
    try:
        if "pytorch_state_dict" in weights:
            state = torch.load(io.BytesIO(files.read(weights["pytorch_state_dict"])), map_location="cpu",
                               weights_only=True)
        elif "torchscript" in weights:
            with warnings.catch_warnings():  # torch deprecates TorchScript; bioimage.io uses it
                warnings.simplefilter("ignore", DeprecationWarning)
                script = torch.jit.load(io.BytesIO(files.read(weights["torchscript"])), map_location="cpu")
            state = script.state_dict()
        else:
            raise ValueError(f"{files.name} has neither pytorch_state_dict nor torchscript weights")
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse the file means "not spoco weights"
        raise ValueError(f"{files.name}: unreadable weights ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{files.name}: the weights are not a state dict")
    return state
