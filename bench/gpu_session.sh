#!/usr/bin/env bash
# A lent GPU session's checks and measurements (issue 14), in one call of the device tool,
# about 8 to 9 minutes:
#
#   run(command="CODE=<git short hash> bash bench/gpu_session.sh", carry=[".whl"],
#       timeout_s=590)
#
# .whl (ignored; `make gpu-wheels` downloads it) holds the wheels the lent machine lacks,
# for its Python 3.12:
# grpcio, protobuf, grpcio-health-checking, grpcio-reflection, googleapis-common-protos,
# pydantic with its dependencies. They go into a folder of their own on PYTHONPATH (after
# the checkout, before the machine's site-packages); nothing is installed into its Python.
# The machine's own torch (2.11, CUDA) and onnxruntime are used. Everything lands in one
# archive, $OUT/gpu-session.tar.gz (only 8 files come back), written however the run ends:
#
#   results/cuda-engine-check.json   the search on CUDA against the CPU, no host wait in
#                                    a step, CUDA graphs against eager steps
#   results/line/line-bench.{json,md}, results/line/logs/   bench.line_bench: raw step,
#                                    engine and quality with and without CUDA graphs, then
#                                    servers over gRPC (rows listed below, each saved as it
#                                    ends, so a timeout keeps those done)
#   results/*.log, results/nvidia-smi.txt
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-session}"
work="$(mktemp -d)"
results="$work/results"
mkdir -p "$out" "$results"
trap 'tar -czf "$out/gpu-session.tar.gz" -C "$work" results' EXIT
export PYTHON="${PYTHON:-python3}"
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$work/wheels" .whl/*.whl \
    > "$results/wheels.log" 2>&1
  export PYTHONPATH="$work/wheels"
fi
nvidia-smi > "$results/nvidia-smi.txt" 2>&1
code="${CODE:-unknown}"
echo "code $code, started $(date -u +%FT%TZ)" | tee "$results/session.log"

timeout 120 bench/unpacked.sh bench.cuda_engine_check \
  --out "$results/cuda-engine-check.json" > "$results/cuda-engine-check.log" 2>&1
echo "cuda_engine_check: exit $? at $(date -u +%T)" | tee -a "$results/session.log"

# Rows in the order named, the most wanted first (a row takes about a minute, and what
# the time limit cuts is the last): eight workers' CASCADE with graphs (the target still
# unmet), the gRPC ceiling with eight workers, one process's SEARCH with graphs (the
# server against its engine), eight workers' SEARCH with graphs, one process's SEARCH
# without graphs, four workers' CASCADE with graphs.
timeout 440 bench/unpacked.sh bench.line_bench --bundle bundles/default --device cuda \
  --clients 6 --streams 8 --window 256 --batch 32 --seconds 5 --warmup 2 \
  --code-version "$code" --out "$results/line" \
  --servers bf16-graphs-w8:CASCADE:B,echo-w8:FAST:B,bf16-graphs:SEARCH:B,bf16-graphs-w8:SEARCH:B,bf16:SEARCH:B,bf16-graphs-w4:CASCADE:B \
  > "$results/line-bench.log" 2>&1
echo "line_bench: exit $? at $(date -u +%T)" | tee -a "$results/session.log"
