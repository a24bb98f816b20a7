#!/usr/bin/env bash
# GPU check (issue 6), prepared to run in under 5 minutes on one H200:
#   1. the benchmark on CUDA: all registered combinations, Baby-sized set, 1 warm-up + 3 timed
#      epochs and 3 timed evaluations each, in one process (peak memory reset per combination);
#   2. one full early-stopped training of FREEDOMa on the same set by the train stage
#      (python -m pipeline.stages.train; params.yaml's settings, stopping_step 20, at most 300 epochs).
# Outputs (JSON + logs) go to $OUT when set (the device machine), else benchmarks/results/.
# Each step has a time cap; the benchmark rewrites its JSON after every combination, so a capped
# run still returns what it measured.
#
# Usage, from anywhere:  bash benchmarks/gpu_check.sh
# Dry run of the same steps without a GPU:  DEVICE=cpu SIZE=small bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3  # the device machine: its python3 holds a CUDA build of torch
fi
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the pipeline package, without installing it
cache=/tmp/dvib-benchmark
device="${DEVICE:-cuda}"
size="${SIZE:-baby}"

started=$(date +%s)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} | tee "$out/gpu-environment.txt"

# Dataset generation (CPU, once) happens inside the first step and is cached for the second.
timeout 200 "$py" benchmarks/benchmark.py --device "$device" --in-process --size "$size" \
    --epochs 3 --warmup 1 --eval-repeats 3 --cache-dir "$cache" --output "$out/$device.json" \
    2>&1 | tee "$out/benchmark-$device.log"
bench_status=${PIPESTATUS[0]}

# The pipeline's own train stage on the same set, in a project folder linked to the cache.
stage_dir=$(mktemp -d /tmp/dvib-stage.XXXXXX)
out_abs=$(cd "$out" && pwd)
"$py" benchmarks/benchmark.py --device "$device" --size "$size" --cache-dir "$cache" \
    --stage-dir "$stage_dir" --max-epochs 300 \
    && (cd "$stage_dir" && timeout 90 "$py" -m pipeline.stages.train --model FREEDOMa --dataset benchmark \
        --record "$out_abs/train-FREEDOMa-$device.json" --checkpoint train.pt --curves curves) \
    2>&1 | tee "$out/train-FREEDOMa-$device.log"
train_status=${PIPESTATUS[0]}
rm -rf "$stage_dir"

echo "gpu_check: benchmark exit ${bench_status}, FREEDOMa training exit ${train_status} (124 = time cap hit)," \
     "$(( $(date +%s) - started ))s in all; outputs in $out" | tee -a "$out/gpu-environment.txt"
[ "$bench_status" -eq 0 ] && [ "$train_status" -eq 0 ]
