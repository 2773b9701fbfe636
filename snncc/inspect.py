"""``snncc inspect``: what is in an ONNX model and what snncc can make of it.

The report holds the opset and IR version, the inputs with their shapes, every node grouped as
linear / activation / pooling / other (see :mod:`snncc.op_classes`), every op snncc cannot
convert (with a hint), and the multiply-accumulates per sample of each linear layer and in total.
The model is canonicalized first (on its own copy, with analog activations allowed) so that every
shape is known; when canonicalize rejects the model, the report lists why and falls back to the
raw graph (no MACs where shapes are unknown).

MACs per sample are (output elements per sample) x (fan-in of one output):
Conv: Cout*Hout*Wout * Cin/groups*kH*kW; ConvTranspose: (input elements per sample) *
Cout/groups*kH*kW; Gemm / MatMul: output features * input features (times any leading
non-batch dims of a MatMul).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import onnx

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.errors import ModelInputError
from snncc.op_classes import GROUPS, LINEAR, op_info

__all__ = ["inspect_model", "format_inspect"]


def _dims(shape) -> list | None:
    return None if shape is None else [d if isinstance(d, str) else int(d) for d in shape]


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _layer_macs(node: ir.Node) -> int | None:
    """Per-sample MACs of a linear node, None when a needed shape is unknown."""
    out = _dims(node.outputs[0].shape)
    ins = [_dims(t.shape) for t in node.inputs]
    if out is None or len(ins) < 2 or not _static(out[1:]) or not _static(ins[1]):
        return None
    per_sample_out = math.prod(out[1:])
    if node.op == "Conv":
        return per_sample_out * math.prod(ins[1][1:])
    if node.op == "ConvTranspose":
        if ins[0] is None or not _static(ins[0][1:]):
            return None
        return math.prod(ins[0][1:]) * math.prod(ins[1][1:])
    if node.op == "Gemm":
        fan_in = ins[1][1] if node.attrs.get("transB", 0) else ins[1][0]
        return per_sample_out * fan_in
    if node.op == "MatMul":
        if ins[0] is None or not _static(ins[0][-1:]):
            return None
        return per_sample_out * ins[0][-1]
    return None


def inspect_model(path_or_proto: str | os.PathLike | onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Build the inspect report (a JSON-ready dict) for a model file or proto."""
    from snncc.passes.canonicalize import CanonicalizePass, unsupported_nodes
    from snncc.pipeline import Pipeline

    model = ir.load(path_or_proto)
    report: dict[str, Any] = {
        "source": "<proto>" if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto),
        "ir_version": model.ir_version,
        "opset": model.opset,
        "inputs": [{"name": t.name, "dtype": str(t.dtype), "shape": _dims(t.shape)}
                   for t in model.graph.inputs],
        "problems": [],
    }
    options = CompileOptions(target="qann", allow_analog=True,
                             input_shapes={k: tuple(v) for k, v in (input_shapes or {}).items()})
    try:
        Pipeline([CanonicalizePass()], verify="off").run(model, CompileContext(options))
        report["canonicalized"] = True
    except ModelInputError as exc:
        report["problems"] = [{"code": d.code, "message": d.format()}
                              for d in exc.diagnostics] or [{"code": exc.code,
                                                             "message": str(exc)}]
        report["canonicalized"] = False
        model = ir.load(path_or_proto)
    graph = model.graph
    report["canonical_inputs"] = [{"name": t.name, "shape": _dims(t.shape)} for t in graph.inputs]
    report["outputs"] = [{"name": t.name, "shape": _dims(t.shape)} for t in graph.outputs]
    groups: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    layers = []
    for node in graph.nodes:
        group = op_info(node.op, node.domain or "").group
        entry = {"node": node.name, "op": node.op,
                 "output_shape": _dims(node.outputs[0].shape) if node.outputs else None}
        if group == LINEAR:
            entry["macs"] = _layer_macs(node)
            layers.append({"node": node.name, "op": node.op, "macs": entry["macs"]})
        groups[group].append(entry)
    report["nodes"] = groups
    report["unsupported"] = [
        {"node": d.node, "code": d.code, "message": d.message, "hint": d.hint}
        for d in unsupported_nodes(graph, CompileOptions(target="qann"))]
    known = [layer["macs"] for layer in layers if layer["macs"] is not None]
    report["macs"] = {"layers": layers, "total": sum(known),
                      "complete": len(known) == len(layers)}
    return report


def _shape(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def format_inspect(report: Mapping[str, Any]) -> str:
    """The report as the text ``snncc inspect`` prints."""
    lines = [f"model: {report['source']}",
             f"IR version {report['ir_version']}, opset {report['opset']}", "inputs:"]
    for inp, canon in zip(report["inputs"], report["canonical_inputs"]):
        lines.append(f"  {inp['name']}: {inp['dtype']} {_shape(inp['shape'])}"
                     f" (canonical {_shape(canon['shape'])})")
    for p in report["problems"]:
        lines.append(f"problem: {p['message']}")
    for group, nodes in report["nodes"].items():
        lines.append(f"{group} ({len(nodes)}):")
        for n in nodes:
            macs = f"  MACs {n['macs']:,}" if n.get("macs") is not None else ""
            lines.append(f"  {n['op']:<20} {n['node']:<40} -> {_shape(n['output_shape'])}{macs}")
    if report["unsupported"]:
        lines.append(f"cannot convert ({len(report['unsupported'])}):")
        for u in report["unsupported"]:
            lines.append(f"  [{u['code']}] {u['node']}: {u['message']}. Hint: {u['hint']}")
    else:
        lines.append("cannot convert: none")
    macs = report["macs"]
    note = "" if macs["complete"] else " (some layers have unknown shapes)"
    lines.append(f"total MACs per sample: {macs['total']:,}{note}")
    return "\n".join(lines)
