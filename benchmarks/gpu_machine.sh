#!/usr/bin/env bash
# `make gpu-check` on a lent GPU machine without a package index (README, "GPU check"), from the
# repository root of the working tree's copy there, with .gpu_carry/ (`make gpu-carry`) carried:
#   HUGNC_COMMIT=<commit> bash benchmarks/gpu_machine.sh [gpu_check.py arguments]
# installs the carried wheels beside the machine's torch and lightning, runs the check within
# GPU_CHECK_BUDGET_S seconds (measurements not started by then are skipped, so the table comes
# back inside the lease), and writes the table to $OUT/gpu_check.txt and the runs' output to
# $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
site=/tmp/hugnc-site
if ! ls .gpu_carry/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_machine.sh: no wheels in .gpu_carry/wheels: run 'make gpu-carry' here and carry .gpu_carry" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .gpu_carry/wheels/*.whl
export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${HUGNC_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    python3 -c "import torch, lightning; print(f'# torch {torch.__version__}, lightning {lightning.__version__}')"
} >"$out/gpu_check.txt"
status=0
python3 benchmarks/gpu_check.py --fashion-mnist-gz .gpu_carry/fashion-mnist \
    --budget-s "${GPU_CHECK_BUDGET_S:-420}" --table "$out/gpu_check.txt" "$@" \
    >"$out/gpu_check.log" 2>&1 || status=$?
cat "$out/gpu_check.txt"
if [ "$status" != 0 ]; then
    tail -n 40 "$out/gpu_check.log"
fi
exit "$status"
