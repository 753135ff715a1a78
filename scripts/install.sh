#!/usr/bin/env bash
# Install techbench into the current Python environment.
#   scripts/install.sh          techbench and what the main job needs
#   scripts/install.sh --test   plus the test tools, Ray, and (as root with apt) Debian's chromium,
#                               which the report's rendering test drives headless
# torch: an existing install is kept (bring your own CUDA build); when none is present, the CPU
# build pinned below is installed (override with TECHBENCH_TORCH, e.g. TECHBENCH_TORCH=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test,ray]"; fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "${TECHBENCH_TORCH:-torch==2.13.0}"
fi
"$PY" -m pip install --quiet -e ".${extras}"
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "install.sh: chromium not found; install it to run the report rendering test" >&2
  fi
fi
