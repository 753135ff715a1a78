#!/usr/bin/env bash
# Install techbench and its test tools into the current Python environment.
# torch: an existing install is kept (bring your own CUDA build); when none is present, the CPU
# build pinned below is installed (override with TECHBENCH_TORCH, e.g. TECHBENCH_TORCH=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "${TECHBENCH_TORCH:-torch==2.13.0}"
fi
"$PY" -m pip install --quiet -e ".[test]"
