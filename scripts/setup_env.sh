#!/usr/bin/env bash
# Create (or reuse) the local virtual environment .venv and install spoco into it
# with its test dependencies and those of spoco export (which the tests run). PyTorch is
# pinned to the CPU build 2.13.0; spoco itself only needs torch >= 2.4 at run time, never
# at build time.
# SPOCO_CUDA=AUTO|ON|OFF chooses whether the CUDA kernels are compiled (AUTO: when nvcc exists and a GPU is visible).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPOCO_VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "scikit-build-core>=0.10" "pybind11>=2.12"
# test: the test tools; export: bioimageio.core, which tests/test_export.py runs on exported packages;
# test-napari: napari, a Qt binding and pytest-qt, for the plugin's tests (tests/napari/, headless)
SPOCO_CUDA=${SPOCO_CUDA:-AUTO} "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[test,export,test-napari]"
