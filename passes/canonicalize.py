"""canonicalize: bring any ONNX CNN export into the one form the other passes expect.

Input: any model with IR version >= 3 and default-domain opset 7..21 (newer is tried), as loaded
by :func:`snncc.ir.load` (which already rejects missing, truncated and non-SSA files with
SNN-E101/E102/E103; gs drops initializers that old IR-3 exports list as graph inputs).

Output, the canonical graph:

- default-domain opset ``options.opset`` (17), converted with ``onnx.version_converter``
  (:mod:`snncc.passes.opset_down`: Pad and Split of opset 18+, which it cannot take down);
  activations newer than that (Gelu, Mish, Swish) are first decomposed into older ops
  (Gelu: 0.5*x*(1+erf(x/sqrt 2)) or its tanh form; Mish: x*tanh(softplus(x));
  Swish: x*sigmoid(alpha*x));
- every graph input has a float32 type and a static shape except a symbolic batch dim 0
  (the input's own symbol, else ``N``); ``options.input_shapes`` fixes dynamic dims;
- weights computed by constant subgraphs (Constant, ConstantOfShape, arithmetic on
  initializers, Shape->Gather chains over static dims) are folded into initializers;
- no Dropout, no Identity, no Sum: Sum(a, b, c) becomes Add(Add(a, b), c); ``x - c`` and
  ``x / c`` by a float constant become ``x + (-c)`` and ``x * (1/c)`` (the one form the
  backends fold);
- BatchNormalization is kept as a node (fold-batchnorm handles it and its Mul/Add form);
- Reshape / Flatten are batch-agnostic, because later schedules fold time into the batch
  (batch dim becomes T*N): a constant Reshape target whose dim 0 is the export batch B becomes
  -1 (0 when the target already has a -1), e.g. [1, 512] -> [-1, 512]; Flatten(axis=0) with
  B = 1 becomes Flatten(axis=1); a target read from ``Shape(y)`` (the opset < 13 Softmax
  conversion writes ``Reshape(Softmax(Flatten(y)), Shape(y))``) becomes the constant
  ``[0, *y.shape[1:]]`` when y's other dims are static and the sample sizes agree; a
  Resize to constant ``sizes`` [B, C, H', W'] becomes the same resize by ``scales``
  [1, 1, H'/H, W'/W] where float32 and double both give exactly H' and W', else its batch is
  read from its input;
- every tensor has a shape from ONNX shape inference (strict, with data propagation).

Shapes are fixed in this order so that a batch hard-coded by a Reshape never leaks into a folded
Shape: (1) make the batch symbolic, convert, infer; (2) fold constants without folding Shape
nodes; (3) rewrite Dropout/Identity/Sum/Reshape/Flatten; (4) infer again; (5) fold Shape chains.
Conversions and inference run on an exported proto whose large float weights are lifted into
graph inputs (placeholders), so weights are never serialised or copied.

Errors (all problems of a kind collected, raised once):
- ModelInputError SNN-E111 non-float32 graph input, SNN-E112 tensor produced by nothing
  (missing initializer or input), SNN-E113 cycle, SNN-E114 dynamic non-batch dim without
  ``--input-shape``, SNN-E115 ``--input-shape`` names an unknown input, SNN-E116 ``--input-shape``
  conflicts with the model, SNN-E117 opset older than 7, SNN-E118 opset conversion failed,
  SNN-E119 shape inference failed, SNN-E120 a weight holds NaN or Inf, SNN-E121 the model has no
  outputs, SNN-E122 a layer's weight does not fit its input channels (Conv / ConvTranspose
  in-channels x groups, bias or BatchNormalization lengths); several at once: SNN-E110 carrying
  each diagnostic; SNN-E123 the model is already an snncc output (its metadata names a schedule).
- UnsupportedNodeError SNN-E201 (only without ``--allow-analog``): activations with no spiking
  equivalent (see :mod:`snncc.op_classes`; recurrent LSTM/GRU/RNN too); SNN-E202 marks composite
  forms (x*Sigmoid(x), erf-GELU, x*HardSigmoid(x), x*tanh(softplus(x))); SNN-E203 a
  Softmax/LogSoftmax with a spiking layer after it (it is fine in the output head); SNN-E204 the
  model has no activation to convert at all (an SNN with no neurons), checked last.
- SNN-E205 (always an error): an op of a domain ONNX Runtime does not know; SNN-E206 (always an
  error): control flow (If, Loop, Scan).

What converts is decided by :func:`snncc.passes.support.conversion_roles`, the rule this pass,
``snncc inspect`` and schedule-timesteps share; :func:`snncc.passes.support.unsupported_nodes`
lists the nodes this pass refuses.

Declines (the graph is left as it is at that site): DROPOUT_MASK_USED, DROPOUT_TRAINING_MODE,
RESHAPE_MIXES_BATCH (a Reshape that moves data between the batch and other dims),
FLATTEN_MIXES_BATCH.
"""
from __future__ import annotations

import dataclasses

import logging
import math
from collections import Counter
from typing import Callable, Mapping, Sequence

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.errors import Diagnostic, ModelInputError, UnsupportedNodeError
from snncc.op_classes import FUSED_HINT, RECURRENT, TRAINING_HINT
from snncc.passes.base import Decline, Pass, PassResult
from snncc.passes.opset_down import convert_version
from snncc.passes.support import (no_activation, prefix_activations, relu_spellings,
                                  unsupported_nodes)

__all__ = ["CanonicalizePass", "check_model_input", "compiled_output", "flatten_static_ifs",
           "fold_castlike"]

logger = logging.getLogger("snncc.passes.canonicalize")

NAME = "canonicalize"
MIN_OPSET = 7
LIFT_MIN_ELEMENTS = 1024  # float constants at least this big skip serialisation


