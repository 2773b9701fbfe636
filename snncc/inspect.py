"""``snncc inspect``: what is in an ONNX model and what snncc can make of it.

The report holds the opset and IR version, the inputs with their shapes, every node grouped as
linear / activation / pooling / other (see :mod:`snncc.op_classes`), every op snncc cannot
convert (with a hint), and the multiply-accumulates per sample of each linear layer and in total.
The model is canonicalized first (on its own copy, with analog activations allowed) so that every
shape is known; when canonicalize rejects the model for a reason the options can fix (dynamic dims
without ``--input-shape``, opset conversion, shape inference), the report lists why and falls
back to the raw graph (no MACs where shapes are unknown). A model that is broken in itself (a
tensor produced by nothing, a cycle, NaN/Inf weights, no outputs, channel mismatch:
:data:`FATAL`) raises the same error as ``snncc compile``.

What converts is decided by :func:`snncc.passes.support.conversion_roles`, the rule compile
uses: ``unsupported`` lists the canonicalize findings on the graph as given (SNN-E201..E203,
where compile checks them), then, on the canonical graph, ops that would be analog islands in an
SNN (SNN-E244) or work across the batch axis that holds time (SNN-E242/E243), as
schedule-timesteps raises them, and a model with no activation (SNN-E204). ``output_head`` lists
the ops that run once on the decoded SNN output.

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
from snncc.errors import Diagnostic, ModelInputError, UnsupportedNodeError, hints_once
from snncc.op_classes import GROUPS, LINEAR, ORT_DOMAINS, op_info

__all__ = ["inspect_model", "format_inspect", "FATAL"]

#: canonicalize codes that make the model unusable whatever the options, or that say the
#: user's --input-shape is wrong (E115, E116; exit 2 as in compile): raised, not listed.
FATAL = frozenset({"SNN-E112", "SNN-E113", "SNN-E115", "SNN-E116", "SNN-E120", "SNN-E121",
                   "SNN-E122"})


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
                  input_shapes: Mapping[str, Sequence[int]] | None = None,
                  target: str | None = None, neuron: str = "if",
                  timesteps: int = 4) -> dict[str, Any]:
    """Build the inspect report (a JSON-ready dict) for a model file or proto. With ``target``
    ('ort', 'loihi', 'nir') it also says what that backend refuses for ``neuron`` at
    ``timesteps``, as compile checks it before calibrating (key ``target_check``)."""
    from snncc.passes.canonicalize import (CanonicalizePass, compiled_output, flatten_static_ifs,
                                           fold_castlike)
    from snncc.passes.support import (HEAD, ISLAND, TIME, conversion_roles, no_activation,
                                      prefix_activations, relu_spellings, unsupported_nodes)
    from snncc.passes.schedule_timesteps import batch_axis_problem
    from snncc.pipeline import Pipeline

    model = ir.load(path_or_proto)
    raw = ir.load(path_or_proto)  # compile checks activations before any rewrite: so do we
    report: dict[str, Any] = {
        "source": "<proto>" if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto),
        "ir_version": model.ir_version,
        "opset": model.opset,
        "inputs": [{"name": t.name, "dtype": str(t.dtype), "shape": _dims(t.shape)}
                   for t in model.graph.inputs],
        "problems": [],
        "onnx_checker": ir.checker_problem(path_or_proto),
    }
    from snncc.driver import _typed

    shapes = _typed({"input_shapes": input_shapes})["input_shapes"]   # SNN-E349 if not ints
    options = CompileOptions(target="qann", allow_analog=True, input_shapes=shapes or {})
    try:
        Pipeline([CanonicalizePass(require_activation=False)], verify="off").run(
            model, CompileContext(options))
        report["canonicalized"] = True
    except (ModelInputError, UnsupportedNodeError) as exc:  # e.g. SNN-E205: listed below
        if exc.codes & FATAL:
            raise
        report["problems"] = [{"code": d.code, "message": d.format()}
                              for d in exc.diagnostics] or [{"code": exc.code,
                                                             "message": str(exc)}]
        report["canonicalized"] = False
        model = raw
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
    relu_spellings(raw.graph)  # as canonicalize does first: LeakyRelu(alpha=0), Max(x, 0),
    flatten_static_ifs(raw)    # Ifs on static shapes
    fold_castlike(raw.graph, guess_bounds=True)   # dynamo's unoptimised ReLU6 bounds
    diags = list(unsupported_nodes(raw.graph, CompileOptions(target="qann"), raw.provenance))
    roles = conversion_roles(graph)
    for node in graph.nodes:
        label = ir.node_label(node)
        role = roles.get(id(node))
        if role == ISLAND and op_info(node.op, node.domain or "").spiking:
            diags.append(Diagnostic(
                "SNN-E244", f"{node.op} has no spiking form and its input carries spikes (SNN "
                "targets; the qann target keeps it, and bit-serial's default window schedule "
                "can run it on the decoded window mean)", pass_name="schedule-timesteps",
                node=label,
                hint="retrain without it, or compile with --allow-analog to keep it as a "
                "non-spiking island (folded schedule)"))
        elif role == TIME and node.inputs:
            shape = node.inputs[0].shape
            problem = batch_axis_problem(node, None if shape is None else len(shape))
            if problem:
                code, what, hint = problem
                diags.append(Diagnostic(code, what + " (SNN targets)",
                                        pass_name="schedule-timesteps", node=label, hint=hint))
    missing = no_activation(graph)
    if missing is not None:
        diags.append(missing)
    compiled = compiled_output(raw)
    if compiled:   # its own decode ops (time in the batch) are no conversion problem, nor are
        report["compiled"] = compiled   # a streaming model's int64 step and state inputs
        diags = []
        report["problems"] = []
    report["unsupported"] = [
        {"node": d.node, "code": d.code, "message": d.message, "hint": d.hint} for d in diags]
    flagged = {d.node for d in diags}  # a node that cannot convert is no head either
    report["output_head"] = [
        {"node": n.name, "op": n.op} for n in graph.nodes
        if roles.get(id(n)) == HEAD and op_info(n.op, n.domain or "").group != LINEAR
        and ir.node_label(n) not in flagged
        and n.op not in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")
        and (n.domain or "") in ORT_DOMAINS]
    report["analog_prefix"] = [] if compiled else prefix_activations(graph)
    if target is not None:
        report["target_check"] = _target_check(
            path_or_proto, shapes or {}, target, neuron, timesteps,
            runs=not compiled and not diags and not report["problems"])
        report["target_check"]["compiled"] = bool(compiled)
    known = [layer["macs"] for layer in layers if layer["macs"] is not None]
    report["macs"] = {"layers": layers, "total": sum(known),
                      "complete": len(known) == len(layers)}
    return report


def _target_check(source, shapes, target: str, neuron: str, timesteps: int, runs: bool
                  ) -> dict[str, Any]:
    """What compile's fail-fast rehearsal (the pipeline on placeholder clips, then the backend's
    precheck) refuses for this target; not run when the ops already cannot convert."""
    from snncc.driver import make_options, rehearse
    from snncc.errors import SnnccError

    options = make_options(target=target, neuron=neuron, timesteps=timesteps,
                           input_shapes=shapes)
    check: dict[str, Any] = {"target": target, "neuron": neuron, "timesteps": timesteps,
                             "checked": runs, "problems": []}
    if not runs:
        return check
    if isinstance(source, onnx.ModelProto):
        source = onnx.ModelProto.FromString(source.SerializeToString())   # the caller's stays
    try:
        rehearse(source, options)
    except SnnccError as exc:   # any refusal of compile's: listed, the report kept (E307 on a
        check["problems"] = [{"node": d.node, "code": d.code, "message": d.message,  # QCFS L)
                              "hint": d.hint} for d in exc.diagnostics] or [
            {"node": None, "code": exc.code, "message": exc.message, "hint": exc.hint}]
    return check


def _shape(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def format_inspect(report: Mapping[str, Any]) -> str:
    """The report as the text ``snncc inspect`` prints."""
    lines = [f"model: {report['source']}",
             f"IR version {report['ir_version']}, opset {report['opset']}", "inputs:"]
    for inp, canon in zip(report["inputs"], report["canonical_inputs"]):
        lines.append(f"  {ir.shown(inp['name'])}: {inp['dtype']} {_shape(inp['shape'])}"
                     f" (canonical {_shape(canon['shape'])})")
    if report.get("onnx_checker"):
        lines.append(f"invalid ONNX: onnx.checker says: {report['onnx_checker']} (ONNX Runtime "
                     "may refuse it too; compile reads it as written)")
    for p in report["problems"]:
        lines.append(f"problem: {p['message']}")
    for group, nodes in report["nodes"].items():
        lines.append(f"{group} ({len(nodes)}):")
        for n in nodes:
            macs = f"  MACs {n['macs']:,}" if n.get("macs") is not None else ""
            lines.append(f"  {ir.shown(n['op']):<20} {ir.shown(n['node']):<40} -> "
                         f"{_shape(n['output_shape'])}{macs}")
    compiled = report.get("compiled")
    if compiled:
        T = compiled["timesteps"] if compiled["timesteps"] is not None else "?"
        per_call = compiled.get("steps_per_call")
        calls = f" ({per_call} steps per call)" if compiled["schedule"] == "streaming" and \
            per_call != 1 else ""
        lines.append(f"already compiled by snncc: schedule {compiled['schedule']}{calls}, "
                     f"T = {T}, {compiled['neuron_ops']} neuron op(s); "
                     "run it with snncc run, or inspect the source ANN to compile again")
    elif report["unsupported"]:
        lines.append(f"cannot convert ({len(report['unsupported'])}):")
        hints = hints_once([(u["hint"], u["node"]) for u in report["unsupported"]])
        for u, hint in zip(report["unsupported"], hints):  # a shared hint once
            where = f" {u['node']}:" if u["node"] else ""
            lines.append(f"  [{u['code']}]{where} {u['message']}. Hint: {hint}")
    elif report["problems"]:
        lines.append("cannot convert: none of the ops (but compile stops on the problem above)")
    else:
        lines.append("cannot convert: none")
    prefix = report.get("analog_prefix") or []
    if prefix:
        lines.append(f"run once on the input, as analog ops, not neurons ({len(prefix)}): "
                     + ", ".join(prefix) + " (exact; the loihi and nir targets refuse them)")
    check = report.get("target_check")
    if check:
        what = f"--target {check['target']} (--neuron {check['neuron']}, -T {check['timesteps']})"
        if check.get("compiled"):
            lines.append(f"{what}: not checked (the model is compiled already)")
        elif not check["checked"]:
            lines.append(f"{what}: not checked (the model does not convert as it is)")
        elif check["problems"]:
            lines.append(f"{what} cannot express ({len(check['problems'])}; the hints name "
                         "compile's options):")
            hints = hints_once([(u["hint"], u["node"]) for u in check["problems"]])
            for u, hint in zip(check["problems"], hints):
                where = f" {u['node']}:" if u["node"] else ""
                lines.append(f"  [{u['code']}]{where} {u['message']}" +
                             (f". Hint: {hint}" if hint else ""))
        else:
            lines.append(f"{what}: nothing refused (compile's check before calibrating)")
    head = report.get("output_head") or []
    if head:
        lines.append("output head (runs once on the decoded SNN output): " + ", ".join(
            f"{h['op']} {h['node']}".rstrip() for h in head))
    macs = report["macs"]
    if compiled:   # its batch holds the T slices of each sample: the figure is per slice
        lines.append(f"total MACs per slice: {macs['total']:,} (the source ANN's per sample; a "
                     "compiled model runs T slices per sample, and compile --report gives its "
                     "SynOps and MACs)")
        return "\n".join(lines)
    if not macs["total"] and not macs["complete"]:   # (a training-mode export read '0')
        lines.append("total MACs per sample: unknown (no layer's shapes are known)")
        return "\n".join(lines)
    note = "" if macs["complete"] else " (some layers have unknown shapes)"
    lines.append(f"total MACs per sample: {macs['total']:,}{note}")
    return "\n".join(lines)
