#!/usr/bin/env bash
# Install snncc and everything it needs, then build the C++ kernel library. Idempotent.
#   bash scripts/setup.sh          # runtime + dev/test dependencies (torch CPU wheel, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned to the CPU wheel this environment ships; a bare "torch" pulls multi-GB CUDA builds.
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
bash scripts/build_runtime.sh
