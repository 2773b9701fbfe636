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
