#!/usr/bin/env bash
# GPU check (issue 17): a 2-trial bench suite on CUDA, faiss GPU vs CPU on the same codes, epoch throughput
# per method (fp32 and bf16). Under 8 minutes on one GPU; exits 3 at once where no CUDA device is visible.
#   benchmarks/gpu_check.sh [SCRATCH_DIR]        (default: a fresh temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'; then
  echo "gpu_check.sh: no CUDA device visible to torch (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 3
fi
ROOT="${1:-$(mktemp -d -t hashbench-gpu-check-XXXX)}"
mkdir -p "$ROOT"
echo "gpu_check.sh: scratch project $ROOT"
exec timeout 480 env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu_check.py "$ROOT"
