"""``SRPNeuron`` (key ``srp``, seed 004): IF with a τ-slice pre-run and a residual-membrane mask.

Per slice at global step g (neurons.md §6.3, docs/neuron-ops.md)::

    v(0) = v_init * θ ; keep(0) = 1
    m = v + x_t ; s = (m >= θ) ; v = s ? (m - θ) : m
    y = (g < tau) ? (s ? θ : 0) : ((s and keep) ? θ : 0)
    if g == tau - 1: keep = (v > tol * θ) ? 1 : 0 ; v = v_init * θ

The schedule runs τ + T slices and decodes the last T. State planes: (v, keep as 0/1).
Conversion: θ = λ, v_init = φ, tol = 0.001, τ = ``--neuron-param tau=...`` (default 4), at most
MAX_TIMESTEPS (64, the ``-T`` limit): the pre-run slices hold the whole activation batch like the
counted ones, so an unbounded τ exhausts memory (SNN-E309, checked before any work).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from snncc.context import MAX_TIMESTEPS, CompileOptions, QuantClipParams
from snncc.neurons import common as c
from snncc.neurons.registry import AttrSpec, LoihiInfo, NeuronSpec, NirInfo, register_neuron

DEFAULT_TAU = 4

ATTRIBUTES = (
    c.THETA,
    AttrSpec("tau", "int", DEFAULT_TAU, "pre-run slices before the mask is set, >= 0",
             c.check_int(0)),
    c.v_init_attr(0.5, "theta"),
    AttrSpec("tol", "float", 0.001, "keep a neuron when its residual v > tol*theta, >= 0",
             c.check_float(0.0)),
)


def _init(a: dict, theta: np.ndarray, shape: tuple[int, ...]) -> c.Planes:
    return [c.broadcast_plane(c.F32(a["v_init"]) * theta, shape),
            np.ones(shape, dtype=c.F32)]


def _update(a: dict, theta: np.ndarray, planes: c.Planes, x_t: np.ndarray, g: int):
    v, keep = planes
    m = c.charge(v, x_t)
    s = c.fire_at_least(m, theta)
    v = c.reset_subtract(m, s, theta)
    y = c.emit(s & ((g < a["tau"]) | (keep != 0)), theta)
    if g == a["tau"] - 1:
        keep = np.where(v > c.F32(a["tol"]) * theta, c.F32(1), c.ZERO)
        v = _init(a, theta, v.shape)[0]
    return [v, keep], y


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    return c.run_slices(SPEC, x, attrs, state, step, _init, _update)


def _function_planes(b: c.FunctionBuilder, folded: c.FoldedInput, v: dict):
    v["v0"] = c.expand_plane(b, folded, b.op("Mul", v["v_init"], v["theta"]))
    v["tol_theta"] = b.op("Mul", v["tol"], v["theta"])
    v["last_pre_run"] = b.op("Sub", v["tau"], b.const(1, np.int64))
    return [(v["v0"], c.PLANE), (c.expand_plane(b, folded, b.const(1.0)), c.PLANE),
            (b.const(0, np.int64), c.COUNTER)]


def _function_step(b: c.FunctionBuilder, v: dict, membrane: str, keep: str, g: str, x_t: str):
    zero, one = b.const(0.0), b.const(1.0)
    m = b.op("Add", membrane, x_t)
    s = b.op("GreaterOrEqual", m, v["theta"])
    after = b.op("Where", s, b.op("Sub", m, v["theta"]), m)
    sent = b.op("And", s, b.op("Or", b.op("Less", g, v["tau"]), b.op("Greater", keep, zero)))
    at_end = b.op("Equal", g, v["last_pre_run"])
    residual_positive = b.op("Greater", after, v["tol_theta"])
    return [b.op("Where", at_end, v["v0"], after),
            b.op("Where", at_end, b.op("Where", residual_positive, one, zero), keep),
            b.op("Add", g, b.const(1, np.int64)),
            b.op("Where", sent, v["theta"], zero)]


def function_proto(opset: int = c.FUNCTION_OPSET):
    return c.scan_neuron_function(SPEC.op_type, SPEC.all_attributes, _function_planes,
                                  _function_step, SPEC.doc, opset)


def _tau(options: CompileOptions) -> int:
    return c.neuron_param_int(options, "tau", DEFAULT_TAU, lo=0)


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    return {"theta": c.float32_list(clip.lam), "tau": _tau(options), "v_init": float(clip.phi),
            "tol": 0.001}


# -- Loihi integer model (registry.LoihiInfo): the IF rule plus the tau pre-run mask

def _loihi_fixed_point(attrs, theta, fp):
    unit, state_unit, top, fixed = c.loihi_if_fixed_point(attrs, theta, fp)
    fixed.update(tau=int(attrs["tau"]), tol=float(attrs["tol"]))
    return unit, state_unit, top, fixed


def _loihi_int_fields(fixed, one, fp):
    return {"keep_above": int(math.floor(fixed["tol"] * one))}


def _loihi_int_step(sim, g, fixed, v, x_t, t, keep):
    s, v = c.loihi_if_fire(sim, fixed, v, x_t)
    y = s
    tau = fixed["tau"]
    if t >= tau:
        y = s & keep
    if t == tau - 1:
        keep = v > fixed["keep_above"]
        v = np.full_like(v, fixed["v_init_int"])
    y = y.astype(np.int64)
    return y, y, v, keep


SPEC = register_neuron(NeuronSpec(
    key="srp",
    op_type="SRPNeuron",
    doc="SRP neuron (seed 004): QCFS IF whose output is gated, after a tau-slice pre-run, by "
        "keep = (residual membrane > tol*theta); the membrane restarts at step tau. The "
        "model-local function implements the folded form only (input x, output y).",
    attributes=ATTRIBUTES,
    state_planes=2,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=c.binary_events,
    levels_for=lambda T, options: T,
    params=(AttrSpec("tau", "int", DEFAULT_TAU,
                     f"pre-run steps, 0..{MAX_TIMESTEPS}: the schedule runs tau + T slices, each "
                     f"holding the whole batch of activations, so tau is bounded like -T "
                     f"(1..{MAX_TIMESTEPS}); a few steps suffice (default {DEFAULT_TAU})",
                     c.check_int(0, MAX_TIMESTEPS)),),
    total_steps=lambda T, attrs: attrs.get("tau", DEFAULT_TAU) + T,
    counted_steps=lambda T, attrs: T,
    maxpool_exact=lambda T, attrs: False,
    loihi=LoihiInfo("binary", "subtract", note=(
        "emulated as a microcoded neuron: the IF rule (soft reset; the hardware semantics reset "
        "v to 0) plus a per-neuron mask bit set at global step tau and a membrane restart; public "
        "Lava/NetX neurons have neither (LIFReset only restarts periodically), so no NetX export"),
        fixed_point=_loihi_fixed_point, int_fields=_loihi_int_fields, int_step=_loihi_int_step),
    nir=NirInfo(refusal=(
        "neuron 'srp' masks neurons after a pre-run and restarts their membrane (no NIR neuron "
        "has a mask or a restart), and its soft reset has no NIR form")),
))
