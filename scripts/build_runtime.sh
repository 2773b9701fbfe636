#!/usr/bin/env bash
# Build the snncc neuron kernel library (runtime/_lib/libsnncc_ops.so). Idempotent.
# The work is runtime/build.py (standard library only, so it runs before snncc is installed; an
# installed snncc runs the same file as `python -m snncc.runtime.build`):
# 1. ONNX Runtime C/C++ API headers: $SNNCC_ORT_HEADERS (a directory holding
#    onnxruntime_lite_custom_op.h) if set, else third_party/onnxruntime-headers, fetched on first use
#    from Debian trixie's libonnxruntime-dev .deb with a private apt configuration (nothing installed).
# 2. CMake Release build into runtime/build, then the library is copied to runtime/_lib/. It is
#    tuned for this machine's CPU (-march=native); SNNCC_PORTABLE=1 builds one that runs on any CPU
#    of the compiler's default target (for a library copied to other machines). Same outputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$ROOT/runtime/build.py" "$@"
