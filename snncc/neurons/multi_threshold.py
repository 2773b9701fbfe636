"""``MTNeuron`` (key ``mt``): n thresholds θ_k = θ * fractions[k], parallel or cascade mode.

Per slice (neurons.md §5.3, docs/neuron-ops.md)::

    v(0) = v_init * θ ; m = v + x_t
    parallel: y = 0 ; for k = n-1 .. 0: if m >= θ_k: y = θ_k        (the largest threshold passed)
    cascade:  r = m ; y = 0 ; for k = 0 .. n-1: if r >= θ_k: r = r - θ_k ; y = y + θ_k
    soft reset: v = m - y (parallel), v = r (cascade) ; hard reset: v = (y > 0) ? 0 : m

Conversion presets (``--neuron-param preset=...``; ``n`` = ``--neuron-param n=...`` or derived;
``--mt-mode cascade`` alone selects ``pow2``, a mode that contradicts the preset is SNN-E309):

* ``equidistant`` (default): fractions (n, n-1, ..., 1)/n, parallel, soft, n = L / T (exact,
  SNN-E307), v_init = φ/n (φ times the smallest threshold). This is GN with τ = n, so with
  n·T = L and a constant input the mean output is the QCFS clip: at T = 1, n = L,
  m = z + θ/(2n) passes θ_k = θ(n-k)/n exactly when k >= n - floor(m·n/θ), hence
  y = θ·clip(floor(z·L/λ + 1/2), 0, L)/L with θ = λ.
* ``pow2``: fractions 2^-k (k = 0..n-1), cascade, soft: a successive-approximation n-bit code
  per slice. The levels per slice are P = 2^n - 1, so n = log2(L/T + 1) (SNN-E310 when not an
  integer); θ = (λ / P) * 2^(n-1) makes the smallest threshold λ/P (= λ/L at T = 1), and
  v_init = φ * 2^-(n-1) (φ times the smallest threshold). At T = 1 the cascade sum equals
  λ·clip(floor(z·P/λ + φ), 0, P)/P.

``levels_for``: n·T (equidistant) or (2^n - 1)·T (pow2), n = ``neuron_params['n']`` or 4.

Bounds (SNN-E309, before any work): n <= MAX_N = 64, given or derived as L / T. Each slice
compares the membrane with all n thresholds, one after the other (an inner loop in the C++ kernel,
an inner Scan in the function), so compile, verification and run time grow linearly with n
(n = 10^4 took over a minute to compile the small digits CNN); 64 thresholds cover the
per-slice level counts of QCFS models (L = 4 to 16) with room to spare, and more equidistant
levels per slice are ``gn`` (τ = n, the same output at a constant cost per slice). The registry
bounds L' <= 2^24 (MAX_LEVELS) as well, which caps pow2 at n <= 24 (T = 1).

The model-local function supports the folded form only. It turns the string attributes into
booleans without extra domains: ``Size(Unique(Concat([mode], ["cascade"]))) == 1`` iff
mode == "cascade" (likewise reset == "hard"), computes both modes each slice and selects with
Where (selection is exact). Both modes loop over the thresholds with an inner Scan in the order
written above (parallel: Scan in reverse).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from snncc.context import MAX_TIMESTEPS, CompileOptions, QuantClipParams
from snncc.errors import OptionError
from snncc.neurons import common as c
from snncc.neurons.registry import (AttrSpec, LoihiInfo, NeuronSpec, NirInfo, register_neuron,
                                    validate_attrs)

PRESETS = ("equidistant", "pow2")
DEFAULT_N = 4
#: the most thresholds per neuron (see the module doc: cost grows linearly with n)
MAX_N = 64

ATTRIBUTES = (
    c.THETA,
    AttrSpec("fractions", "floats", (1.0,),
             "thresholds as fractions of theta, strictly descending, each in (0, 1]",
             c.check_fractions),
    AttrSpec("mode", "string", "parallel",
             "parallel: emit the largest threshold passed; cascade: fire thresholds in turn on "
             "the residual", choices=("parallel", "cascade")),
    AttrSpec("reset", "string", "soft", "soft: subtract the output; hard: zero after any spike",
             choices=("soft", "hard")),
    c.v_init_attr(0.5, "theta"),
)


def _thresholds(a: Mapping[str, Any], theta: np.ndarray) -> list[np.ndarray]:
    return [theta * f for f in np.asarray(a["fractions"], dtype=c.F32)]


def _fire(a: Mapping[str, Any], theta: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, residual): the multi-threshold fire step of either mode (residual used by cascade)."""
    thresholds = _thresholds(a, theta)
    y = np.zeros(m.shape, dtype=c.F32)
    if a["mode"] == "parallel":
        for th in reversed(thresholds):
            y = np.where(m >= th, th, y)
        return y, m - y
    r = m
    for th in thresholds:
        passed = r >= th
        r = np.where(passed, r - th, r)
        y = np.where(passed, y + th, y)
    return y, r


