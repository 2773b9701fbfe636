import sys


def test_passes_is_only_importable_as_snncc_passes():
    import snncc.passes.base  # noqa: F401
    import snncc.runtime  # noqa: F401
    # a top-level `passes`/`runtime` module would be a second copy with its own registries
    assert "passes" not in sys.modules
    assert "runtime" not in sys.modules
    assert sys.modules["snncc.passes"].__file__.endswith("passes/__init__.py")
