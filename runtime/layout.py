"""Neuron kernels inside ONNX Runtime's blocked (NCHWc) layout: the same outputs, fewer copies.

On x86-64, ORT's ``ORT_ENABLE_ALL`` optimisation runs Conv, pools, Add and Relu in the NCHWc
layout (channels in blocks of B = 8 or 16, ``MlasNchwcGetBlockSize``), and wraps every op it does
not know, our neuron kernels included, in a ``ReorderOutput`` (back to NCHW) and a
``ReorderInput`` (to NCHWc again). On an SNN those two copies of every spike tensor cost more than
the neurons themselves (bench/results/profile_cnn.md). The ANN does not pay them: its ReLU is
fused into the blocked convolution.

:func:`blocked_model` lets ORT optimise the model once, then removes each
``ReorderOutput -> neuron -> ReorderInput`` sandwich and gives the neuron
``channel_block = B``: the kernel reads and writes the blocked tensor directly (only its channel
index per element changes, docs/neuron-ops.md), so the outputs are bit-identical. The result is
hardware-specific (B and the reordered weights), so it is made on the machine that runs it, by
:func:`session`, and never written next to the compiled model.

Our ops that follow one another (a neuron and the spike gate after it, which :func:`session`
first makes one kernel, :mod:`snncc.runtime.gates`) move together, each the only reader of the
one before. A neuron after a residual block's Add (the conv branch plus the previous block's
spikes, which ORT keeps in NCHW because one input comes from our op) moves with that Add when
both its inputs have a blocked source of the same shape: the Add then reads the blocked tensors. A neuron whose spike train is also read in NCHW (a graph output, as when spike
counts are fetched, or a Flatten) moves too, with one ReorderOutput for those readers.
Streaming neurons move too: their state tensors (``state_in/*``, ``state_out/*``, same shapes)
then hold the membrane in the blocked order. The protocol only passes them from one step to the next of the
same session (a neuron ignores its state at step 0; a spike-gated max-pool's running sum does not,
so step 0 gets zero states, as the protocol says), so only a caller that reads membrane values
itself sees the difference; it should pass ``blocked=False``. Left as they are: neurons without a blocked
consumer (nothing to save), and everything on a machine without NCHWc (B = 1: ORT inserts no
reorders).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
import weakref
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from snncc.errors import OptionError, RuntimeLibraryError
from snncc.runtime import DOMAIN, check_session_options, model_proto, session_options
from snncc.runtime.gates import fuse_gates, subgraph_reads, value_shapes, wiring
from snncc.runtime.pools import fuse_avg_pools

__all__ = ["block_size", "blocked_model", "session"]

logger = logging.getLogger(__name__)

_NCHWC = "com.microsoft.nchwc"
_PROTO_LIMIT = 2**31 - 1  # protobuf's serialisation limit: larger models keep the plain layout


#: per SessionOptions: held while it is changed for one session (:func:`_options`) and while
#: :func:`session` builds from a caller's ``so``, which threads may share; other options, and
#: sessions built from options of their own, do not wait (one lock for all had built a thread
#: pool's models one at a time)
_SO_LOCKS: "weakref.WeakKeyDictionary[ort.SessionOptions, threading.RLock]" = \
    weakref.WeakKeyDictionary()
_SO_LOCKS_GUARD = threading.Lock()


def _lock_for(so: ort.SessionOptions) -> threading.RLock:
    with _SO_LOCKS_GUARD:
        lock = _SO_LOCKS.get(so)
        if lock is None:
            lock = _SO_LOCKS[so] = threading.RLock()
        return lock


@contextlib.contextmanager
def _options(so: ort.SessionOptions, level: ort.GraphOptimizationLevel, save_to: str = ""):
    """``so`` with another optimisation level (and optimised-model path) for one session; the
    caller's values come back afterwards. Under ``so``'s own lock (8 threads sharing one ``so``
    had left it at ORT_DISABLE_ALL, built sessions from another thread's temporary path and
    failed with a wrong E703)."""
    with _lock_for(so):
        old = (so.graph_optimization_level, so.optimized_model_filepath, so.log_severity_level)
        so.graph_optimization_level, so.optimized_model_filepath = level, save_to
        if save_to:
            so.log_severity_level = 3  # ORT warns that the saved layout is hardware-specific
        try:
            yield so
        finally:
            so.graph_optimization_level, so.optimized_model_filepath, so.log_severity_level = old


def _optimized(model: onnx.ModelProto, so: ort.SessionOptions, **kwargs: Any) -> onnx.ModelProto:
    """The model as ORT optimises it at ORT_ENABLE_ALL under ``so`` and ``kwargs``."""
    with tempfile.TemporaryDirectory(prefix="snncc-layout-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        with _options(so, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, path):
            ort.InferenceSession(model.SerializeToString(), so,
                                 **{"providers": ["CPUExecutionProvider"], **kwargs})
        return onnx.load(path)


@functools.lru_cache(maxsize=1)
def block_size() -> int:
    """ORT's NCHWc block size on this machine (1 when ORT does not use the layout here).

    Measured, not guessed from CPU flags: a 64-channel 1x1 convolution followed by an op ORT
    keeps in NCHW is optimised, and the blocked tensor before its ReorderOutput is read back with
    channel c at width w holding c + 1000 w."""
    C, W = 64, 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 1, W])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 1, W])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [C, C, 1, 1],
                                np.eye(C, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]),
                               helper.make_node("Floor", ["c"], ["y"])], "probe", [x], [y], [weight])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        opt = _optimized(probe, ort.SessionOptions())
        reorder = [n for n in opt.graph.node if n.op_type == "ReorderOutput" and n.domain == _NCHWC]
        if not reorder:
            return 1
        del opt.graph.output[:]
        opt.graph.output.append(helper.make_tensor_value_info(reorder[0].input[0],
                                                              TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(opt.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = (np.arange(C, dtype=np.float32)[:, None] + 1000.0 * np.arange(W)).reshape(1, C, 1, W)
        flat = sess.run(None, {"x": feed.astype(np.float32)})[0].ravel()
        block = int(np.argmax(flat >= 1000.0))
        ok = block > 1 and C % block == 0 and np.array_equal(flat[:block], np.arange(block))
        return block if ok else 1
    except Exception as exc:  # an ORT without the contrib layout ops: run in plain layout
        logger.debug("layout: NCHWc probe failed (%s); neurons keep the plain layout", exc)
        return 1


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def blocked_model(model: onnx.ModelProto | str | os.PathLike,
                  so: ort.SessionOptions | None = None,
                  **kwargs: Any) -> tuple[onnx.ModelProto, int]:
    """(ORT-optimised model with neurons in the blocked layout, neurons moved). ORT optimises
    under ``so`` (default :func:`session_options`) and ``kwargs`` (``disabled_optimizers``...),
    as the session that runs the model would. With no NCHWc on this machine, or nothing to
    move, returns (model, 0) unchanged."""
    model = model_proto(model)
    block = block_size()
    if block <= 1 or not any(n.domain == DOMAIN for n in model.graph.node):
        return model, 0
    opt = _optimized(model, so if so is not None else session_options(), **kwargs)
    graph = opt.graph
    read_in_subgraphs = subgraph_reads(graph)
    producer, consumers, graph_outputs = wiring(graph)
    drop: set[int] = set()
    rename: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    moved_adds: set[int] = set()
    moved = 0

    def ours(n: onnx.NodeProto) -> bool:
        return n.domain == DOMAIN and len(n.input) in (1, 3) and len(n.output) in (1, 2)

    def private(name: str) -> bool:  # read by one node only, and not from outside the graph
        return (len(consumers.get(name, [])) == 1 and name not in graph_outputs
                and name not in read_in_subgraphs)

    shapes = value_shapes(graph)

    def nchwc_source(name: str) -> tuple[str, int] | None:
        """(NCHWc tensor, channels) behind plain tensor ``name``: the input of the ReorderOutput
        that makes it (ORT's, or one added for a moved neuron), channels a multiple of B."""
        r = producer.get(name)
        if (r is None or r.op_type != "ReorderOutput" or r.domain != _NCHWC
                or _attr_int(r, "channels_last", 0) != 0 or _attr_int(r, "channels", 0) <= 0
                or _attr_int(r, "channels", 0) % block != 0):
            return None
        return r.input[0], _attr_int(r, "channels", 0)

    def blocked_add(n: onnx.NodeProto | None) -> list[tuple[str, int]] | None:
        """The NCHWc sources of an elementwise Add of two plain tensors that both have one
        (a residual block's sum: the conv branch and the shortcut), when both have the same
        known 4-D shape: then the Add gives the same sums on the blocked tensors."""
        if (n is None or n.op_type != "Add" or n.domain not in ("", "ai.onnx")
                or len(n.input) != 2 or len(n.output) != 1):
            return None
        srcs = [nchwc_source(i) for i in n.input]
        if any(x is None for x in srcs) or srcs[0][1] != srcs[1][1]:  # type: ignore[index]
            return None
        a, b = (shapes.get(i) for i in n.input)
        if a is None or a != b or len(a) != 4 or any(d in (0, "") for d in a):
            return None
        return srcs  # type: ignore[return-value]

    chained: set[int] = set()
    for node in graph.node:
        if not ours(node) or id(node) in chained or not private(node.input[0]):
            continue
        before = producer.get(node.input[0])
        source = nchwc_source(node.input[0])
        # a neuron after a residual Add: the Add moves into the blocked layout with it
        add_sources = blocked_add(before) if source is None else None
        if source is None and add_sources is None:
            continue
        channels = (source or add_sources[0])[1]  # type: ignore[index]
        # a chain of our ops, each the only reader of the previous one's output (a neuron and
        # the spike gate after it): all move together
        chain = [node]
        while private(chain[-1].output[0]):
            nxt = consumers[chain[-1].output[0]][0]
            if not ours(nxt) or nxt.input[0] != chain[-1].output[0]:
                break
            chain.append(nxt)
        last = chain[-1]
        after = consumers.get(last.output[0], [])
        blocked = [c for c in after if c.op_type == "ReorderInput" and c.domain == _NCHWC
                   and _attr_int(c, "channels_last", 0) == 0]
        if not blocked:  # one reorder before it or one after it: nothing saved
            continue
        plain = last.output[0]
        if len(blocked) < len(after) or plain in graph_outputs or plain in read_in_subgraphs:
            # NCHW readers remain (a fetched spike train, a Flatten, the next residual Add...):
            # one ReorderOutput serves them, in place of the ReorderOutput + ReorderInput pair
            # around the neuron (dropped again below if a blocked Add takes its readers over)
            last.output[0] = f"{plain}/nchwc"
            reorder = helper.make_node("ReorderOutput", [last.output[0]], [plain],
                                       name=f"{last.name}/ReorderOutput", domain=_NCHWC,
                                       channels=channels, channels_last=0)
            added.append(reorder)
            producer[plain] = reorder
        if source is not None:
            node.input[0] = source[0]
            drop.add(id(before))
        else:  # the Add reads the blocked tensors; ReorderOutputs left unread are dropped below
            for k, (name, _) in enumerate(add_sources):  # type: ignore[arg-type]
                before.input[k] = name  # type: ignore[union-attr]
            moved_adds.add(id(before))
        for c in blocked:
            drop.add(id(c))
            rename[c.output[0]] = last.output[0]
        for n in chain:
            n.attribute.append(helper.make_attribute("channel_block", block))
            chained.add(id(n))
        moved += len(chain)
    if not moved:
        return model, 0
    kept = []
    for n in graph.node:  # each new ReorderOutput right after its neuron: still topological
        if id(n) not in drop:
            kept.append(n)
            kept.extend(a for a in added if a.input[0] in n.output)
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    if moved_adds:  # ReorderOutputs whose only reader was a residual Add now in NCHWc
        read = {i for n in kept for i in n.input} | graph_outputs | read_in_subgraphs
        kept = [n for n in kept if not (n.op_type == "ReorderOutput" and n.domain == _NCHWC
                                        and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(kept)
    return opt, moved


def session(model: str | os.PathLike | onnx.ModelProto, so: ort.SessionOptions | None = None,
            *, blocked: bool = True, **kwargs: Any) -> ort.InferenceSession:
    """An ORT session of a compiled model with the kernel library registered. ``blocked`` (the
    default) runs each spike gate as one kernel (:func:`~snncc.runtime.gates.fuse_gates`), the
    neurons in ORT's blocked layout where that removes reorders (:func:`blocked_model`), and
    there each window-decoded bit-serial neuron with the AveragePool after it as one kernel
    (:func:`~snncc.runtime.pools.fuse_avg_pools`); bit-identical outputs. ``so`` (default
    :func:`session_options`; it must have the kernel library registered, or the neurons run
    on their portable ONNX functions: the same outputs, several times slower) and ``kwargs`` go
    to ORT as given; ``so`` is left as it was, and threads may share it. A model that protobuf cannot serialise (over 2 GB) keeps ORT's own layout."""
    from snncc import ir

    if not isinstance(model, (onnx.ModelProto, str, os.PathLike)):
        ir.read_proto(model)   # SNN-E349
    own = so is not None
    if own:
        check_session_options(so)
    if not isinstance(blocked, (bool, np.bool_)):
        raise OptionError(f"blocked={blocked!r} must be True or False", code="SNN-E349",
                          hint="blocked=False for ORT's own layout")
    so = so if own else session_options()
    kwargs = {"providers": ["CPUExecutionProvider"], **kwargs}
    with _lock_for(so) if own else contextlib.nullcontext():   # a caller's so: see _options
        return _session(model, so, own, blocked, kwargs)


def _session(model, so: ort.SessionOptions, own: bool, blocked: bool,
             kwargs: dict[str, Any]) -> ort.InferenceSession:
    from snncc import ir

    src: str | None = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if src is not None and (not os.path.isfile(src) or src.lower().endswith(".nir")):
        ir.read_proto(src)   # the front end's SNN-E101/E102 (missing, a directory, a Loihi
        #                      folder, a NIR file)
    if blocked and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL:
        try:
            proto = model if src is None else onnx.load(src)
            moved = gates = pools = 0
            if proto.ByteSize() <= _PROTO_LIMIT:
                proto, gates = fuse_gates(proto)
                proto, moved = blocked_model(proto, so, **kwargs)
                if moved:
                    proto, pools = fuse_avg_pools(proto)
            if moved or gates or pools:
                logger.debug("layout: %d neuron(s) in the NCHWc layout (block %d), %d spike "
                             "gate(s) and %d neuron + average pool pair(s) as one kernel",
                             moved, block_size(), gates, pools)
            if moved:  # already optimised by ORT, for this machine
                with _options(so, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
                    return ort.InferenceSession(proto.SerializeToString(), so, **kwargs)
            if gates:
                return ort.InferenceSession(proto.SerializeToString(), so, **kwargs)
        except Exception as exc:  # anything ORT cannot optimise and save: its own layout
            logger.debug("layout: kept ORT's own layout (%s)", exc)
    try:
        return ort.InferenceSession(src if src is not None else model.SerializeToString(), so,
                                    **kwargs)
    except InvalidProtobuf:
        if src is not None:
            ir.read_proto(src)   # SNN-E102: not a readable ONNX model
        raise
    except Exception as exc:   # e.g. a streaming model's ops in SessionOptions without the library
        if not own:
            raise
        try:   # the caller's options lack the library when ours load the model
            ort.InferenceSession(src if src is not None else model.SerializeToString(),
                                 session_options(), **kwargs)
        except Exception:
            raise exc from None
        raise RuntimeLibraryError(
            f"ONNX Runtime cannot load the model with these SessionOptions ({type(exc).__name__}: "
            f"{str(exc).strip()[:200]})", code="SNN-E703",
            hint="register the kernel library in them (snncc.runtime.register(so)), or pass "
            "no so (snncc.runtime.session_options() is the default)") from exc
