#!/usr/bin/env bash
# Build examples/cpp/classify and run it:  examples/cpp/build_and_run.sh MODEL.onnx [INPUT.f32]
#   BUILD_DIR      build directory (default: build/examples-cpp at the repository root)
#   ORT_LIBRARY    ONNX Runtime shared library (default: the onnxruntime Python wheel's capi/libonnxruntime.so.1.*)
#   SNNCC_ORT_HEADERS, SNNCC_RUNTIME_LIB   as for scripts/build_runtime.sh / snncc.runtime
#   SNNCC_ROOT     the snncc repository (default: two folders above this script; set it when
#                  this folder was copied elsewhere: its sources are built, the repository's
#                  scripts/build_runtime.sh provides the headers and the kernel library)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${SNNCC_ROOT:-$(cd "$HERE/../.." && pwd)}"
die() { echo "build_and_run.sh: error: $*" >&2; exit 1; }
[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 MODEL.onnx [INPUT.f32]"
[[ -f "$ROOT/scripts/build_runtime.sh" ]] || die "no snncc repository at $ROOT (no scripts/build_runtime.sh); set SNNCC_ROOT to it when this folder was copied elsewhere"

ORT_INC="${SNNCC_ORT_HEADERS:-$ROOT/third_party/onnxruntime-headers/usr/include/onnxruntime}"
KERNELS="${SNNCC_RUNTIME_LIB:-$ROOT/runtime/_lib/libsnncc_ops.so}"
# headers + kernel library, built only when missing or built from other kernel sources: a
# library that is up to date (e.g. a portable one, SNNCC_PORTABLE=1) is left as it is, and
# SNNCC_RUNTIME_LIB names the caller's own
digest() { python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import build; print(build.sources_digest())' "$ROOT/runtime" 2>/dev/null; }
if [[ ! -f "$ORT_INC/onnxruntime_lite_custom_op.h" ]] || { [[ -z "${SNNCC_RUNTIME_LIB:-}" ]] &&
        { [[ ! -f "$KERNELS" ]] || [[ "$(cat "$KERNELS.sources" 2>/dev/null)" != "$(digest)" ]]; }; }; then
    "$ROOT/scripts/build_runtime.sh" >/dev/null
fi
if [[ -z "${ORT_LIBRARY:-}" ]]; then
    CAPI="$(python3 -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')" \
        || die "python3 cannot import onnxruntime; set ORT_LIBRARY"
    ORT_LIBRARY="$(ls "$CAPI"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)"
    [[ -n "$ORT_LIBRARY" ]] || die "no libonnxruntime.so.1.* in $CAPI; set ORT_LIBRARY"
fi
BUILD_DIR="${BUILD_DIR:-$ROOT/build/examples-cpp}"

cmake -S "$HERE" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
      -DORT_INCLUDE_DIR="$ORT_INC" -DORT_LIBRARY="$ORT_LIBRARY" >/dev/null || die "cmake configure failed"
cmake --build "$BUILD_DIR" >/dev/null || die "cmake build failed"
exec "$BUILD_DIR/classify" "$1" "$KERNELS" ${2:+"$2"}
