"""Build the snncc neuron kernel library (``libsnncc_ops.so``) from the sources beside this file.

    python -m snncc.runtime.build          # an installed snncc (pip install, a wheel)
    bash scripts/build_runtime.sh          # a source checkout (runs this file)

1. ONNX Runtime C/C++ API headers: ``--headers DIR`` or ``$SNNCC_ORT_HEADERS`` (a directory
   holding ``onnxruntime_lite_custom_op.h``) if given; else fetched once from Debian trixie's
   ``libonnxruntime-dev`` .deb with a private apt configuration (nothing is installed), into
   ``third_party/onnxruntime-headers`` of a checkout or ``$XDG_CACHE_HOME/snncc`` (``~/.cache``)
   for an installed package.
2. CMake Release build (``runtime/build`` of a checkout, a temporary folder otherwise), then the
   library is copied to where :func:`snncc.runtime.library_path` looks: ``_lib/libsnncc_ops.so``
   of a checkout; for an installed snncc the user cache, one folder per digest of the kernel
   sources (:func:`cached_library`), never the package folder, which pip would not remove (an
   uninstall left ``site-packages/snncc`` holding only the library, a namespace package that hid
   a later editable install), and a new version finds no library of other sources. Run in a
   checkout that is also installed the regular way (``pip install .`` in it), it serves both when
   their sources agree. ``--dest`` puts it elsewhere (then point ``SNNCC_RUNTIME_LIB`` at it). A
   stamp of the sources goes beside it: a checkout's library built from older sources is said to
   be stale when loaded. The library is tuned for this machine's CPU
   (``-march=native``); ``--portable`` (or ``SNNCC_PORTABLE=1``) builds one that runs on any CPU
   of the compiler's default target, for a library copied to other machines. Same outputs.

Standard library only, so that a checkout builds before snncc is installed. Idempotent.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = "onnxruntime_lite_custom_op.h"
PROG = "snncc.runtime.build"
LIB = "libsnncc_ops.so"
SOURCES_STAMP = LIB + ".sources"


class BuildError(Exception):
    pass


def _checkout() -> Path | None:
    """The source checkout this file lives in (runtime/ beside passes/ and pyproject.toml)."""
    root = HERE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "passes").is_dir() else None


def _cache() -> Path:
    """``$XDG_CACHE_HOME/snncc``; a relative XDG_CACHE_HOME is ignored, as the XDG spec says
    (it had put the cache under whatever the current directory was)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "snncc"


def cached_library(root: Path = HERE) -> Path:
    """An installed snncc's library: ``$XDG_CACHE_HOME/snncc/lib/<digest>/libsnncc_ops.so``."""
    return _cache() / "lib" / sources_digest(root)[:16] / LIB


def sources_digest(root: Path = HERE) -> str:
    """sha256 over the kernel sources and the CMake file under ``root`` (a runtime folder)."""
    h = hashlib.sha256()
    files = sorted([*root.glob("csrc/**/*.cc"), *root.glob("csrc/**/*.h"),
                    root / "CMakeLists.txt", root / "exports.lds"])
    for f in files:
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _installed_runtime() -> Path | None:
    """The runtime folder of a regular (not editable) install of snncc that is not this one:
    a checkout where ``pip install .`` ran, with Python started in it, imports the checkout's
    snncc, while snncc run elsewhere looks for the installed package's library."""
    from importlib.metadata import distributions

    # every snncc on the path: the checkout's own metadata (the egg-info pip leaves in it) comes
    # first when Python starts there, and locates nothing
    for dist in distributions(name="snncc"):
        try:
            init = Path(str(dist.locate_file("snncc/runtime/__init__.py"))).resolve()
        except (OSError, TypeError, ValueError):
            continue
        if init.is_file() and init.parent != HERE:
            return init.parent
    return None


