"""The spike-gated max-pool in one kernel, on the machine that runs the model.

``schedule-timesteps`` writes a MaxPool over spike trains as a spike gate in standard ops
(``passes/schedule_timesteps.py``, ``gate``): a cumulative sum over the slices as a MatMul with
``tril(ones(T, T))`` (the window gate: every row ``[0 ... 0, 1 ... 1]``, every slice keyed by the
total of the decoded slices; ``SpikeGateWindowMaxPool``), a MaxPool with indices on it, and a
GatherElements of the spikes at those indices. ORT runs the MaxPool with indices and the gather outside its blocked layout, with
reorders around them: on an ImageNet-shaped ResNet-34 the stem's gate costs about a fifth of
T x the ANN (bench/results/profile_resnet34.md). :func:`fuse_gates` replaces each such pattern
by the kernel library's ``SpikeGateMaxPool`` (runtime/csrc/gate.cc), which computes the same
values: the cumulative sum in the MatMul's order, the first maximum of each window as ORT's
MaxPool indices. The compiled model keeps the standard ops (they run anywhere); only the
session's copy changes.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from snncc.ir import node_attrs
from snncc.runtime import DOMAIN, model_proto

__all__ = ["fuse_gates", "subgraph_reads", "value_shapes", "wiring", "WINDOW_MATMUL_MAX"]

#: The window gate is fused up to this many slices: beyond, MLAS may add the product's K axis in
#: blocks, in another order than the kernel's slice-by-slice sum (a review saw it at 136 slices;
#: the compiler makes at most 128). The running sum is a MatMul only up to 32 slices (then CumSum,
#: which is not fused).
WINDOW_MATMUL_MAX = 128


def wiring(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto],
                                             dict[str, list[onnx.NodeProto]], set[str]]:
    """(producer of each tensor, readers of each tensor, graph output names) of ``graph``."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return producer, readers, {o.name for o in graph.output}


def value_shapes(graph: onnx.GraphProto) -> dict[str, list]:
    """Declared shapes of ``graph``'s inputs, outputs and value_info: name -> dims (an int, or the
    symbol of a symbolic dimension)."""
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output) + list(graph.value_info)
            if v.type.tensor_type.HasField("shape")}


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the subgraphs of ``graph``'s nodes (If, Loop, Scan bodies) read."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names.update(i for n in sub.node for i in n.input)
                names |= subgraph_reads(sub)
    return names


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _is_const(graph: onnx.GraphProto, name: str, value: list[int]) -> bool:
    """Whether tensor ``name`` is a constant equal to ``value``."""
    a = _const(graph, name)
    return a is not None and a.ndim == 1 and a.tolist() == value


