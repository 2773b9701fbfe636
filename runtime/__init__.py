"""Loader of the snncc C++ neuron kernel library (``libsnncc_ops.so``, domain ``snncc.ops``).

The library implements every neuron op of ``docs/neuron-ops.md`` as a native ONNX Runtime kernel.
When it is registered, ORT runs these kernels instead of the model-local ONNX functions with the same
names. Build it with ``python -m snncc.runtime.build`` (in a checkout ``scripts/build_runtime.sh``,
which runs the same file); ``SNNCC_RUNTIME_LIB`` overrides its location.

:func:`snncc.runtime.layout.session` also runs the kernels inside ORT's blocked (NCHWc) layout,
which removes two tensor copies per neuron (``snncc run`` and ``run_compiled`` use it).

Errors: SNN-E701 the library file is missing; SNN-E702 ONNX Runtime refused to load it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from snncc.errors import OptionError, RuntimeLibraryError

__all__ = ["DOMAIN", "OP_NAMES", "RUNTIME_OP_NAMES", "library_path", "is_built", "register",
           "check_session_options",
           "session_options", "op_names", "run_neuron", "model_proto"]

DOMAIN = "snncc.ops"
# Same names, same order as the SNNCC_NEURON_OPS table in csrc/ops.cc (tests/runtime checks both ways).
OP_NAMES = ("IFNeuron", "LIFNeuron", "GroupNeuron", "MTNeuron", "BitSerialNeuron", "SRPNeuron")
# Runtime ops (SNNCC_RUNTIME_OPS in csrc/ops.cc): never in a compiled model; snncc.runtime.layout
# puts them in place of a standard-op pattern on the machine that runs it.
RUNTIME_OP_NAMES = ("SpikeGateMaxPool", "SpikeGateWindowMaxPool", "BitSerialAveragePool")
ENV_VAR = "SNNCC_RUNTIME_LIB"
_BUILD_HINT = "python -m snncc.runtime.build (in a source checkout: bash scripts/build_runtime.sh)"


_CACHED: list[str] = []


def library_path() -> str:
    """Path of the kernel library: ``$SNNCC_RUNTIME_LIB``, else ``_lib/libsnncc_ops.so`` next to
    this package where it exists or this is a source checkout, else the user cache folder of
    this package's kernel sources (where ``python -m snncc.runtime.build`` puts it for an
    installed snncc: :func:`snncc.runtime.build.cached_library`)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return os.path.abspath(override)
    local = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", "libsnncc_ops.so")
    from snncc.runtime import build

    if os.path.isfile(local) or build._checkout() is not None:
        return local
    if not _CACHED:     # the sources' digest: once per process
        _CACHED.append(str(build.cached_library()))
    return _CACHED[0]


def is_built() -> bool:
    return os.path.isfile(library_path())


def op_names() -> list[str]:
    """The op types (domain ``snncc.ops``) the library provides."""
    return list(OP_NAMES)


def check_session_options(so: Any) -> None:
    """SNN-E349 unless ``so`` is an ``onnxruntime.SessionOptions``."""
    if not isinstance(so, ort.SessionOptions):
        raise OptionError(f"so ({type(so).__name__}) is not an onnxruntime.SessionOptions",
                          code="SNN-E349", hint="e.g. onnxruntime.SessionOptions(), or "
                          "snncc.runtime.session_options() (the library registered)")


#: the config entry that marks SessionOptions which :func:`register` gave the library (ORT keeps
#: unknown keys); a second register of one ``so`` had made ORT fail later, at the session, with
#: a bare "Domain already set in registry"
_REGISTERED_KEY = "snncc.kernel_library"


def registered(so: ort.SessionOptions) -> str | None:
    """The kernel library :func:`register` registered with ``so``, or None."""
    try:
        return so.get_session_config_entry(_REGISTERED_KEY) or None
    except Exception:   # ORT raises when the key was never set
        return None


