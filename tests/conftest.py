import os
import sys

import pytest

# Make tests/helpers.py importable as `helpers` under --import-mode=importlib.
sys.path.insert(0, os.path.dirname(__file__))


def _runtime_available() -> bool:
    try:
        from snncc.runtime import library_path
        return os.path.exists(library_path())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _runtime_available():
        return
    skip = pytest.mark.skip(reason="C++ kernel library not built (run scripts/setup.sh)")
    for item in items:
        if "requires_runtime" in item.keywords:
            item.add_marker(skip)
