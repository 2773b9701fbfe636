"""Export a trained module as ONNX opset 17: QCFS chains, or LIFNeuron / MTNeuron nodes.

How: every activation module (QCFS, LIF, MTNeuron) of a copy of the module is swapped for a marker
whose TorchScript symbolic is ``snncc_export::Act(index=k)`` (it runs as ReLU while tracing), the
copy is exported with ``torch.onnx.export(dynamo=False)`` (torch 2.13's default dynamo exporter
needs onnxscript, which this environment lacks) in eval mode with BatchNormalization kept
(``TrainingMode.PRESERVE``; snncc folds BN itself), and each marker node is then rewritten in place,
in graph order, from the parameters of activation k:

* QCFS (λ, L): ``Div(λ) -> Mul(L) -> Add(0.5) -> Floor -> Div(L) -> Clip(0, 1) -> Mul(λ)``, every
  constant a float32 scalar initializer (λ exactly the trained float32 value, L as float32); this
  is the pattern ``snncc compile`` reads λ and L from, and the torch forward of
  :class:`~snncc.train.qcfs.QCFS` evaluates the same ops in the same order.
* LIF: ``snncc.ops::LIFNeuron`` with theta=[θ], leak, amplitude=1.0, v_init=0.0.
* MTNeuron: ``snncc.ops::MTNeuron`` with theta=[θ], fractions, mode, reset="soft", v_init=0.0.

Markers (rather than rewriting Relu nodes by position) tie each node to its module even when the
module also has functional ReLUs. The exporter's value_info is kept, so the outputs of the custom
neuron nodes keep their shapes (ONNX shape inference cannot see through them). The exporter de-duplicates equal initializers through Identity
nodes; those are turned back into initializers so every weight is a plain constant.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from typing import Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from onnx import helper
from torch import nn

from snncc.errors import ModelInputError
from snncc.train.finetune import logits_for_training
from snncc.train.iir import LIF, MTNeuron, SpikingNeuron
from snncc.train.qcfs import QCFS, replace_modules

__all__ = ["export_onnx", "OPSET", "SNN_DOMAIN"]

OPSET = 17
SNN_DOMAIN = "snncc.ops"
_MARKER_DOMAIN = "snncc_export"


class _ActMarker(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, index: int) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def symbolic(g, x, index: int):
        return g.op(f"{_MARKER_DOMAIN}::Act", x, index_i=index).setType(x.type())


class _Marker(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ActMarker.apply(x, self.index)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _qcfs_nodes(x: str, y: str, prefix: str, m: QCFS) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    lam = m.lam.detach().cpu().numpy().astype(np.float32)
    # per channel: shape (C, 1, ..., 1) so that C lands on axis 1 of the input (compile reads it so)
    lam = lam.reshape(()) if lam.ndim == 0 else lam.reshape(-1, *([1] * max((m.rank or 2) - 2, 0)))
    inits = [onnx.numpy_helper.from_array(lam, f"{prefix}.lambda"), _scalar(f"{prefix}.L", m.levels),
             _scalar(f"{prefix}.half", 0.5), _scalar(f"{prefix}.zero", 0.0), _scalar(f"{prefix}.one", 1.0)]
    chain = [("Div", [f"{prefix}.lambda"]), ("Mul", [f"{prefix}.L"]), ("Add", [f"{prefix}.half"]), ("Floor", []),
             ("Div", [f"{prefix}.L"]), ("Clip", [f"{prefix}.zero", f"{prefix}.one"]), ("Mul", [f"{prefix}.lambda"])]
    nodes, cur = [], x
    for i, (op, consts) in enumerate(chain):
        out = y if i == len(chain) - 1 else f"{prefix}/{op}_{i}_output"
        nodes.append(helper.make_node(op, [cur, *consts], [out], name=f"{prefix}/{op}_{i}"))
        cur = out
    return nodes, inits


def _neuron_node(x: str, y: str, prefix: str, m: nn.Module) -> onnx.NodeProto:
    theta = [float(m.threshold.detach().cpu())]
    if isinstance(m, LIF):
        return helper.make_node("LIFNeuron", [x], [y], name=f"{prefix}/LIFNeuron", domain=SNN_DOMAIN, theta=theta,
                                leak=float(m.leak.detach().cpu()), amplitude=LIF.amplitude, v_init=0.0)
    return helper.make_node("MTNeuron", [x], [y], name=f"{prefix}/MTNeuron", domain=SNN_DOMAIN, theta=theta,
                            fractions=list(m.fractions), mode=m.mode, reset="soft", v_init=0.0)


def _inline_identity_initializers(graph: onnx.GraphProto) -> None:
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            graph.initializer.append(copy_)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


_EXPORT_IN, _EXPORT_OUT = "snncc_export_input", "snncc_export_output"


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the graph value ``old`` to ``new`` everywhere; a value already called ``new`` (a
    torch-internal name) moves aside first."""
    if old == new:
        return
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer} | \
        {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    if new in names:
        aside = new + "_"
        while aside in names:
            aside += "_"
        _rename_value(graph, new, aside)
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info) + \
            list(graph.initializer):
        if value.name == old:
            value.name = new