class CanonicalizePass(Pass):
    """``require_activation=False`` (used by ``snncc inspect``) skips the SNN-E204 check and the
    SNN-E123 refusal of an snncc output (inspect describes one instead)."""

    name = NAME

    def __init__(self, require_activation: bool = True):
        self.require_activation = require_activation

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        options = ctx.options
        compiled = compiled_output(model)
        if compiled and self.require_activation:   # inspect describes it instead
            raise ModelInputError(
                f"{NAME}: the model is already an snncc output (schedule {compiled['schedule']}, "
                f"T = {compiled['timesteps']}): its time axis is folded into the batch",
                code="SNN-E123",
                hint="compile the source ANN again (snncc run runs this model as it is)")
        batch = check_model_input(model.graph, options)
        check_sizes(model.graph)
        relu_forms = relu_spellings(model.graph)
        float16 = _promote_float16(model.graph)
        castlike = fold_castlike(model.graph, guess_bounds=True)
        static_ifs = flatten_static_ifs(model, batch)
        bad = unsupported_nodes(model.graph, options, model.provenance)
        if options.allow_analog:  # analog islands allowed: only what cannot run at all
            bad = [d for d in bad if d.severity == "error"]
        else:
            missing = no_activation(model.graph) if bad and self.require_activation else None
            if missing is not None:  # all at once: fixing the ops above would not be enough
                # and --allow-analog would leave no neuron: no node's hint offers it then
                bad = [dataclasses.replace(d, hint=d.hint.split(", or compile with "
                                                               "--allow-analog")[0])
                       for d in bad] + [missing]
        if bad and all(d.code in ("SNN-E207", "SNN-E204") for d in bad):
            raise UnsupportedNodeError(_quantized_summary(bad), code="SNN-E207",
                                       hint="; ".join(dict.fromkeys(
                                           d.hint for d in bad if d.code == "SNN-E207")))
        if bad and all(d.code == "SNN-E205" for d in bad):
            raise UnsupportedNodeError(
                f"{len(bad)} node(s) of op domains ONNX Runtime does not know", diagnostics=bad,
                code="SNN-E205", hint="replace them with standard ONNX ops")
        if bad and all(d.code in ("SNN-E205", "SNN-E206") for d in bad):
            raise UnsupportedNodeError(
                f"{len(bad)} node(s) cannot be converted", diagnostics=bad, code="SNN-E206",
                hint="export a static graph of standard ONNX ops")
        if bad and all(d.code in ("SNN-E208", "SNN-E204") for d in bad):
            raise UnsupportedNodeError(
                f"the model was exported in training mode: "
                f"{sum(d.code == 'SNN-E208' for d in bad)} node(s) would compute their training "
                "form", diagnostics=bad, code="SNN-E208", hint=TRAINING_HINT)
        if bad:
            nothing = any(d.code == "SNN-E204" for d in bad)   # --allow-analog cannot help then
            raise UnsupportedNodeError(
                _unsupported_summary(bad), diagnostics=bad, code="SNN-E201",
                hint="retrain with ReLU (or ReLU6) activations" + (
                    ": with no ReLU at all, --allow-analog would leave no neuron either"
                    if nothing else ", or compile with --allow-analog"))
        counts: Counter = Counter({"relu_forms_rewritten": relu_forms,
                                   "float16_promoted": float16, "static_if_flattened": static_ifs,
                                   "castlike_folded": castlike})
        declines: list[Decline] = []
        source_opset = model.opset
        if source_opset < MIN_OPSET:
            raise ModelInputError(f"{NAME}: the model uses opset {source_opset}", code="SNN-E117",
                                  hint=f"re-export it with opset {MIN_OPSET} or newer (17 is best)")
        folded_early = 0
        if source_opset > options.opset:
            counts["ops_decomposed"] = _decompose_new_ops(model.graph)
            # constant subgraphs go before the version converter sees them: it has no adapter
            # for some ops it would only have to carry (ConstantOfShape 20 -> 19, in the pads
            # torch exports for nn.ZeroPad2d at its default opset: E118 before)
            folded_early = _fold_constants(model.graph, fold_shapes=False)
        _rebuild(model, options.opset)
        if source_opset != options.opset:
            counts["opset_converted_from"] = source_opset
        _drop_float_casts(model.graph)
        counts["castlike_folded"] += fold_castlike(model.graph)   # types inferred now
        counts["weights_dequantized"] = _fold_dequantize(model.graph)
        counts["constants_folded"] = folded_early + _fold_constants(model.graph, fold_shapes=False)
        _rewrite(model.graph, batch, counts, declines)
        _rebuild(model, options.opset)
        counts["constants_folded"] += _fold_constants(model.graph, fold_shapes=True)
        fixed = counts["reshape_batch_fixed"]
        for node in [n for n in model.graph.nodes if n.op == "Reshape"]:
            # a target that only the shape folding made constant (a legacy LRN export's
            # Reshape to [1, C, H, W]) gets its batch fixed like any other
            _fix_reshape(model.graph, node, batch, counts, [])
        if counts["reshape_batch_fixed"] != fixed:
            _rebuild(model, options.opset)  # the batch dims after it were inferred as 1
        counts["sub_div_by_constant_rewritten"] = _sub_div_to_add_mul(model.graph)
        _check_layers(model.graph)
        if self.require_activation:
            diag = no_activation(model.graph)
            if diag is not None:
                raise UnsupportedNodeError(f"{NAME}: the model has no activation to convert",
                                           diagnostics=[diag], code="SNN-E204")
        prefix = prefix_activations(model.graph)
        if prefix:   # said, not refused: exact, but no neurons (and Loihi / NIR refuse them)
            ctx.notes["analog_prefix"] = prefix
        counts = Counter({k: v for k, v in counts.items() if v})
        logger.debug("%s: %s", NAME, dict(counts))
        return PassResult(modified=True, counts=dict(counts), declines=tuple(declines))


# ----------------------------------------------------------------------------- input checks

def compiled_output(model: ir.Model) -> dict | None:
    """What a model snncc compiled says of itself (its metadata names a schedule), else None.
    A QANN output or a ``snncc finetune`` stage (neuron ops, no schedule) is a source model."""
    schedule = model.metadata.get("snncc.schedule")
    if not schedule:
        return None
    timesteps = model.metadata.get("snncc.timesteps", "")
    # a number, as in the manifest (inspect --json had written "4"); None where it is not one
    per_call = model.metadata.get("snncc.steps_per_call", "1")
    return {"schedule": schedule,
            "timesteps": int(timesteps) if timesteps.strip().isdigit() else None,
            "steps_per_call": int(per_call) if per_call.strip().isdigit() else None,
            "neuron_ops": sum(1 for n in model.graph.nodes if n.domain == ir.SNN_DOMAIN)}


def _diag(code: str, message: str, node: str = "", hint: str = "",
          severity: str = "error") -> Diagnostic:
    return Diagnostic(code, message, pass_name=NAME, node=node, hint=hint, severity=severity)


#: the most elements a node may make from constants alone (256 MiB of float32): a 6 KB model's
#: Range(0, 3e9, 1) had taken ONNX shape inference (data propagation) to 24 GB and a SIGKILL, a
#: ConstantOfShape of 1 GiB inspect to 2.2 GB (a CNN's largest such tensor is a mask or a padding
#: of a few million)
MAX_CONSTANT_ELEMENTS = 2 ** 26


def _constant_size(node: gs.Node) -> float | None:
    """How many elements ``node`` makes from constant inputs (Range, ConstantOfShape, Expand,
    Resize/Upsample and Pad of a constant; Tile at least its repeats' product), else None."""
    try:
        values = [ir.const_value(t) for t in node.inputs]
        if node.op == "Range" and len(values) == 3 and all(v is not None and v.size == 1
                                                            for v in values):
            start, limit, delta = (float(v.reshape(-1)[0]) for v in values)
            return max(math.ceil((limit - start) / delta), 0) if delta else None
        if node.op == "Tile" and len(values) == 2 and values[1] is not None:
            # (a review: Tile(c, [1, 1, 30000, 30000]) had built 9e8 elements, 35 s and GBs)
            base = values[0].size if values[0] is not None else 1
            return base * math.prod(float(r) for r in values[1].reshape(-1))
        if node.op in ("ConstantOfShape", "Expand") and values and values[-1] is not None:
            dims = [float(d) for d in values[-1].reshape(-1)]
            return math.prod(max(d, 1.0) for d in dims) if node.op == "Expand" else \
                math.prod(dims)
        if node.op in ("Resize", "Upsample") and values and values[0] is not None:
            # (a Resize of a 2x2 constant by 20000 had taken a compile to 55 s and 6.8 GB)
            shape = [float(d) for d in values[0].shape]
            sizes = values[3] if node.op == "Resize" and len(values) > 3 else None
            scales = values[2 if node.op == "Resize" else 1] if len(values) > (
                2 if node.op == "Resize" else 1) else None
            if sizes is not None and sizes.size:
                return math.prod(float(d) for d in sizes.reshape(-1))
            if scales is not None and scales.size == len(shape):
                return math.prod(math.floor(d * float(f))
                                 for d, f in zip(shape, scales.reshape(-1)))
        if node.op == "Pad" and values and values[0] is not None:
            pads = values[1] if len(values) > 1 else None
            if pads is None and "pads" in node.attrs:   # opset < 11
                pads = np.asarray(node.attrs["pads"])
            if pads is not None:
                rank, pads = values[0].ndim, [float(p) for p in pads.reshape(-1)]
                axes = values[3] if len(values) > 3 and values[3] is not None else None
                axes = [int(a) % rank for a in axes.reshape(-1)] if axes is not None \
                    else list(range(rank))
                dims = [float(d) for d in values[0].shape]
                for k, a in enumerate(axes):
                    dims[a] += pads[k] + pads[k + len(axes)]
                return math.prod(max(d, 0.0) for d in dims)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    return None


def check_sizes(graph: gs.Graph) -> None:
    """SNN-E125 for nodes that would make tensors over :data:`MAX_CONSTANT_ELEMENTS` elements
    from constants, before shape inference or constant folding make them (listed at once)."""
    diags = []
    for node in graph.nodes:
        size = _constant_size(node)
        if size is not None and size > MAX_CONSTANT_ELEMENTS:
            diags.append(_diag("SNN-E125", f"it would make a tensor of {size:.3g} elements from "
                               f"constants (at most {MAX_CONSTANT_ELEMENTS:.3g})",
                               ir.node_label(node), hint="check the node's inputs: a CNN needs no "
                               "such tensor (a corrupt or hostile export)"))
    if diags:
        raise ModelInputError(f"{NAME}: {len(diags)} node(s) would make tensors too large to "
                              "build", diagnostics=diags, code="SNN-E125")


