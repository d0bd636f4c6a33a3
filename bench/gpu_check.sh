#!/usr/bin/env bash
# GPU check, one script (< 8 minutes): CUDA-vs-CPU parity, engine speed with and without
# CUDA graphs, TF32 and bf16, the fast path (CUDA provider where present); a table last.
#
#   bench/gpu_check.sh [OUT_DIR] [extra bench.gpu_check args]
#
# Self-contained: needs this repository and a Python with torch, onnx, onnxscript,
# onnxruntime, scikit-learn, pillow, tqdm and matplotlib (PYTHON, default python3); it
# trains the small bundles it needs on the GPU. Results: OUT_DIR/gpu-check-<card>.json
# (e.g. bench/results/gpu/gpu-check-h200.json), rewritten after every step, so what
# finished before the timeout below is kept; trained bundles go to OUT_DIR/work. The fast
# path runs on ONNX Runtime's CUDA provider only where the installed onnxruntime has it
# (onnxruntime-gpu); otherwise the table says "CUDA EP absent".
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu}"
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
# Runs from this checkout without installing it (bench/unpacked.sh).
timeout 470 bench/unpacked.sh bench.gpu_check --out "$out" "$@"
