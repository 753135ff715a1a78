#!/usr/bin/env bash
# The GPU checks of the population engine (issue 13) as one prepared script for a lent device
# machine (one NVIDIA GPU, no network; see the device tool's README). It prints, side by side:
# 64 and 8 stacked members vs one by one (benchmarks/stacking.py), the demo matrix end to end with
# --stack auto vs --stack off on the GPU, and the test suite's result there. About 8 minutes.
#
# Here, once (wheels of techbench and of what the device lacks, into an ignored folder):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip wheel --no-deps -w .whl .
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl scikit-posthocs statsmodels patsy     # scikit-posthocs and what it needs
# There (run with carry [".whl"], timeout_s 600):
#   bash benchmarks/gpu_checks.sh        # log in $OUT/gpu_checks.log
set -uo pipefail
OUT="${OUT:-/tmp/techbench-gpu}"
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
fi
step() { echo; echo "== $* ($(date +%T))"; }
{
  nvidia-smi -L
  python3 -c "import torch, techbench; print('torch', torch.__version__, 'techbench', techbench.__version__)"
  step "64 members, one by one vs stacked (acceptance: >= 20x)"
  timeout 240 python3 benchmarks/stacking.py --members 64 --accelerator gpu --rounds 1
  step "8 members"
  timeout 90 python3 benchmarks/stacking.py --members 8 --accelerator gpu --rounds 3
  step "demo end to end on the GPU, --stack auto (acceptance: >= 5x faster than 25.5 s)"
  /usr/bin/time -f "demo stack auto: %e s wall" \
    python3 -m techbench run demo --accelerator gpu --out /tmp/demo-auto --report /tmp/demo-report
  step "demo end to end on the GPU, --stack off"
  /usr/bin/time -f "demo stack off: %e s wall" \
    python3 -m techbench run demo --accelerator gpu --stack off --out /tmp/demo-off
  step "test suite on the GPU machine"
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests
} 2>&1 | tee "$LOG"
