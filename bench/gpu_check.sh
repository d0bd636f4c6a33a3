#!/usr/bin/env bash
# GPU check, one script (< 8 minutes): CUDA-vs-CPU parity, engine speed with and without
# CUDA graphs, TF32 and bf16 autocast, the fast path on the CUDA provider; a table last.
#
#   bench/gpu_check.sh [OUT_DIR] [extra bench.gpu_check args]
#
# Self-contained: needs this repository and a Python with torch, onnx, onnxscript,
# onnxruntime, scikit-learn, pillow, tqdm and matplotlib (PYTHON, default python3); it
# trains the small bundles it needs on the GPU. Results: OUT_DIR/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu}"
shift || true
python="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 470 "$python" -m bench.gpu_check \
    --out "$out" "$@"
