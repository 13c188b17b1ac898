"""The npe2 manifest: valid, registered under the ``napari.manifest`` entry point, and
its widget command importable."""
from importlib import import_module, metadata
from pathlib import Path

import pytest

import spoco.napari

MANIFEST = Path(spoco.napari.__file__).with_name("napari.yaml")


def test_manifest_is_registered_and_names_the_widget():
    npe2 = pytest.importorskip("npe2", reason="napari is not installed (pip install 'spoco[napari]')")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "spoco"
    (widget,) = manifest.contributions.widgets
    (command,) = [c for c in manifest.contributions.commands if c.id == widget.command]
    module, _, name = command.python_name.partition(":")
    assert callable(getattr(import_module(module), name))
    entry = [e for e in metadata.entry_points(group="napari.manifest") if e.name == "spoco"]
    assert [e.value for e in entry] == ["spoco.napari:napari.yaml"], "reinstall spoco: pip install -e ."
