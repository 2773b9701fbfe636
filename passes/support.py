"""Which nodes convert, and in what role: the one rule ``canonicalize``, ``snncc inspect`` and
schedule-timesteps share.

:func:`conversion_roles` makes every node *spiking* (ReLU / clipped ReLU / QCFS clip / neuron op),
*time* (fed by spikes and a per-row op from :data:`snncc.op_classes.TIME_OPS`, or a MaxPool: runs
on the spike train), *head* (any other op computed from spikes with no spiking layer after it: the
output head, which runs once on the decoded output), *island* (fed by spikes, not a time op, a
spiking layer after it: needs ``--allow-analog``) or *static* (the rest: not computed from spikes;
runs once, on analog data). Softmax / LogSoftmax must be *head* (else SNN-E203).

:func:`unsupported_nodes` lists every node that cannot convert, one diagnostic each (SNN-E201
activations with no spiking equivalent, SNN-E202 composite forms, SNN-E203 a Softmax before a
spiking layer, SNN-E205 an op domain ONNX Runtime does not know, SNN-E206 control flow, SNN-E208
a BatchNormalization or Dropout exported in training mode), and
:func:`no_activation` gives SNN-E204 when nothing would become a neuron. The diagnostics name the
canonicalize pass, which raises them (see :mod:`snncc.passes.canonicalize`).
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from snncc import ir
from snncc.context import CompileOptions
from snncc.errors import Diagnostic
from snncc.op_classes import (ACTIVATION, CONTROL_FLOW, FUSED_HINT, META_OPS, ORT_DOMAINS,
                               ORT_FUSED, OUTPUT_ONLY, PATTERN_HINTS, QUANTIZED, QUANTIZED_HINT,
                               RECURRENT, TIME_OPS, TRAINING_HINT, op_info)
from snncc.passes.quant_clip import activation_sites

__all__ = ["unsupported_nodes", "conversion_roles", "analog_prefix", "prefix_activations",
           "no_activation", "time_op_ok",
           "feeds_only_outputs", "spike_fed", "relu_spellings", "SPIKING", "STATIC", "TIME",
           "HEAD", "ISLAND", "training_mode"]

PASS_NAME = "canonicalize"  # the pass that raises these diagnostics
_PASS_THROUGH = frozenset({"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _diag(code: str, message: str, node: str = "", hint: str = "",
          severity: str = "error") -> Diagnostic:
    return Diagnostic(code, message, pass_name=PASS_NAME, node=node, hint=hint, severity=severity)


# ----------------------------------------------------------------------------- unsupported ops

def unsupported_nodes(graph: gs.Graph, options: CompileOptions,
                      provenance: dict[str, str] | None = None) -> list[Diagnostic]:
    """Every node whose activation has no spiking equivalent, one diagnostic each.

    Composite forms are reported once, as the activation they spell (SNN-E202); a Softmax or
    LogSoftmax is fine only where :func:`conversion_roles` puts it in the output head (else
    SNN-E203). An activation in the analog prefix (fed by no spikes, a spiking layer after it:
    it runs once on the input, exactly, like a Clip there) is fine too. The severity is
    ``warning`` when ``options.allow_analog`` keeps such nodes as analog islands.
    """
    severity = "warning" if options.allow_analog else "error"
    roles = conversion_roles(graph)
    prefix = analog_prefix(graph, roles)
    diags = []
    for node in graph.nodes:
        label = ir.node_label(node, provenance)
        if (node.domain or "") not in ORT_DOMAINS:  # nothing runs it: not even a head
            diags.append(_diag("SNN-E205", f"op {node.op} of domain '{node.domain}' is unknown to "
                               "ONNX Runtime, so snncc can neither calibrate nor run the model",
                               label, "replace it with standard ONNX ops", "error"))
            continue
        if node.op in CONTROL_FLOW and (node.domain or "") in ("", "ai.onnx"):
            diags.append(_diag("SNN-E206", f"{node.op} is control flow: its subgraphs run "
                               "per call, which snncc can neither calibrate per layer nor "
                               "schedule over timesteps", label,
                               "export a static graph (torch.onnx.export unrolls Python loops "
                               "and branches when they do not depend on the data)", "error"))
            continue
        if node.op in QUANTIZED and (node.domain or "") in ("", "ai.onnx", "com.microsoft") \
                and not (node.op == "DequantizeLinear" and node.inputs
                         and ir.const_value(node.inputs[0]) is not None):
            diags.append(_diag("SNN-E207", f"{node.op} belongs to a quantized model", label,
                               QUANTIZED_HINT, severity))  # --allow-analog: islands
            continue
        training = training_mode(graph, node)
        if training:  # never a spiking layer, nor an island: its output changes with the batch
            diags.append(_diag("SNN-E208", f"{node.op} is in training mode ({training})", label,
                               TRAINING_HINT, "error"))
            continue
        if node.op in ORT_FUSED and (node.domain or "") == "com.microsoft":
            diags.append(_diag("SNN-E207", f"{node.op} is an ONNX Runtime fused op", label,
                               FUSED_HINT, "error"))
            continue
        info = op_info(node.op, node.domain or "")
        if info.spiking or _inside_pattern(node) or (id(node) in prefix
                                                      and info.group == ACTIVATION
                                                      and node.op not in RECURRENT):
            continue
        pattern = _pattern(node)
        if pattern:
            diags.append(_diag("SNN-E202", f"{pattern} has no spiking equivalent", label,
                               PATTERN_HINTS[pattern], severity))
        elif node.op in OUTPUT_ONLY:
            if roles.get(id(node)) != HEAD:
                diags.append(_diag("SNN-E203", f"{node.op} is not in the output head (after the "
                                   "last spiking layer)", label, info.hint, severity))
        else:
            diags.append(_diag("SNN-E201", f"{node.op} has no spiking equivalent", label,
                               info.hint, severity))
    return diags


def training_mode(graph: gs.Graph, node: gs.Node) -> str | None:
    """Why a BatchNormalization or Dropout computes its training form, or None: what
    ``torch.onnx.export`` writes for a model left in train() mode (batch statistics, random
    masks), so the converted model's output would depend on the batch."""
    if (node.domain or "") not in ("", "ai.onnx"):
        return None
    if node.op == "BatchNormalization":
        if node.attrs.get("training_mode", 0):
            return "training_mode=1: it normalises with each batch's own statistics"
        extra = [o for o in node.outputs[1:] if o.name]
        if extra and (graph.opset or 14) < 14:   # before opset 14 extra outputs mean training
            return "its running-statistics outputs mark the training form (opset < 14)"
        if any(o.outputs or o in graph.outputs for o in extra):
            return "its running statistics are outputs read by the graph"
    elif node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
        mode = ir.const_value(node.inputs[2])
        if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
            return "training_mode=true: it zeroes random activations at every run"
    return None


