#!/usr/bin/env bash
# The test command: set up .venv (scripts/setup_env.sh) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k mws`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -c "import spoco; spoco.show_config()"
.venv/bin/lint-imports --no-cache  # the layer rules of docs/architecture.md
.venv/bin/python -m pytest -q "$@"
