#!/usr/bin/env bash
# Build a private virtualenv with real Lava (lava-nc) and lava-dl's NetX reader, for checking the
# Loihi backend's network.net against its real consumer. Prints the venv's python path last.
# Idempotent: a finished venv (marked by .snncc-lava-ok) is reused as it is.
#   bash scripts/lava_env.sh            # -> .venv-lava/bin/python
#   LAVA_VENV=/some/dir bash scripts/lava_env.sh
# snncc's own environment is not touched: everything goes into the venv.
#
# Facts this works around (lava-nc 0.10.0, lava-dl 0.6.0):
# * both declare Python < 3.11 -> installed with --ignore-requires-python and --no-deps, their
#   dependencies listed here (lava-dl pins torch 2.3 / torchvision 0.18; the CPU torch 2.13.0
#   wheel of this machine is used instead);
# * lava/magma/compiler/var_model.py uses a dataclass instance as a default value, which Python
#   3.11 rejects -> patched to field(default_factory=ByteEncoder);
# * lava-dl's slayer imports torchvision, which does not import beside torch 2.13 -> a stub
#   torchvision package (NetX only needs the import to succeed);
# * numpy < 2 and scipy < 1.17 (lava-nc's compiled assumptions).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LAVA_VENV:-.venv-lava}
PY=${PYTHON:-python3}
MARK="$VENV/.snncc-lava-ok"
if [ ! -f "$MARK" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    VPY="$VENV/bin/python"
    PIP=("$VPY" -m pip install -q --disable-pip-version-check)
    "${PIP[@]}" "numpy>=1.24.4,<2" "scipy>=1.10.1,<1.17" "h5py>=3.7,<4" "asteval>=0.9.31,<0.10" \
        "networkx<=2.8.7" "scikit-learn>=1.5,<2" "matplotlib>=3.5.2,<4" "pillow>=10.0.1,<11" \
        "ninja>=1.10.2.3,<2" "opencv-python-headless>=4.8.1.78,<4.11"
    bash scripts/install_torch.sh "$VPY"   # the CPU wheel (PyPI's torch is the CUDA build)
    "${PIP[@]}" --no-deps --ignore-requires-python "lava-nc==0.10.0" "lava-dl==0.6.0"
    SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$VPY" - "$SITE" <<'EOF'
import re, sys
from pathlib import Path
p = Path(sys.argv[1]) / "lava/magma/compiler/var_model.py"
src = p.read_text()
new = re.sub(r":\s*ByteEncoder\s*=\s*ByteEncoder\(\)", ": ByteEncoder = field(default_factory=ByteEncoder)", src)
new = new.replace("from dataclasses import dataclass, InitVar\n",
                  "from dataclasses import dataclass, InitVar, field\n", 1)
if new != src:
    p.write_text(new)
EOF
    mkdir -p "$SITE/torchvision"
    cat > "$SITE/torchvision/__init__.py" <<'EOF'
"""Stub installed by snncc's scripts/lava_env.sh: the real torchvision does not import beside
torch 2.13 here, and lava-dl's NetX reader only needs slayer's imports to succeed."""
from . import ops, transforms  # noqa: F401
__version__ = "0.0.0+snncc-stub"
EOF
    echo '"""torchvision.ops stub (snncc lava_env.sh)."""' > "$SITE/torchvision/ops.py"
    echo '"""torchvision.transforms stub (snncc lava_env.sh)."""' > "$SITE/torchvision/transforms.py"
    "$VPY" -c "import lava.lib.dl.netx.hdf5, lava.magma.core.run_configs" >/dev/null
    touch "$MARK"
fi
echo "$(cd "$VENV" && pwd)/bin/python"
