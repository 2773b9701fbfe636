#!/usr/bin/env bash
# Install snncc and everything it needs, then build the C++ kernel library. Idempotent.
#   bash scripts/setup.sh          # runtime + dev/test dependencies (torch CPU wheel, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned to the CPU wheel this environment ships; a bare "torch" pulls multi-GB CUDA builds.
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
# A real NIR consumer for the NIR export tests. norse declares torchvision, which does not import
# beside the CPU torch here (and pip would replace torch to satisfy it), so it goes in without
# dependencies; what it imports (torch, nir, nirtorch, numpy) is installed above or here.
"$PY" -m pip install -q --disable-pip-version-check --no-deps "nirtorch==2.6" "norse==1.1.0"
bash scripts/build_runtime.sh
