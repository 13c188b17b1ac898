#!/usr/bin/env bash
# The main job: set up .venv (scripts/setup_env.sh) and run `spoco demo`.
# Extra arguments go to `spoco demo`, e.g. `bash scripts/demo.sh --out results`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/spoco demo "$@"
