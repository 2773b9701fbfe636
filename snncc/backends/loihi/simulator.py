"""Bit-accurate integer simulator of a quantized netlist (NumPy, int64 arithmetic).

Groups run in topological order, each over the whole window of ``total_steps`` slices (the
folded schedule; for causal neurons this equals step-by-step execution, and the bit-serial neuron
is defined on the window). Per slice a group's current is the sum of its blocks applied to the
source payloads with integer weights ``mant << exp``, plus ``bias_mant << bias_exp``; a current
that only depends on the analog input is computed once. Membranes saturate at the 24-bit state
range (counted in :class:`SimResult`).

Each neuron's integer dynamics are its module's ``LoihiInfo.int_step`` (per slice) or
``int_run`` (window neurons); the simulator passes itself in as ``sim`` (``sim.sat``, ``sim.hw``,
``sim.fp``).

``semantics``:

* ``"emulated"`` (default): the neuron's own rule (soft reset, ``>=`` where the op says so) in
  integer arithmetic, as a Loihi 2 microcoded neuron runs it. Agrees exactly with the ONNX model
  whenever the quantized weights, biases and thresholds are exact (``meta.quantization.all_exact``)
  and float32 arithmetic of the ONNX model is exact (dyadic values).
* ``"hardware"``: stock Loihi as the NetX export deploys it. Groups a NetX CUBA neuron expresses
  (IF, LIF and the readout; ``netx.netx_exportable``) run Lava's bit-accurate CUBA model
  (``PyLifModelBitAcc``) on their NetX parameters (:func:`snncc.backends.loihi.netx.netx_params`:
  thresholds and biases in NetX units, biases rounded as the file holds them): v starts at 0,
  ``u = a << 6`` (one-step current, wrapped to 24 bits as Lava does, after the conv's own 24-bit
  wrap), ``v = decay(v) + u + bias << 6`` clipped to +-(2**23 - 1), fire on ``v > vth << 6``, reset
  v to 0. The readout is a non-spiking CUBA layer whose voltage over the counted steps is the
  output (``SimResult.raw``: Lava's integer voltage, bit for bit what ``examples/lava/run_netx.py``
  reads). Graded and microcoded neurons (GN, MT, bit-serial, SRP) have no stock CUBA form; they
  keep their own rule with ``>`` and a reset to 0 after any spike. Reported side by side with the
  emulated accuracy.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from snncc.backends.loihi.netlist import Group, Netlist, block_apply, load
from snncc.backends.loihi.netx import netx_exportable, netx_input_shift, netx_params
from snncc.backends.loihi.quantize import FixedPoint
from snncc.errors import BackendCapabilityError, OptionError
from snncc.neurons.registry import get_neuron

__all__ = ["SEMANTICS", "SimResult", "simulate", "run_netlist", "decode_voltage"]

logger = logging.getLogger("snncc.backends.loihi.simulator")

SEMANTICS = ("emulated", "hardware")


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]                  # graph output name -> float32 [N, ...]
    events: dict[str, np.ndarray]                   # group -> int64 [N, *shape], all slices
    payloads: dict[str, np.ndarray] = field(default_factory=dict)  # group -> [S|1, N, *view]
    saturations: int = 0                            # membrane updates clipped to 24 bits
    saturated: dict[str, int] = field(default_factory=dict)   # the same, per group
    #: hardware semantics: per CUBA group the integer the Lava run reads: a readout's voltage
    #: (Lava units, NetX units x 64) over the counted steps, a spiking group's spike counts over
    #: the counted steps; int64 [N, *shape]
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    #: hardware semantics: synaptic currents that wrapped around at 24 bits, as Lava's do (a
    #: large positive current turns negative); counted, not only simulated
    wraps: int = 0
    #: per readout: the largest |voltage| over the window in state integers (emulated run; the
    #: Loihi backend sizes the readout's NetX unit by it, ``netx.netx_params``)
    readout_peaks: dict[str, int] = field(default_factory=dict)


class _Sim:
    def __init__(self, net: Netlist, hardware: bool, fp: FixedPoint):
        self.net, self.hw = net, hardware
        self.lo, self.hi = -(1 << (fp.state_bits - 1)), (1 << (fp.state_bits - 1)) - 1
        self.fp = fp
        self.saturations = 0
        self.wraps = 0
        self.group = ""                                  # the group being simulated
        self.by_group: dict[str, int] = {}               # its saturations
        self.peaks: dict[str, int] = {}
        self.f32: tuple[str | None, np.ndarray | None] = (None, None)
        self.x = np.zeros((0,))                           # the analog input, float64
        self.netx_shift = netx_input_shift(net) if hardware else 0   # computed once a run

    def input_payload(self, frac_bits: int) -> np.ndarray:
        """The analog input as integer payloads ``round(x * 2**frac_bits)`` [1, N, *view]."""
        top = (1 << (self.fp.payload_bits - 1)) - 1
        return np.clip(np.round(self.x * 2.0 ** frac_bits), -top, top).astype(np.int64) \
            .reshape((1, len(self.x)) + self.net.groups[0].view)

    def clipped(self, count: int) -> None:
        if count:
            self.saturations += count
            self.by_group[self.group] = self.by_group.get(self.group, 0) + count

    def sat(self, v: np.ndarray) -> np.ndarray:
        bad = (v < self.lo) | (v > self.hi)
        if bad.any():
            self.clipped(int(bad.sum()))
            v = np.clip(v, self.lo, self.hi)
        return v

    def current(self, g: Group, payloads: dict[str, np.ndarray], n: int,
                weights: dict[str, np.ndarray] | None = None,
                bias: np.ndarray | None = None) -> np.ndarray:
        """Input current per slice [S|1, N, *view] (int64): blocks with their integer weights
        (``weights`` overrides them by block name) plus the bias (``bias`` overrides it)."""
        blocks = self.net.blocks_into(g.name)
        steps = max((payloads[b.src].shape[0] for b in blocks), default=1)
        cur = None
        for b in blocks:
            p = payloads[b.src]
            # integer weights mant << exp: multiply by the mantissas, shift the sums
            w, shift = ((b.mant.astype(np.int64), b.exp) if weights is None
                        else (weights[b.name], 0))
            x = p.reshape((-1,) + b.src_view)
            fan_in = w[0].size if b.kind == "conv" else w.shape[1]
            peak = self.peak(b.src, p)
            bound = peak * max(int(w.max(initial=0)), -int(w.min(initial=0))) * fan_in
            if bound < 2 ** 24 and b.kind == "conv" and x.size * w[0].size > ORT_MIN_WORK:
                # every partial sum is an integer below 2**24: ONNX Runtime's float32 Conv
                # (MLAS) gives exact integers in any summation order; the shift goes into the
                # weights when the sums stay below 2**24 with it
                fold = bound << shift < 2 ** 24
                out = self.ort_conv(b, self.as_float32(b.src, x),
                                    w << shift if fold else w).astype(np.int64)
                shift = 0 if fold else shift
            elif bound < 2 ** 53:
                # below 2**24 (2**53): float32 (float64) BLAS sums are exact in any order
                ft = np.float32 if bound < 2 ** 24 else np.float64
                xf = self.as_float32(b.src, x) if ft is np.float32 else x.astype(ft)
                out = block_apply(b, xf, w.astype(ft)).astype(np.int64)
            else:
                out = block_apply(b, x, w)
            if shift:
                out <<= shift
            out = out.reshape(p.shape[:2] + out.shape[1:])
            if cur is None and p.shape[0] == steps and b.offset == 0 and b.rows == g.view[0]:
                cur = out
                continue
            if cur is None:
                cur = np.zeros((steps, n) + g.view, dtype=np.int64)
            cur[:, :, b.offset:b.offset + b.rows] += out
        if cur is None:
            cur = np.zeros((steps, n) + g.view, dtype=np.int64)
        cur += _bias_int(g) if bias is None else bias
        return cur

    def peak(self, name: str, p: np.ndarray) -> int:
        """max |payload| of a group (set once per run; a residual source feeds several blocks)."""
        if name not in self.peaks:
            self.peaks[name] = max(int(p.max(initial=0)), -int(p.min(initial=0)))
        return self.peaks[name]

    def as_float32(self, name: str, x: np.ndarray) -> np.ndarray:
        """A group's integer payloads as float32 (exact: |payload| < 2**24), converted once for
        the blocks it feeds in a row (only the latest group is kept)."""
        if self.f32[0] != name:
            self.f32 = (name, x.astype(np.float32))
        return self.f32[1]

    def ort_conv(self, b, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A large float32 conv block through ONNX Runtime's Conv (MLAS): exact like the NumPy
        path, because every partial sum is an integer below 2**24 (checked by the caller).
        Each block runs once per simulation, so the one-node session is not kept."""
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        (sh, sw), (ho, wo) = b.stride, b.out_hw
        kh, kw = w.shape[2:]
        need = ((ho - 1) * sh + kh, (wo - 1) * sw + kw)
        h, wd = x.shape[2:]
        # the conv pads itself where the padded input covers x (no copy); else pad/crop here
        ends = (need[0] - b.pads[0] - h, need[1] - b.pads[1] - wd)
        own = min(ends) >= 0
        pads = [b.pads[0], b.pads[1], ends[0], ends[1]] if own else [0, 0, 0, 0]
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(b.stride),
                                group=b.groups, pads=pads)
        graph = helper.make_graph(
            [node], "block", [helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, ["N", b.src_view[0], None, None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w.astype(np.float32), "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        xp = x if own else _pad_begin(x, b.pads, need)
        return sess.run(None, {"x": xp})[0][:, :, :ho, :wo]

    # ------------------------------------------------------------------ stock CUBA (hardware)
    def run_cuba(self, g: Group, payloads: dict[str, np.ndarray], n: int, steps: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Lava's ``PyLifModelBitAcc`` (and ``LIFReset`` from the start of the window) on the
        group's NetX parameters (weights, threshold and bias as ``network.net`` holds them).
        Returns (spikes as int64 payload [S, N, *view], voltage after each step, same shape)."""
        p = netx_params(self.net, g, self.netx_shift)
        if p["input_shift"]:   # the NetX input comes 2**shift coarser (netx_input_shift)
            inp = self.net.groups[0].name
            payloads = {**payloads, inp: self.input_payload(self.fp.input_frac_bits
                                                            - p["input_shift"])}
            self.peaks.pop(inp, None)          # the caches hold the netlist's input payload
            self.f32 = (None, None)
        a = self.current(g, payloads, n, weights=p["weights"], bias=0)   # NetX units
        if p["input_shift"]:
            self.peaks.pop(inp, None)
            self.f32 = (None, None)
        if any(b.kind == "conv" for b in self.net.blocks_into(g.name)):
            wrapped = _wrap_signed(a, 24)          # Lava's conv synapse: signed_clamp(x, 24)
            self.wraps += int(np.count_nonzero(wrapped != a)) * (steps if a.shape[0] == 1 else 1)
            a = wrapped
        a = np.broadcast_to(a, (steps,) + a.shape[1:])
        top = (1 << (LAVA_UV_BITS - 1))
        bias = p["bias"].astype(np.int64) << LAVA_SHIFT
        vth = np.int64(p["vth"]) << LAVA_SHIFT
        keep = (1 << LAVA_DECAY_BITS) - p["decay_v"]
        v = np.zeros(a.shape[1:], dtype=np.int64)
        spikes = np.zeros(a.shape, dtype=np.int64)
        volts = np.zeros(a.shape, dtype=np.int64)
        for t in range(steps):
            # Lava shifts the synaptic input left in int32 (a dense layer on far out-of-range
            # input can pass 2**25 NetX units and wrap there first), then wraps once at 24 bits
            d = _wrap_signed(a[t] << LAVA_SHIFT, 32)
            u = np.where(d > top, d - 2 * top, d)
            u = np.where(u <= -top, d + 2 * top, u)
            self.wraps += int(np.count_nonzero(u != (a[t] << LAVA_SHIFT)))
            dv = v * keep
            v = np.sign(dv) * (np.abs(dv) >> LAVA_DECAY_BITS) + u + bias
            clipped = np.clip(v, -top + 1, top - 1)
            self.clipped(int(np.count_nonzero(clipped != v)))
            s = clipped > vth
            v = np.where(s, 0, clipped)
            spikes[t], volts[t] = s, v
        return spikes, volts

    # ------------------------------------------------------------------ neuron dynamics
    def run_neuron(self, g: Group, x: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The neuron's integer model from its ``LoihiInfo``: ``int_run`` over the window, or
        ``int_step`` slice by slice."""
        try:
            model = get_neuron(g.neuron).loihi
        except OptionError:
            model = None
        if model is not None and model.int_run is not None:
            return model.int_run(self, g, x, steps)
        if model is None or model.int_step is None:
            raise BackendCapabilityError(f"group {g.name}: neuron '{g.neuron}' cannot be "
                                         "simulated", code="SNN-E652",
                                         hint="recompile the netlist")
        f = g.fixed
        x = np.broadcast_to(x, (steps,) + x.shape[1:])
        pay = np.zeros(x.shape, dtype=np.int64)
        ev = np.zeros(x.shape, dtype=np.int64)
        v = np.full(x.shape[1:], f["v_init_int"], dtype=np.int64)
        keep = np.ones(x.shape[1:], dtype=bool)
        for t in range(steps):
            pay[t], ev[t], v, keep = model.int_step(self, g, f, v, x[t], t, keep)
        return pay, ev


#: Lava's bit-accurate CUBA: 24-bit u and v, inputs / thresholds / biases shifted left by 6,
#: 12-bit decays (lava.proc.lif.models.AbstractPyLifModelFixed)
LAVA_UV_BITS, LAVA_SHIFT, LAVA_DECAY_BITS = 24, 6, 12


#: conv blocks with more multiply-adds than this (per call) run through ONNX Runtime
ORT_MIN_WORK = 1 << 22


def _pad_begin(x: np.ndarray, pads: tuple[int, int], need: tuple[int, int]) -> np.ndarray:
    """``x`` [B, C, H, W] with ``pads`` zeros at the begin, cut or zero-extended to ``need``."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, need[0], need[1]), dtype=x.dtype)
    hh, ww = min(h, need[0] - pads[0]), min(w, need[1] - pads[1])
    out[:, :, pads[0]:pads[0] + hh, pads[1]:pads[1] + ww] = x[:, :, :hh, :ww]
    return out


def _check_netx_vintage(net: Netlist, fp: FixedPoint, shift: int) -> None:
    """The hardware semantics compute the NetX parameters from the netlist with today's rules;
    warn when the folder's network.net was written under other ones (an earlier snncc held the
    biases to 16 bits and sent the input at the netlist's scale), so that Lava and this run would
    differ."""
    netx = net.meta.get("netx") or {}
    if not netx.get("path"):
        return
    want = fp.input_frac_bits - shift
    if netx.get("input_frac_bits") != want:
        logger.warning("%s", "this folder's network.net was written by an earlier snncc, under "
                       "other NetX rules (biases held to 16 bits, the input at the netlist's "
                       "scale): the hardware semantics follow today's, so they may differ from "
                       "what Lava computes from that file; compile the folder again to compare "
                       "bit for bit")


def _bias_int(g: Group) -> np.ndarray:
    return g.bias_mant.astype(np.int64) << g.bias_exp.astype(np.int64)


def _wrap_signed(x: np.ndarray, bits: int) -> np.ndarray:
    base = 1 << bits
    return (x + base // 2) % base - base // 2


def decode_voltage(net: Netlist, g: Group, raw: np.ndarray) -> np.ndarray:
    """A hardware readout's value from its Lava voltage over the counted steps (``raw``, Lava
    units, [N, *shape] or [N, *view]): NetX unit = ``unit`` state integers, ``2**F`` state
    integers = one state unit; float64 [N, *view] (``simulate`` casts outputs to float32)."""
    unit = netx_params(net, g)["unit"]
    raw = np.asarray(raw).reshape((-1,) + g.view)
    return raw / 2.0 ** LAVA_SHIFT * unit / net.counted_steps / 2.0 ** g.frac_bits * \
        g.state_unit.reshape(-1, 1, 1)


def simulate(net: Netlist, x: np.ndarray, *, semantics: str = "emulated",
             fp: FixedPoint | None = None) -> SimResult:
    """Run the quantized netlist on the analog input ``x`` [N, *input shape]."""
    if semantics not in SEMANTICS:
        raise BackendCapabilityError(f"unknown semantics {semantics!r}", code="SNN-E651",
                                     hint="choose one of: " + ", ".join(SEMANTICS))
    fp = fp or FixedPoint(**net.meta.get("quantization", {}).get("fixed_point", {}))
    inp = net.groups[0]
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1:] != inp.shape:
        raise BackendCapabilityError(f"input has shape {x.shape}, the netlist expects "
                                     f"[N, {', '.join(map(str, inp.shape))}]", code="SNN-E651",
                                     hint="pass a batch of inputs of the compiled shape")
    sim = _Sim(net, semantics == "hardware", fp)
    if sim.hw:
        _check_netx_vintage(net, fp, sim.netx_shift)
    n, steps, counted = x.shape[0], net.total_steps, net.counted_steps
    top = (1 << (fp.payload_bits - 1)) - 1
    sim.x = x
    payloads = {inp.name: sim.input_payload(fp.input_frac_bits)}
    events, values, raw, peaks = {}, {}, {}, {}
    for g in net.groups[1:]:
        sim.group = g.name
        if sim.hw and netx_exportable(g):
            spikes, volts = sim.run_cuba(g, payloads, n, steps)
            first = steps - counted
            if g.kind == "readout":
                # the voltage gained over the counted steps (Lava units), decoded like the
                # emulated readout: NetX unit = 2**(e-1) state integers, state / 2**F = su
                r = volts[-1] - (volts[first - 1] if first > 0 else 0)
                raw[g.name] = r.reshape((n,) + g.shape)
                values[g.name] = decode_voltage(net, g, r)
                continue
            payloads[g.name] = spikes
            events[g.name] = spikes.sum(axis=0).reshape((n,) + g.shape)
            raw[g.name] = spikes[first:].sum(axis=0).reshape((n,) + g.shape)
            values[g.name] = spikes[first:].sum(axis=0) / counted * g.unit.reshape(-1, 1, 1)
            continue
        cur = sim.current(g, payloads, n)
        if g.kind == "readout":
            full = np.broadcast_to(cur, (steps,) + cur.shape[1:])
            peaks[g.name] = int(np.abs(np.cumsum(full, axis=0)).max(initial=0))
            per_step = full[steps - counted:]
            values[g.name] = per_step.sum(axis=0) / counted / 2.0 ** g.frac_bits * \
                g.state_unit.reshape(-1, 1, 1)
            continue
        if g.kind == "relay":  # sends its current (F = 0: state integers = payload units)
            pay = np.clip(cur, -top, top)
            sim.clipped(int(np.count_nonzero(pay != cur)))
            ev = np.broadcast_to((pay != 0).astype(np.int64), (steps,) + pay.shape[1:])
            pay = np.broadcast_to(pay, (steps,) + pay.shape[1:])
        else:
            pay, ev = sim.run_neuron(g, cur, steps)
        payloads[g.name] = pay
        events[g.name] = ev.sum(axis=0).reshape((n,) + g.shape)
        values[g.name] = pay[steps - counted:].sum(axis=0) / counted * \
            g.unit.reshape(-1, 1, 1)
    outputs = {o["name"]: values[o["group"]].reshape((n,) + net.group(o["group"]).shape)
               .astype(np.float32) for o in net.outputs}
    return SimResult(outputs, events, payloads, sim.saturations, sim.by_group, raw,
                     wraps=sim.wraps, readout_peaks=peaks)


def run_netlist(out_dir: str | os.PathLike | Netlist, x: np.ndarray, *,
                semantics: str = "emulated") -> tuple[dict[str, np.ndarray],
                                                      dict[str, np.ndarray]]:
    """``snncc run OUTDIR --input X.npy``: (outputs by graph output name, events per group).

    ``events[group]`` is int64 [N, *group shape]: unit events over all slices, the input of
    :func:`snncc.analysis.synops.count_synops`.
    """
    net = out_dir if isinstance(out_dir, Netlist) else load(out_dir)
    res = simulate(net, x, semantics=semantics)
    message = saturation_message(res)
    if message:
        logger.warning("%s", message)
    return res.outputs, res.events


def saturation_message(res: SimResult) -> str | None:
    """What a run's saturated membrane updates mean, or None when there were none."""
    wraps = res.wraps
    if not res.saturations and not wraps:
        return None
    parts = []
    if res.saturations:
        worst = max(res.saturated, key=res.saturated.get)
        parts.append(f"{res.saturations} membrane updates saturated at "
                     f"{FixedPoint().state_bits} bits ({res.saturated[worst]} in '{worst}')")
    if wraps:   # a hardware user found these only by comparing with a wider state
        parts.append(f"{wraps} synaptic currents wrapped around (at 24 bits, or first at 32 "
                     "when shifted into Lava's current register), as Lava's do (a large current "
                     "changes sign)")
    does = "clips them" if not wraps else "clips and wraps them" if res.saturations else \
        "wraps them"
    return ("; ".join(parts) + f"; the simulator {does} as Loihi does, so its outputs, accuracy "
            "and fidelity figures include their effect")