def _writable(dest: Path) -> None:
    """BuildError unless a file can be created as ``dest`` (checked before the build)."""
    if dest.is_dir():
        raise BuildError(f"--dest {dest} is a directory; name the library file, e.g. "
                         f"{dest / LIB}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".snncc-probe-", dir=dest.parent)
    except OSError as exc:
        raise BuildError(f"cannot write {dest} ({exc.strerror or exc}): give --dest a writable "
                         "path and set SNNCC_RUNTIME_LIB to it") from None
    os.close(fd)
    os.unlink(probe)


def _install(built: Path, dest: Path, digest: str) -> None:
    part = dest.with_name(dest.name + ".tmp")
    try:
        shutil.copyfile(built, part)
        os.replace(part, dest)
        dest.with_name(dest.name + ".sources").write_text(digest + "\n")
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise BuildError(f"cannot write {dest} ({exc.strerror or exc}): give --dest a writable "
                         "path and set SNNCC_RUNTIME_LIB to it") from None


def _fetch_headers(into: Path) -> None:
    """Debian trixie's libonnxruntime-dev, unpacked into ``into`` (apt-get download + dpkg -x,
    with a private sources list, lists and cache: nothing on the system changes)."""
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        raise BuildError("apt-get/dpkg not found; give --headers (or SNNCC_ORT_HEADERS) a "
                         f"directory with the ONNX Runtime headers ({HEADER})")
    print(f"{PROG}: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "lists" / "partial").mkdir(parents=True)
        (t / "cache" / "archives" / "partial").mkdir(parents=True)
        (t / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
        opts = ["-o", f"Dir::Etc::SourceList={t / 'sources.list'}",
                "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={t / 'lists'}",
                "-o", f"Dir::Cache={t / 'cache'}", "-o", "APT::Sandbox::User=root"]
        if subprocess.run(["apt-get", *opts, "-qq", "update"]).returncode:
            raise BuildError("apt-get update (private trixie list) failed; no network?")
        if subprocess.run(["apt-get", *opts, "-qq", "download", "libonnxruntime-dev"],
                          cwd=t).returncode:
            raise BuildError("apt-get download libonnxruntime-dev failed")
        debs = glob.glob(str(t / "libonnxruntime-dev_*.deb"))
        into.mkdir(parents=True, exist_ok=True)
        if not debs or subprocess.run(["dpkg", "-x", debs[0], str(into)]).returncode:
            raise BuildError("dpkg -x of libonnxruntime-dev failed")


def headers(given: str | None) -> Path:
    if given:
        inc = Path(given)
        if not (inc / HEADER).is_file():
            raise BuildError(f"the headers directory {inc} (--headers or SNNCC_ORT_HEADERS) "
                             f"does not contain {HEADER}")
        return inc
    root = _checkout()
    base = root / "third_party" / "onnxruntime-headers" if root else \
        _cache() / "onnxruntime-headers"
    inc = base / "usr" / "include" / "onnxruntime"
    if not (inc / HEADER).is_file():
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(f"cannot create the header folder {base} ({exc.strerror or exc}): "
                             "set XDG_CACHE_HOME to a writable folder, or give --headers") from None
        _fetch_headers(base)
        if not (inc / HEADER).is_file():
            raise BuildError(f"the .deb did not contain usr/include/onnxruntime/{HEADER}")
    return inc


def build(dest: Path | None = None, header_dir: str | None = None,
          portable: bool = False) -> list[Path]:
    """Build the library and copy it to ``dest`` (default: where ``library_path`` looks, module
    doc); returns where it went."""
    if dest:
        targets = [Path(dest)]
    elif _checkout() is None:
        targets = [cached_library()]
    else:
        targets = [HERE / "_lib" / LIB]
        other = _installed_runtime()
        if other is not None and sources_digest(other) == sources_digest():
            targets.append(cached_library(other))
        elif other is not None:
            print(f"{PROG}: note: the snncc installed at {other.parent} has other kernel "
                  "sources than this checkout: run this outside the checkout to build its "
                  "library", file=sys.stderr)
    for target in targets:          # before the header download and the build
        _writable(target)
    if not shutil.which("cmake"):
        raise BuildError("cmake not found (e.g. apt-get install cmake g++)")
    inc = headers(header_dir)
    root = _checkout()
    with tempfile.TemporaryDirectory(prefix="snncc-build-") as tmp:
        # the checkout's build folder serves its own library only: a --dest build (a portable
        # one to copy elsewhere) had reconfigured it and replaced what it had built
        bdir = root / "runtime" / "build" if root and not dest else Path(tmp)
        if subprocess.run(["cmake", "-S", str(HERE), "-B", str(bdir),
                           "-DCMAKE_BUILD_TYPE=Release", f"-DORT_INCLUDE_DIR={inc}",
                           f"-DSNNCC_NATIVE={'OFF' if portable else 'ON'}"],
                          stdout=subprocess.DEVNULL).returncode:
            raise BuildError("cmake configure failed")
        # one compiler per core this process may use (a bare --parallel is make -j: one per
        # source file, all at once)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 2)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(cpus)
        if subprocess.run(["cmake", "--build", str(bdir), "--parallel", jobs]).returncode:
            raise BuildError("cmake build failed")
        digest = sources_digest()
        for target in targets:
            _install(bdir / LIB, target, digest)
    return targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m snncc.runtime.build", description=(
        "Build the C++ neuron kernel library (libsnncc_ops.so) that snncc run and the Python "
        "API register with ONNX Runtime. Needs cmake and a C++17 compiler."))
    ap.add_argument("--dest", type=Path, default=None,
                    help="where to put the library (default: beside this package, where snncc "
                    "looks; elsewhere, point SNNCC_RUNTIME_LIB at it)")
    ap.add_argument("--headers", default=os.environ.get("SNNCC_ORT_HEADERS") or None,
                    help=f"a directory holding the ONNX Runtime headers ({HEADER}); default: "
                    "$SNNCC_ORT_HEADERS, else fetched once from Debian's libonnxruntime-dev")
    ap.add_argument("--portable", action="store_true",
                    default=os.environ.get("SNNCC_PORTABLE", "0") == "1",
                    help="build for any CPU of the compiler's default target instead of this "
                    "one (-march=native); the same outputs (also SNNCC_PORTABLE=1)")
    args = ap.parse_args(argv)
    try:
        done = build(args.dest, args.headers, args.portable)
    except (BuildError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    for dest in done:
        print(f"{PROG}: built {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
