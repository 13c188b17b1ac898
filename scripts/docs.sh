#!/usr/bin/env bash
# Build the documentation site (mkdocs-material + mkdocstrings API reference from the
# docstrings) with --strict: a broken link or an unparsable docstring fails the build.
# Uses .venv (scripts/setup_env.sh) and the `docs` extra of pyproject.toml. Output: site/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
deps=$(.venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))')
mapfile -t reqs <<< "$deps"
.venv/bin/python -m pip install -q "${reqs[@]}"
# The home page is the README, with its paths made relative to docs/ (one text, no copy to keep in step).
# Links to files outside docs/ become their paths in code.
sed -E -e 's#\]\(docs/#](#g' -e 's#`docs/figures/#`figures/#g' \
    -e 's#\[([^]]*)\]\(((benchmarks|python)/[^)]*)\)#\1 (`\2`)#g' README.md > docs/index.md
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d site "$@"
