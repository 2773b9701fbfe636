#!/usr/bin/env bash
# Install torch 2.13.0 as its CPU wheel into the Python given as $1 (python3 by default), unless a
# torch 2.13.0 is there already (a CUDA build the user installed stays). PyPI's torch is the
# multi-GB CUDA build; the CPU wheel, torch==2.13.0+cpu, lives on PyTorch's own index. A local
# wheel (pip's find-links) is tried first, so that a machine without network is not kept waiting
# on an index it cannot reach.
set -euo pipefail
PY=${1:-python3}
if "$PY" -c "import sys; from importlib.metadata import version
sys.exit(version('torch').split('+')[0] != '2.13.0')" 2>/dev/null; then
    exit 0
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null ||
    "${PIP[@]}" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
