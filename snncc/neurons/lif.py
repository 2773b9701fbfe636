"""``LIFNeuron`` (key ``lif``): the IIR-SNN leaky neuron, soft reset, fires on strict ``>``.

Per slice (neurons.md §3.3, docs/neuron-ops.md)::

    u(0) = v_init * θ
    u = leak * u ; u = u + x_t ; s = (u > θ) ; u = s ? (u - θ) : u ; y = s ? amplitude : 0

Conversion (the IIR-SNN starting point, which that method then retrains): θ = λ, amplitude = λ
(so downstream weights stay unchanged), leak = 1, v_init = 0. This is not QCFS-exact (no
half-threshold pre-charge, strict ``>``). ``amplitude`` is one float, so a per-channel λ with
different values is refused (SNN-E311).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from snncc.context import CompileOptions, QuantClipParams
from snncc.errors import OptionError
from snncc.neurons import common as c
from snncc.neurons.registry import AttrSpec, LoihiInfo, NeuronSpec, NirInfo, register_neuron

ATTRIBUTES = (
    c.THETA,
    AttrSpec("leak", "float", 1.0, "membrane leak factor per slice, in (0, 1]",
             c.check_float(0.0, 1.0, lo_open=True)),
    AttrSpec("amplitude", "float", 1.0, "value sent per spike, > 0 (conversion sets it to theta)",
             c.check_float(0.0, lo_open=True)),
    c.v_init_attr(0.0, "theta"),
)


def _init(a: dict, theta: np.ndarray, shape: tuple[int, ...]) -> c.Planes:
    return [c.broadcast_plane(c.F32(a["v_init"]) * theta, shape)]


def _update(a: dict, theta: np.ndarray, planes: c.Planes, x_t: np.ndarray, g: int):
    u = c.charge(c.F32(a["leak"]) * planes[0], x_t)
    s = c.fire_above(u, theta)
    return [c.reset_subtract(u, s, theta)], c.emit(s, c.F32(a["amplitude"]))


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    return c.run_slices(SPEC, x, attrs, state, step, _init, _update)


def _function_planes(b: c.FunctionBuilder, folded: c.FoldedInput, v: dict):
    return [(c.expand_plane(b, folded, b.op("Mul", v["v_init"], v["theta"])), c.PLANE)]


def _function_step(b: c.FunctionBuilder, v: dict, membrane: str, x_t: str):
    u = b.op("Add", b.op("Mul", v["leak"], membrane), x_t)
    s = b.op("Greater", u, v["theta"])
    return [b.op("Where", s, b.op("Sub", u, v["theta"]), u),
            b.op("Where", s, v["amplitude"], b.const(0.0))]


def function_proto(opset: int = c.FUNCTION_OPSET):
    return c.scan_neuron_function(SPEC.op_type, SPEC.all_attributes, _function_planes,
                                  _function_step, SPEC.doc, opset)


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    lam = np.unique(np.asarray(clip.lam, dtype=c.F32))
    if lam.size != 1:
        raise OptionError("lif: the spike amplitude is one float, but lambda is per channel "
                          f"with {lam.size} different values", code="SNN-E311",
                          hint="a QCFS-trained graph's per-channel lambda (snncc finetune) "
                          "fits --neuron if, mt or gn; for LIF train it with snncc finetune "
                          "--iir" if clip.source == "pattern" else
                          "calibrate per layer (drop --per-channel) for --neuron lif")
    return {"theta": c.float32_list(lam), "amplitude": float(lam[0]), "leak": 1.0, "v_init": 0.0}


# -- Loihi integer model (registry.LoihiInfo): 12-bit voltage decay, then the IF rule with ``>``

def _loihi_fixed_point(attrs, theta, fp):
    leak = float(attrs["leak"])
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"leak={leak} has no 12-bit decay (needs 0 <= leak <= 1)")
    decay = int(round((1.0 - leak) * (1 << fp.decay_bits)))
    return (c.channel_values(attrs["amplitude"], theta.shape[0]), theta, 1,
            {"thresholds": [1], "compare": ">", "reset": "subtract", "v_init": attrs["v_init"],
             "decay_v": decay, "decay_exact": decay == (1.0 - leak) * (1 << fp.decay_bits)})


def _loihi_int_step(sim, g, fixed, v, x_t, t, keep):
    if fixed["decay_v"]:
        keep_frac = (1 << sim.fp.decay_bits) - fixed["decay_v"]
        v = np.sign(v) * ((np.abs(v) * keep_frac) >> sim.fp.decay_bits)
    return c.loihi_if_int_step(sim, g, fixed, v, x_t, t, keep)


SPEC = register_neuron(NeuronSpec(
    key="lif",
    per_channel_threshold=False,
    op_type="LIFNeuron",
    doc="IIR-SNN LIF neuron: u = leak*u + x, fire on u > theta, soft reset, output amplitude "
        "per spike. The model-local function implements the folded form only (input x, "
        "output y).",
    attributes=ATTRIBUTES,
    state_planes=1,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=c.binary_events,
    levels_for=lambda T, options: T,
    loihi=LoihiInfo("binary", "subtract", note=(
        "strict > matches Loihi; leak maps to the 12-bit voltage decay 4096*(1-leak); Loihi "
        "resets v to 0 instead of subtracting theta, so a chip run equals this op only at "
        "T == 1"), netx=True, fixed_point=_loihi_fixed_point, int_step=_loihi_int_step),
    nir=NirInfo("LIF", leak_attr="leak", amplitude_attr="amplitude", soft_reset=True),
))
