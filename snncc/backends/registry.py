"""Backend registry: target name -> backend. Backends never import each other."""
from __future__ import annotations

from snncc.backends.base import Backend
from snncc.errors import OptionError

__all__ = ["get_backend", "BACKENDS"]

BACKENDS = ("ort", "loihi", "nir")


def get_backend(name: str) -> Backend:
    if name == "ort":
        from snncc.backends.ort.backend import OrtBackend
        return OrtBackend()
    if name == "loihi":
        from snncc.backends.loihi.backend import LoihiBackend
        return LoihiBackend()
    if name == "nir":
        from snncc.backends.nir.backend import NirBackend
        return NirBackend()
    raise OptionError(f"unknown target {name!r}", code="SNN-E350",
                      hint="choose one of: qann, " + ", ".join(BACKENDS))