def _times_own_input(node: gs.Node) -> bool:
    """The node's output multiplies its own input: x * f(x)."""
    x = node.inputs[0]
    return any(c.op == "Mul" and x in c.inputs for c in node.outputs[0].outputs)


def _pattern(node: gs.Node) -> str | None:
    if node.op == "Sigmoid" and _times_own_input(node):
        return "SiLU"
    if node.op == "HardSigmoid" and _times_own_input(node):
        return "HardSwish"
    if node.op == "Erf":
        return "GELU"
    if node.op == "Softplus" and any(c.op == "Tanh" for c in node.outputs[0].outputs):
        return "Mish"
    return None


def _inside_pattern(node: gs.Node) -> bool:
    """The Tanh of x*tanh(softplus(x)): already reported with its Softplus."""
    prod = ir.producer(node.inputs[0]) if node.inputs else None
    return node.op == "Tanh" and prod is not None and prod.op == "Softplus"


def feeds_only_outputs(tensor: gs.Tensor, outputs: set[int]) -> bool:
    """Only reshapes (and Identity/Dropout) lie between ``tensor`` and graph outputs."""
    if id(tensor) in outputs:
        return True
    return bool(tensor.outputs) and all(
        c.op in _PASS_THROUGH and c.outputs and feeds_only_outputs(c.outputs[0], outputs)
        for c in tensor.outputs)


# ----------------------------------------------------------------------------- what converts

SPIKING, STATIC, TIME, HEAD, ISLAND = "spiking", "static", "time", "head", "island"