def _init(a: dict, theta: np.ndarray, shape: tuple[int, ...]) -> c.Planes:
    return [c.broadcast_plane(c.F32(a["v_init"]) * theta, shape)]


def _update(a: dict, theta: np.ndarray, planes: c.Planes, x_t: np.ndarray, g: int):
    m = c.charge(planes[0], x_t)
    y, soft = _fire(a, theta, m)
    v = soft if a["reset"] == "soft" else np.where(y > 0, c.ZERO, m)
    return [v], y


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    return c.run_slices(SPEC, x, attrs, state, step, _init, _update)


def _string_is(b: c.FunctionBuilder, value: str, wanted: str) -> str:
    both = b.op("Concat", b.op("Reshape", value, b.const([1], np.int64)),
                b.op("Constant", value_strings=[wanted]), axis=0)
    return b.op("Equal", b.op("Size", b.op("Unique", both)), b.const(1, np.int64))


def _function_planes(b: c.FunctionBuilder, folded: c.FoldedInput, v: dict):
    # [n, 1, C, 1]: a Scan over axis 0 yields [1, C, 1], which broadcasts against [N, C, R]
    fractions = b.op("Reshape", v["fractions"], b.const([-1, 1, 1, 1], np.int64))
    v["thresholds"] = b.op("Mul", fractions, v["theta"])
    v["cascade"] = _string_is(b, v["mode"], "cascade")
    v["hard"] = _string_is(b, v["reset"], "hard")
    v["zeros"] = c.expand_plane(b, folded, b.const(0.0))
    return [(c.expand_plane(b, folded, b.op("Mul", v["v_init"], v["theta"])), c.PLANE)]


def _parallel_step(b: c.FunctionBuilder, m: str, y: str, th: str):
    return [m, b.op("Where", b.op("GreaterOrEqual", m, th), th, y)]


def _cascade_step(b: c.FunctionBuilder, residual: str, y: str, th: str):
    passed = b.op("GreaterOrEqual", residual, th)
    return [b.op("Where", passed, b.op("Sub", residual, th), residual),
            b.op("Where", passed, b.op("Add", y, th), y)]


def _function_step(b: c.FunctionBuilder, v: dict, membrane: str, x_t: str):
    zero = b.const(0.0)
    m = b.op("Add", membrane, x_t)
    thresholds = [(v["thresholds"], c.PLANE)]
    _, y_parallel = b.scan([(m, c.PLANE), (v["zeros"], c.PLANE)], thresholds, _parallel_step,
                           reverse=True)
    residual, y_cascade = b.scan([(m, c.PLANE), (v["zeros"], c.PLANE)], thresholds,
                                 _cascade_step)
    y = b.op("Where", v["cascade"], y_cascade, y_parallel)
    soft = b.op("Where", v["cascade"], residual, b.op("Sub", m, y_parallel))
    hard = b.op("Where", b.op("Greater", y, zero), zero, m)
    return [b.op("Where", v["hard"], hard, soft), y]


def function_proto(opset: int = c.FUNCTION_OPSET):
    return c.scan_neuron_function(SPEC.op_type, SPEC.all_attributes, _function_planes,
                                  _function_step, SPEC.doc, opset)


