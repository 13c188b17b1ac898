#!/usr/bin/env bash
# Build the Linux wheel here (CPU core; SPOCO_CUDA=OFF), install it into a fresh virtual
# environment whose PATH holds no compiler, and run scripts/smoke_test.py there:
# `pip install spoco` from a wheel must work without a compiler. Uses .venv's build
# tools (scripts/setup_env.sh). The release wheels for every platform come from
# cibuildwheel ([tool.cibuildwheel] in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# its own build folder: the editable install in .venv keeps its build
SPOCO_CUDA=OFF .venv/bin/python -m pip wheel . --no-deps --no-build-isolation -q -C build-dir="$work/build" -w "$work/dist"
wheel=$(ls "$work"/dist/spoco-*.whl)
.venv/bin/python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "torch==2.13.0" "$wheel"
# no compiler on PATH: only the fresh environment's own commands
env -i HOME="$HOME" PATH="$work/venv/bin" CC=false CXX=false "$work/venv/bin/python" scripts/smoke_test.py