def fuse_gates(model: onnx.ModelProto | str) -> tuple[onnx.ModelProto, int]:
    """(model with every 2-D spike gate as one ``SpikeGateMaxPool``, or ``SpikeGateWindowMaxPool``
    for the window gate, number replaced). A pattern
    that differs in any way is left as it is: the CumSum form, auto_pad, dilation, padding as
    wide as the kernel, other Reshape targets, other readers of its tensors. ``model`` itself is
    not changed."""
    model = model_proto(model)   # or a path
    from snncc.passes.schedule_timesteps import window_keys

    graph = model.graph
    producer, readers, outputs = wiring(graph)

    def made_by(name: str, op: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None

    replace: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    names = {n.name for n in graph.node}
    for pool in graph.node:
        if pool.op_type != "MaxPool" or len(pool.output) != 2 or not pool.output[1]:
            continue
        attrs = node_attrs(pool)
        kernel = list(attrs.get("kernel_shape", []))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        # dilation 1 and pads below the kernel: every window holds a real element (a window of
        # padding only gives ORT a negative index, which the gather wraps around)
        if (len(kernel) != 2 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or attrs.get("storage_order", 0) != 0 or readers.get(pool.output[0])
                or list(attrs.get("dilations", [1, 1])) != [1, 1] or len(pads) != 4
                or any(p >= kernel[k % 2] for k, p in enumerate(pads))):
            continue
        shaped = made_by(pool.input[0], "Reshape")
        matmul = made_by(shaped.input[0], "MatMul") if shaped is not None else None
        window = made_by(matmul.input[1], "Reshape") if matmul is not None else None
        tril = _const(graph, matmul.input[0]) if matmul is not None else None
        if window is None or tril is None or tril.ndim != 2 or tril.shape[0] != tril.shape[1]:
            continue
        T = int(tril.shape[0])
        running = np.array_equal(tril, np.tril(np.ones((T, T), tril.dtype)))  # (T = 1: both)
        # the window gate: every row [0 ... 0, 1 ... 1], ones from the first decoded slice
        counted = int(np.count_nonzero(tril[0]))
        key_from = T - counted
        whole = not running and counted > 0 and np.array_equal(tril, window_keys(T, counted))
        if whole and T > WINDOW_MATMUL_MAX:
            continue   # MLAS adds blocks of the slices in another order than the kernel's
        if not whole and not running:
            continue
        x = window.input[0]
        shape_x = made_by(shaped.input[1], "Shape")
        if (not _is_const(graph, window.input[1], [T, -1]) or shape_x is None
                or shape_x.input[0] != x):
            continue
        idx_reader = readers.get(pool.output[1], [])
        flat_idx = next((r for r in idx_reader if r.op_type == "Reshape"), None)
        shape_idx = next((r for r in idx_reader if r.op_type == "Shape"), None)
        gather = readers.get(flat_idx.output[0], []) if flat_idx is not None else []
        if len(idx_reader) != 2 or shape_idx is None or len(gather) != 1 or gather[0].op_type != "GatherElements":
            continue
        gather = gather[0]
        flat_x = made_by(gather.input[0], "Reshape")
        last = readers.get(gather.output[0], [])
        if (flat_x is None or flat_x.input[0] != x or len(last) != 1 or last[0].op_type != "Reshape"
                or last[0].input[1] != shape_idx.output[0] or node_attrs(gather).get("axis", 0) != 0
                or not _is_const(graph, flat_x.input[1], [-1])
                or not _is_const(graph, flat_idx.input[1], [-1])):
            continue
        last = last[0]
        nodes = [window, matmul, shaped, pool, flat_idx, shape_idx, flat_x, gather, last, shape_x]
        inside = {id(n) for n in nodes}
        ok = all(all(id(r) in inside for r in readers.get(o, [])) and o not in outputs
                 for n in nodes if n is not last for o in n.output)
        if not ok:
            continue
        op = "SpikeGateWindowMaxPool" if whole else "SpikeGateMaxPool"
        name = f"{pool.name or 'gate'}/{op}"
        while name in names:
            name += "_"
        names.add(name)
        fused = helper.make_node(
            op, [x], [last.output[0]], name=name,
            domain=DOMAIN, T=T, kernel_shape=kernel,
            strides=list(attrs.get("strides", [1, 1])), pads=list(attrs.get("pads", [0, 0, 0, 0])),
            dilations=list(attrs.get("dilations", [1, 1])), ceil_mode=int(attrs.get("ceil_mode", 0)),
            **({"key_from": key_from} if whole else {}))
        replace.append((nodes, fused))
    if not replace:
        return model, 0
    position = {id(n): k for k, n in enumerate(graph.node)}
    drop = {position[id(n)] for nodes, _ in replace for n in nodes}
    at = {position[id(nodes[8])]: fused for nodes, fused in replace}  # the last Reshape's place
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [at[k] if k in at else n for k, n in enumerate(out.graph.node) if k in at or k not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    dropped_inputs = {i for nodes, _ in replace for n in nodes for i in n.input}
    live = [t for t in out.graph.initializer if t.name in used or t.name not in dropped_inputs]
    del out.graph.initializer[:]
    out.graph.initializer.extend(live)
    return out, len(replace)
