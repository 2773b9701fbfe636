"""insert-neurons: replace every quantized clip with the spiking neuron op chosen by ``--neuron``.

Before (one QCFS site, recognised by :func:`snncc.passes.quant_clip.find_quant_clips`)::

    z -> Mul(k) -> Add(phi) -> Floor -> Clip(0, L) -> Mul(s) -> y

After::

    z -> snncc.ops::<Spec.op_type>(T, const_input, **spec.from_quant_clip(params)) -> y

The neuron node writes the site's original output tensor ``y``, so consumers and graph outputs
keep their names. The attributes come from the registry entry (``spec.from_quant_clip``) and are
validated with :func:`snncc.neurons.registry.validate_attrs`; ``T`` and ``const_input`` are
placeholders (``T`` = ``--timesteps``, ``const_input`` = 0) that schedule-timesteps sets.
The model-local ONNX function of every neuron op in use (built for the model's opset) is added
to ``model.functions`` once, so the model runs in plain ONNX Runtime without the kernel library.

Nodes that are already ``snncc.ops`` neurons (e.g. an IIR-trained LIF export) are kept as they
are and counted as ``already_spiking``. The pass never branches on the neuron name.

Precondition (SNN-E240): no ReLU-like activation (Relu, Clip(0, max); see
:func:`snncc.passes.quant_clip.activation_sites`) is left outside a quantized clip site
(relu-to-quant-clip turns every one into a site). Unknown ``snncc.ops`` op types: SNN-E241.

Counts: ``neurons_inserted``, ``already_spiking``. ``ctx.notes["neurons"]`` lists every neuron
node with its spec key and attributes for the compile report.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from snncc import ir
from snncc.context import CompileContext
from snncc.errors import Diagnostic, PreconditionError, UnsupportedNodeError
from snncc.neurons import NEURONS, get_neuron
from snncc.neurons.registry import NeuronSpec, validate_attrs
from snncc.passes.base import Pass, PassResult
from snncc.passes.quant_clip import activation_sites, find_quant_clips

__all__ = ["InsertNeuronsPass", "spec_for_op", "normalize_attrs", "add_function"]

logger = logging.getLogger("snncc.passes.insert_neurons")


def spec_for_op(op_type: str) -> NeuronSpec | None:
    """The registry entry whose ONNX op type is ``op_type`` (None if no neuron has it)."""
    for spec in NEURONS.values():
        if spec.op_type == op_type:
            return spec
    return None


def normalize_attrs(spec: NeuronSpec, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values typed after the spec's AttrSpec kinds, so gs exports the right
    ONNX attribute types (a one-element theta stays FLOATS, an int-valued float stays FLOAT)."""
    kinds = {a.name: a.kind for a in spec.all_attributes}
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        kind = kinds[name]
        if kind == "floats":
            out[name] = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
        elif kind == "float":
            out[name] = float(value)
        elif kind == "int":
            out[name] = int(value)
        else:
            out[name] = str(value)
    return out


def add_function(model: ir.Model, spec: NeuronSpec) -> bool:
    """Add the spec's model-local function unless the model already has one for the op."""
    if any(f.domain == ir.SNN_DOMAIN and f.name == spec.op_type for f in model.functions):
        return False
    model.functions.append(spec.function_proto(model.opset))
    return True


def _is_neuron_node(node: ir.Node) -> bool:
    return node.domain == ir.SNN_DOMAIN


class InsertNeuronsPass(Pass):
    name = "insert-neurons"

    def requires(self, model: ir.Model, ctx: CompileContext) -> None:
        graph = model.graph
        diags = [Diagnostic("SNN-E240", f"{site.nodes[0].op} is not part of a quantized clip, so "
                            "it has no spiking form", pass_name=self.name, node=site.label,
                            hint="run relu-to-quant-clip first (the default pipeline does)")
                 for site in activation_sites(graph, model.provenance) if site.kind != "pattern"]
        if diags:
            raise PreconditionError("insert-neurons: activations without quantization left",
                                    diagnostics=diags, code="SNN-E240")
        unknown = [Diagnostic("SNN-E241", f"op '{n.op}' is not a registered neuron",
                              pass_name=self.name, node=ir.node_label(n, model.provenance),
                              hint="registered neuron ops: " +
                              ", ".join(sorted(s.op_type for s in NEURONS.values())))
                   for n in graph.nodes if _is_neuron_node(n) and spec_for_op(n.op) is None]
        if unknown:
            raise UnsupportedNodeError("insert-neurons: unknown neuron ops", diagnostics=unknown,
                                       code="SNN-E241")

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        graph = model.graph
        options = ctx.options
        spec = get_neuron(options.neuron)
        records: list[dict[str, Any]] = []

        already = [n for n in graph.nodes if _is_neuron_node(n)]
        added = False
        for node in already:
            existing = spec_for_op(node.op)
            added |= add_function(model, existing)
            records.append({"node": node.name, "neuron": existing.key, "attrs": dict(node.attrs),
                            "inserted": False})

        sites = find_quant_clips(graph)
        for site in sites:
            where = f"insert-neurons: site '{site.y.name}': "
            attrs = dict(spec.from_quant_clip(site.params, options))
            attrs.setdefault("T", options.timesteps)
            attrs.setdefault("const_input", 0)
            attrs = normalize_attrs(spec, validate_attrs(spec, attrs, where))
            # named after the activation it replaces: '/layer1/relu/Relu' -> '.../Relu/IFNeuron'
            base = site.y.name.removesuffix("_output_0")
            name = ir.unique_name(graph, f"{base}/{spec.op_type}")
            source = next((model.provenance[n.name] for n in site.nodes
                           if n.name in model.provenance), None)
            z, y = site.z, site.y
            for n in site.nodes:
                n.inputs.clear()
                n.outputs.clear()
            graph.nodes.append(ir.Node(spec.op_type, name=name, attrs=attrs, inputs=[z],
                                       outputs=[y], domain=ir.SNN_DOMAIN))
            if source:
                model.provenance[name] = source
            records.append({"node": name, "neuron": spec.key, "attrs": attrs, "inserted": True,
                            "site": y.name})
            logger.debug("%s: %s -> %s", name, site.y.name, spec.op_type)
        if sites:
            add_function(model, spec)

        ctx.notes["neurons"] = records
        return PassResult(modified=bool(sites) or added,
                          counts={"neurons_inserted": len(sites), "already_spiking": len(already)})
