import os
import sys

import pytest

# Make tests/helpers.py and tests/zoo.py importable under --import-mode=importlib.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def _runtime_available() -> bool:
    try:
        from snncc.runtime import library_path
        return os.path.exists(library_path())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skips = []
    if not (config.getoption("--runslow") or os.environ.get("SNNCC_SLOW")):
        skips.append(("slow", pytest.mark.skip(reason="slow (use --runslow)")))
    if not _runtime_available():
        skips.append(("requires_runtime",
                      pytest.mark.skip(reason="C++ kernel library not built (scripts/setup.sh)")))
    for item in items:
        for keyword, mark in skips:
            if keyword in item.keywords:
                item.add_marker(mark)