def events(y: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Thresholds passed (parallel) or fired (cascade). A cascade's y is the float32 sum of the
    thresholds it fired, added largest first (``_fire``); the decode repeats those additions and
    takes a threshold where the running sum stays within y. (Subtracting from y instead missed the
    last threshold whenever the sum rounded down: theta 0.7, fractions 1, 1/2, 1/4, 1/8, all four
    fired, y = 1.3124999, three counted; 2.3 % of a compiled pow2 layer's events.)"""
    a = validate_attrs(SPEC, attrs)
    y = np.asarray(y, dtype=c.F32)
    thresholds = _thresholds(a, c.per_channel(a["theta"], y))
    count = np.zeros(y.shape, dtype=np.int64)
    if a["mode"] == "parallel":
        for th in thresholds:
            count += th <= y
        return count
    acc = np.zeros(y.shape, dtype=c.F32)
    for th in thresholds:
        cand = (acc + th).astype(c.F32)
        fired = cand <= y
        acc = np.where(fired, cand, acc)
        count += fired
    return count


#: The firing mode each preset converts with (``--mt-mode`` may name it, or choose the preset).
PRESET_MODE = {"equidistant": "parallel", "pow2": "cascade"}


def _preset(options: CompileOptions) -> str:
    mode = options.neuron_params.get("mode")
    default = "pow2" if mode == "cascade" else "equidistant"
    preset = options.neuron_params.get("preset", default)
    if preset not in PRESETS:
        raise OptionError(f"mt preset {preset!r} is unknown", code="SNN-E309",
                          hint="choose preset=" + " or preset=".join(PRESETS))
    return preset


def _n(options: CompileOptions) -> int | None:
    return c.neuron_param_int(options, "n", None)


def _check_params(params: Mapping[str, Any]) -> str | None:
    preset, mode = params.get("preset"), params.get("mode")
    if preset in PRESET_MODE and mode is not None and PRESET_MODE[preset] != mode:
        return (f"preset {preset} converts with mode {PRESET_MODE[preset]}, not {mode} "
                f"(mode {mode} goes with preset "
                f"{next(k for k, v in PRESET_MODE.items() if v == mode)})")
    return None


def _check_derived_n(n: int, levels: int, T: int) -> None:
    """SNN-E309 when the equidistant n derived as L / T exceeds MAX_N."""
    if n > MAX_N:
        better = c.dividing_timesteps(levels, MAX_N, MAX_TIMESTEPS)
        fix = f"use -T {better} (n = {levels // better}), or " if better else ""
        raise OptionError(f"mt: L={levels} at T={T} gives n = L/T = {n} thresholds per neuron, "
                          f"more than {MAX_N}", code="SNN-E309",
                          hint=f"{fix}use --neuron gn (tau = L/T gives the same equidistant "
                               f"output at a constant cost per slice); mt compares the membrane "
                               f"with all n thresholds each slice, so its time grows with n")


def _check_options(options: CompileOptions) -> None:
    """With an explicit -L and no n, the derived equidistant n = L / T must be <= MAX_N."""
    T, L = options.timesteps, options.levels
    if _n(options) is None and L is not None and L % T == 0 and _preset(options) == "equidistant":
        _check_derived_n(L // T, L, T)


def levels_for(T: int, options: CompileOptions) -> int:
    n = _n(options) or DEFAULT_N
    return (n if _preset(options) == "equidistant" else 2 ** n - 1) * T


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    lam = np.atleast_1d(np.asarray(clip.lam, dtype=c.F32))
    n = _n(options)
    if _preset(options) == "equidistant":
        if n:
            c.check_slice_levels("mt", n, clip.levels, options.timesteps, "n", n)
        if not n:
            n = c.members_per_slice(clip.levels, options.timesteps, "mt", options.levels)
            _check_derived_n(n, clip.levels, options.timesteps)
        return {"theta": c.float32_list(lam),
                "fractions": c.float32_list([(n - k) / n for k in range(n)]),
                "mode": "parallel", "reset": "soft", "v_init": float(c.F32(clip.phi / n))}
    if n:
        per_slice = 2 ** n - 1
        c.check_slice_levels("mt pow2", per_slice, clip.levels, options.timesteps, "n", n)
    else:
        per_slice = c.members_per_slice(clip.levels, options.timesteps, "mt", options.levels)
        if per_slice & (per_slice + 1):
            raise OptionError(f"mt pow2: L/T = {per_slice} levels per slice is not 2^n - 1",
                              code="SNN-E310",
                              hint="use L = T*(2^n - 1), e.g. -L "
                                   f"{options.timesteps * 15} for n = 4, or set n")
        n = per_slice.bit_length()
    return {"theta": c.float32_list(lam / c.F32(per_slice) * c.F32(2 ** (n - 1))),
            "fractions": [2.0 ** -k for k in range(n)],
            "mode": "cascade", "reset": "soft", "v_init": float(clip.phi) * 2.0 ** (1 - n)}


# -- Loihi integer model (registry.LoihiInfo): thresholds in units of the smallest fraction

def _loihi_fixed_point(attrs, theta, fp):
    fr = np.asarray(attrs["fractions"], dtype=np.float64)
    ratios = fr / fr[-1]
    if np.any(np.abs(ratios - np.round(ratios)) > 1e-6):
        raise ValueError(f"fractions {fr.tolist()} are not integer multiples of the "
                         "smallest one, so the graded payload has no integer unit")
    u = theta * fr[-1]
    return u, u, float(ratios[0]), {
        "thresholds": [int(r) for r in np.round(ratios)], "mode": attrs["mode"],
        "reset": attrs["reset"], "v_init": float(attrs["v_init"]) / fr[-1]}


def _loihi_peak_payload(fixed):
    return sum(fixed["thresholds"]) if fixed["mode"] == "cascade" else fixed["thresholds"][0]


def _loihi_int_step(sim, g, fixed, v, x_t, t, keep):
    one = 1 << g.frac_bits
    m = sim.sat(v + x_t)
    vth = fixed["vth"]
    y = np.zeros_like(m)
    count = np.zeros_like(m)
    if fixed["mode"] == "parallel":
        for th in reversed(vth):
            passed = m >= th
            y = np.where(passed, th, y)
            count += passed
        rest = m - y
    else:
        rest = m
        for th in vth:
            fired = rest >= th
            rest = rest - th * fired
            y = y + th * fired
            count += fired
    hard = sim.hw or fixed["reset"] == "hard"
    v = np.where(y > 0, 0, m) if hard else rest
    return y // one, count, v, keep


SPEC = register_neuron(NeuronSpec(
    key="mt",
    op_type="MTNeuron",
    doc="Multi-threshold neuron: thresholds theta*fractions, parallel (emit the largest passed) "
        "or cascade (fire in turn on the residual), soft or hard reset. The model-local "
        "function implements the folded form only (input x, output y).",
    attributes=ATTRIBUTES,
    state_planes=1,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=events,
    levels_for=levels_for,
    params=(AttrSpec("preset", "string", "equidistant", "equidistant (parallel) or pow2 "
                     "(cascade) thresholds", choices=PRESETS),
            AttrSpec("n", "int", None, f"thresholds per neuron, 1..{MAX_N}: each slice compares "
                     "the membrane with all n thresholds, so time grows with n (for more "
                     "equidistant levels per slice use --neuron gn, tau = n: the same output at "
                     "a constant cost); L' = n*T (equidistant) or (2^n - 1)*T (pow2) must be "
                     "<= 2^24 like -L", c.check_int(1, MAX_N)),
            AttrSpec("mode", "string", None, "parallel (preset equidistant) or cascade (preset "
                     "pow2)", choices=tuple(PRESET_MODE.values()))),
    level_params=("n",),
    check_params=_check_params,
    check_options=_check_options,
    loihi=LoihiInfo("graded", "subtract (soft) | zero (hard)", note=(
        "emulated as a Loihi 2 microcoded neuron whose graded spike is a threshold value or a sum "
        "of them (reset as the op's attribute says; the hardware semantics reset v to 0 after "
        "any spike); no public Lava/NetX neuron has several thresholds, so no NetX export"),
        fixed_point=_loihi_fixed_point, peak_payload=_loihi_peak_payload,
        int_step=_loihi_int_step),
    nir=NirInfo(refusal=(
        "neuron 'mt' sends multi-level spikes (one of several threshold values per slice)")),
))
