#!/usr/bin/env bash
# Install snncc and everything it needs, then build the C++ kernel library. Idempotent.
#   bash scripts/setup.sh          # runtime + dev/test dependencies (torch CPU wheel, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A system Python that refuses pip installs (PEP 668: Debian, Ubuntu): say how to make a venv,
# before pip says it in twenty lines.
# (Unless pip is told to install there anyway: PIP_BREAK_SYSTEM_PACKAGES or pip's config, as CI
# images often are.)
pip_allowed() {
    case "${PIP_BREAK_SYSTEM_PACKAGES:-}" in 1|true|True|TRUE|yes|on) return 0 ;; esac
    "$PY" -m pip config list 2>/dev/null | grep -qiE "break-system-packages='?(1|true|yes|on)"
}
if "$PY" -c "import sys, sysconfig, os; sys.exit(not (sys.prefix == sys.base_prefix and \
        os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))))" \
        2>/dev/null && ! pip_allowed; then
    echo "setup.sh: $("$PY" -c 'import sys; print(sys.executable)') is the system's Python, which" \
         "takes no pip installs; make a venv first:" >&2
    echo "    python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh" >&2
    exit 2
fi
# torch as its CPU wheel first: the pin in pyproject (torch==2.13.0) would otherwise pull PyPI's
# multi-GB CUDA build (scripts/install_torch.sh).
bash scripts/install_torch.sh "$PY"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
# A real NIR consumer for the NIR export tests. norse declares torchvision, which does not import
# beside the CPU torch here (and pip would replace torch to satisfy it), so it goes in without
# dependencies; what it imports (torch, nir, nirtorch, numpy) is installed above or here.
"$PY" -m pip install -q --disable-pip-version-check --no-deps "nirtorch==2.6" "norse==1.1.0"
bash scripts/build_runtime.sh
