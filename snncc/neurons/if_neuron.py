"""``IFNeuron`` (key ``if``): the QCFS integrate-and-fire neuron, soft reset, fires on ``>=``.

Per slice (neurons.md §1.2, docs/neuron-ops.md)::

    v(0) = v_init * θ
    m = v + x_t ; s = (m >= θ) ; v = s ? (m - θ) : m ; y = s ? θ : 0

Conversion: θ = λ, v_init = φ. With T = L and a constant input current the mean output equals
the QCFS clip exactly (Theorem 1 in the shifted form, neurons.md §1.3).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from snncc.context import CompileOptions, QuantClipParams
from snncc.neurons import common as c
from snncc.neurons.registry import LoihiInfo, NeuronSpec, NirInfo, register_neuron

ATTRIBUTES = (c.THETA, c.v_init_attr(0.5, "theta"))


def _init(a: dict, theta: np.ndarray, shape: tuple[int, ...]) -> c.Planes:
    return [c.broadcast_plane(c.F32(a["v_init"]) * theta, shape)]


def _update(a: dict, theta: np.ndarray, planes: c.Planes, x_t: np.ndarray, g: int):
    m = c.charge(planes[0], x_t)
    s = c.fire_at_least(m, theta)
    return [c.reset_subtract(m, s, theta)], c.emit(s, theta)


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    return c.run_slices(SPEC, x, attrs, state, step, _init, _update)


def _function_planes(b: c.FunctionBuilder, folded: c.FoldedInput, v: dict):
    return [(c.expand_plane(b, folded, b.op("Mul", v["v_init"], v["theta"])), c.PLANE)]


def _function_step(b: c.FunctionBuilder, v: dict, membrane: str, x_t: str):
    m = b.op("Add", membrane, x_t)
    s = b.op("GreaterOrEqual", m, v["theta"])
    return [b.op("Where", s, b.op("Sub", m, v["theta"]), m),
            b.op("Where", s, v["theta"], b.const(0.0))]


def function_proto(opset: int = c.FUNCTION_OPSET):
    return c.scan_neuron_function(SPEC.op_type, SPEC.all_attributes, _function_planes,
                                  _function_step, SPEC.doc, opset)


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    return {"theta": c.float32_list(clip.lam), "v_init": float(clip.phi)}


SPEC = register_neuron(NeuronSpec(
    key="if",
    op_type="IFNeuron",
    doc="QCFS IF neuron: v(0) = v_init*theta, fire on m >= theta, soft reset, output theta per "
        "spike. The model-local function implements the folded form only (input x, output y).",
    attributes=ATTRIBUTES,
    state_planes=1,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=c.binary_events,
    levels_for=lambda T, options: T,
    loihi=LoihiInfo("binary", "subtract", note=(
        "theta folds into the next layer's weights; public Lava/NetX CUBA neurons fire on v > vth "
        "and reset v to 0, so a chip run equals this op only at T == 1 (up to threshold ties)"),
        netx=True, fixed_point=c.loihi_if_fixed_point, int_step=c.loihi_if_int_step),
    nir=NirInfo("IF", soft_reset=True, lossy=(
        "IF fires on v >= theta, NIR on v > v_threshold (ties differ)",)),
))