def _legacy_relu_clip(node: gs.Node) -> bool:
    """Clip(min=0, max>0) in the attribute form of opsets < 11 (before conversion)."""
    return (node.op == "Clip" and len(node.inputs) == 1 and node.attrs.get("min", None) == 0
            and node.attrs.get("max", 1.0) > 0)


def _spiking_nodes(graph: gs.Graph) -> set[int]:
    ids = {id(n) for site in activation_sites(graph) for n in site.nodes}
    return ids | {id(n) for n in graph.nodes
                  if n.domain == ir.SNN_DOMAIN or _legacy_relu_clip(n)}


def _order(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in dependency order (the node list itself when the graph has a cycle)."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(index.values())
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            dag.add_edges_from((i, index[id(c)]) for c in out.outputs if id(c) in index)
    try:
        return [graph.nodes[i] for i in nx.lexicographical_topological_sort(dag)]
    except nx.NetworkXUnfeasible:
        return list(graph.nodes)


def time_op_ok(op: str, domain: str | None, spiking_inputs: Sequence[int]) -> bool:
    """Whether ``op`` runs on spike trains as they are with spikes on those input indices."""
    if op not in TIME_OPS or domain not in ("", "ai.onnx", None):
        return False
    allowed = TIME_OPS[op]
    if allowed is None:
        return True
    return set(spiking_inputs) <= set(allowed) and (op != "Mul" or len(spiking_inputs) == 1)


def _spiking_below(order: Sequence[gs.Node], spiking: set[int]) -> dict[int, bool]:
    """``id(node) -> whether a spiking node lies downstream of it``."""
    below: dict[int, bool] = {}
    for node in reversed(order):
        below[id(node)] = any(id(c) in spiking or below.get(id(c), False)
                              for out in node.outputs for c in out.outputs)
    return below


def analog_prefix(graph: gs.Graph, roles: Mapping[int, str] | None = None) -> set[int]:
    """Ids of the *static* nodes with a spiking layer after them: the analog prefix that runs
    once on the input (a stem's normalisation, a first activation of another kind)."""
    roles = conversion_roles(graph) if roles is None else roles
    spiking = _spiking_nodes(graph)
    order = _order(graph)
    below = _spiking_below(order, spiking)
    # static nodes computed from spikes (after an analog island: a Tanh after a Sigmoid on spikes)
    # are not the prefix: they run on decoded spikes, not on the input
    tainted = spike_fed(graph)
    return {id(n) for n in order if roles.get(id(n)) == STATIC and below.get(id(n))
            and not any(id(t) in tainted for t in n.inputs)}


def prefix_activations(graph: gs.Graph) -> list[str]:
    """The non-spiking activations (Sigmoid, Tanh, ...) of the analog prefix, by node label:
    they run once on the input, exactly, and are no neurons (compile and inspect say so; a
    user had taken their net for spiking throughout; Loihi and NIR refuse them)."""
    prefix = analog_prefix(graph)   # static nodes only: a spiking site (ReLU, Clip(0, c)) is none
    # (a Clip(-1, 1) is an activation op that 'spikes' by its table entry, but not here)
    return [ir.node_label(n) for n in graph.nodes if id(n) in prefix
            and op_info(n.op, n.domain or "").group == ACTIVATION]


def spike_fed(graph: gs.Graph) -> set[int]:
    """Ids of the tensors computed from spikes: downstream of any spiking node (ReLU, clipped
    ReLU, QCFS clip, neuron op), through islands and decodes too."""
    spiking = _spiking_nodes(graph)
    tainted: set[int] = set()
    for node in _order(graph):
        if id(node) in spiking or any(id(t) in tainted for t in node.inputs):
            tainted.update(id(t) for t in node.outputs)
    return tainted


def _zeros_like(t: gs.Tensor, x: gs.Tensor) -> bool:
    """``t`` is ``ConstantOfShape(Shape(x))`` with a float zero value (torch's ``zeros_like``
    exported with a dynamic batch, which constant folding cannot remove)."""
    cos = ir.producer(t)
    if cos is None or cos.op != "ConstantOfShape" or len(cos.inputs) != 1:
        return False
    shape = ir.producer(cos.inputs[0])
    if shape is None or shape.op != "Shape" or shape.inputs[0] is not x or \
            any(k in shape.attrs for k in ("start", "end")):
        return False
    value = cos.attrs.get("value")
    arr = np.zeros(1, np.float32) if value is None else np.asarray(
        value.values if isinstance(value, gs.Constant) else value)
    return arr.size == 1 and arr.dtype.kind == "f" and float(arr.ravel()[0]) == 0.0


def relu_spellings(graph: gs.Graph) -> int:
    """Other spellings of ReLU become Relu, in place: ``LeakyRelu(alpha=0)`` and ``Max(x, 0)``
    with a zero constant of at most one element and rank (a Keras/TF export form; a higher rank
    would broadcast x). Canonicalize runs it first, and ``snncc inspect`` before it lists what
    cannot convert, so both agree. Returns how many."""
    done = 0
    for node in graph.nodes:
        if node.domain not in (None, "", "ai.onnx"):
            continue
        if node.op == "LeakyRelu" and float(node.attrs.get("alpha", 0.01)) == 0.0:
            node.attrs.clear()
        elif node.op == "Max" and len(node.inputs) == 2:
            values = [ir.const_value(t) for t in node.inputs]
            zero = [i for i, v in enumerate(values) if v is not None and v.size == 1 and
                    v.ndim <= 1 and v.dtype.kind == "f" and float(v.ravel()[0]) == 0.0]
            if not zero:    # torch.maximum(x, zeros_like(x)) with a dynamic batch
                zero = [i for i in (0, 1) if _zeros_like(node.inputs[i], node.inputs[1 - i])]
            if len(zero) != 1 or values[1 - zero[0]] is not None:
                continue
            x = node.inputs[1 - zero[0]]
            node.inputs.clear()
            node.inputs.append(x)
        else:
            continue
        node.op = "Relu"
        done += 1
    return done


def conversion_roles(graph: gs.Graph) -> dict[int, str]:
    """``id(node) -> role`` (module doc): the one rule for what converts, shared by canonicalize,
    ``snncc inspect`` and schedule-timesteps. Works before (ReLU, QCFS clips) and after neuron
    insertion (``snncc.ops`` nodes)."""
    spiking = _spiking_nodes(graph)
    order = _order(graph)
    below = _spiking_below(order, spiking)  # a spiking node lies downstream
    carries: set[int] = set()  # ids of tensors that carry spikes
    after: set[int] = set()    # ids of tensors computed from spikes (decoded or not)
    roles: dict[int, str] = {}
    for node in order:
        t_idx = [i for i, t in enumerate(node.inputs) if id(t) in carries]
        derived = bool(t_idx) or any(id(t) in after for t in node.inputs)
        domain = node.domain or ""
        if id(node) in spiking:
            role = SPIKING
        elif node.op in META_OPS and domain in ("", "ai.onnx"):
            role = STATIC
        elif t_idx and ((node.op == "MaxPool" and domain in ("", "ai.onnx"))
                        or time_op_ok(node.op, domain, t_idx)):
            role = TIME
        elif derived and not below[id(node)]:
            role = HEAD
        else:
            role = ISLAND if t_idx else STATIC
        roles[id(node)] = role
        if role in (SPIKING, TIME):
            carries.update(id(t) for t in node.outputs)
        if role == SPIKING or (derived and node.op not in META_OPS):  # a shape is no value
            after.update(id(t) for t in node.outputs)
    return roles


def no_activation(graph: gs.Graph) -> Diagnostic | None:
    """SNN-E204 when nothing in the graph would become a neuron (an SNN without neurons)."""
    if _spiking_nodes(graph):
        return None
    ops = Counter(n.op for n in graph.nodes)
    listing = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in ops.most_common(8))
    outs = ", ".join(f"'{t.name}'" for t in graph.outputs[:4]) or "none"
    clips = [ir.node_label(n) for n in graph.nodes if n.op == "Clip"]
    why = (f"; {', '.join(clips[:3])}{' ...' if len(clips) > 3 else ''}: a Clip is a clipped "
           "ReLU only with min 0 and a max above 0" if clips else "")
    return _diag("SNN-E204", f"no ReLU, clipped ReLU or QCFS activation feeds the outputs "
                 f"({outs}), so the SNN would have no neurons (ops: {listing or 'none'}){why}",
                 hint="snncc converts CNNs whose hidden layers use ReLU (or ReLU6 / a QCFS "
                 "clip); a model without one has nothing to turn into spikes")
