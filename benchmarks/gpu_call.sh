#!/usr/bin/env bash
# The one device call of ../shared/gpu/README.md: GPU tests (200 s at most), then every benchmark inside what is left
# of about 8 minutes; run it with the device tool as
#   run(command="bash benchmarks/gpu_call.sh", carry=[".whl"], timeout_s=500)
# after `bash ../shared/gpu/prepare-wheels.sh` here. Writes 5 or 6 files to $OUT (the device returns at most 8):
#   gpu.txt, gpu-tests.log, bench_verl.log (and verl_cuda.json when verl is installed), bench.log,
#   bench_results.tar.gz (benchmarks/results/*.json, RESULTS.md, run_all_cuda.json).
# The GPU tests run without -x, so that one failure does not hide the others.
# Unpack here with: tar xzf <files_at>/bench_results.tar.gz -C /tmp && cp /tmp/results/*.json benchmarks/results/
# Checked on CPU with: OUT=/tmp/out RUN_ALL_ARGS=--dry-run bash benchmarks/gpu_call.sh   (in a copy of the tree)
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rlir_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
# The package imports from the working tree: kernels/ and profiling/ install as rlir.kernels / rlir.profiling
# (setup.py's package_dir), so link them into rlir/ for this call and unlink them afterwards.
linked=()
for pkg in kernels profiling; do
  if [ ! -e "rlir/$pkg" ]; then ln -s "../$pkg" "rlir/$pkg" && linked+=("rlir/$pkg"); fi
done
trap 'for l in "${linked[@]}"; do rm -f "$l"; done' EXIT
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import rlir.kernels, rlir.profiling, rlir.grpo, diffusers" || { echo "imports failed"; exit 1; }
(nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv 2>&1 || echo "no nvidia-smi") \
  | tee "$OUT/gpu.txt"
TOTAL=${TOTAL_S:-460}  # seconds for the whole call (run it with timeout_s 500)
timeout 200 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rfs 2>&1 | tail -300 > "$OUT/gpu-tests.log"
tail -3 "$OUT/gpu-tests.log"
# verl's actor as shipped vs with rlir.integrations.verl (bench_verl.py), when verl is installed here: it needs verl,
# tensordict, pyvers, ray (its CPython 3.11 wheel is 76 MiB, more than carry takes) and peft. Writes verl_cuda.json.
if python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('verl') is None)"; then
  timeout 120 python3 benchmarks/bench_verl.py --out "$OUT" 2>&1 | tail -40 > "$OUT/bench_verl.log"
  tail -4 "$OUT/bench_verl.log"
else
  echo "verl is not installed here: bench_verl.py skipped" | tee "$OUT/bench_verl.log"
fi
# What the tests left of the call goes to the benchmarks (run_all skips the stages that do not fit).
left=$(( TOTAL - SECONDS - 15 ))
budget=$(( left - 25 ))  # the report and the bundle after the last stage
echo "benchmarks: ${left} s left, budget ${budget} s"
# shellcheck disable=SC2086
timeout "$left" python3 benchmarks/run_all.py --out /tmp/rlir_results ${RUN_ALL_ARGS:---budget-s $budget} \
  --bundle "$OUT/bench_results.tar.gz" 2>&1 | tail -400 > "$OUT/bench.log"
tail -3 "$OUT/bench.log"
