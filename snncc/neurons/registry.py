"""The neuron registry: adding a neuron is one module here plus one C++ kernel plus one op-table line.

Each neuron module defines a :class:`NeuronSpec` and registers it with :func:`register_neuron`.
Passes, backends and tests look neurons up by key and never branch on a neuron name.
The exact arithmetic every implementation must follow is in ``docs/neuron-ops.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from snncc.context import MAX_LEVELS, CompileOptions, QuantClipParams
from snncc.errors import OptionError

__all__ = ["AttrSpec", "NeuronSpec", "LoihiInfo", "NirInfo", "NEURONS", "register_neuron",
           "get_neuron", "COMMON_ATTRS", "validate_attrs", "validate_neuron_params"]


@dataclass(frozen=True)
class AttrSpec:
    """One ONNX attribute: the single source for schema, validation messages and docs.

    ``kind`` is ``int``, ``float``, ``floats`` or ``string``. ``check`` returns an error sentence
    or None. ``choices`` lists the accepted values of a string/int attribute.
    """

    name: str
    kind: str
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None
    choices: Sequence[Any] | None = None


def _positive_int(v: Any) -> str | None:
    return None if isinstance(v, (int, np.integer)) and v >= 1 else "must be an integer >= 1"


COMMON_ATTRS: tuple[AttrSpec, ...] = (
    AttrSpec("T", "int", 1, "number of time slices processed by this call", _positive_int),
    AttrSpec("const_input", "int", 0,
             "1: x is [N,...], a current constant over the T slices; 0: x is [T*N,...]",
             choices=(0, 1)),
)


@dataclass(frozen=True)
class LoihiInfo:
    """How the neuron maps onto a Loihi 2 compartment (used by the Loihi backend).

    ``spike`` is ``"binary"`` or ``"graded"``; ``reset`` says what the neuron does after a spike;
    ``netx`` is True when a NetX CUBA layer can express the neuron (binary spikes, one threshold,
    at most a voltage decay). The integer model is a set of pure NumPy callables; the backend
    passes its own objects in (neuron modules never import the backend) and reads only public
    attributes: ``fp`` (word widths: ``decay_bits``, ``vth_exp``, ...), ``g`` (the netlist group:
    ``frac_bits``, ``fixed``, ``name``), ``sim`` (``sim.sat(v)`` clips to the state range and
    counts, ``sim.hw`` selects the stock CUBA rule: fire on ``v > vth``, reset to 0; ``sim.fp``).

    fixed_point(attrs, theta, fp) -> (payload_unit, state_unit, top, fixed)
        per-channel float units (``theta`` is float64 [C]), the largest threshold in state units,
        and the group's fixed-point fields (JSON-able); raises ValueError when a parameter has no
        fixed-point form. None: the neuron has no Loihi model.
    int_fields(fixed, one, fp) -> dict
        extra integer fields once ``one = 2**frac_bits`` is known (after the generic ``vth``,
        ``vth_mant`` from ``fixed["thresholds"]`` and ``v_init_int``).
    peak_payload(fixed) -> float
        the largest payload of one spike in payload units (None: 1).
    int_step(sim, g, fixed, v, x_t, t, keep) -> (payload, events, v, keep)
        one slice of a per-slice neuron on int64 arrays (``keep``: a per-neuron bool mask the
        neuron may use; starts all True).
    int_run(sim, g, x, steps) -> (payload, events)
        the whole window at once, for window neurons (``x``: int64 [S|1, N, *view]); used instead
        of ``int_step`` when set.
    """

    spike: str                 # "binary" | "graded"
    reset: str                 # what the neuron does: "subtract" | "zero" | ...
    supported: bool = True
    note: str = ""
    netx: bool = False
    fixed_point: Callable[..., tuple[np.ndarray, np.ndarray, float, dict]] | None = None
    int_fields: Callable[..., dict] | None = None
    peak_payload: Callable[[Mapping[str, Any]], float] | None = None
    int_step: Callable[..., tuple] | None = None
    int_run: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None


@dataclass(frozen=True)
class NirInfo:
    """How the neuron maps onto a NIR 1.0 neuron node (used by the NIR export, which reads only
    these fields and never branches on a neuron name).

    ``node`` is ``"IF"`` (always ``nir.IF``), ``"LIF"`` (``nir.LIF``, or ``nir.IF`` when the leak
    is 1) or None when the neuron has no NIR form; ``refusal`` then says why (the SNN-E691
    message; empty: a generic one). ``leak_attr`` names the attribute holding the per-slice
    membrane factor (None: no leak); ``amplitude_attr`` the attribute holding the value sent per
    spike (None: theta is sent). ``soft_reset``: the neuron resets by subtraction, which NIR's
    reset-to-``v_reset`` neurons cannot express (a lossy export); ``lossy`` lists what else the
    NIR form loses.
    """

    node: str | None = None
    refusal: str = ""
    leak_attr: str | None = None
    amplitude_attr: str | None = None
    soft_reset: bool = False
    lossy: tuple[str, ...] = ()


@dataclass(frozen=True)
class NeuronSpec:
    """Everything the compiler knows about one neuron type.

    Callables (all pure):
      reference(x, attrs, state=None, step=0) -> (y, state_out)
          NumPy float32 reference of the op, bit-exact with the C++ kernel and function body.
      function_proto(opset=17) -> onnx.FunctionProto
          the model-local ONNX function (domain snncc.ops) used when no kernel is registered;
          it implements the folded form (x -> y) and must use the model's opset (>= 13).
      from_quant_clip(clip, options) -> dict
          neuron attributes (without T / const_input) for one QCFS clip site.
      levels_for(T, options) -> int | None
          the ANN quantization levels L this neuron wants at T steps (None: no preference).
      total_steps(T, attrs) -> int, counted_steps(T, attrs) -> int
          slices the schedule must run, and how many trailing slices the output decodes.
      events(y, attrs) -> np.ndarray (int64, y's shape)
          unit spike events per output element (graded outputs count several), for SynOps.
      maxpool_exact(T, attrs) -> bool
          True when MaxPool(neuron(x)) == neuron(MaxPool(x)) holds exactly (monotone map).

    ``params`` are the conversion parameters the neuron reads from ``options.neuron_params``
    (``--tau``, ``--neuron-param KEY=VALUE``), described like attributes; ``level_params`` are
    those of them that fix the levels per slice, so that ``levels_for`` must then equal an
    explicit ``-L``; ``check_params(params) -> str | None`` checks them together.
    ``check_options(options) -> None`` checks the whole compile options (``-T``, an explicit
    ``-L``, the parameters) against limits of the op and raises OptionError itself (e.g.
    bitserial: T <= 16 bits). :func:`validate_neuron_params` applies all of them, and bounds the
    derived levels L' = ``levels_for`` by 2^24, before any work.

    ``window_attr`` names the attribute holding the window length of an accumulate-then-fire
    neuron (bit-serial: ``bits``). Such a neuron's output depends only on the mean current of its
    window, so the schedule may pool that mean before it (exact MaxPool), and in streaming it
    fires one window late (the schedule sets the attribute to the window length).

    ``decoded_attr`` names an int attribute that, set to 1, makes the folded call output its
    window mean ([N, ...], what the window-collapsed schedule decodes) instead of the slices;
    ``events`` must then still count the spikes of the slices (bit-serial: popcount of q).
    """

    key: str
    op_type: str
    doc: str
    attributes: tuple[AttrSpec, ...]
    state_planes: int
    reference: Callable[..., tuple[np.ndarray, np.ndarray]]
    function_proto: Callable[..., onnx.FunctionProto]
    from_quant_clip: Callable[[QuantClipParams, CompileOptions], dict[str, Any]]
    events: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]
    levels_for: Callable[[int, CompileOptions], int | None] = lambda T, o: None
    total_steps: Callable[[int, Mapping[str, Any]], int] = lambda T, a: T
    counted_steps: Callable[[int, Mapping[str, Any]], int] = lambda T, a: T
    maxpool_exact: Callable[[int, Mapping[str, Any]], bool] = lambda T, a: T == 1
    needs_bias_shift: bool = False
    #: False when the op takes one threshold per layer (calibration then defaults to per layer)
    per_channel_threshold: bool = True
    params: tuple[AttrSpec, ...] = ()
    level_params: tuple[str, ...] = ()
    check_params: Callable[[Mapping[str, Any]], str | None] | None = None
    check_options: Callable[[CompileOptions], None] | None = None
    window_attr: str | None = None
    decoded_attr: str | None = None
    loihi: LoihiInfo = field(default_factory=lambda: LoihiInfo("binary", "subtract"))
    nir: NirInfo = field(default_factory=NirInfo)
    since_version: int = 1

    @property
    def all_attributes(self) -> tuple[AttrSpec, ...]:
        return COMMON_ATTRS + self.attributes

    def window_mean_driven(self, T: int, attrs: Mapping[str, Any]) -> bool:
        """True when the neuron's output spikes depend on its input only through the mean
        current over its whole window: accumulate-then-fire neurons (``window_attr``), and any
        neuron that runs one slice. Linear ops feeding such a neuron may then run once on the
        decoded (time-mean) value instead of once per slice (the window-collapsed schedule)."""
        return self.window_attr is not None or self.total_steps(T, attrs) == 1


NEURONS: dict[str, NeuronSpec] = {}


def register_neuron(spec: NeuronSpec) -> NeuronSpec:
    if spec.key in NEURONS:
        raise ValueError(f"neuron {spec.key!r} registered twice")
    NEURONS[spec.key] = spec
    return spec


def get_neuron(key: str) -> NeuronSpec:
    from snncc import neurons as _  # noqa: F401  (import populates the registry)

    try:
        return NEURONS[key]
    except KeyError:
        raise OptionError(f"unknown neuron {key!r}", code="SNN-E301",
                          hint="choose one of: " + ", ".join(sorted(NEURONS))) from None


def _problem(a: AttrSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for ``a`` (its ``choices``, then its ``check``), or None."""
    if a.choices is not None and value not in a.choices:
        return "must be one of " + ", ".join(map(str, a.choices))
    return a.check(value) if a.check is not None else None


def validate_attrs(spec: NeuronSpec, attrs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Fill defaults and validate; raises OptionError naming the attribute and the fix."""
    known = {a.name: a for a in spec.all_attributes}
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        raise OptionError(f"{where}neuron '{spec.key}' has no attribute(s) {', '.join(unknown)}",
                          code="SNN-E302", hint="valid attributes: " + ", ".join(known))
    out: dict[str, Any] = {}
    for name, a in known.items():
        value = attrs.get(name, a.default)
        problem = _problem(a, value)
        if problem:
            raise OptionError(f"{where}neuron '{spec.key}': attribute {name}={value!r} {problem}",
                              code="SNN-E303", hint=a.doc)
        out[name] = value
    return out


def validate_neuron_params(options: CompileOptions) -> None:
    """Check ``options.neuron_params`` against ``options.neuron`` before any work.

    Raises OptionError: SNN-E301 unknown neuron, SNN-E302 a parameter the neuron does not read
    (listing those it does), SNN-E309 a bad value or combination, or derived levels
    L' = ``levels_for(T)`` above 2^24 (MAX_LEVELS, the ``-L`` limit), SNN-E314 a parameter that
    fixes the levels per slice contradicting an explicit ``-L`` (e.g. gn ``tau * T != L``), and
    whatever the neuron's ``check_options`` raises (e.g. SNN-E354 bitserial T > 16). The checks
    that involve T run for the spiking targets only (``qann`` uses no neuron). Called by
    :func:`snncc.driver.make_options`.
    """
    spec = get_neuron(options.neuron)
    given = dict(options.neuron_params or {})
    known = {p.name: p for p in spec.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = "; ".join(f"{p.name}: {p.doc}" for p in spec.params)
        attrs = sorted(set(unknown) & {a.name for a in spec.attributes})
        where = (f" ({', '.join(attrs)}: an attribute of the compiled op, set by conversion or "
                 "read from a trained graph, e.g. snncc finetune --iir for lif)" if attrs else "")
        raise OptionError(f"neuron '{spec.key}' has no parameter(s) {', '.join(unknown)}",
                          code="SNN-E302", hint=(f"valid parameters of '{spec.key}': {valid}"
                          if valid else f"'{spec.key}' takes no conversion parameters; drop "
                          "them") + where)
    for name, value in given.items():
        p = known[name]
        problem = _problem(p, value)
        if problem:
            raise OptionError(f"neuron parameter {name}={value!r} of '{spec.key}' {problem}",
                              code="SNN-E309", hint=p.doc)
    problem = spec.check_params(given) if spec.check_params is not None else None
    if problem:
        raise OptionError(f"neuron '{spec.key}': {problem}", code="SNN-E309",
                          hint="; ".join(f"{p.name}: {p.doc}" for p in spec.params))
    fixed = [n for n in spec.level_params if n in given]
    if options.target == "qann":
        return
    if spec.check_options is not None:
        spec.check_options(options)
    if fixed or options.levels is None:
        _check_level_bound(spec, options, fixed)
    if options.levels is not None and fixed:
        levels = spec.levels_for(options.timesteps, options)
        if levels is not None and levels != options.levels:
            params = ", ".join(f"{n}={given[n]}" for n in fixed)
            raise OptionError(
                f"neuron '{spec.key}' with {params} at T={options.timesteps} has "
                f"L' = {levels} levels, but -L {options.levels} was given", code="SNN-E314",
                hint=f"drop -L (L = {levels}), or drop {', '.join(fixed)} to derive it from "
                f"L / T, or set them so that L' = L")


def _check_level_bound(spec: NeuronSpec, options: CompileOptions, fixed: Sequence[str]) -> None:
    """SNN-E309 when the levels the neuron derives, L' = ``levels_for(T)``, exceed MAX_LEVELS.

    Float32 counts integers exactly only up to 2^24, the bound ``-L`` has too (SNN-E355); above
    it the clip's L rounds (2^31 - 2 becomes 2^31) and nothing downstream can match it. The
    parameter values are bounded by their own checks first, so ``levels_for`` stays cheap.
    """
    T = options.timesteps
    levels = spec.levels_for(T, options)
    if levels is None or levels <= MAX_LEVELS:
        return
    given = options.neuron_params
    what = ", ".join(f"{n}={given[n]}" for n in fixed) if fixed else f"T={T}"
    hint = "float32 counts levels exactly only up to 2^24 (the -L limit too); "
    best = _largest_fitting(spec, options, fixed[0]) if fixed else None
    if best is not None:
        hint += f"use {fixed[0]} <= {best} at T={T}, or a smaller -T"
    elif fixed:
        hint += f"lower -T (at T={T} even {fixed[0]}=1 is too many levels)"
    else:
        hint += "lower -T"
    raise OptionError(f"neuron '{spec.key}': {what} too large: at T={T} it gives L' = {levels} "
                      f"levels, but L' must be <= 2^24 = {MAX_LEVELS}", code="SNN-E309",
                      hint=hint)


def _largest_fitting(spec: NeuronSpec, options: CompileOptions, name: str) -> int | None:
    """The largest value of the int parameter ``name`` (below the given one) whose
    L' = ``levels_for`` fits MAX_LEVELS, or None; ``levels_for`` grows with it (bisection)."""
    lo, hi = 0, int(options.neuron_params[name])  # lo fits (0: none does), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = replace(options, neuron_params={**options.neuron_params, name: mid})
        levels = spec.levels_for(options.timesteps, trial)
        if levels is None or levels <= MAX_LEVELS:
            lo = mid
        else:
            hi = mid
    return lo or None