def check_model_input(graph: gs.Graph, options: CompileOptions) -> int:
    """Check inputs, dangling tensors and cycles; fix input shapes; return the export batch size.

    Graph inputs end up with a symbolic dim 0 (their own symbol, else ``N``) and static other
    dims. All problems are collected and raised as one :class:`ModelInputError`.
    """
    diags = _check_structure(graph) + _check_inputs(graph, options.input_shapes)
    if len(diags) == 1:
        raise ModelInputError(diagnostics=diags, code=diags[0].code,
                              message=f"{NAME}: the model failed an input check")
    if diags:
        raise ModelInputError(diagnostics=diags, code="SNN-E110",
                              message=f"{NAME}: the model failed {len(diags)} input checks")
    batch = None  # the first input with a static batch decides
    for inp in graph.inputs:
        given = options.input_shapes.get(inp.name)
        dims = list(given) if given is not None else list(inp.shape)
        if batch is None and dims and _is_static(dims[0]):
            batch = int(dims[0])
        if dims:
            dims[0] = inp.shape[0] if inp.shape and isinstance(inp.shape[0], str) else "N"
        inp.shape = dims
    return batch or 1


def _check_structure(graph: gs.Graph) -> list[Diagnostic]:
    diags = []
    for inp in graph.inputs:
        if inp.dtype is None or np.dtype(inp.dtype) != np.float32:
            got = "no element type" if inp.dtype is None else f"element type {np.dtype(inp.dtype)}"
            diags.append(_diag("SNN-E111", f"graph input '{inp.name}' has {got}; snncc compiles "
                               "float32 models", hint="export the model with a float32 input "
                               "(cast integer or half-precision inputs in the model's caller)"))
    known = {t.name for t in graph.inputs}
    missing: dict[str, str] = {}
    for node in graph.nodes:
        for t in node.inputs:
            if (t.name and not isinstance(t, gs.Constant) and not t.inputs
                    and t.name not in known):
                missing.setdefault(t.name, ir.node_label(node))
    diags += [_diag("SNN-E112", f"input '{name}' is produced by no node, initializer or graph "
                    "input", node=label, hint="the export dropped a weight or the file is "
                    "incomplete; re-export with the weights included")
              for name, label in missing.items()]
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(graph.nodes)))
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            dag.add_edges_from((i, index[id(c)]) for c in out.outputs if id(c) in index)
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        names = " -> ".join(ir.node_label(graph.nodes[a]) for a, _ in cycle)
        diags.append(_diag("SNN-E113", f"the graph has a cycle: {names}",
                           hint="ONNX graphs must be acyclic; re-export the model"))
    if not graph.outputs:
        diags.append(_diag("SNN-E121", "the model has no outputs, so nothing it computes could "
                           "be kept", hint="re-export the model with its output (the logits) "
                           "declared as a graph output"))
    return diags + _check_finite(graph)


def _check_finite(graph: gs.Graph) -> list[Diagnostic]:
    """SNN-E120 for every float weight (initializer or Constant node) holding NaN or Inf."""
    consts: dict[str, tuple[np.ndarray, str]] = {}
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in consts:
                consts[t.name] = (t.values, ir.node_label(node))
        if node.op == "Constant":
            for key in ("value", "value_float", "value_floats"):
                if key in node.attrs and node.outputs:
                    val = node.attrs[key]
                    consts.setdefault(node.outputs[0].name, (
                        val.values if isinstance(val, gs.Constant) else val, ir.node_label(node)))
    diags = []
    for name, (values, label) in consts.items():
        arr = np.asarray(values)
        if arr.dtype.kind not in "fc" or arr.size == 0:
            continue
        finite = np.isfinite(arr)
        if finite.all():
            continue
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        what = " and ".join(w for w, n in ((f"{nan} NaN", nan), (f"{inf} Inf", inf)) if n)
        diags.append(_diag("SNN-E120", f"weight '{name}' {_fmt(arr.shape)} holds {what} "
                           f"value(s) of {arr.size}", node=label,
                           hint="the model's weights are broken (diverged training or a bad "
                           "export); retrain or re-export it, snncc needs finite weights"))
    for node in graph.nodes:   # a variance below -epsilon: the folded weights had been NaN (a
        if node.op != "BatchNormalization" or len(node.inputs) < 5 or \
                node.attrs.get("training_mode", 0):   # (compile wrote them; training mode
            continue                                  # uses the batch's statistics: E208)
        var = node.inputs[4]
        values = ir.const_value(var)   # an initializer or a Constant node's
        if values is None:
            continue
        eps = float(node.attrs.get("epsilon", 1e-5))
        bad = int((np.asarray(values, np.float64) + eps <= 0).sum())
        if bad:
            diags.append(_diag("SNN-E120", f"BatchNormalization variance '{var.name}' has {bad} "
                               f"value(s) at or below -epsilon ({eps:g}): its scale "
                               "1/sqrt(var + epsilon) is not a number", node=ir.node_label(node),
                               hint="a variance is never negative: the model's statistics are "
                               "broken; retrain or re-export it"))
    return diags


def _is_static(d) -> bool:
    return isinstance(d, (int, np.integer)) and d > 0


def _check_inputs(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]]) -> list[Diagnostic]:
    diags = []
    names = [t.name for t in graph.inputs]
    for name in input_shapes:
        if name not in names:
            diags.append(_diag("SNN-E115", f"--input-shape names '{name}', which is not a graph "
                               "input", hint="graph inputs are: " + ", ".join(names)))
    for inp in graph.inputs:
        given = input_shapes.get(inp.name)
        shape = inp.shape
        if given is not None:
            if shape is not None and len(shape) != len(given):
                diags.append(_diag("SNN-E116", f"--input-shape gives {len(given)} dims for "
                                   f"'{inp.name}', the model has {len(shape)} ({_fmt(shape)})",
                                   hint=f"use --input-shape {inp.name}="
                                   + "x".join(str(d) if _is_static(d) else "1" for d in shape)
                                   + " (sizes of the model's free dims are yours to choose)"))
                continue
            clash = [i for i, (d, g) in enumerate(zip(shape or [], given))
                     if i > 0 and _is_static(d) and d != g]
            # (a size of 2**31 or more: ONNX's protobuf refused it later, an E500)
            if clash or any(not _is_static(g) or g >= 2 ** 31 for g in given):
                diags.append(_diag("SNN-E116", f"--input-shape {_fmt(given)} for '{inp.name}' "
                                   f"does not fit the model's {_fmt(shape)}",
                                   hint="give positive sizes that agree with the model's fixed "
                                   "dims"))
            continue
        if shape is None or any(not _is_static(d) for d in shape[1:]):
            diags.append(_diag("SNN-E114", f"graph input '{inp.name}' has dynamic dims "
                               f"({_fmt(shape)}) besides the batch", hint=_e114_hint(inp)))
    return diags


def _e114_hint(inp: gs.Variable) -> str:
    """The --input-shape to give; a recurrent consumer's sequence axis is not taken for the
    batch (dim 0 of an LSTM/GRU/RNN input is time unless layout=1)."""
    shape = inp.shape

    def size(d, name: str = "size") -> str:
        return str(d) if _is_static(d) else f"<{d if isinstance(d, str) and d else name}>"

    if shape is None:
        return (f"give every dim with --input-shape {inp.name}=1x<dims> (the batch first, "
                "e.g. 1x3x224x224)")
    rnn = next((c for c in inp.outputs if c.op in RECURRENT and not c.attrs.get("layout", 0)
                and c.inputs and c.inputs[0] is inp), None)
    if rnn is not None and len(shape) == 3:
        return (f"'{inp.name}' is the [sequence, batch, features] input of {rnn.op} "
                f"{ir.node_label(rnn)}: dim 0 is the sequence axis, not the batch that snncc "
                f"puts first, and {rnn.op} has no spiking equivalent; snncc converts "
                "feed-forward CNNs (batch first: --input-shape "
                f"{inp.name}=1x{size(shape[1], 'batch')}x{size(shape[2], 'features')} is only "
                "how it would read this input)")
    return f"fix them with --input-shape {inp.name}=" + "x".join(
        ["1", *(size(d) for d in shape[1:])]) + " (dim 0 is the batch)"


