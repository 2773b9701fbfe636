"""Fixed-point parameters for Loihi: fold spike values into weights, 8-bit weight mantissas with a
per-block exponent, threshold / bias mantissas, decays.

Units (docs/netlist.md): every group g has per channel c a *state unit* ``su[c]`` (the float value
that ``2**F`` state integers stand for; F = ``frac_bits``) and a *payload unit* ``unit[c]`` (the
float value of one unit of the spike payload it sends):

========= ===================== ============= ===================================================
neuron    state unit            payload unit  integer thresholds (state units x 2**F)
========= ===================== ============= ===================================================
if, srp   theta                 theta         1
lif       theta                 amplitude     1, voltage decay round(4096 * (1 - leak))
gn        theta / tau           theta / tau   c = floor(v / 2**F) clipped to tau
mt        theta * g             theta * g     fractions / g (g = the smallest fraction)
bitserial theta / L             theta / L     q = floor(U / 2**F) clipped to L = 2**B - 1
readout   1                     -             none (accumulates)
relay     see below             = state unit  none: F = 0, sends its current as the payload
input     -                     2**-in_bits   analog values sent as graded payloads
========= ===================== ============= ===================================================

A relay's state unit per channel is the smallest incoming weight ``W * unit_s`` when every
weight is a multiple of it up to 64 (a pooling window: all weights 1, so the payload counts the
spikes in the window and the next block keeps its precision), else the largest weight / 64 (7-bit
weights). Its payload is its current.

A neuron's row is its module's ``LoihiInfo`` (``fixed_point``, ``int_fields``, ``peak_payload``;
see :class:`snncc.neurons.registry.LoihiInfo`); this module never branches on neuron names.

Per-channel thresholds thus fold into the incoming weights and biases (one threshold mantissa per
group). A block from s to d gets ``W_fold[o, i] = W[o, i] * unit_s[i] / su_d[o] * 2**F_d``,
stored as ``mant * 2**exp`` with ``mant`` in [-128, 127] and the smallest ``exp`` in
[0, weight_exp_max] that avoids saturation; ``F_d`` is chosen so that the largest threshold is
about ``2**vth_target_bits``, lowered (not below ``vth_exp``) where an incoming weight or a
bias would otherwise saturate its mantissa. Biases become ``bias_mant * 2**bias_exp`` per neuron
(13-bit signed magnitude mantissa, exponent 0..7). Every block and group gets an error record;
saturation is an error (SNN-E630 weights, SNN-E631 biases), as is a threshold that does not fit
(SNN-E632), a neuron parameter with no fixed-point form (SNN-E633) or a relay whose current can
exceed the payload (SNN-E634).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from snncc.backends.loihi.netlist import Block, Group, Netlist
from snncc.errors import Diagnostic
from snncc.neurons.common import channel_values
from snncc.neurons.registry import LoihiInfo, get_neuron

__all__ = ["FixedPoint", "quantize", "folded_weight", "weight_int"]

PASS = "loihi-quantize"


@dataclass(frozen=True)
class FixedPoint:
    """Word widths assumed for Loihi 2 (Loihi 1 widths from nengo-loihi / Lava where Loihi 2
    publishes none; see docs/netlist.md). All configurable."""

    weight_bits: int = 8            # signed mantissa
    weight_exp_max: int = 13        # Loihi 1: scale 2**(6 + wgtExp), wgtExp <= 7
    state_bits: int = 24            # u, v saturate at +-2**23
    vth_target_bits: int = 16       # the largest threshold of a group is ~2**16
    vth_mant_bits: int = 17
    vth_exp: int = 6                # vth = vth_mant * 2**6
    bias_mant_bits: int = 13        # signed magnitude
    bias_exp_max: int = 7
    decay_bits: int = 12
    input_frac_bits: int = 8        # the analog input is sent as round(x * 2**8)
    payload_bits: int = 24          # graded spike payload (Lava's fixed-point models use 24)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def _loihi(g: Group) -> LoihiInfo:
    return get_neuron(g.neuron).loihi


def _neuron_units(g: Group, fp: FixedPoint) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """(payload unit, state unit, largest threshold in state units, fixed fields w/o 2**F)."""
    fixed_point = _loihi(g).fixed_point
    if fixed_point is None:
        raise ValueError(f"neuron '{g.neuron}' has no Loihi fixed-point model")
    return fixed_point(g.attrs, channel_values(g.attrs.get("theta", 1.0), g.view[0]), fp)


def _readout_frac_bits(net: Netlist, g: Group, fp: FixedPoint) -> int:
    """Worst-case bound of |current| x steps must fit the state (sign bit + one spare)."""
    bound = np.abs(g.bias).reshape(g.view[0], -1).max(axis=1) if g.bias is not None else 0.0
    total = np.zeros(g.view[0]) + bound
    for b in net.blocks_into(g.name):
        src = net.group(b.src)
        peak = _peak_payload(src, fp) * src.unit.max()
        w = np.abs(b.weight).reshape(b.rows, -1).sum(axis=1)
        total[b.offset:b.offset + b.rows] += w * peak
    top = max(float(total.max()) * net.total_steps, 1e-30)
    return int(np.clip(fp.state_bits - 2 - math.ceil(math.log2(top)), fp.vth_exp,
                       fp.vth_target_bits))


#: a relay's largest incoming folded weight (see the table above)
RELAY_WEIGHT = 64
#: a relay fed by the input is bounded for inputs up to this many times the calibration
#: samples' largest magnitude (the whole payload where that is not known)
INPUT_HEADROOM = 2.0


def _relay_units(net: Netlist, g: Group, fp: FixedPoint, diags: list[Diagnostic]) -> None:
    """State / payload unit per channel of a relay (F = 0) and its peak payload (SNN-E634 when
    that exceeds the payload width); its sources must have their units already."""
    g.frac_bits, g.state_unit = 0, np.ones(g.view[0])
    # |W| * unit_src per block (su = 1, F = 0), computed once: the unit choice and the bound
    blocks = [(b, net.group(b.src), np.abs(folded_weight(b, net.group(b.src), g))
               .reshape(b.rows, -1)) for b in net.blocks_into(g.name)]
    rows: list[list[np.ndarray]] = [[] for _ in range(g.view[0])]
    for b, _, w in blocks:
        for r in range(b.rows):
            rows[b.offset + r].append(w[r][w[r] > 0])
    su = np.ones(g.view[0])
    for c, parts in enumerate(rows):
        w = np.concatenate(parts) if parts else np.zeros(0)
        if w.size == 0:
            continue
        step = w.min()   # equal weights (pooling) or small multiples of one: integer payloads
        ratio = w / step
        exact = np.all(np.abs(ratio - np.round(ratio)) < 1e-9) and ratio.max() <= RELAY_WEIGHT
        su[c] = step if exact else w.max() / RELAY_WEIGHT
    g.unit = g.state_unit = su
    bound = np.abs(g.bias).reshape(g.view[0], -1).max(axis=1) / su if g.bias is not None \
        else np.zeros(g.view[0])
    for b, src, w in blocks:
        rows_su = su[b.offset:b.offset + b.rows]
        bound[b.offset:b.offset + b.rows] += w.sum(axis=1) / rows_su * _peak_payload(src, fp)
    g.fixed = {"peak_payload": float(bound.max(initial=0.0))}
    if g.fixed["peak_payload"] > (1 << (fp.payload_bits - 1)) - 1:
        diags.append(Diagnostic(
            "SNN-E634", f"relay {g.name}: its current can reach {g.fixed['peak_payload']:.3g} "
            f"units, beyond the {fp.payload_bits}-bit payload", pass_name=PASS, node=g.source,
            hint="put a neuron between the linear layers"))


def _peak_payload(g: Group, fp: FixedPoint) -> float:
    if g.kind == "input":
        return float(g.fixed.get("peak_payload", 1 << (fp.payload_bits - 1)))
    if g.kind == "relay":
        return float(g.fixed["peak_payload"])
    peak = _loihi(g).peak_payload if g.kind == "neuron" else None
    return 1.0 if peak is None else peak(g.fixed)


def _units(net: Netlist, g: Group, fp: FixedPoint, diags: list[Diagnostic],
           input_max: float | None = None) -> None:
    """Units, F and fixed fields of ``g``; called in topological order (a relay's units follow
    from its sources'). An input's peak payload is ``INPUT_HEADROOM * input_max`` in its units
    where the calibration samples' largest magnitude is known, else the whole payload."""
    if g.kind == "input":
        g.unit = np.full(g.view[0], 2.0 ** -fp.input_frac_bits)
        g.fixed = {"input_frac_bits": fp.input_frac_bits}
        if input_max is not None and input_max > 0:
            g.fixed["peak_payload"] = min(float(1 << (fp.payload_bits - 1)),
                                          math.ceil(INPUT_HEADROOM * input_max
                                                    * 2.0 ** fp.input_frac_bits))
        return
    if g.kind == "readout":
        g.unit = g.state_unit = np.ones(g.view[0])
        return
    if g.kind == "relay":
        _relay_units(net, g, fp, diags)
        return
    try:
        unit, su, top, fixed = _neuron_units(g, fp)
    except ValueError as exc:
        diags.append(Diagnostic("SNN-E633", str(exc), pass_name=PASS, node=g.source,
                                hint="choose neuron parameters with a fixed-point form"))
        unit, su, top, fixed = np.ones(g.view[0]), np.ones(g.view[0]), 1.0, {}
    g.unit, g.state_unit, g.fixed = unit, su, fixed
    g.frac_bits = fp.vth_target_bits - math.ceil(math.log2(max(top, 1.0)))
    if g.frac_bits < fp.vth_exp:
        diags.append(Diagnostic("SNN-E632", f"the largest threshold ({top:g} units) leaves "
                                f"{g.frac_bits} fraction bits, fewer than {fp.vth_exp}",
                                pass_name=PASS, node=g.source,
                                hint="compile with a smaller -T (each bit-serial step "
                                "doubles the largest threshold)" if g.neuron == "bitserial"
                                else "use fewer levels per neuron (a smaller --tau, fewer MT "
                                "thresholds), or raise FixedPoint.vth_target_bits (Python API)"))
        g.frac_bits = fp.vth_exp   # an error already: the rest of the layout must not fail on it


def _fit_frac_bits(net: Netlist, g: Group, fp: FixedPoint) -> None:
    """Lower a neuron group's F (not below ``vth_exp``) by as many bits as its largest incoming
    folded weight or bias would exceed the mantissa at the largest exponent: a layer whose single
    input spike is worth many thresholds (big untrained or badly scaled nets) keeps exact-as-can-be
    weights instead of saturating them (SNN-E630/E631), at the price of threshold precision."""
    over = 0
    top_w = (1 << (fp.weight_bits - 1)) - 1
    for b in net.blocks_into(g.name):
        peak = float(np.abs(folded_weight(b, net.group(b.src), g)).max(initial=0.0))
        if peak > 0:
            over = max(over, _exponent(peak, top_w) - fp.weight_exp_max)
    if g.bias is not None:
        peak = float(np.abs(_folded_bias(g)).max(initial=0.0))
        if peak > 0:
            over = max(over, _exponent(peak, (1 << (fp.bias_mant_bits - 1)) - 1)
                       - fp.bias_exp_max)
    if over > 0:
        g.frac_bits = max(fp.vth_exp, g.frac_bits - over)


def _fix_thresholds(g: Group, fp: FixedPoint) -> None:
    """Integer thresholds and initial values (in state integers)."""
    one = 1 << g.frac_bits
    f = g.fixed
    if "thresholds" in f:
        f["vth"] = [t * one for t in f["thresholds"]]
        f["vth_mant"] = [v >> fp.vth_exp for v in f["vth"]]
    f["v_init_int"] = int(round(float(f.get("v_init", 0.0)) * one))
    int_fields = _loihi(g).int_fields if g.kind == "neuron" else None
    if int_fields is not None:
        f.update(int_fields(f, one, fp))


def folded_weight(block: Block, src: Group, dst: Group) -> np.ndarray:
    """``W * unit_src[in channel] / state_unit_dst[out channel] * 2**F_dst`` (float64)."""
    w = block.weight
    rows = block.rows
    out_scale = 2.0 ** dst.frac_bits / dst.state_unit[block.offset:block.offset + rows]
    if block.kind == "conv":
        o, cg = w.shape[:2]
        og = o // block.groups
        in_ch = (np.arange(o)[:, None] // og) * cg + np.arange(cg)[None, :]
        scale = src.unit[in_ch] * out_scale[:, None]
        return w * scale[:, :, None, None]
    hw = src.view[1] * src.view[2]
    in_scale = src.unit[np.arange(w.shape[1]) // hw]
    return w * in_scale[None, :] * out_scale[:, None]


def _exponent(peak: float, top: int) -> int:
    """The smallest exponent e with peak / 2**e <= top (peak > 0)."""
    return math.ceil(math.log2(peak / top))


def _folded_bias(g: Group) -> np.ndarray:
    """The group's bias in state integers at its F: ``bias / state_unit * 2**F`` (float64)."""
    bias = g.bias if g.bias is not None else np.zeros(g.view)
    return bias / g.state_unit.reshape(-1, 1, 1) * 2.0 ** g.frac_bits


def _mantissa_dtype(bits: int) -> type:
    """The smallest signed integer type that holds ``bits``-bit mantissas (int8 for Loihi's 8-bit
    weights; a wider ``FixedPoint`` must not wrap around in storage)."""
    return next(t for t, width in ((np.int8, 8), (np.int16, 16), (np.int32, 32), (np.int64, 64))
                if bits <= width)


def weight_int(block: Block) -> np.ndarray:
    """The integer weights the simulator uses: ``mant * 2**exp`` as int64."""
    return block.mant.astype(np.int64) << block.exp


def _quantize_block(b: Block, wf: np.ndarray, fp: FixedPoint) -> dict[str, Any]:
    top = (1 << (fp.weight_bits - 1)) - 1
    peak = float(np.abs(wf).max()) if wf.size else 0.0
    exp = max(0, _exponent(peak, top)) if peak > 0 else 0
    saturated = exp > fp.weight_exp_max
    exp = min(exp, fp.weight_exp_max)
    mant = np.clip(np.round(wf / 2.0 ** exp), -top - 1, top)
    b.mant, b.exp = mant.astype(_mantissa_dtype(fp.weight_bits)), int(exp)
    err = mant * 2.0 ** exp - wf
    nonzero = wf != 0
    return {"block": b.name, "exp": b.exp, "saturated": bool(saturated),
            "max_rel_err": float(np.abs(err).max() / peak) if peak else 0.0,
            "rms_rel_err": float(np.sqrt(np.mean(err ** 2)) / peak) if peak else 0.0,
            "exact": bool(not np.any(err)),
            "zeroed": int(np.count_nonzero(nonzero & (mant == 0))),
            "nonzero": int(np.count_nonzero(nonzero))}


def _quantize_bias(g: Group, fp: FixedPoint) -> dict[str, Any]:
    one = 2.0 ** g.frac_bits
    bf = _folded_bias(g)
    top = (1 << (fp.bias_mant_bits - 1)) - 1
    mag = np.abs(bf)
    exp = np.where(mag > top, np.ceil(np.log2(np.maximum(mag, 1.0) / top)), 0).astype(np.int64)
    saturated = bool(np.any(exp > fp.bias_exp_max))
    exp = np.minimum(exp, fp.bias_exp_max)
    mant = np.clip(np.round(bf / 2.0 ** exp), -top, top)
    g.bias_mant, g.bias_exp = mant.astype(_mantissa_dtype(fp.bias_mant_bits)), exp.astype(np.int8)
    err = mant * 2.0 ** exp - bf
    return {"group": g.name, "saturated": saturated,
            "max_abs_err": float(np.abs(err).max() / one) if err.size else 0.0,
            "exact": bool(not np.any(err))}


def _layout(net: Netlist, fp: FixedPoint, diags: list[Diagnostic],
            input_max: float | None = None) -> None:
    """Units, fraction bits and integer thresholds of every group (no weights yet)."""
    for g in net.groups:
        _units(net, g, fp, diags, input_max)
    for g in net.groups:
        if g.kind == "neuron":
            _fit_frac_bits(net, g, fp)
        if g.kind == "readout":
            g.frac_bits = _readout_frac_bits(net, g, fp)
        if g.kind in ("neuron", "readout"):
            _fix_thresholds(g, fp)


def _input_frac_bits(net: Netlist, fp: FixedPoint, input_max: float) -> int:
    """Fewer input fraction bits (negative ones too: the payload is ``round(x / 2**k)``) for
    inputs larger than 1 (raw pixels, 16-bit samples), as long as the input keeps
    ``fp.input_frac_bits`` bits below its largest value: the first blocks'
    folded weights are ``W * 2**-bits``, and their exponent cannot go below 0, so with 8 bits a
    net fed 0..255 pixels (its 1/255 folded into the first conv) rounded 35 of its 72 first-layer
    weights to zero (11 % on hardware semantics). Lowered by as many bits as the largest folded
    first-layer weight leaves the 8-bit mantissa unused, and never so far that the input
    saturates the payload."""
    top_w = (1 << (fp.weight_bits - 1)) - 1
    cap = fp.input_frac_bits   # the most bits whose payload still fits
    while input_max * 2.0 ** cap > (1 << (fp.payload_bits - 1)) - 1:
        cap -= 1
    floor = fp.input_frac_bits - math.ceil(math.log2(input_max))   # below 0: x / 2**k
    _layout(net, fp, [])
    peak = max((float(np.abs(folded_weight(b, net.group(b.src), net.group(b.dst))).max(
        initial=0.0)) for b in net.blocks if net.group(b.src).kind == "input"), default=0.0)
    spare = math.floor(math.log2(top_w / peak)) if peak > 0 else 0
    return min(cap, max(floor, fp.input_frac_bits - max(0, spare)))


def quantize(net: Netlist, fp: FixedPoint = FixedPoint(), *,
             input_max: float | None = None) -> tuple[dict[str, Any], list[Diagnostic]]:
    """Fill the integer fields of ``net`` in place; returns (error report, diagnostics).
    ``input_max``: the calibration samples' largest input magnitude, when known (above 1 it may
    lower the input's fraction bits: :func:`_input_frac_bits`)."""
    diags: list[Diagnostic] = []
    if input_max is not None and input_max > 1:
        bits = _input_frac_bits(net, fp, float(input_max))
        if bits != fp.input_frac_bits:
            fp = replace(fp, input_frac_bits=bits)
    _layout(net, fp, diags, input_max)
    # a group whose threshold does not fit (E632) has no fraction bits to give: its weight and
    # bias saturations follow from that, and would only repeat it
    unfit = {d.node for d in diags if d.code == "SNN-E632"}
    weights = []
    for b in net.blocks:
        src, dst = net.group(b.src), net.group(b.dst)
        rec = _quantize_block(b, folded_weight(b, src, dst), fp)
        weights.append(rec)
        if rec["saturated"] and dst.source not in unfit:
            diags.append(Diagnostic(
                "SNN-E630", f"block {b.name}: weights need an exponent above "
                f"{fp.weight_exp_max}, so 8-bit mantissas saturate (max relative error "
                f"{rec['max_rel_err']:.3g})", pass_name=PASS, node=dst.source,
                hint="the weights are too large for the threshold of the target layer "
                     "(per channel: a tiny lambda); compile with --per-layer, or recalibrate "
                     "on more samples"))
    biases = []
    for g in net.groups:
        if g.kind in ("neuron", "readout", "relay"):
            rec = _quantize_bias(g, fp)
            biases.append(rec)
            if rec["saturated"] and g.source not in unfit:
                diags.append(Diagnostic(
                    "SNN-E631", f"group {g.name}: biases exceed the 13-bit mantissa with "
                    f"exponent <= {fp.bias_exp_max} (max error {rec['max_abs_err']:.3g})",
                    pass_name=PASS, node=g.source,
                    hint="the bias is too large for the layer's threshold, typically a channel "
                         "calibrated to a tiny lambda (a dead channel); compile with --per-layer "
                         "(one lambda per layer), or recalibrate on more samples"))
    report = {"fixed_point": fp.to_json(), "weights": weights, "biases": biases,
              "all_exact": all(r["exact"] for r in weights + biases)}
    net.meta["quantization"] = report
    return report, diags
