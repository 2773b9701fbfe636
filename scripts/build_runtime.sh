#!/usr/bin/env bash
# Build the snncc neuron kernel library (runtime/_lib/libsnncc_ops.so). Idempotent.
#
# 1. ONNX Runtime C/C++ API headers: $SNNCC_ORT_HEADERS (a directory holding
#    onnxruntime_lite_custom_op.h) if set, else third_party/onnxruntime-headers, fetched on first use
#    from Debian trixie's libonnxruntime-dev .deb with a private apt configuration (nothing installed).
# 2. CMake Release build into runtime/build, then copy the library to runtime/_lib/. The library is
#    tuned for this machine's CPU (-march=native); SNNCC_PORTABLE=1 builds one that runs on any CPU
#    of the compiler's default target (for a library copied to other machines). Same outputs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HDR_ROOT="$ROOT/third_party/onnxruntime-headers"
die() { echo "build_runtime.sh: error: $*" >&2; exit 1; }

if [[ -n "${SNNCC_ORT_HEADERS:-}" ]]; then
    ORT_INC="$SNNCC_ORT_HEADERS"
    [[ -f "$ORT_INC/onnxruntime_lite_custom_op.h" ]] \
        || die "SNNCC_ORT_HEADERS=$ORT_INC does not contain onnxruntime_lite_custom_op.h"
else
    ORT_INC="$HDR_ROOT/usr/include/onnxruntime"
    if [[ ! -f "$ORT_INC/onnxruntime_lite_custom_op.h" ]]; then
        command -v apt-get >/dev/null && command -v dpkg >/dev/null \
            || die "apt-get/dpkg not found; set SNNCC_ORT_HEADERS to a directory with the ONNX Runtime headers"
        echo "build_runtime.sh: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev)"
        TMP="$(mktemp -d)"
        trap 'rm -rf "$TMP"' EXIT
        mkdir -p "$TMP/lists/partial" "$TMP/cache/archives/partial"
        echo "deb http://deb.debian.org/debian trixie main" > "$TMP/sources.list"
        O=(-o "Dir::Etc::SourceList=$TMP/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$TMP/lists" -o "Dir::Cache=$TMP/cache" -o APT::Sandbox::User=root)
        apt-get "${O[@]}" -qq update || die "apt-get update (private trixie list) failed; no network?"
        (cd "$TMP" && apt-get "${O[@]}" -qq download libonnxruntime-dev) \
            || die "apt-get download libonnxruntime-dev failed"
        mkdir -p "$HDR_ROOT"
        dpkg -x "$TMP"/libonnxruntime-dev_*.deb "$HDR_ROOT" || die "dpkg -x failed"
        [[ -f "$ORT_INC/onnxruntime_lite_custom_op.h" ]] \
            || die "the .deb did not contain usr/include/onnxruntime/onnxruntime_lite_custom_op.h"
    fi
fi

command -v cmake >/dev/null || die "cmake not found (apt-get install cmake g++)"
cmake -S "$ROOT/runtime" -B "$ROOT/runtime/build" -DCMAKE_BUILD_TYPE=Release \
      -DORT_INCLUDE_DIR="$ORT_INC" -DSNNCC_NATIVE="$([[ "${SNNCC_PORTABLE:-0}" == 1 ]] && echo OFF || echo ON)" \
      >/dev/null || die "cmake configure failed"
# one compiler per core (a bare --parallel is make -j: one per source file, all at once)
cmake --build "$ROOT/runtime/build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
      || die "cmake build failed"
mkdir -p "$ROOT/runtime/_lib"
cp "$ROOT/runtime/build/libsnncc_ops.so" "$ROOT/runtime/_lib/libsnncc_ops.so.tmp"
mv -f "$ROOT/runtime/_lib/libsnncc_ops.so.tmp" "$ROOT/runtime/_lib/libsnncc_ops.so"
echo "build_runtime.sh: built $ROOT/runtime/_lib/libsnncc_ops.so"