def _fmt(shape) -> str:
    return "unknown rank" if shape is None else "x".join(str(d) for d in shape)


# ----------------------------------------------------------------------------- rebuild helper

def _rebuild(model: ir.Model, opset: int) -> None:
    """Convert to ``opset`` if needed and infer every shape, rebuilding ``model.graph`` in place.

    Large float constants are swapped for same-named graph inputs before export and put back
    after import, so neither the converter nor shape inference sees (or copies) the weights.
    Shapes of intermediate tensors are dropped first so stale ones cannot override inference.
    """
    graph = model.graph
    lifted: dict[str, gs.Constant] = {}
    placeholders: dict[str, gs.Variable] = {}
    graph_outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant):
                if (id(t) not in graph_outputs and np.dtype(t.dtype).kind == "f"
                        and math.prod(t.shape) >= LIFT_MIN_ELEMENTS):
                    if t.name not in placeholders:
                        lifted[t.name] = t
                        placeholders[t.name] = gs.Variable(t.name, dtype=t.dtype,
                                                           shape=list(t.shape))
                    node.inputs[i] = placeholders[t.name]
        for out in node.outputs:
            if isinstance(out, gs.Variable):
                out.shape = None
    graph.inputs.extend(placeholders.values())
    proto = ir.to_proto(model)
    if model.opset != opset:
        proto = convert_version(proto, opset, NAME)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, or RuntimeError from the C++ side
        raise ModelInputError(f"{NAME}: shape inference failed: {exc}", code="SNN-E119",
                              hint="check --input-shape and run onnx.checker on the model"
                              ) from exc
    new = gs.import_onnx(proto)
    for node in new.nodes:
        for i, t in enumerate(node.inputs):
            const = lifted.get(t.name)
            if const is not None:
                node.inputs[i] = const
    new.inputs = [t for t in new.inputs if t.name not in lifted]
    model.graph = new
    model.opset = opset


# ----------------------------------------------------------------------------- rewrites

def fold_castlike(graph: gs.Graph, *, guess_bounds: bool = False) -> int:
    """``CastLike(c, x)`` of a constant ``c`` becomes the constant ``c`` in ``x``'s type; with
    ``guess_bounds``, before types are inferred, float32 where ``x``'s type is unknown, ``c`` is a
    float and a Clip's bound is all it feeds (float16 is promoted before; a -1 cast for a
    Reshape's shape had become a float). torch's
    dynamo exporter with ``optimize=False`` writes ReLU6 as ``Clip(x, CastLike(0, x),
    CastLike(6, x))`` and a bias-free conv's bias as ``Expand(CastLike(0, x), Shape(W))``: the
    clip had no constant bounds (E204) and the CastLike read spikes (E244). Returns how many."""
    done = 0
    for node in graph.nodes:
        if node.op != "CastLike" or node.domain not in (None, "", "ai.onnx") or \
                len(node.inputs) != 2 or not node.outputs:
            continue
        value = ir.const_value(node.inputs[0])
        dtype = node.inputs[1].dtype
        bound = guess_bounds and all(c.op == "Clip" and c.inputs[0] is not node.outputs[0]
                                     for c in node.outputs[0].outputs)
        if value is None or (dtype is None and not (bound and np.asarray(value).dtype.kind
                                                     == "f")):
            continue
        dtype = np.float32 if dtype is None else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
            dtype) if isinstance(dtype, int) else dtype)
        out = node.outputs[0]
        ir.replace_all_uses(graph, out, ir.new_const(graph, out.name + "_value",
                                                     np.asarray(value).astype(dtype), None))
        node.inputs.clear()
        node.outputs.clear()
        done += 1
    if done:
        graph.nodes = [n for n in graph.nodes if n.outputs]
    return done


def flatten_static_ifs(model: ir.Model, export_batch: int | None = None) -> int:
    """``If`` nodes whose condition depends on shapes only (torch's legacy export of
    ``nn.LocalResponseNorm`` tests the input's rank) become the branch they take: the conditions
    are computed by ONNX Runtime on zero inputs of the model's shape, at batch 1 and 2 (they must
    agree: a condition on the batch size is not static), then gs flattens the taken branch into
    the graph. Ifs whose condition reads data stay (SNN-E206). Returns how many went;
    ``snncc inspect`` runs it too, so both see the same graph."""
    graph = model.graph
    ifs = [n for n in graph.nodes if n.op == "If" and n.inputs and _shape_only(n.inputs[0])]
    shapes = [[d if isinstance(d, int) else None for d in (t.shape or [])][1:]
              for t in graph.inputs]
    if not ifs or any(not s or None in s for s in shapes):
        return 0
    import onnxruntime as ort

    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n.inputs[0].name,
                                                                 onnx.TensorProto.BOOL, None)
                              for n in ifs)
    options, quiet = ort.SessionOptions(), ort.RunOptions()
    options.log_severity_level = quiet.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # (its logs)

    def conditions(batch: int) -> list:
        return session.run(None, {t.name: np.zeros([batch, *s], np.dtype(t.dtype))
                                  for t, s in zip(graph.inputs, shapes)}, quiet)

    try:
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = [conditions(1)]
    except Exception as exc:  # leave the Ifs to the SNN-E206 report
        logger.debug("%s: the If conditions could not be computed: %s", NAME, exc)
        return 0
    try:
        values.append(conditions(2))
    except Exception:  # an export with its batch fixed at 1 runs at batch 1 only
        if export_batch != 1 and any(not (t.shape and t.shape[0] == 1) for t in graph.inputs):
            return 0
        values.append(values[0])
    done = 0
    for node, one, two in zip(ifs, *values):
        if np.asarray(one).size == 1 and np.array_equal(one, two):
            node.inputs[0] = gs.Constant(ir.unique_name(graph, f"{node.inputs[0].name}/static"),
                                         np.asarray(one, bool).reshape(np.asarray(one).shape))
            done += 1
    if done:
        graph.fold_constants(fold_shapes=False, flatten_subgraphs=True, recurse_subgraphs=False,
                             recurse_functions=False)
        graph.cleanup()
    return done - sum(n.op == "If" and isinstance(n.inputs[0], gs.Constant) for n in graph.nodes)


def _shape_only(tensor: gs.Tensor, depth: int = 64) -> bool:
    """Computed from constants and the shapes of tensors only (every path back to a graph input
    passes a Shape or Size node)."""
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or isinstance(t, gs.Constant):
            continue
        seen.add(id(t))
        prod = ir.producer(t)
        if prod is not None and prod.op in ("Shape", "Size"):
            continue
        if prod is None or len(seen) > depth:
            return False  # a graph input reached without a Shape (or too far to tell)
        stack.extend(prod.inputs)
    return True


def _unsupported_summary(diags: Sequence[Diagnostic]) -> str:
    """One line that counts what the list below it holds."""
    nodes = sum(d.code not in ("SNN-E204", "SNN-E208") for d in diags)
    training = sum(d.code == "SNN-E208" for d in diags)
    parts = ([f"{nodes} node(s) have no spiking equivalent"] if nodes else []) + \
        ([f"{training} node(s) are in training mode"] if training else [])
    summary = ", ".join(parts)
    if any(d.code == "SNN-E204" for d in diags):
        summary += ", and nothing would become a neuron"
    return summary


def _quantized_summary(diags: Sequence[Diagnostic]) -> str:
    """One line for a quantized or ORT-fused model: its op kinds, counted, and a few nodes."""
    mine = [d for d in diags if d.code == "SNN-E207"]
    ops = Counter(d.message.split(" ")[0] for d in mine)
    kinds = {"an ONNX Runtime-optimized" if d.hint == FUSED_HINT else "a quantized" for d in mine}
    return (f"{NAME}: this is {' and '.join(sorted(kinds)).replace(' and an', ' and')} model: "
            + ", ".join(f"{op} x{k}" for op, k in ops.most_common())
            + f" (e.g. {', '.join(d.node for d in mine[:3])})")


