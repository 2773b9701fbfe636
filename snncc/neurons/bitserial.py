"""``BitSerialNeuron`` (key ``bitserial``, seed 000): accumulate T slices, then send the T bits of
the QCFS level q one per slice (neurons.md §2, docs/neuron-ops.md).

With B = bits or T, L = float32(2^B - 1), unit = θ / L, inv_unit = L / θ, inv_B = 1 / float32(B)::

    folded:    acc = 0 ; for t: acc = acc + x_t ; U = acc * inv_B + v_init * unit
               (const_input: U = x + v_init * unit)
               q = clip(floor(U * inv_unit), 0, L) ; y_k = bit_k(q) ? float32(B * 2^k) * unit : 0
    streaming: slice at global step g, k = g mod B:
               y = bit_k(q_state) ? float32(B*2^k)*unit : 0 ; acc = acc + x ;
               if k == B-1: q_state = clip(floor((acc*inv_B + v_init*unit)*inv_unit), 0, L),
                            acc = 0           (one B-slice epoch of delay per bit-serial layer)

The mean of the B output slices is q*unit, the QCFS(L = 2^T - 1) value. State planes: (acc, q);
the folded call returns (0, q), the state at the end of an epoch. Conversion: θ = λ, bits = T,
v_init = φ (0.5 rounds like QCFS; 0 when the bias shift λ/(2L) was folded upstream); L must be
2^T - 1 (SNN-E308). Events: one per set bit. T is at most MAX_BITS = 16, the range of the
``bits`` attribute (the C++ kernel's too): SNN-E354 before any work, since the levels
L = 2^T - 1 of a larger T neither fit the op nor count exactly in float32 beyond T = 24.

MaxPool does not commute with this neuron for T > 1: a slice carries one bit of q, and the
per-slice max of bits is not the bits of the max (q = 2 and q = 1 give 0b11). So
``maxpool_exact`` is T == 1, as for the other neurons.

``decoded = 1`` (folded form only; the window-collapsed schedule sets it): the output is the mean
of the B slices, y = q * unit, with one row per sample ([N, ...]); the kernel never writes the bit
planes. Its events are popcount(q), q = rint(y / unit): the spike counts of the folded trains.

The model-local function implements the folded form only (input x, output y) and takes B = T
(the ``bits`` attribute is used by the streaming reference / kernel).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from snncc.context import CompileOptions, QuantClipParams
from snncc.errors import OptionError
from snncc.neurons import common as c
from snncc.neurons.registry import (AttrSpec, LoihiInfo, NeuronSpec, NirInfo, register_neuron,
                                    validate_attrs)

MAX_BITS = 16

ATTRIBUTES = (
    c.THETA,
    c.v_init_attr(0.5, "the unit theta/L"),
    AttrSpec("bits", "int", 0, f"bits per value B (0: B = T), at most {MAX_BITS}",
             c.check_int(0, MAX_BITS)),
    AttrSpec("decoded", "int", 0, "1: the folded call outputs the window mean q * unit as one row "
             "per sample ([N, ...], the window-collapsed schedule) instead of the B bit slices",
             c.check_int(0, 1)),
)


class _Code:
    """The float32 constants of one call, derived exactly as the op doc writes them."""

    def __init__(self, a: Mapping[str, Any], theta: np.ndarray, bits: int):
        self.bits = bits
        self.levels = c.F32(2 ** bits - 1)
        self.unit = theta / self.levels
        self.inv_unit = self.levels / theta
        self.inv_bits = c.F32(1) / c.F32(bits)
        self.offset = c.F32(a["v_init"]) * self.unit

    def level(self, mean: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((mean + self.offset) * self.inv_unit), c.ZERO, self.levels)

    def slice(self, q: np.ndarray, k: int) -> np.ndarray:
        bit = (q.astype(np.int64) >> k) & 1
        return c.emit(bit == 1, c.F32(self.bits * 2 ** k) * self.unit)


def reference(x: Any, attrs: Mapping[str, Any], state: Any = None, step: int = 0):
    a = validate_attrs(SPEC, attrs)
    T = a["T"]
    xs = c.time_major(x, T, a["const_input"])
    shape = xs.shape[1:]
    theta = c.per_channel(a["theta"], xs[0])
    if state is None:
        if a["bits"] not in (0, T) or T > MAX_BITS:
            raise OptionError(f"bitserial: the folded call has T={T} slices but bits="
                              f"{a['bits']} (at most {MAX_BITS})", code="SNN-E312",
                              hint="the folded form sends one bit per slice: set bits to 0 or T")
        c.check_step(step, None)
        code = _Code(a, theta, T)
        if a["const_input"]:
            mean = xs[0]
        else:
            acc = np.zeros(shape, dtype=c.F32)
            for t in range(T):
                acc = acc + xs[t]
            mean = acc * code.inv_bits
        q = code.level(mean)
        planes = np.stack([np.zeros(shape, c.F32), q])
        if a["decoded"]:
            return (q * code.unit).astype(c.F32, copy=False), planes
        y = np.stack([code.slice(q, k) for k in range(T)])
        return y.reshape((-1,) + shape[1:]), planes
    if a["decoded"]:
        raise OptionError("bitserial: decoded=1 is an output of the folded call (no state)",
                          code="SNN-E312", hint="streaming calls emit the bit slices: set decoded "
                          "to 0")
    code = _Code(a, theta, a["bits"] or T)
    acc, q = c.start_state(state, step, 2, shape,
                           lambda: [np.zeros(shape, c.F32), np.zeros(shape, c.F32)])
    ys = np.empty(xs.shape, dtype=c.F32)
    for t in range(T):
        k = (int(step) + t) % code.bits
        ys[t] = code.slice(q, k)
        acc = acc + xs[t]
        if k == code.bits - 1:
            q, acc = code.level(acc * code.inv_bits), np.zeros(shape, c.F32)
    return ys.reshape((-1,) + shape[1:]), np.stack([acc, q])


def _accumulate(b: c.FunctionBuilder, acc: str, x_t: str):
    return [b.op("Add", acc, x_t)]


def function_proto(opset: int = c.FUNCTION_OPSET):
    b = c.FunctionBuilder()
    attrs = {a.name: a for a in SPEC.all_attributes}
    folded = b.folded_input(attrs)
    theta = b.channel_param(attrs["theta"])
    zero = b.const(0.0)
    bits = b.op("Cast", folded.steps, to=c.FLOAT)
    levels = b.op("Cast", b.op("Sub", b.op("Pow", b.const(2, np.int64), folded.steps),
                               b.const(1, np.int64)), to=c.FLOAT)
    unit = b.op("Div", theta, levels)
    inv_unit = b.op("Div", levels, theta)
    offset = b.op("Mul", b.attr(attrs["v_init"]), unit)
    (acc,) = b.scan([(c.expand_plane(b, folded, zero), c.PLANE)], [(folded.x_tm, c.PLANE)],
                    _accumulate)
    mean = b.op("Where", b.op("Cast", b.attr(attrs["const_input"]), to=c.BOOL),
                b.op("Gather", folded.x_tm, b.const(0, np.int64), axis=0),
                b.op("Mul", acc, b.op("Div", b.const(1.0), bits)))
    q = b.op("Clip", b.op("Floor", b.op("Mul", b.op("Add", mean, offset), inv_unit)), zero, levels)

    def emit_bit(sb: c.FunctionBuilder, rest: str, weight: str, _k: str):
        bit = sb.op("Mod", rest, sb.const(2.0), fmod=1)
        y = sb.op("Where", sb.op("Equal", bit, sb.const(1.0)), sb.op("Mul", weight, unit), zero)
        return [sb.op("Floor", sb.op("Mul", rest, sb.const(0.5))),
                sb.op("Mul", weight, sb.const(2.0)), y]

    slots = b.op("Range", zero, bits, b.const(1.0))
    *_, y_tm = b.scan([(q, c.PLANE), (bits, c.SCALAR)], [(slots, c.SCALAR)], emit_bit,
                      scan_outputs=[c.PLANE])
    # decoded = 1 picks q * unit instead of the slices, branch-free: both flattened end to end,
    # then the slice [decoded * |y|, decoded ? |y| + |d| : |y|) of that vector. This portable
    # body (used only without the kernel library) computes both forms; the kernel computes one.
    flat = b.const([-1], np.int64)
    y_flat = b.op("Reshape", y_tm, flat)
    d_flat = b.op("Reshape", b.op("Mul", q, unit), flat)
    size_y, size_d = (b.op("Reshape", b.op("Size", v), b.const([1], np.int64))
                      for v in (y_flat, d_flat))
    decoded = b.op("Cast", b.attr(attrs["decoded"]), to=c.BOOL)
    start = b.op("Where", decoded, size_y, b.const([0], np.int64))
    stop = b.op("Where", decoded, b.op("Add", size_y, size_d), size_y)
    chosen = b.op("Slice", b.op("Concat", y_flat, d_flat, axis=0), start, stop,
                  b.const([0], np.int64))
    return b.function(SPEC.op_type, SPEC.all_attributes,
                      b.op("Reshape", chosen, folded.out_shape), SPEC.doc, opset)


def _check_options(options: CompileOptions) -> None:
    """SNN-E354: -T beyond the ``bits`` range (one bit of the level per slice, so B = T)."""
    T = options.timesteps
    if T > MAX_BITS:
        raise OptionError(f"bitserial supports T <= {MAX_BITS}, got -T {T}: it sends one bit of "
                          f"the level per slice, and the op's bits attribute is at most "
                          f"{MAX_BITS}", code="SNN-E354",
                          hint=f"use -T {MAX_BITS} or less (L = 2^T - 1 levels, e.g. -T 4 for "
                               f"L = 15), or a per-slice neuron such as --neuron if")


def from_quant_clip(clip: QuantClipParams, options: CompileOptions) -> dict[str, Any]:
    T, L = options.timesteps, clip.levels
    if L != 2 ** T - 1:
        fits = L >= 1 and not (L & (L + 1))
        other_t = f"-T {int(math.log2(L + 1))}" if fits else ""
        if L == options.levels:   # calibrated with -L (else the clip's L comes from the graph)
            hint = (f"drop -L (bitserial takes L = {2 ** T - 1} at T = {T})"
                    + (f", or use {other_t}" if other_t else ""))
        else:                              # the clip comes from a QCFS-trained graph
            hint = other_t or f"retrain the QCFS model with L = 2^T - 1 (e.g. {2 ** T - 1})"
        raise OptionError(f"bitserial needs L = 2^T - 1 = {2 ** T - 1} levels at T={T}, the "
                          f"clip has L={L}", code="SNN-E308", hint=hint)
    return {"theta": c.float32_list(clip.lam), "v_init": float(clip.phi), "bits": T}


def _events(y: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """One event per set bit: per nonzero slice element, or popcount(q) of a decoded output."""
    if not attrs.get("decoded"):
        return c.binary_events(y, attrs)
    y = np.asarray(y, dtype=c.F32)
    bits = int(attrs.get("bits") or attrs.get("T", 1))
    theta = c.per_channel(attrs.get("theta", [1.0]), y)
    q = np.rint(y * (c.F32(2 ** bits - 1) / theta)).astype(np.int64)
    return sum((q >> k) & 1 for k in range(bits)).astype(np.int64)


# -- Loihi integer model (registry.LoihiInfo): a window neuron, q in units of theta / L

def _loihi_fixed_point(attrs, theta, fp):
    bits = int(attrs.get("bits") or attrs.get("T", 1))
    levels = (1 << bits) - 1
    u = theta / levels
    return u, u, float(bits * levels), {"bits": bits, "levels": levels, "v_init": attrs["v_init"]}


def _loihi_int_run(sim, g, x, steps):
    fixed = g.fixed
    bits, one = fixed["bits"], 1 << g.frac_bits
    acc = bits * x[0] if x.shape[0] == 1 else x.sum(axis=0)
    q = np.clip(np.floor_divide(acc + bits * fixed["v_init_int"], bits * one), 0,
                fixed["levels"])
    pay = np.zeros((steps,) + q.shape, dtype=np.int64)
    ev = np.zeros_like(pay)
    for k in range(min(steps, bits)):
        bit = (q >> k) & 1
        ev[k] = bit
        pay[k] = bit * (bits << k)
    return pay, ev


SPEC = register_neuron(NeuronSpec(
    key="bitserial",
    op_type="BitSerialNeuron",
    doc="Bit-serial neuron (seed 000): accumulate the slices, quantize once to q in 0..2^B-1, "
        "send bit k of q in slice k with weight B*2^k*theta/L. The model-local function "
        "implements the folded form only (input x, output y; B = T).",
    attributes=ATTRIBUTES,
    state_planes=2,
    reference=reference,
    function_proto=function_proto,
    from_quant_clip=from_quant_clip,
    events=_events,
    levels_for=lambda T, options: 2 ** T - 1,
    check_options=_check_options,
    needs_bias_shift=True,
    window_attr="bits",
    decoded_attr="decoded",
    loihi=LoihiInfo("graded", "none (accumulate an epoch, then emit the bits of q)", note=(
        "emulated as a Loihi 2 microcoded window neuron: an epoch accumulator, then bit k of q "
        "in slice k as the graded payload B * 2**k (the slice weight folded into the payload); "
        "no public Lava/NetX neuron does this, so no NetX export"),
        fixed_point=_loihi_fixed_point, int_fields=c.loihi_unit_threshold,
        peak_payload=lambda fixed: fixed["bits"] << (fixed["bits"] - 1), int_run=_loihi_int_run),
    nir=NirInfo(refusal=(
        "neuron 'bitserial' accumulates a window, then sends bit k of the count as a graded "
        "payload 2^k")),
))
