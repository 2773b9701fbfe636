"""Parts shared by the neuron modules: attribute checks, the time-major slice loop of the NumPy
references, the charge/fire/reset/emit steps, and a builder for the model-local ONNX functions.

Error codes raised here and by the neuron modules (all :class:`~snncc.errors.OptionError`):

* ``SNN-E303`` an attribute value is invalid (raised by :func:`registry.validate_attrs`);
* ``SNN-E304`` ``theta`` has neither 1 nor C entries;
* ``SNN-E305`` ``x`` has rank < 2, or its rows are not a multiple of ``T``;
* ``SNN-E306`` ``state`` / ``step`` are inconsistent with ``x`` or with each other;
* ``SNN-E307`` the clip's levels L are not a multiple of T (gn, mt: members per slice = L / T);
* ``SNN-E308`` bitserial needs L = 2^T - 1;
* ``SNN-E309`` an ``options.neuron_params`` value is invalid, or out of the neuron's bounds
  (srp tau <= 64, gn tau <= 2^23, mt n <= 64, each L' = levels_for(T) <= 2^24; also a per-slice
  count derived as L / T);
* ``SNN-E310`` mt pow2: the levels per slice L / T are not 2^n - 1;
* ``SNN-E311`` lif: a per-channel lambda cannot be the scalar spike ``amplitude``;
* ``SNN-E312`` bitserial: ``bits`` does not match the folded call, or exceeds 16;
* ``SNN-E313`` a model-local function was asked for an opset below 13;
* ``SNN-E354`` (the ``-T`` code) bitserial at T > 16.

All arithmetic in the references is float32, one rounding per operation, in the order of
``docs/neuron-ops.md``; Python scalars are turned into ``np.float32`` before they meet arrays.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from snncc.context import CompileOptions
from snncc.errors import OptionError
from snncc.ir import SNN_DOMAIN
from snncc.neurons.registry import AttrSpec, NeuronSpec, validate_attrs

F32 = np.float32
ZERO = F32(0)
FUNCTION_OPSET = 17
MIN_FUNCTION_OPSET = 13

Planes = list[np.ndarray]


# ----------------------------------------------------------------------------- attribute checks

def check_thresholds(value: Any) -> str | None:
    """``theta``: a non-empty list of finite floats > 0."""
    arr = _float_list(value)
    if arr is None or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        return "must be a non-empty list of finite floats > 0"
    return None


def check_fractions(value: Any) -> str | None:
    """``fractions``: non-empty, strictly descending, each in (0, 1]."""
    arr = _float_list(value)
    if (arr is None or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0)
            or np.any(arr > 1) or np.any(np.diff(arr) >= 0)):   # (NaN passed every comparison)
        return "must be a non-empty list of strictly descending floats in (0, 1]"
    return None


def check_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
                ) -> Callable[[Any], str | None]:
    """A finite float, at least ``lo`` (above it if ``lo_open``) and at most ``hi``."""
    if hi is not None:
        wanted = f"a finite float in {'(' if lo_open else '['}{lo}, {hi}]"
    elif lo is not None:
        wanted = f"a finite float {'>' if lo_open else '>='} {lo}"
    else:
        wanted = "a finite float"

    def check(value: Any) -> str | None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            return "must be " + wanted
        v = float(value)
        bad = (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
               or (hi is not None and v > hi))
        return "must be " + wanted if bad else None
    return check


def check_int(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    """An integer in [lo, hi]."""
    wanted = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def check(value: Any) -> str | None:
        ok = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
              and value >= lo and (hi is None or value <= hi))
        return None if ok else "must be " + wanted
    return check


def _float_list(value: Any) -> np.ndarray | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 else None


THETA = AttrSpec("theta", "floats", (1.0,),
                 "firing threshold(s): 1 value (per layer) or C values (per channel, axis 1), "
                 "each > 0", check_thresholds)


def v_init_attr(default: float, unit: str) -> AttrSpec:
    return AttrSpec("v_init", "float", default, f"initial membrane as a fraction of {unit}",
                    check_float())


def float32_list(values: Any) -> list[float]:
    """Values rounded to float32 (what an ONNX FLOATS attribute stores), as Python floats."""
    return [float(v) for v in np.atleast_1d(np.asarray(values, dtype=F32))]


# ----------------------------------------------------------------------------- neuron_params

def neuron_param_int(options: CompileOptions, name: str, default: int | None, lo: int = 1
                     ) -> int | None:
    """An integer from ``options.neuron_params`` (``default`` when absent); SNN-E309 if bad."""
    value = options.neuron_params.get(name, default)
    if value is not None and check_int(lo)(value):
        raise OptionError(f"neuron parameter {name}={value!r} must be an integer >= {lo}",
                          code="SNN-E309", hint=f"pass e.g. --neuron-param {name}={max(lo, 4)}")
    return value


def check_slice_levels(what: str, per_slice: int, levels: int, T: int, param: str,
                       value: int) -> None:
    """SNN-E314 when the neuron parameter ``param=value`` fixes ``per_slice`` levels per slice but
    the clip (e.g. a QCFS-trained graph's own L) has ``levels != per_slice * T``: the SNN would not
    reproduce it."""
    if per_slice * T != levels:
        raise OptionError(f"{what}: {param}={value} at T={T} gives L' = {per_slice * T} levels, "
                          f"but the clip has L={levels}", code="SNN-E314",
                          hint=f"drop {param} to derive it from L / T, or use "
                          f"-T {levels // per_slice if levels % per_slice == 0 else T}")


def dividing_timesteps(levels: int, per_slice_max: int, T_max: int) -> int | None:
    """The smallest T <= ``T_max`` that divides ``levels`` with at most ``per_slice_max`` levels
    per slice (for hints on a too large derived per-slice count), or None."""
    for T in range(max(1, -(-levels // per_slice_max)), T_max + 1):
        if levels % T == 0:
            return T
    return None


def members_per_slice(levels: int, T: int, what: str, given: int | None = None) -> int:
    """L / T for neurons whose T slices together give L levels; SNN-E307 when not exact.
    ``given`` is the -L the clip was calibrated with: a clip with another L is a QCFS-trained
    one, which keeps its L whatever -L says (-L and --neuron-param had been hinted there and
    both led to an error again)."""
    if levels % T:
        fits = [t for t in range(1, min(levels, 64) + 1) if levels % t == 0][:4]
        dividing = f"-T {', '.join(map(str, fits))}"
        hint = (f"use a -T that divides L ({dividing}), or L = k*T (e.g. -L {4 * T} for 4 per "
                "slice)" if levels == given else
                f"the clip is QCFS-trained with L = {levels}: use a -T that divides it "
                f"({dividing}), or fine-tune with -L a multiple of T")
        raise OptionError(f"{what}: the clip has L={levels} levels, which is not a multiple of "
                          f"T={T}", code="SNN-E307", hint=hint)
    return levels // T


# ----------------------------------------------------------------------------- reference helpers

def per_channel(values: Any, x: np.ndarray, name: str = "theta") -> np.ndarray:
    """A float list of length 1 or C as float32 of shape (len, 1, ...), broadcasting along
    axis 1 of a per-slice array shaped like ``x`` ([N, C, ...])."""
    arr = np.asarray(values, dtype=F32).reshape(-1)
    channels = x.shape[1]
    if arr.size not in (1, channels):
        raise OptionError(f"{name} has {arr.size} values but x has C={channels} channels",
                          code="SNN-E304", hint=f"give 1 value (per layer) or {channels}")
    return arr.reshape((-1,) + (1,) * (x.ndim - 2))


def time_major(x: Any, T: int, const_input: int) -> np.ndarray:
    """x as [T, N, C, ...] float32: rows t*N+n of [T*N, ...], or x repeated for const_input."""
    x = np.asarray(x, dtype=F32)
    if x.ndim < 2:
        raise OptionError(f"x has shape {x.shape}; neurons need rank >= 2 ([D, C, ...])",
                          code="SNN-E305", hint="reshape the input to [N, C, ...]")
    if const_input:
        return np.broadcast_to(x, (T,) + x.shape)
    if x.shape[0] % T:
        raise OptionError(f"x has {x.shape[0]} rows, not a multiple of T={T}", code="SNN-E305",
                          hint="the time-major input must be [T*N, C, ...]")
    return x.reshape((T, x.shape[0] // T) + x.shape[1:])


def broadcast_plane(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A writable float32 state plane of ``shape`` holding ``value`` (no arithmetic)."""
    return np.array(np.broadcast_to(value, shape), dtype=F32)


def check_step(step: Any, state: Any) -> None:
    """``step`` must be an integer >= 0, and 0 when no state is passed (SNN-E306)."""
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise OptionError(f"step={step!r} must be an integer >= 0", code="SNN-E306",
                          hint="step is the global index of the first slice")
    if state is None and step != 0:
        raise OptionError(f"step={step} given without state", code="SNN-E306",
                          hint="pass the state returned by the previous call")


def start_state(state: Any, step: Any, planes: int, shape: tuple[int, ...],
                init: Callable[[], Planes]) -> Planes:
    """The state to start from: the initial state without ``state`` or at global step 0."""
    check_step(step, state)
    if state is None:
        return init()
    state = np.asarray(state, dtype=F32)
    if state.shape != (planes,) + shape:
        raise OptionError(f"state has shape {state.shape}, expected {(planes,) + shape}",
                          code="SNN-E306", hint="pass the state returned by the previous call")
    return init() if step == 0 else [state[i].copy() for i in range(planes)]


def run_slices(spec: NeuronSpec, x: Any, attrs: Mapping[str, Any], state: Any, step: Any,
               init: Callable[[dict, np.ndarray, tuple[int, ...]], Planes],
               update: Callable[[dict, np.ndarray, Planes, np.ndarray, int],
                                tuple[Planes, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The reference loop shared by the per-slice neurons.

    ``init(a, theta, shape)`` returns the initial state planes; ``update(a, theta, planes, x_t, g)``
    advances one slice at global step ``g`` and returns (planes, y_t). Returns
    (y [T*N, C, ...], state_out [S, N, C, ...]).
    """
    a = validate_attrs(spec, attrs)
    xs = time_major(x, a["T"], a["const_input"])
    shape = xs.shape[1:]
    theta = per_channel(a["theta"], xs[0])
    planes = start_state(state, step, spec.state_planes, shape, lambda: init(a, theta, shape))
    ys = np.empty(xs.shape, dtype=F32)
    for t in range(a["T"]):
        planes, ys[t] = update(a, theta, planes, xs[t], int(step) + t)
    return ys.reshape((-1,) + shape[1:]), np.stack(planes)


# charge / fire / reset / emit: the parts the per-slice neurons are composed of

def charge(v: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    return v + x_t


def fire_at_least(m: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return m >= theta


def fire_above(m: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return m > theta


def reset_subtract(m: np.ndarray, spikes: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.where(spikes, m - theta, m)


def emit(spikes: np.ndarray, value: Any) -> np.ndarray:
    return np.where(spikes, value, ZERO).astype(F32, copy=False)


def binary_events(y: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """One event per nonzero output element (binary spikes, whatever their weight)."""
    return (np.asarray(y) != 0).astype(np.int64)


# ----------------------------------------------------------------------------- ONNX functions

_ATTR_FIELDS = {
    "int": ("value_int", onnx.AttributeProto.INT),
    "float": ("value_float", onnx.AttributeProto.FLOAT),
    "floats": ("value_floats", onnx.AttributeProto.FLOATS),
    "string": ("value_string", onnx.AttributeProto.STRING),
}
FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
# (element type, rank) of Scan states and slices. ORT's Scan needs body outputs of known rank,
# so function bodies work on slices flattened to [N, C, R] (R = product of trailing dims).
PLANE = (FLOAT, 3)
SCALAR = (FLOAT, 0)
COUNTER = (INT64, 0)
Kind = tuple[int, int]


@dataclass(frozen=True)
class FoldedInput:
    """Names inside a function body for the folded form (inputs [x], outputs [y])."""

    steps: str          # int64 scalar T
    x_tm: str           # float [T, N, C, R]
    slice_shape: str    # int64 [3]: [N, C, R]
    out_shape: str      # int64 [rank]: [-1, C, ...], reshape target of the output


class FunctionBuilder:
    """Collects the nodes of one function body (or Scan body) with unique local names."""

    def __init__(self, counter: itertools.count | None = None):
        self._counter = counter if counter is not None else itertools.count()
        self.nodes: list[onnx.NodeProto] = []

    def _name(self, hint: str) -> str:
        return f"{hint}_{next(self._counter)}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Append a node; returns its output name (a tuple when ``outputs`` != 1)."""
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def const(self, value: Any, dtype: Any = F32) -> str:
        return self.op("Constant", value=onnx.numpy_helper.from_array(np.asarray(value, dtype)))

    def attr(self, spec: AttrSpec) -> str:
        """Attribute ``spec.name`` as a tensor: int64/float scalar, float list or string."""
        field_name, kind = _ATTR_FIELDS[spec.kind]
        name = self._name(spec.name)
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(helper.make_attribute_ref(field_name, kind,
                                                        ref_attr_name=spec.name))
        self.nodes.append(node)
        return name

    def scan(self, states: Sequence[tuple[str, Kind]], scan_inputs: Sequence[tuple[str, Kind]],
             body: Callable[..., Sequence[str]], scan_outputs: Sequence[Kind] = (),
             reverse: bool = False) -> tuple[str, ...]:
        """A Scan over axis 0 of ``scan_inputs`` (last to first if ``reverse``) carrying
        ``states``; each given as (name, kind of one slice).

        ``body(b, *state_names, *slice_names)`` appends to ``b`` and returns the new state names
        followed by the per-slice outputs (kinds ``scan_outputs``). Returns the Scan's outputs.
        """
        sub = FunctionBuilder(self._counter)
        state_in = [sub._name("state") for _ in states]
        slice_in = [sub._name("slice") for _ in scan_inputs]
        results = list(body(sub, *state_in, *slice_in))
        produced = {o for n in sub.nodes for o in n.output}
        results = [r if r in produced else sub.op("Identity", r) for r in results]
        in_kinds = [k for _, k in states] + [k for _, k in scan_inputs]
        out_kinds = [k for _, k in states] + list(scan_outputs)

        def info(name: str, kind: Kind) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, kind[0], [None] * kind[1])

        graph = helper.make_graph(sub.nodes, self._name("scan_body"),
                                  [info(n, k) for n, k in zip(state_in + slice_in, in_kinds)],
                                  [info(n, k) for n, k in zip(results, out_kinds)])
        outs = self.op("Scan", *[s for s, _ in states], *[s for s, _ in scan_inputs],
                       outputs=len(out_kinds), body=graph, num_scan_inputs=len(scan_inputs),
                       scan_input_directions=[int(reverse)] * len(scan_inputs))
        return outs if isinstance(outs, tuple) else (outs,)

    def folded_input(self, attributes: Mapping[str, AttrSpec]) -> FoldedInput:
        """x ([T*N, C, ...], or [N, C, ...] with const_input) as [T, N, C, R], plus shapes.

        const_input repeats x with Tile(x, [K, 1, 1]) where K = 1 + const_input*(T-1).
        """
        steps = self.attr(attributes["T"])
        const_input = self.attr(attributes["const_input"])
        one = self.const(1, np.int64)
        axis0 = self.const([0], np.int64)
        flat = self.op("Reshape", "x", self.const([0, 0, -1], np.int64))
        repeats = self.op("Add", one, self.op("Mul", const_input, self.op("Sub", steps, one)))
        tiled = self.op("Tile", flat, self.op("Concat", self.op("Unsqueeze", repeats, axis0),
                                              self.const([1, 1], np.int64), axis=0))
        channels_rest = self.op("Slice", self.op("Shape", flat), self.const([1], np.int64),
                                self.const([3], np.int64))
        x_tm = self.op("Reshape", tiled, self.op("Concat", self.op("Unsqueeze", steps, axis0),
                                                 self.const([-1], np.int64), channels_rest,
                                                 axis=0))
        slice_shape = self.op("Slice", self.op("Shape", x_tm), self.const([1], np.int64),
                              self.const([4], np.int64))
        trailing = self.op("Slice", self.op("Shape", "x"), self.const([1], np.int64),
                           self.const([np.iinfo(np.int64).max], np.int64))
        return FoldedInput(steps, x_tm, slice_shape,
                           self.op("Concat", self.const([-1], np.int64), trailing, axis=0))

    def channel_param(self, spec: AttrSpec) -> str:
        """A float list attribute as [len, 1]: broadcasts along axis 1 of a [N, C, R] slice."""
        return self.op("Reshape", self.attr(spec), self.const([-1, 1], np.int64))

    def function(self, op_type: str, attributes: Sequence[AttrSpec], output: str, doc: str,
                 opset: int) -> onnx.FunctionProto:
        """The FunctionProto ``snncc.ops::op_type`` (x) -> (y); every attribute has a default.

        ``opset`` must equal the model's default-domain opset (the ONNX checker demands it);
        the body uses only ops whose meaning is the same from opset 13 on.
        """
        if opset < MIN_FUNCTION_OPSET:
            raise OptionError(f"{op_type}: the model-local function needs opset >= "
                              f"{MIN_FUNCTION_OPSET}, got {opset}", code="SNN-E313",
                              hint=f"build the function at opset {MIN_FUNCTION_OPSET} or "
                              f"above (e.g. {FUNCTION_OPSET})")
        self.nodes.append(helper.make_node("Identity", [output], ["y"]))
        defaults = [helper.make_attribute(a.name, list(a.default) if a.kind == "floats"
                                          else a.default) for a in attributes]
        return helper.make_function(SNN_DOMAIN, op_type, ["x"], ["y"], self.nodes,
                                    [helper.make_opsetid("", opset)],
                                    attribute_protos=defaults, doc_string=doc)


def scan_neuron_function(op_type: str, attributes: Sequence[AttrSpec],
                         planes: Callable[[FunctionBuilder, FoldedInput, dict],
                                          list[tuple[str, Kind]]],
                         step: Callable[..., Sequence[str]], doc: str, opset: int
                         ) -> onnx.FunctionProto:
    """A per-slice neuron as a function: prologue, one Scan over time, reshape to [T*N, ...].

    ``values`` maps each attribute name to its tensor in the body (theta as [C, 1]).
    ``planes(b, folded, values)`` returns the initial state [(name, kind)] and may add derived
    constants to ``values``; ``step(b, values, *state, x_t)`` returns the new state names, then
    y_t. Both see slices as [N, C, R].
    """
    b = FunctionBuilder()
    by_name = {a.name: a for a in attributes}
    folded = b.folded_input(by_name)
    values = {a.name: b.channel_param(a) if a.name == "theta" else b.attr(a)
              for a in attributes if a.name not in ("T", "const_input")}
    init = planes(b, folded, values)
    outs = b.scan(init, [(folded.x_tm, PLANE)],
                  lambda sub, *names: step(sub, values, *names), scan_outputs=[PLANE])
    y = b.op("Reshape", outs[-1], folded.out_shape)
    return b.function(op_type, attributes, y, doc, opset)


def expand_plane(b: FunctionBuilder, folded: FoldedInput, value: str) -> str:
    """A per-slice plane [N, C, R] filled with a broadcastable value (Expand, no arithmetic)."""
    return b.op("Expand", value, folded.slice_shape)


# ----------------------------------------------------------------------------- Loihi integer models
# Shared pieces of the LoihiInfo callables (registry.LoihiInfo documents their contracts).

def channel_values(values: Any, channels: int) -> np.ndarray:
    """A scalar or per-channel attribute as float64 [channels]."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.broadcast_to(arr, (channels,)).copy()


def loihi_if_fixed_point(attrs: Mapping[str, Any], theta: np.ndarray, fp: Any
                         ) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """IF-style neuron: one threshold of one state unit (theta), fire on ``>=``, soft reset."""
    return theta, theta, 1, {"thresholds": [1], "compare": ">=", "reset": "subtract",
                             "v_init": attrs["v_init"]}


def loihi_unit_threshold(fixed: Mapping[str, Any], one: int, fp: Any) -> dict:
    """Integer fields of a graded neuron whose threshold is one payload unit."""
    return {"vth": [one], "vth_mant": [one >> fp.vth_exp]}


def loihi_if_fire(sim: Any, fixed: Mapping[str, Any], v: np.ndarray, x_t: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Charge, fire against ``vth[0]`` (``fixed["compare"]``; ``>`` under ``sim.hw``) and
    subtract the threshold (reset to 0 under ``sim.hw``); returns (spikes as bool, v)."""
    vth = fixed["vth"][0]
    m = sim.sat(v + x_t)
    s = m > vth if (sim.hw or fixed["compare"] == ">") else m >= vth
    return s, np.where(s, 0 if sim.hw else m - vth, m)


def loihi_if_int_step(sim: Any, g: Any, fixed: Mapping[str, Any], v: np.ndarray,
                      x_t: np.ndarray, t: int, keep: np.ndarray) -> tuple:
    """``LoihiInfo.int_step`` of a binary soft-reset neuron (payload = events = spikes)."""
    s, v = loihi_if_fire(sim, fixed, v, x_t)
    y = s.astype(np.int64)
    return y, y, v, keep
