#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one call (no network there):
# build spoco._cuda for the local card, run the whole test suite (CUDA tests
# included), run compute-sanitizer (memcheck, racecheck) on the CUDA tests, and
# run the GPU benchmarks. Logs go to $OUT (or ./gpu_logs) and a summary is printed last.
# The machine needs torch with CUDA, nvcc, cmake, pybind11 and scikit-build-core;
# wheels of anything else (e.g. hdbscan) can be put in .whl/ beforehand.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
summary=()
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember the status
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    summary+=("$name: rc=$rc ($((SECONDS - t0)) s)")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nvcc --version | tail -n 2
export CUDAARCHS=${CUDAARCHS:-90}
# Packages missing on the GPU machine (no network there) may travel as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
step build env SPOCO_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -e .
step config $PY -c "import spoco; spoco.show_config()"
step tests $PY -m pytest tests -q -p no:cacheprovider -x
# -k cuda selects every CUDA test, the fused loss kernels' included (tests/ops/test_ops.py,
# tests/loss/test_backends.py: equality with the CPU/reference, deterministic mode bit-identical)
step cuda_tests $PY -m pytest tests -q -p no:cacheprovider -k "cuda or gpu" -rs
if command -v compute-sanitizer >/dev/null; then
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest tests -q -p no:cacheprovider -k "cuda or gpu"
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 $PY -m pytest tests -q -p no:cacheprovider -k "cuda or gpu"
fi
step bench_affinities env PYTHONUNBUFFERED=1 $PY benchmarks/bench_affinities.py
step bench_loss env PYTHONUNBUFFERED=1 $PY benchmarks/bench_loss.py --device cuda --repeats 7
echo "=== summary"
printf '%s\n' "${summary[@]}"
for b in bench_affinities bench_loss; do [ -f "$OUT/$b.log" ] && { echo "--- $b"; grep -E '^(#|\|)' "$OUT/$b.log"; }; done
