#!/usr/bin/env bash
# GPU acceptance in one command (about 10 minutes on one H100/H200-class GPU):
#   1. the tests marked `cuda` (torch scan on CUDA vs the float64 reference, mamba_ssm / Triton vs
#      the torch scan where installed, CFG sampling determinism within a tolerance);
#   2. the benchmarks: XL at 256 and 512 px training images/s, MFU and peak memory over a
#      micro-batch sweep with and without activation checkpointing (real DeepSpeed steps of XL on
#      one GPU, in the default bf16-autocast, and plain bf16 at 256 px beside it), XL at 256 px sampling images/s with 250 steps and CFG;
#   3. the Triton kernels compiled on the GPU: tests/ops/test_ops_triton.py (the CPU interpreter's
#      tests, TRITON_INTERPRET=0) and benchmarks/bench_triton_scan.py (fused SS2D core vs the torch
#      scan and mamba_ssm, bandwidth vs peak; its --quick CPU check in the --cpu form).
# Writes OUT/acceptance.json and OUT/acceptance.md (and OUT/triton_scan.json / .md); exit 1 if a
# test failed or nothing trained.
#
#   bash benchmarks/gpu_acceptance.sh [--out runs/gpu_acceptance] [--peak-tflops 989]
#   bash benchmarks/gpu_acceptance.sh --cpu --quick     # the same code, tiny sizes, on the CPU (CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
OUT=runs/gpu_acceptance
ARGS=()
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --cpu) DEVICE=cpu; ARGS+=(--cpu); shift ;;
    --quick) ARGS+=(--quick); shift ;;
    --peak-tflops) ARGS+=(--peak-tflops "$2"); shift 2 ;;
    *) echo "gpu_acceptance.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" LAMAMBA_TEST_DEVICE="$DEVICE" HF_HUB_OFFLINE=1
rc=0
"$PYTHON" -m pytest -m cuda tests/gpu -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" || rc=$?
"$PYTHON" benchmarks/gpu_acceptance.py --out "$OUT" --junit "$OUT/cuda_tests.xml" ${ARGS[@]+"${ARGS[@]}"} || rc=$?
if [ "$DEVICE" = cuda ]; then
  TRITON_INTERPRET=0 "$PYTHON" -m pytest tests/ops/test_ops_triton.py -q -p no:cacheprovider \
    --junitxml="$OUT/triton_tests.xml" || rc=$?
  "$PYTHON" benchmarks/bench_triton_scan.py --repeats 3 --json "$OUT/triton_scan.json" | tee "$OUT/triton_scan.md" || rc=$?
else
  "$PYTHON" benchmarks/bench_triton_scan.py --quick --json "$OUT/triton_scan.json" | tee "$OUT/triton_scan.md" || rc=$?
fi
exit "$rc"