def _promote_float16(graph: gs.Graph) -> int:
    """A model that computes in float16 behind float32 inputs and outputs (onnxconverter's
    ``keep_io_types``) is compiled as its float32 form: float16 constants, tensors and casts
    become float32 (calibration taps and the neuron ops are float32; a float16 graph output, too).
    Returns the number of float16 tensors and casts changed."""
    f16, f32 = np.dtype(np.float16), np.dtype(np.float32)
    done = 0

    def promote(t) -> None:
        nonlocal done
        if isinstance(t, gs.Constant) and np.asarray(t.values).dtype == f16:
            t.values = np.asarray(t.values).astype(f32)
            done += 1
        elif isinstance(t, gs.Variable) and t.dtype is not None and np.dtype(t.dtype) == f16:
            t.dtype = f32
            done += 1

    for t in graph.tensors().values():
        promote(t)
    for node in graph.nodes:
        if node.op == "Cast" and node.attrs.get("to") == onnx.TensorProto.FLOAT16:
            node.attrs["to"] = onnx.TensorProto.FLOAT
            done += 1
        for value in node.attrs.values():  # Constant / ConstantOfShape values
            if isinstance(value, gs.Constant):
                promote(value)
    return done


def _drop_float_casts(graph: gs.Graph) -> None:
    """Cast to float32 of a float32 tensor (left by :func:`_promote_float16`, or exported so)
    becomes Identity, which the rewrites then remove. Needs inferred types."""
    for node in graph.nodes:
        x = node.inputs[0] if node.op == "Cast" and node.inputs else None
        if x is not None and node.attrs.get("to") == onnx.TensorProto.FLOAT and \
                x.dtype is not None and np.dtype(x.dtype) == np.float32:
            node.op = "Identity"
            node.attrs.clear()


def _fold_dequantize(graph: gs.Graph) -> int:
    """``DequantizeLinear`` of constants (int8 weights with a float scale: weight-only quantized
    exports) becomes the float constant ``(x - zero_point) * scale``, per tensor or along
    ``axis``. gs's constant folding leaves Q/DQ nodes alone, so the weights stayed non-constant
    and fold-batchnorm failed (an internal E500). Blocked scales (opset 21 ``block_size``) stay."""
    done = 0
    for node in graph.nodes:
        if node.op != "DequantizeLinear" or node.domain not in (None, "", "ai.onnx") or \
                not node.inputs or node.attrs.get("block_size", 0):
            continue
        values = [ir.const_value(t) if t.name else None for t in node.inputs]
        if any(v is None for v, t in zip(values, node.inputs) if t.name) or len(values) < 2:
            continue  # initializers or Constant nodes only
        x = values[0]
        scale = values[1].astype(np.float32)
        zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros((), x.dtype)
        if x.dtype.kind not in "iu" or scale.ndim > 1:
            continue
        axis = node.attrs.get("axis", 1) % max(x.ndim, 1)
        shape = [1] * x.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        value = (x.astype(np.int64) - zero.astype(np.int64).reshape(
            shape if zero.size > 1 else ())).astype(np.float32) * scale.reshape(
            shape if scale.size > 1 else ())
        out = node.outputs[0]
        const = gs.Constant(ir.unique_name(graph, f"{out.name}/float"), value.astype(np.float32))
        for reader in list(out.outputs):
            for i, t in enumerate(reader.inputs):
                if t is out:
                    reader.inputs[i] = const
        if out in graph.outputs:
            continue
        node.inputs.clear()
        node.outputs.clear()
        done += 1
    graph.nodes = [n for n in graph.nodes if n.outputs]
    return done


def _fold_constants(graph: gs.Graph, *, fold_shapes: bool) -> int:
    """gs constant folding (evaluated with ORT); drops the nodes it made dead, returns how many.

    Folding turns the folded outputs into constants (and may detach them from their producer);
    the producers must go before the next export or their outputs would also be initializers.
    """
    # never into the model's functions: snncc's neuron functions (a compiled model given to
    # inspect) hold string Constants that gs cannot import, and it warned on stdout
    graph.fold_constants(fold_shapes=fold_shapes, recurse_subgraphs=False,
                         recurse_functions=False)
    keep, dead = [], 0
    for node in graph.nodes:
        if all(isinstance(t, gs.Constant) for t in node.outputs):  # gs may also clear them
            node.inputs.clear()
            node.outputs.clear()
            dead += 1
        else:
            keep.append(node)
    graph.nodes = keep
    return dead


def _rewrite(graph: gs.Graph, batch: int, counts: Counter, declines: list[Decline]) -> None:
    """Remove Dropout/Identity and redundant ReLUs, expand Sum, turn a spatial ReduceMean into
    GlobalAveragePool, fold a zero Pad into the Conv after it, make Reshape/Flatten
    batch-agnostic, undo a Transpose before Gemm(transA=1); keeps order."""
    nodes: list[gs.Node] = []
    for node in graph.nodes:
        if node.op == "Identity":
            ir.bypass_node(graph, node)
            counts["identity_removed"] += not node.outputs
        elif _redundant_relu(graph, node):
            ir.bypass_node(graph, node)  # Relu(Relu(x)) is Relu(x): one neuron layer, not two
            counts["redundant_relu_removed"] += not node.outputs
        elif node.op == "Dropout":
            reason = _dropout_blocker(graph, node)
            if reason:
                declines.append(Decline(ir.node_label(node), *reason))
            else:
                ir.bypass_node(graph, node)
                counts["dropout_removed"] += not node.outputs
        elif node.op == "Sum":
            nodes.extend(_sum_to_adds(graph, node))
            counts["sum_rewritten"] += 1
        elif node.op == "ReduceMean" and _spatial_mean(node):
            nodes.extend(_mean_to_global_pool(graph, node))
            counts["spatial_mean_to_global_pool"] += 1
        elif node.op in ("Conv", "AveragePool", "MaxPool") and _explicit_auto_pad(node):
            counts["auto_pad_made_explicit"] += 1
        elif node.op == "Pad" and node.outputs[0] not in graph.outputs and _pad_into_conv(node):
            counts["pad_folded"] += 1
        elif node.op == "Reshape":
            _fix_reshape(graph, node, batch, counts, declines)
        elif node.op == "Flatten":
            _fix_flatten(node, batch, counts, declines)
        elif node.op == "Resize":
            nodes.extend(_fix_resize_sizes(graph, node, batch, counts))
        elif node.op == "Gemm" and _untranspose_a(graph, node):
            counts["gemm_transpose_folded"] += 1
        if node.outputs:
            nodes.append(node)
    graph.nodes = [n for n in nodes if n.outputs]   # a Transpose _untranspose_a emptied


def _untranspose_a(graph: gs.Graph, node: gs.Node) -> bool:
    """``Gemm(Transpose(x, perm=[1, 0]), B, transA=1)`` is ``Gemm(x, B)``: the same values,
    without a Transpose across the batch axis (which the folded schedule refuses, SNN-E242, for
    a graph whose Gemm was only written the other way round). The Transpose goes when nothing
    else reads it. Returns whether it rewrote the node."""
    if not node.attrs.get("transA", 0) or not node.inputs:
        return False
    a = node.inputs[0]
    prod = ir.producer(a)
    if prod is None or prod.op != "Transpose" or \
            list(prod.attrs.get("perm", [1, 0])) != [1, 0] or len(prod.inputs) != 1:
        return False
    node.inputs[0] = prod.inputs[0]
    node.attrs["transA"] = 0
    if not a.outputs and a not in graph.outputs:
        prod.inputs.clear()
        prod.outputs.clear()
    return True


