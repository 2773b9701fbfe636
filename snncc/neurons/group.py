"""``GroupNeuron`` (key ``gn``): τ IF members sharing one membrane, a multi-level output.

Per slice (neurons.md §4.2, docs/neuron-ops.md), u = θ / float32(τ), inv_u = float32(τ) / θ::

    v(0) = v_init * u
    v = v + x_t ; c = clip(floor(v * inv_u), 0, τ) ; v = v - c*u ; y = c*u

Events: c unit spikes per slice. Conversion: θ = λ, v_init = φ, τ = L / T (must be exact,
SNN-E307) unless ``--neuron-param tau=...`` overrides it. With τ·T = L and a constant input the
mean output equals the QCFS clip exactly (neurons.md §4.3). ``levels_for``: L = τ·T with
τ = ``neuron_params['tau']`` or 4.

Bounds (SNN-E309, before any work): τ <= MAX_TAU = 2^23, the range of the C++ kernel's ``tau``
attribute (``runtime/csrc/neurons/gn.cc``; also the attribute check here), and L' = τ·T <= 2^24
(MAX_LEVELS, the ``-L`` limit; checked by the registry for every neuron).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from snncc.context import MAX_TIMESTEPS, CompileOptions, QuantClipParams
from snncc.errors import OptionError
from snncc.neurons import common as c
from snncc.neurons.registry import (AttrSpec, LoihiInfo, NeuronSpec, NirInfo, register_neuron,
                                    validate_attrs)

DEFAULT_TAU = 4
#: the largest ``tau`` the C++ kernel accepts (gn.cc: "an integer in [1, 2^23]")
MAX_TAU = 2 ** 23

ATTRIBUTES = (
    c.THETA,
    AttrSpec("tau", "int", DEFAULT_TAU, "members per group (levels per slice), 1..2^23",
             c.check_int(1, MAX_TAU)),
    c.v_init_attr(0.5, "the unit u = theta/tau"),
)


def _unit(a: Mapping[str, Any], theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tau = c.F32(a["tau"])
    return theta / tau, tau / theta


def _init(a: dict, theta: np.ndarray, shape: tuple[int, ...]) -> c.Planes:
    return [c.broadcast_plane(c.F32(a["v_init"]) * _unit(a, theta)[0], shape)]


def _update(a: dict, theta: np.ndarray, planes: c.Planes, x_t: np.ndarray, g: int):
    u, inv_u = _unit(a, theta)
    v = c.charge(planes[0], x_t)
    count = np.clip(np.floor(v * inv_u), c.ZERO, c.F32(a["tau"]))
    y = count * u
    return [v - y], y


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    return c.run_slices(SPEC, x, attrs, state, step, _init, _update)


def _function_planes(b: c.FunctionBuilder, folded: c.FoldedInput, v: dict):
    tau = b.op("Cast", v["tau"], to=c.FLOAT)
    v["tau_f"], v["u"], v["inv_u"] = tau, b.op("Div", v["theta"], tau), b.op("Div", tau, v["theta"])
    return [(c.expand_plane(b, folded, b.op("Mul", v["v_init"], v["u"])), c.PLANE)]


def _function_step(b: c.FunctionBuilder, v: dict, membrane: str, x_t: str):
    m = b.op("Add", membrane, x_t)
    count = b.op("Clip", b.op("Floor", b.op("Mul", m, v["inv_u"])), b.const(0.0), v["tau_f"])
    y = b.op("Mul", count, v["u"])
    return [b.op("Sub", m, y), y]


def function_proto(opset: int = c.FUNCTION_OPSET):
    return c.scan_neuron_function(SPEC.op_type, SPEC.all_attributes, _function_planes,
                                  _function_step, SPEC.doc, opset)


def events(y: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    a = validate_attrs(SPEC, attrs)
    y = np.asarray(y, dtype=c.F32)
    u = _unit(a, c.per_channel(a["theta"], y))[0]
    return np.rint(y / u).astype(np.int64)


def _tau(options: CompileOptions) -> int | None:
    return c.neuron_param_int(options, "tau", None)


def _check_derived_tau(levels: int, T: int) -> None:
    """SNN-E309 when tau derived as L / T exceeds the kernel's MAX_TAU (only at T = 1)."""
    if levels // T > MAX_TAU:
        better = c.dividing_timesteps(levels, MAX_TAU, MAX_TIMESTEPS)
        raise OptionError(f"gn: L={levels} at T={T} gives tau = L/T = {levels // T} members per "
                          f"group, more than the op allows (2^23 = {MAX_TAU})", code="SNN-E309",
                          hint=(f"use -T {better} (tau = {levels // better}), " if better else "")
                          + "use a smaller -L, or set --tau")


def _check_options(options: CompileOptions) -> None:
    """With an explicit -L and no tau, the derived tau = L / T must fit the kernel."""
    if _tau(options) is None and options.levels is not None:
        _check_derived_tau(options.levels, options.timesteps)


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    tau = _tau(options)
    if tau:
        c.check_slice_levels("gn", tau, clip.levels, options.timesteps, "tau", tau)
    else:
        tau = c.members_per_slice(clip.levels, options.timesteps, "gn", options.levels)
        _check_derived_tau(clip.levels, options.timesteps)
    return {"theta": c.float32_list(clip.lam), "tau": tau, "v_init": float(clip.phi)}


# -- Loihi integer model (registry.LoihiInfo): payload count = floor(v / unit) clipped to tau

def _loihi_fixed_point(attrs, theta, fp):
    tau = int(attrs["tau"])
    u = theta / tau
    return u, u, tau, {"tau": tau, "v_init": attrs["v_init"], "reset": "subtract"}


def _loihi_int_step(sim, g, fixed, v, x_t, t, keep):
    one = 1 << g.frac_bits
    m = sim.sat(v + x_t)
    count = np.clip(np.floor_divide(m, one), 0, fixed["tau"])
    v = np.where(count > 0, 0, m) if sim.hw else m - count * one
    return count, count, v, keep


SPEC = register_neuron(NeuronSpec(
    key="gn",
    op_type="GroupNeuron",
    doc="Group neuron: tau IF members on one membrane, c = clip(floor(v/u), 0, tau) unit spikes "
        "of value u = theta/tau per slice, soft reset by c*u. The model-local function "
        "implements the folded form only (input x, output y).",
    attributes=ATTRIBUTES,
    state_planes=1,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=events,
    levels_for=lambda T, options: (_tau(options) or DEFAULT_TAU) * T,
    params=(AttrSpec("tau", "int", None, "members per group, 1..2^23 (the op's attribute "
                     "range); L' = tau*T must be <= 2^24 like -L", c.check_int(1, MAX_TAU)),),
    level_params=("tau",),
    check_options=_check_options,
    loihi=LoihiInfo("graded", "subtract", note=(
        "emulated as a Loihi 2 microcoded neuron with a graded spike c*u, c = floor(v/u) clipped "
        "to tau (soft reset; the hardware semantics reset v to 0 after any spike); no public "
        "Lava/NetX neuron computes that, so no NetX export"),
        fixed_point=_loihi_fixed_point, int_fields=c.loihi_unit_threshold,
        peak_payload=lambda fixed: fixed["tau"], int_step=_loihi_int_step),
    nir=NirInfo(refusal="neuron 'gn' sends graded spikes c*u (up to tau unit spikes in one slice)"),
))
