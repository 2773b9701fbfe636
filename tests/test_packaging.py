import sys


def test_passes_is_only_importable_as_snncc_passes():
    import snncc.passes.base  # noqa: F401
    import snncc.runtime  # noqa: F401
    # a top-level `passes`/`runtime` module would be a second copy with its own registries
    assert "passes" not in sys.modules
    assert "runtime" not in sys.modules
    assert sys.modules["snncc.passes"].__file__.endswith("passes/__init__.py")


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_a_checkout_imports_without_the_editable_mapping():
    """Python started in a checkout finds its snncc/ first; where snncc was installed the
    regular way, snncc.passes was then missing (ModuleNotFoundError for the README's snippet,
    python -m snncc and every examples/ and bench/ script)."""
    import subprocess

    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
            "repr(f).lower()]; sys.path.insert(0, sys.argv[1]); import snncc.driver, "
            "snncc.passes, snncc.runtime; print(snncc.passes.__file__, snncc.runtime.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split()
    assert out == [str(ROOT / "passes" / "__init__.py"), str(ROOT / "runtime" / "__init__.py")]


def test_a_second_checkout_runs_its_own_passes_and_runtime(tmp_path):
    """Python started in another checkout imported that checkout's snncc/ but the editable
    install's passes/ and runtime/ (and kernel library) from the first one (a docs walk)."""
    import shutil
    import subprocess

    for name in ("snncc", "passes", "runtime"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns(
            "__pycache__", "_lib", "build"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    code = ("import snncc.passes.canonicalize as c, snncc.runtime as r; "
            "print(c.__file__); print(r.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == [str(tmp_path / "passes" / "canonicalize.py"),
                   str(tmp_path / "runtime" / "__init__.py")]


def test_the_wheel_ships_the_kernel_sources_and_the_builder_not_a_built_library(tmp_path):
    """A wheel built from a tree with a built library carried that -march=native binary in a
    pure-Python wheel (and a stale one from setuptools' build/ cache after it was deleted)."""
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "third_party", "tests", "examples", "bench", "build", "*.egg-info",
        "__pycache__", "runtime/build"))
    lib = src / "runtime" / "_lib"
    lib.mkdir(exist_ok=True)
    (lib / "libsnncc_ops.so").write_bytes(b"\x7fELF built here")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "w"), str(src)], check=True,
                   capture_output=True)
    names = zipfile.ZipFile(next((tmp_path / "w").glob("snncc-*.whl"))).namelist()
    assert "snncc/runtime/build.py" in names and "snncc/runtime/CMakeLists.txt" in names
    assert "snncc/runtime/csrc/neurons/if.cc" in names and "snncc/passes/__init__.py" in names
    assert not [n for n in names if n.endswith(".so")], names
    # every package of the source tree ships (a package missing from pyproject's list imports
    # in a checkout and fails only where snncc was installed)
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("snncc/**/__init__.py")}
    missing = [p for p in sorted(packages) if f"{p}/__init__.py" not in names]
    assert not missing, missing


def test_the_builder_refuses_a_destination_it_cannot_write_before_building(tmp_path):
    """--dest naming a folder had failed after the 45 s build with a raw errno, leaving a .tmp."""
    import subprocess

    for dest, words in ((tmp_path, "is a directory"), (tmp_path / "f" / "x.so", "cannot write")):
        if words == "cannot write":
            (tmp_path / "f").write_text("a file, not a folder")
        r = subprocess.run([sys.executable, str(ROOT / "runtime" / "build.py"), "--dest",
                            str(dest), "--headers", str(tmp_path)], capture_output=True,
                           text=True)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_library_built_from_other_sources_is_said_to_be_stale(tmp_path, monkeypatch, caplog):
    """pip uninstall leaves a built library in place and pip install -U keeps it: loaded by a
    newer snncc, nothing said it was built from other kernel sources."""
    import logging
    import shutil

    import pytest
    from snncc import runtime
    from snncc.runtime.build import sources_digest

    if not runtime.is_built():
        pytest.skip("the kernel library is not built")
    lib = tmp_path / "libsnncc_ops.so"
    shutil.copyfile(runtime.library_path(), lib)
    monkeypatch.setenv("SNNCC_RUNTIME_LIB", str(lib))
    for stamp, stale in ((sources_digest(), False), ("0" * 64, True)):
        (tmp_path / "libsnncc_ops.so.sources").write_text(stamp + "\n")
        runtime._STALE_CHECKED.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="snncc.runtime"):
            runtime.session_options()
        assert ("other kernel sources" in caplog.text) == stale


def test_an_installed_snnccs_library_lives_in_the_cache_keyed_by_its_kernel_sources(
        tmp_path, monkeypatch):
    """Built into site-packages/snncc, the library outlived pip uninstall as a namespace package
    that hid a later editable install (a README walk-through), and a new version loaded it: an
    installed snncc keeps it in the user cache, one folder per digest of its kernel sources."""
    import shutil

    from snncc.runtime import build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pkg = tmp_path / "site" / "snncc" / "runtime"
    shutil.copytree(ROOT / "runtime", pkg, ignore=shutil.ignore_patterns("_lib", "build"))
    same = build.cached_library(pkg)
    assert same == build.cached_library(ROOT / "runtime")
    assert same.parent.parent == tmp_path / "cache" / "snncc" / "lib"
    with open(pkg / "csrc" / "ops.cc", "a") as fh:
        fh.write("\n// another version\n")
    assert build.cached_library(pkg) != same