def _explicit_auto_pad(node: gs.Node) -> bool:
    """``auto_pad`` SAME_UPPER / SAME_LOWER / VALID (torch's ``padding='same'``) as the explicit
    ``pads`` ONNX defines for it, from the input's static spatial size: ``out = ceil(in /
    stride)``, total padding ``(out - 1) * stride + (k - 1) * dilation + 1 - in``, its odd unit
    at the end (UPPER) or the start (LOWER). The same values; a form the Loihi and NIR backends
    and the SynOp count take (they had refused it). Returns whether it rewrote the node."""
    mode = node.attrs.get("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", "") or node.attrs.get("ceil_mode", 0):
        return False
    shape = node.inputs[0].shape
    if node.op == "Conv":
        w = node.inputs[1].shape if len(node.inputs) > 1 else None
        kernel = list(node.attrs.get("kernel_shape", w[2:] if w is not None else []))
    else:
        kernel = list(node.attrs.get("kernel_shape", []))
    n = len(kernel)
    if shape is None or len(shape) != n + 2 or not n or \
            not all(isinstance(d, int) and d > 0 for d in list(shape[2:]) + kernel):
        return False
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    begin, end = [0] * n, [0] * n
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        for a in range(n):
            size = int(shape[2 + a])
            out = -(-size // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size)
            small = total // 2
            begin[a], end[a] = (small, total - small) if mode == "SAME_UPPER" \
                else (total - small, small)
    elif mode != "VALID":
        return False
    node.attrs["pads"] = begin + end
    del node.attrs["auto_pad"]
    return True


def _pad_into_conv(node: gs.Node) -> bool:
    """A zero ``Pad`` of the spatial axes read only by a Conv becomes that Conv's own padding
    (torch's ``F.pad`` / ``ZeroPad2d`` before a conv): the same values, one op less, and a form
    the Loihi and NIR backends (and the SynOp count) take. Also before an AveragePool (which
    then counts the padding) and before a MaxPool of non-negative values (a ReLU's: a zero
    beside them changes no maximum). Returns whether it was folded."""
    if len(node.inputs) < 2 or node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return False
    pads = ir.const_value(node.inputs[1])
    value = ir.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name \
        else np.zeros(1)
    if pads is None or value is None or np.any(np.asarray(value) != 0) or \
            (len(node.inputs) > 3 and node.inputs[3].name):
        return False
    pads = np.asarray(pads, np.int64).ravel()
    rank = len(pads) // 2
    y = node.outputs[0]
    conv = y.outputs[0] if len(y.outputs) == 1 else None
    if rank < 3 or np.any(pads < 0) or np.any(pads[[0, 1, rank, rank + 1]] != 0) or \
            conv is None or conv.inputs[0] is not y or \
            conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return False
    spatial = rank - 2
    old = list(conv.attrs.get("pads", [0] * (2 * spatial)))
    new = [int(old[i] + pads[2 + i]) for i in range(spatial)] + \
        [int(old[spatial + i] + pads[rank + 2 + i]) for i in range(spatial)]
    if conv.op in ("MaxPool", "AveragePool"):
        kernel = list(conv.attrs.get("kernel_shape", []))
        if conv.attrs.get("ceil_mode", 0) or len(conv.outputs) > 1 or \
                any(d != 1 for d in conv.attrs.get("dilations", [1])) or \
                len(kernel) != spatial or any(p >= k for p, k in zip(new, 2 * kernel)):
            # indices would count other positions; a dilated window may hold only padding,
            # whose max is then -FLT_MAX instead of 0; ONNX pools take pads below the kernel
            return False
        if conv.op == "MaxPool" and not _non_negative(node.inputs[0]):
            return False  # zeros beside negative values would change the maximum
        if conv.op == "AveragePool":
            if any(old) and not conv.attrs.get("count_include_pad", 0):
                return False
            conv.attrs["count_include_pad"] = 1  # the padded zeros count, as they did
    elif conv.op != "Conv":
        return False
    conv.attrs["pads"] = new
    conv.inputs[0] = node.inputs[0]
    node.inputs.clear()
    node.outputs.clear()
    return True


def _sub_div_to_add_mul(graph: gs.Graph) -> int:
    """``x - c`` / ``x / c`` by a float constant on the data path become ``x + (-c)`` /
    ``x * (1/c)``, the one form the backends fold. Runs after the last constant fold; a Div fed
    by shape arithmetic (``Shape`` upstream) keeps its exact division (``82 * (1/41)`` floors to
    1). A constant shared by several nodes gets one negated / inverted copy; a rewritten node is
    renamed ``NAME/as_Add`` (``/as_Mul``), so that a later refusal names what the user wrote."""
    made: dict[tuple[int, str], gs.Constant] = {}
    names = {t for t in ir.tensor_map(graph)}
    node_names = {n.name for n in graph.nodes}
    count = 0
    for node in graph.nodes:
        if node.op not in ("Sub", "Div") or not _by_constant(node) or \
                _from_shape(node.inputs[0]):
            continue
        src = node.inputs[1]
        key = (id(src), node.op)
        if key not in made:
            c = np.asarray(src.values)
            name = f"{src.name}_{'neg' if node.op == 'Sub' else 'inv'}"
            while name in names:
                name += "_"
            names.add(name)
            made[key] = gs.Constant(name, np.asarray(-c if node.op == "Sub" else 1 / c,
                                                     dtype=c.dtype))
        node.inputs[1] = made[key]
        node.op = "Add" if node.op == "Sub" else "Mul"
        if node.name:  # a later message names the user's node and what it became
            name = f"{node.name}/as_{node.op}"
            while name in node_names:
                name += "_"
            node_names.add(name)
            node.name = name
        count += 1
    return count


def _by_constant(node: gs.Node) -> bool:
    """``x - c`` or ``x / c`` with ``c`` a float constant, finite, and for Div with a finite
    ``1/c`` (no zero, no subnormal)."""
    if len(node.inputs) != 2 or isinstance(node.inputs[0], gs.Constant) or \
            not isinstance(node.inputs[1], gs.Constant):
        return False
    c = np.asarray(node.inputs[1].values)
    if c.dtype.kind != "f" or not np.all(np.isfinite(c)):
        return False
    if node.op == "Div":
        with np.errstate(divide="ignore", over="ignore"):
            return bool(np.all(c != 0) and np.all(np.isfinite(1 / c)))
    return True


def _from_shape(tensor: gs.Tensor, depth: int = 16) -> bool:
    """Shape arithmetic: a ``Shape`` lies upstream of ``tensor`` (within ``depth`` nodes)."""
    stack, seen = [(tensor, 0)], set()
    while stack:
        t, d = stack.pop()
        prod = ir.producer(t)
        if prod is None or id(prod) in seen or d > depth:
            continue
        seen.add(id(prod))
        if prod.op == "Shape":
            return True
        stack.extend((i, d + 1) for i in prod.inputs if not isinstance(i, gs.Constant))
    return False


def _non_negative(tensor: gs.Tensor) -> bool:
    """Produced by a Relu, or by a Clip whose constant lower bound is >= 0."""
    prod = ir.producer(tensor)
    return prod is not None and (prod.op == "Relu" or _clips_at_zero(prod))


def _clips_at_zero(node: gs.Node) -> bool:
    """A Clip whose constant lower bound is >= 0 (so a Relu before it changes nothing)."""
    if node.op != "Clip":
        return False
    if len(node.inputs) > 1 and node.inputs[1].name:  # opset >= 11: min is an input
        low = ir.const_value(node.inputs[1])
        return low is not None and low.size == 1 and float(low.reshape(())) >= 0
    return float(node.attrs.get("min", -np.inf)) >= 0


def _redundant_relu(graph: gs.Graph, node: gs.Node) -> bool:
    """Relu(Relu(x)), Relu(Clip(x, 0, b)), or a Relu read only by a Clip(·, 0, b)."""
    if node.op != "Relu":
        return False
    out = node.outputs[0]
    return _non_negative(node.inputs[0]) or (
        out not in graph.outputs and len(out.outputs) == 1 and _clips_at_zero(out.outputs[0])
        and out.outputs[0].inputs[0] is out)


def _dropout_blocker(graph: gs.Graph, node: gs.Node) -> tuple[str, str] | None:
    if len(node.outputs) > 1 and (node.outputs[1].outputs or node.outputs[1] in graph.outputs):
        return "DROPOUT_MASK_USED", "the dropout mask is consumed"
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = ir.const_value(node.inputs[2])
        if mode is None or bool(mode):
            return "DROPOUT_TRAINING_MODE", "training_mode is true or not a constant"
    return None


def _sum_to_adds(graph: gs.Graph, node: gs.Node) -> list[gs.Node]:
    """Sum(a, b, c, ...) -> Add(Add(a, b), c) ...; a one-input Sum is bypassed."""
    if len(node.inputs) == 1:
        ir.bypass_node(graph, node)
        return []
    terms, out = list(node.inputs), node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    adds: list[gs.Node] = []
    acc = terms[0]
    for k, term in enumerate(terms[1:], start=1):
        res = out if k == len(terms) - 1 else gs.Variable(
            ir.unique_name(graph, f"{NAME}/sum_partial"), dtype=out.dtype)
        adds.append(gs.Node("Add", ir.unique_name(graph, f"{NAME}/sum_add"),
                            inputs=[acc, term], outputs=[res]))
        acc = res
    return adds


def _spatial_mean(node: gs.Node) -> bool:
    """ReduceMean over both spatial axes of a 4-D map (PyTorch's ``x.mean((2, 3))`` idiom for
    global average pooling), axes as an attribute (opset < 18) or a constant input."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 4:
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = ir.const_value(node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]


def _mean_to_global_pool(graph: gs.Graph, node: gs.Node) -> list[gs.Node]:
    """ReduceMean(x, axes=[2, 3]) -> GlobalAveragePool (then Flatten when keepdims=0), which
    every target maps (Loihi and NIR have no ReduceMean)."""
    x, out = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    if int(node.attrs.get("keepdims", 1)):
        return [gs.Node("GlobalAveragePool", ir.unique_name(graph, f"{NAME}/mean_pool"),
                        inputs=[x], outputs=[out])]
    pooled = gs.Variable(ir.unique_name(graph, f"{NAME}/mean_pooled"), dtype=out.dtype)
    return [gs.Node("GlobalAveragePool", ir.unique_name(graph, f"{NAME}/mean_pool"),
                    inputs=[x], outputs=[pooled]),
            gs.Node("Flatten", ir.unique_name(graph, f"{NAME}/mean_flatten"), attrs={"axis": 1},
                    inputs=[pooled], outputs=[out])]


def _per_sample(shape) -> int | None:
    if shape is None or not all(_is_static(d) for d in shape[1:]):
        return None
    return math.prod(int(d) for d in shape[1:])


def _is_batch_dim(d, batch: int) -> bool:
    return isinstance(d, str) or d is None or d == batch


def _fix_resize_sizes(graph: gs.Graph, node: gs.Node, batch: int, counts: Counter
                      ) -> list[gs.Node]:
    """A constant Resize ``sizes`` [B, C, H', W'] names the export batch, which a folded
    schedule's T*N rows then contradict (ONNX Runtime refuses the model). Where ``scales``
    [1, 1, H'/H, W'/W] give exactly H' and W' both in float32 (ONNX Runtime's floor(H * scale))
    and in double (ONNX shape inference's), e.g. x2 or 4 -> 6, the resize is written with
    them (a constant the SynOp count reads); an uneven ratio such as 5 -> 7 keeps its sizes,
    with the batch read from the input (Shape, the nodes returned to insert before it)."""
    sizes = ir.const_value(node.inputs[3]) if len(node.inputs) > 3 else None
    data = node.inputs[0].shape
    if sizes is None or sizes.size != 4 or not data or len(data) != 4 or \
            not all(_is_static(d) for d in data[1:]) or not _is_batch_dim(data[0], batch) or \
            int(sizes[0]) not in (batch, 1) or int(sizes[1]) != int(data[1]) or \
            any(k in node.attrs for k in ("axes", "keep_aspect_ratio_policy", "antialias")):
        return []   # (opset 18+ forms: sizes are not plain per-axis targets there)
    x, roi = node.inputs[0], node.inputs[1]
    scales = np.array([1, 1, sizes[2] / data[2], sizes[3] / data[3]], dtype=np.float32)
    if all(int(np.floor(np.float32(d) * f)) == int(n) and math.floor(float(d) * float(f)) == int(n)
           for d, f, n in zip(data[2:], scales[2:], sizes[2:])):
        node.inputs.clear()
        node.inputs.extend([x, roi, ir.new_const(graph, f"{NAME}/resize_scales", scales)])
        counts["resize_sizes_to_scales"] += 1
        return []
    first = gs.Variable(ir.unique_name(graph, f"{NAME}/resize_batch"), dtype=np.int64, shape=[1])
    dynamic = gs.Variable(ir.unique_name(graph, f"{NAME}/resize_sizes"), dtype=np.int64,
                          shape=[4])
    rest = ir.new_const(graph, f"{NAME}/resize_sizes_chw", sizes[1:], dtype=np.int64)
    made = [gs.Node("Shape", ir.unique_name(graph, f"{NAME}/resize_shape"),
                    attrs={"start": 0, "end": 1}, inputs=[x], outputs=[first]),
            gs.Node("Concat", ir.unique_name(graph, f"{NAME}/resize_concat"), attrs={"axis": 0},
                    inputs=[first, rest], outputs=[dynamic])]
    node.inputs[3] = dynamic
    counts["resize_sizes_batch_read"] += 1
    return made


def _fix_reshape(graph: gs.Graph, node: gs.Node, batch: int, counts: Counter,
                 declines: list[Decline]) -> None:
    """Constant target on batch-major data: dim 0 = export batch -> -1 (0 beside a -1).

    A target that does not keep every sample apart (e.g. [4, 64] or [-1, 128] on [N, 256]) is
    declined: no rewrite makes it batch-agnostic.
    """
    target = ir.const_value(node.inputs[1])
    data = node.inputs[0].shape
    if target is None:
        _fix_reshape_to_shape(graph, node, batch, counts)
        return
    if node.attrs.get("allowzero", 0) and not np.any(np.asarray(target) == 0):
        node.attrs["allowzero"] = 0  # no 0 in the target: the flag changes nothing (torch's
        # default exporter writes allowzero=1 on every view), and the rewrite below may use 0
    if (target is None or target.ndim != 1 or target.size == 0 or not data
            or not _is_batch_dim(data[0], batch) or node.attrs.get("allowzero", 0)):
        return
    per_sample = _per_sample(data)
    rest = target[1:]
    if per_sample is None and -1 not in rest:
        return  # dynamic dims: cannot judge
    keeps_samples = -1 in rest or math.prod(int(d) for d in rest) == per_sample
    if keeps_samples and target[0] in (-1, 0):
        return
    if keeps_samples and target[0] == batch:
        fixed = np.concatenate([[0 if -1 in rest else -1], rest])
        node.inputs[1] = ir.new_const(graph, f"{NAME}/reshape_shape", fixed, dtype=np.int64)
        counts["reshape_batch_fixed"] += 1
        return
    declines.append(Decline(ir.node_label(node), "RESHAPE_MIXES_BATCH",
                            f"target {target.tolist()} moves data between the samples of the "
                            f"batch (input {_fmt(data)})"))


_BATCH = "batch"  # the batch dimension in a shape computed by _shape_value


def _fix_reshape_to_shape(graph: gs.Graph, node: gs.Node, batch: int, counts: Counter) -> None:
    """A target computed from shapes -> a constant one, when it keeps every sample apart.

    Reshape(x, Shape(y)) (the opset-9 Softmax conversion) and PyTorch's
    ``x.view(x.size(0), -1)`` (Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) become
    Reshape(x, [0, ...]): the same result for every batch size, and no Shape of a spike train
    that would carry the folded T*N rows (backends without Shape ops can then lower it).
    """
    dims = _shape_value(node.inputs[1], batch)
    data = node.inputs[0].shape
    if not dims or not data or not _is_batch_dim(data[0], batch) or dims[0] != _BATCH or \
            _BATCH in dims[1:]:
        return
    rest = [int(d) for d in dims[1:]]
    if node.attrs.get("allowzero", 0):
        if 0 in rest:
            return
        node.attrs["allowzero"] = 0  # no literal 0: the flag changes nothing
    per_sample = _per_sample(data)
    if any(d < -1 for d in rest) or rest.count(-1) > 1 or per_sample is None or (
            -1 not in rest and math.prod(rest) != per_sample):
        return
    target = np.array([0, *rest], dtype=np.int64)
    node.inputs[1] = ir.new_const(graph, f"{NAME}/reshape_shape", target, dtype=np.int64)
    counts["reshape_shape_fixed"] += 1


def _shape_value(tensor: gs.Tensor, batch: int, depth: int = 0) -> list | None:
    """The value of a 1-D int shape tensor built from constants and Shape ops, with
    :data:`_BATCH` for the batch dimension of a batch-major tensor; None when it depends on
    anything else (Shape/Gather/Unsqueeze/Concat/Slice/Squeeze/Cast/Mul only)."""
    const = ir.const_value(tensor)
    if const is not None:
        return [int(v) for v in np.asarray(const).reshape(-1)] \
            if np.asarray(const).dtype.kind in "iu" else None
    prod = ir.producer(tensor)
    if prod is None or depth > 16:
        return None
    op, ins = prod.op, prod.inputs

    def arg(i: int) -> list | None:
        return _shape_value(ins[i], batch, depth + 1) if len(ins) > i and ins[i].name else None

    if op == "Shape":
        shape = ins[0].shape
        if not shape:
            return None
        dims = [_BATCH if i == 0 and _is_batch_dim(d, batch) else d for i, d in enumerate(shape)]
        dims = dims[prod.attrs.get("start", 0):prod.attrs.get("end", len(dims))]
        return dims if all(d == _BATCH or _is_static(d) for d in dims) else None
    if op == "Cast":
        return arg(0)
    if op == "Concat" and prod.attrs.get("axis") in (0, -1):
        parts = [_shape_value(t, batch, depth + 1) for t in ins]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]
    if op == "Gather" and prod.attrs.get("axis", 0) == 0:
        data, index = arg(0), ir.const_value(ins[1])
        if data is None or index is None or index.dtype.kind not in "iu":
            return None
        try:
            return [data[int(i)] for i in np.asarray(index).reshape(-1)]
        except IndexError:
            return None
    if op in ("Unsqueeze", "Squeeze"):  # on a scalar or 1-element value: the same list
        return arg(0)
    if op == "Slice":
        data, starts, ends = arg(0), arg(1), arg(2)
        axes, steps = (arg(3) if len(ins) > 3 else None), (arg(4) if len(ins) > 4 else None)
        if data is None or starts is None or ends is None or axes not in (None, [0]) or \
                steps not in (None, [1]) or _BATCH in starts + ends:
            return None
        return data[starts[0]:ends[0]]
    if op == "Mul":
        a, b = arg(0), arg(1)
        if a is None or b is None or _BATCH in a + b or len(a) != len(b):
            return None
        return [int(x) * int(y) for x, y in zip(a, b)]
    return None


def _check_layers(graph: gs.Graph) -> None:
    """SNN-E122: weights whose sizes do not fit the channels they are applied to.

    ONNX shape inference leaves these to the runtime (Conv in-channels vs W), where they would
    surface as an ONNX Runtime failure during calibration.
    """
    diags = []

    def bad(node: gs.Node, what: str, hint: str) -> None:
        diags.append(_diag("SNN-E122", what, ir.node_label(node), hint))

    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose", "BatchNormalization") or \
                (node.domain or "") not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        x = node.inputs[0].shape
        cin = int(x[1]) if x and len(x) > 1 and _is_static(x[1]) else None
        if node.op == "BatchNormalization":
            for t, role in zip(node.inputs[1:5], ("scale", "bias", "mean", "var")):
                if cin and t.shape and len(t.shape) == 1 and _is_static(t.shape[0]) \
                        and int(t.shape[0]) != cin:
                    bad(node, f"BatchNormalization {role} '{t.name}' has {t.shape[0]} values "
                        f"for an input of {cin} channels", "the model is inconsistent; "
                        "re-export it")
            continue
        w = node.inputs[1].shape
        if not w or len(w) < 3 or not all(_is_static(d) for d in w[:2]):
            continue
        group = int(node.attrs.get("group", 1))
        if group < 1:   # (a ZeroDivisionError, E500, before)
            bad(node, f"group = {group}: a convolution has at least one group",
                "the model is inconsistent; re-export it")
            continue
        if node.op == "Conv":
            cout, per_group = int(w[0]), int(w[1])
            if cin is not None and per_group * group != cin:
                bad(node, f"weight '{node.inputs[1].name}' {_fmt(w)} expects {per_group} x "
                    f"group {group} = {per_group * group} input channels, the input "
                    f"'{node.inputs[0].name}' has {cin} ({_fmt(x)})", "the previous layer's "
                    "output channels must equal the Conv's in-channels x groups; fix the model "
                    "definition and re-export it")
            if cout % group:
                bad(node, f"{cout} output channels do not split into group {group}",
                    "fix the model definition and re-export it")
        else:
            cout = int(w[1]) * group
            if cin is not None and int(w[0]) != cin:
                bad(node, f"weight '{node.inputs[1].name}' {_fmt(w)} expects {w[0]} input "
                    f"channels, the input '{node.inputs[0].name}' has {cin} ({_fmt(x)})",
                    "fix the model definition and re-export it")
        if len(node.inputs) > 2 and node.inputs[2].name:
            b = node.inputs[2].shape
            if b and len(b) == 1 and _is_static(b[0]) and int(b[0]) != cout:
                bad(node, f"bias '{node.inputs[2].name}' has {b[0]} values for {cout} output "
                    "channels", "fix the model definition and re-export it")
    if diags:
        raise ModelInputError(diagnostics=diags, code="SNN-E122",
                              message=f"{NAME}: {len(diags)} layer(s) do not fit their input")


def _fix_flatten(node: gs.Node, batch: int, counts: Counter, declines: list[Decline]) -> None:
    shape = node.inputs[0].shape
    axis = node.attrs.get("axis", 1)
    if shape is None:
        return
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1:
        return
    if axis == 0 and batch == 1:
        node.attrs["axis"] = 1
        counts["flatten_batch_fixed"] += 1
    else:
        declines.append(Decline(ir.node_label(node), "FLATTEN_MIXES_BATCH",
                                f"Flatten(axis={axis}) merges the batch with other dims"))


# ----------------------------------------------------------------------------- newer activations

def _emit(graph: gs.Graph, nodes: list[gs.Node], op: str, inputs: list) -> gs.Variable:
    out = gs.Variable(ir.unique_name(graph, f"{NAME}/{op.lower()}"), dtype=np.float32)
    nodes.append(gs.Node(op, ir.unique_name(graph, f"{NAME}/{op}"), inputs=inputs, outputs=[out]))
    return out


def _gelu(graph: gs.Graph, nodes: list, x: gs.Tensor, attrs: dict) -> gs.Tensor:
    def op(name, *inputs):
        return _emit(graph, nodes, name, list(inputs))

    def c(value):
        return ir.new_const(graph, f"{NAME}/gelu_const", value)

    if attrs.get("approximate", "none") == "tanh":
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Mul", op("Add", x, op("Mul", cube, c(0.044715))), c(math.sqrt(2 / math.pi)))
        core = op("Tanh", inner)
    else:
        core = op("Erf", op("Div", x, c(math.sqrt(2.0))))
    return op("Mul", op("Mul", x, c(0.5)), op("Add", core, c(1.0)))


def _mish(graph: gs.Graph, nodes: list, x: gs.Tensor, attrs: dict) -> gs.Tensor:
    soft = _emit(graph, nodes, "Softplus", [x])
    return _emit(graph, nodes, "Mul", [x, _emit(graph, nodes, "Tanh", [soft])])


def _swish(graph: gs.Graph, nodes: list, x: gs.Tensor, attrs: dict) -> gs.Tensor:
    alpha = attrs.get("alpha", 1.0)
    scaled = x if alpha == 1.0 else _emit(
        graph, nodes, "Mul", [x, ir.new_const(graph, f"{NAME}/swish_alpha", alpha)])
    return _emit(graph, nodes, "Mul", [x, _emit(graph, nodes, "Sigmoid", [scaled])])


_DECOMPOSE: dict[str, Callable[[gs.Graph, list, gs.Tensor, dict], gs.Tensor]] = {
    "Gelu": _gelu, "Mish": _mish, "Swish": _swish}


def _decompose_new_ops(graph: gs.Graph) -> int:
    """Spell activations the version converter cannot take below their opset in older ops."""
    nodes: list[gs.Node] = []
    done = 0
    for node in graph.nodes:
        build = _DECOMPOSE.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if build is None:
            nodes.append(node)
            continue
        x, out = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        result = build(graph, nodes, x, node.attrs)
        ir.producer(result).outputs[0] = out
        done += 1
    graph.nodes = nodes
    return done
