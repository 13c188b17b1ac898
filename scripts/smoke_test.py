"""Smoke test of an installed spoco (a wheel in a fresh environment): the compiled core
loads, and the main entry points run. Exits non-zero on the first failure."""
import shutil
import subprocess
from importlib import resources

import numpy as np
import torch

import spoco

spoco.show_config()
emb = np.zeros((4, 24, 24), dtype=np.float32)
emb[:, :, 12:] = 3.0  # two halves, far apart in embedding space
labels = spoco.cluster(emb)
assert labels.shape == (24, 24) and len(np.unique(labels)) == 2, np.unique(labels)

f = torch.randn(2, 4, 16, 16, requires_grad=True)
target = torch.randint(0, 3, (2, 16, 16))
loss = spoco.SPOCOLoss(sparse=True)(f, target, f.detach() + 0.01)
loss.backward()
assert torch.isfinite(loss) and f.grad is not None and torch.isfinite(f.grad).all()

demo = resources.files("spoco") / "demo_data"
assert demo.is_dir() and any(demo.iterdir()), "the demo data are missing from the package"
# napari finds the plugin through this file (entry point napari.manifest), napari or not
manifest = resources.files("spoco") / "napari" / "napari.yaml"
assert manifest.is_file(), "the napari plugin's manifest is missing from the package"

exe = shutil.which("spoco")
assert exe, "the spoco command is not installed"
out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
assert out.returncode == 0 and "train" in out.stdout, out.stderr
print("smoke test passed:", spoco.__file__)