def register(so: ort.SessionOptions) -> ort.SessionOptions:
    """Register the kernel library with ``so`` (in place) and return it; a ``so`` this function
    registered already is returned as it is (one given the library some other way, e.g.
    ``so.register_custom_ops_library``, is not known as such: ORT then refuses the second)."""
    check_session_options(so)
    if registered(so):
        return so
    path = library_path()
    if not os.path.isfile(path):
        if os.environ.get(ENV_VAR):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise RuntimeLibraryError(f"runtime: the kernel library {path} (named by {ENV_VAR}) "
                                      f"{what}", code="SNN-E701",
                                      hint=f"point {ENV_VAR} at a built libsnncc_ops.so, or unset "
                                      f"it and build one with {_BUILD_HINT}")
        raise RuntimeLibraryError(f"runtime: the kernel library {path} does not exist", code="SNN-E701",
                                  hint=f"build it with {_BUILD_HINT}, or set {ENV_VAR} to a built "
                                  "libsnncc_ops.so")
    try:
        so.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises its own exception types (Fail, RuntimeException...)
        raise RuntimeLibraryError(f"runtime: ONNX Runtime could not load {path}: {exc}", code="SNN-E702",
                                  hint=f"rebuild it for this machine with {_BUILD_HINT}") from exc
    so.add_session_config_entry(_REGISTERED_KEY, path)
    _warn_if_stale(path)
    return so


_STALE_CHECKED: set[str] = set()


def _warn_if_stale(path: str) -> None:
    """Once per library and process: warn when the stamp the build left beside the library names
    other kernel sources than this snncc's (a library that outlived ``pip install -U`` or an
    edit of ``csrc/``; ``pip uninstall`` leaves a built library in place)."""
    if path in _STALE_CHECKED:
        return
    _STALE_CHECKED.add(path)
    try:
        with open(path + ".sources") as fh:
            stamp = fh.read().strip()
    except OSError:
        return      # built by hand or elsewhere: nothing to compare
    from snncc.runtime.build import sources_digest

    if stamp != sources_digest():
        import logging
        logging.getLogger("snncc.runtime").warning(
            "the kernel library %s was built from other kernel sources than this snncc's (an "
            "earlier version?); rebuild it: %s", path, _BUILD_HINT)


def model_proto(model: Any) -> "onnx.ModelProto":
    """``model`` itself if it is an ``onnx.ModelProto``, else the model at that path, external
    data included; the front end's coded errors for anything else (SNN-E101/E102/E349)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    from snncc import ir

    proto = ir.read_proto(model)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        onnx.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(model)))
    return proto


def session_options() -> ort.SessionOptions:
    """New ``SessionOptions`` with the kernel library registered."""
    return register(ort.SessionOptions())


def run_neuron(op_type: str, x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """One neuron op's kernel on ``x`` in the folded form: its output ``y``. ``attrs`` are the
    node's attributes as plain Python values (``T``, ``const_input`` and the op's own, as
    insert-neurons writes them). One single-node session per call (a few ms); the SNN-aware
    calibration simulates its sites with it, 3-6x faster than the NumPy references and equal to
    them bit for bit (tests/runtime/test_kernels.py)."""
    from onnx import TensorProto, helper

    if op_type not in OP_NAMES or not isinstance(attrs, Mapping):
        raise OptionError(f"run_neuron({op_type!r}, x, {type(attrs).__name__}): the op must be "
                          f"one of {', '.join(OP_NAMES)} and attrs a mapping", code="SNN-E349",
                          hint="e.g. run_neuron('IFNeuron', x, {'T': 4, 'theta': [1.0]})")
    from snncc.neurons.registry import validate_attrs
    from snncc.passes.insert_neurons import spec_for_op

    # SNN-E302/E303 by name (a bogus attribute had been taken silently); channel_block is the
    # runtime's own (snncc.runtime.layout)
    validate_attrs(spec_for_op(op_type), {k: v for k, v in attrs.items() if k != "channel_block"},
                   "run_neuron: ")
    node = helper.make_node(op_type, ["x"], ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op_type, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    so = session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    run = ort.RunOptions()
    run.log_severity_level = 3   # the kernel's own message goes into the coded error, once
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)}, run)[0]
    except Exception as exc:   # the kernel refuses the shape (x not [T*N, C, ...], theta not C)
        raise OptionError(f"run_neuron: the {op_type} kernel refused x of shape "
                          f"{np.shape(x)}: {str(exc).strip().split('Status Message: ')[-1][:300]}",
                          code="SNN-E305", hint="x is [T*N, C, ...] (time-major), or [N, C, ...] "
                          "with const_input=1; theta holds 1 or C values") from None
