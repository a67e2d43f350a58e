#!/usr/bin/env bash
# The GPU rows of README 'Results' in one go, on a CUDA machine: ensemble members trained side by
# side on the GPU against one at a time (benchmarks/parallel_members.py), `--preset best`'s
# accuracy and time with its five members at once, then time to 0.994 of the CPU presets and of
# large-batch variants, beside the seed notebook's recipe, with inference throughput
# (benchmarks/time_to_accuracy.py).
#
#     bash benchmarks/gpu_figures.sh [REPLICA_SEED] [OUT_DIR]     # PYTHON=python3 without .venv
#
# A stage that fails is reported and the next one runs, so one broken stage costs no GPU time.
set -uo pipefail
seed=${1:-2236067}
out=${2:-runs/gpu}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

stage() {  # stage NAME COMMAND...: run it, log it to $out/NAME.log, time it
    echo "== $1"
    local start=$SECONDS
    "${@:2}" 2>&1 | tee "$out/$1.log" || echo "== $1 FAILED (exit status $?)"
    echo "== $1: $((SECONDS - start)) s"
}

stage parallel_members "$python" benchmarks/parallel_members.py --replica-seed "$seed" \
    --members 5 --jobs 5 --epochs 2
stage best "$python" -m digit_recognizer run --preset best --jobs 5 --replica-seed "$seed" \
    --out "$out/best"
stage time_to_accuracy "$python" benchmarks/time_to_accuracy.py --replica-seed "$seed" \
    --work-dir "$out/time_to_accuracy" --recipes default,fast \
    --recipe "default batch_size=256 lr=0.1 epochs=5" \
    --recipe "default batch_size=512 lr=0.2 epochs=5" \
    --recipe "default batch_size=512 lr=0.2 epochs=8" \
    --recipe "default batch_size=1024 lr=0.4 epochs=8" \
    --recipe seed --seed-budget 60
