"""A window-decoded bit-serial neuron and the AveragePool after it in one kernel, on the machine
that runs the model.

Under the window schedule a bit-serial neuron writes its window mean ``q * unit``
(``decoded=1``), and in a VGG-style net an AveragePool usually reads it next. ORT's own AveragePool
then reads back the full-size output the neuron has just written: on the bundled MNIST nets at
batch 100 the stem neuron and that pool take about 0.48 of a 2.6-2.9 ms run
(ORT profiler). :func:`fuse_avg_pools` replaces each such pair
by the kernel library's ``BitSerialAveragePool`` (runtime/csrc/avgpool.cc), which decodes each
input element as the neuron does and averages the window as ORT's blocked (NCHWc) AveragePool
does, so the neuron's output is never written. It runs on the model ORT has already put into its
blocked layout (:func:`snncc.runtime.layout.blocked_model`), where the pool's arithmetic is
known. Bit-identical (tests/runtime/test_pools.py). The compiled model keeps the two ops; only
the session's copy changes.
"""
from __future__ import annotations

import onnx
from onnx import helper

from snncc.ir import node_attrs
from snncc.runtime import DOMAIN, model_proto
from snncc.runtime.gates import wiring

__all__ = ["fuse_avg_pools"]

NCHWC = "com.microsoft.nchwc"


def fuse_avg_pools(model: onnx.ModelProto | str) -> tuple[onnx.ModelProto, int]:
    """(model with every blocked-layout pair fused, number fused). ``model`` is what
    :func:`snncc.runtime.layout.blocked_model` returns: a ``BitSerialNeuron`` with
    ``decoded=1`` and ``channel_block = B`` whose only reader is ORT's NCHWc ``AveragePool``
    (unpadded, floor mode) becomes one ``BitSerialAveragePool`` with the same ``channel_block``.
    Only that pool's arithmetic (the window added in row-major order, then divided by its size)
    is reproduced, so nothing else is fused: a pair in the plain layout (ORT's NCHW pool adds
    column sums), padding, auto_pad, ceil_mode, dilation, a neuron with a state or a second
    output, a neuron output that is also read elsewhere or is a graph output (fetched spike
    counts). ``model`` itself is not changed."""
    model = model_proto(model)   # or a path
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        return model, 0  # If/Loop/Scan bodies may read a neuron output: not worth the risk
    _, readers, outputs = wiring(graph)
    names = {n.name for n in graph.node}
    fused: dict[int, onnx.NodeProto] = {}  # the pool's id -> the fused node
    dropped: set[int] = set()
    for neuron in graph.node:
        if (neuron.domain != DOMAIN or neuron.op_type != "BitSerialNeuron"
                or len(neuron.input) != 1 or len(neuron.output) != 1):
            continue
        attrs = node_attrs(neuron)
        y = neuron.output[0]
        after = readers.get(y, [])
        block = int(attrs.get("channel_block", 0))
        if attrs.get("decoded", 0) != 1 or block < 2 or y in outputs or len(after) != 1:
            continue
        pool = after[0]
        p = node_attrs(pool)
        kernel = list(p.get("kernel_shape", []))
        if (pool.op_type != "AveragePool" or pool.domain != NCHWC or len(pool.output) != 1
                or len(pool.input) != 1 or pool.input[0] != y or len(kernel) != 2
                or p.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or any(list(p.get("pads", [0, 0, 0, 0])))
                or list(p.get("dilations", [1, 1])) != [1, 1] or p.get("ceil_mode", 0) != 0):
            continue
        name = f"{neuron.name or 'neuron'}/BitSerialAveragePool"
        while name in names:
            name += "_"
        names.add(name)
        fused[id(pool)] = helper.make_node(
            "BitSerialAveragePool", [neuron.input[0]], [pool.output[0]], name=name,
            domain=DOMAIN, T=int(attrs.get("T", 1)), const_input=int(attrs.get("const_input", 0)),
            bits=int(attrs.get("bits", 0)), v_init=float(attrs.get("v_init", 0.5)),
            theta=[float(t) for t in attrs.get("theta", [1.0])], kernel_shape=kernel,
            strides=list(p.get("strides", [1, 1])), channel_block=block)
        dropped.add(id(neuron))
    if not fused:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [fused.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out, len(fused)