def export_onnx(module: nn.Module, sample: torch.Tensor, path: str | None = None, *, input_name: str = "input",
                output_name: str = "logits", input_dims: Sequence[int | str | None] | None = None,
                metadata: dict[str, object] | None = None) -> onnx.ModelProto:
    """Export ``module`` (QCFS or spiking activations) as described in the module docstring.

    ``sample`` is an input batch used for tracing. ``input_dims`` (the original model's input shape)
    keeps symbolic dimensions symbolic; by default the batch axis is symbolic ("N"). ``metadata``
    is stored as JSON under the model metadata key ``snncc.train``. Writes ``path`` when given.
    """
    for m in module.modules():
        if isinstance(m, SpikingNeuron):
            m.reset_state()  # drop membrane tensors (they may hold an autograd graph, which cannot be copied)
    model = copy.deepcopy(module).cpu().eval()
    logits_for_training(model, False)   # the model's own output head, Softmax included
    for m in model.modules():
        if isinstance(m, QCFS):
            m.timesteps = None   # export the QCFS clip, not the training-time IF emulation
    if any(isinstance(m, QCFS) and m.lam.dim() == 1 and m.rank is None for m in model.modules()):
        with torch.no_grad():
            model(sample.detach().cpu())   # learn each per-channel QCFS input's rank
    acts: list[tuple[str, nn.Module]] = []

    def marker(name: str, old: nn.Module) -> nn.Module:
        acts.append((name, old))
        return _Marker(len(acts) - 1)

    replace_modules(model, lambda m: isinstance(m, (QCFS, LIF, MTNeuron)), marker)
    if not acts:
        raise ModelInputError("finetune: the module has no QCFS or spiking activation to export", code="SNN-E805",
                              hint="fine-tune or convert the model first")
    dims = list(input_dims) if input_dims is not None else ["N"] + list(sample.shape[1:])
    axes = {i: d if isinstance(d, str) else f"dim{i}" for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)}
    # torch names the graph's values by these and refuses some ONNX names (an output '14' of a plain
    # nn.Sequential export: "Invalid name", after all the training): placeholders, renamed after
    wanted = {_EXPORT_IN: input_name, _EXPORT_OUT: output_name}
    input_name, output_name = _EXPORT_IN, _EXPORT_OUT
    dynamic_axes = {input_name: axes, output_name: {0: axes[0]} if 0 in axes else {}} if axes else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and PRESERVE notes
        torch.onnx.export(model, (sample.detach().cpu(),), buf, dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes=dynamic_axes,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          custom_opsets={_MARKER_DOMAIN: 1})
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    for old, new in wanted.items():
        _rename_value(graph, old, new)
    _inline_identity_initializers(graph)
    nodes: list[onnx.NodeProto] = []
    seen: list[int] = []
    for node in graph.node:
        if node.domain != _MARKER_DOMAIN:
            nodes.append(node)
            continue
        index = next(a.i for a in node.attribute if a.name == "index")
        name, act = acts[index]
        prefix = f"/{name.replace('.', '/')}" + (f"_{seen.count(index)}" if index in seen else "")
        seen.append(index)
        if isinstance(act, QCFS):
            new_nodes, inits = _qcfs_nodes(node.input[0], node.output[0], prefix, act)
            nodes.extend(new_nodes)
            graph.initializer.extend(inits)
        else:
            nodes.append(_neuron_node(node.input[0], node.output[0], prefix, act))
    if any(not isinstance(a, QCFS) for _, a in acts) and len(set(seen)) != len(seen):
        raise ModelInputError("finetune: a spiking neuron module is used at several sites", code="SNN-E806",
                              hint="give every activation site its own nn.ReLU module")
    del graph.node[:]
    graph.node.extend(nodes)
    opsets = [o for o in proto.opset_import if o.domain != _MARKER_DOMAIN]
    if any(n.domain == SNN_DOMAIN for n in nodes):
        opsets.append(helper.make_opsetid(SNN_DOMAIN, 1))
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    if metadata:
        helper.set_model_props(proto, {"snncc.train": json.dumps(metadata, sort_keys=True)})
    if path is not None:
        from snncc import ir

        ir.save(proto, path)
    return proto
