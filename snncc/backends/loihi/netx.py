"""Export the sequential part of a quantized netlist as a lava-dl NetX HDF5 file (``.net``), and
check a file against what NetX's reader expects.

The reader (``lava.lib.dl.netx.hdf5.Network``, lava-dl 0.6; ecosystem.md B2) walks
``layer/0 .. layer/n-1`` in order and connects each layer to the previous one; it instantiates
only ``input``, ``conv``, ``flatten`` and ``dense``. Encodings followed exactly (checked against
the reader's source and in real Lava by ``tests/loihi/test_lava.py``):

* ``type``: fixed-length bytes, shape (1,), dtype ``S10`` (read as ``value[0].decode('ascii')``);
* ``shape``: (C, H, W) for input/conv, reversed by the reader to Lava's (x, y, c) = (W, H, C);
  (features,) for dense;
* the ``input`` layer has no neuron: the reader then connects ``Network.inp`` straight to the
  first synapse, which takes graded input (``input_message_bits``). The runner sends the analog
  input as ``round(x * 2**snncc_input_frac_bits)`` per step, in (x, y, c) order;
* conv: ``inChannels``, ``outChannels``, ``kernelSize``, ``stride``, ``padding``, ``dilation``
  (pairs in (y, x) order, reversed by the reader), ``groups``, ``weight`` PyTorch layout
  (out, in/groups, kH, kW) (the reader flips and transposes it; Lava's conv flips back), optional
  ``bias`` per neuron in the neuron shape (x, y, c) = (W, H, C), or per channel (C,);
* flatten: Lava flattens (x, y, c) after transposing to (c, y, x), i.e. snncc's C-order;
* dense: ``inFeatures``, ``outFeatures``, ``weight`` (out, in), optional ``bias`` (features,);
* ``neuron``: ``type`` (``CUBA``), ``vThMant``, ``iDecay``, ``vDecay``, ``refDelay``,
  ``wgtExp``, ``gradedSpike``; the reader maps ``du = iDecay - 1`` (4095: the current lasts one
  step), ``dv = vDecay``, ``vth = vThMant`` and ``bias_exp = 6``: weights, biases and thresholds
  all count in the same *NetX unit* (Lava's state is that x 64);
* weights and biases are read with ``astype(int)``.

Initial voltage. NetX cannot set one (Lava's LIFReset restarts at v = 0), so a neuron's
``v_init`` (theta/2 for IF) is spread over the window as an extra bias ``v_init / total_steps``
per step: the same charge by the end of the window. On the MNIST CNN (IF, T = 4) this keeps the
hardware semantics at 98.5 % where v = 0 alone gives 43.5 % (emulated: 99.0 %; docs/netlist.md).

NetX units. A group whose incoming blocks have exponents ``e_b`` (integer weight ``mant << e_b``
state integers) counts in NetX units of ``2**(e - 1 + extra)`` state integers, ``e = min(e_b)``:
NetX weights are ``2 * mant << (e_b - e) >> extra`` (integers in [-256, 254]), thresholds
``vth * 2**(1 - e - extra)`` and biases rounded to the unit (NetX has no weight exponent and a
fixed bias exponent, so a bias finer than the unit is rounded). ``extra`` is 0 unless a bias
would not fit the chip's 13-bit bias mantissa or the threshold its 17 bits; one extra bit keeps
the weights exact (``mant``), more round them (noted). The layers the input feeds count in units
``2**s`` coarser and the input is sent with ``s`` fewer fraction bits (:func:`netx_input_shift`),
so that their biases fit with exact weights. :func:`netx_params` computes these values;
the simulator's ``semantics="hardware"`` uses the same ones, so that the Lava run of the exported
file and ``snncc run DIR --semantics hardware`` agree bit for bit.

Root attributes ``snncc_*`` (ignored by the reader) tell a runner how to drive the file: total and
counted steps, the input scale and message bits, and the readout (``voltage`` of a non-spiking
last layer, or ``spikes`` of a spiking one). Layers run pipelined: layer j (1-based) sees the
input of local step k at Lava step j + 1 + k; ``Network(reset_interval=total_steps,
reset_offset=1)`` clears each layer when its window starts, which equals the simulator's
undelayed schedule with v = 0 at the start.

What NetX cannot express is never dropped silently: :func:`write_netx` returns the groups it did
not export with the reason (residual adds and concats, graded or microcoded neurons, a layer after
one of those), plus notes. When not even one layer can be exported it writes no file and returns
the reason (``path`` None, ``reason``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from snncc.backends.loihi.netlist import Group, Netlist
from snncc.neurons.registry import get_neuron

__all__ = ["LOADABLE", "write_netx", "check_netx", "netx_params", "netx_exportable",
           "VTH_MANT_MAX", "BIAS_MANT_MAX"]

LOADABLE = ("input", "conv", "flatten", "dense")
NEURON_TYPES = ("CUBA", "LOIHI", "SDNN")
VTH_MANT_MAX = (1 << 17) - 1
BIAS_MANT_MAX = (1 << 12) - 1  # 13-bit signed bias mantissa of Loihi's CUBA neuron
#: a readout's NetX unit leaves its voltage room for this many times the largest the
#: calibration samples reached (as a relay fed by the input, quantize.INPUT_HEADROOM)
READOUT_HEADROOM = 2.0
I_DECAY_FULL = 4096       # du = 4095: the current keeps nothing (Lava's du = iDecay - 1)


def _type(group: h5py.Group, name: str) -> None:
    group.create_dataset("type", (1,), "S10", [name.encode("ascii")])


def _neuron(layer: h5py.Group, vth: int, v_decay: int = 0) -> None:
    n = layer.create_group("neuron")
    _type(n, "CUBA")
    n.create_dataset("vThMant", data=np.int64(vth))
    n.create_dataset("iDecay", data=np.int64(I_DECAY_FULL))
    n.create_dataset("vDecay", data=np.int64(v_decay))
    n.create_dataset("refDelay", data=np.int64(1))
    n.create_dataset("wgtExp", data=np.int64(0))
    n.create_dataset("gradedSpike", data=np.bool_(False))


def netx_exportable(g: Group) -> bool:
    """A group NetX's CUBA neuron can express: a binary neuron with ``LoihiInfo.netx`` (IF, LIF)
    or a readout (a non-spiking CUBA layer)."""
    if g.kind == "readout":
        return True
    return g.kind == "neuron" and get_neuron(g.neuron).loihi.netx


#: at most this many input fraction bits go to fitting the first layers' biases (then weights)
MAX_INPUT_SHIFT = 4


def netx_input_shift(net: Netlist) -> int:
    """How many fewer fraction bits than the netlist's the NetX input gets: the smallest shift
    (at most ``MAX_INPUT_SHIFT``) with which every NetX layer the input feeds keeps exact weights
    (``extra`` <= 1) while its biases fit the 13-bit bias mantissa. Those layers' thresholds are
    many of their input-scaled weights (one analog input step is 2**-8), and their biases carry
    v_init / T, so at the netlist's input scale their biases need up to ~18,000 NetX units
    (the MNIST CNN's first layer); sending the input ``2**s`` coarser makes their NetX unit
    ``2**s`` coarser instead of rounding their 8-bit weights."""
    for s in range(MAX_INPUT_SHIFT + 1):
        if _exact_weights(net, s):
            return s
    return MAX_INPUT_SHIFT


def _exact_weights(net: Netlist, shift: int) -> bool:
    """Every NetX layer the input feeds keeps exact weights (``extra`` <= 1) at ``shift``."""
    return all(netx_params(net, g, shift)["extra"] <= 1 for g in net.groups
               if netx_exportable(g)
               and any(net.group(b.src).kind == "input" for b in net.blocks_into(g.name)))


def netx_params(net: Netlist, g: Group, shift: int | None = None) -> dict[str, Any]:
    """The group's parameters in NetX units (see the module doc): ``e``, ``extra``, ``unit``
    (state integers per NetX unit), ``vth`` (int; ``VTH_MANT_MAX`` for a readout), ``vth_exact``,
    ``bias`` (int64, shape ``view``), ``bias_err`` (largest rounding error, NetX units),
    ``decay_v``, ``weights`` {block name: int64 NetX weights}, ``weights_exact``,
    ``input_shift`` (``shift``, by default :func:`netx_input_shift`; the weights of blocks from
    the input expect the input sent with that many fewer fraction bits).
    """
    if shift is None:
        shift = netx_input_shift(net)
    blocks = net.blocks_into(g.name)
    # a block from the input: its payload comes 2**shift coarser, its weight 2**shift larger
    exps = {b.name: b.exp + (shift if net.group(b.src).kind == "input" else 0) for b in blocks}
    e = min(exps.values(), default=0)
    bias_state = g.bias_mant.astype(np.float64) * 2.0 ** g.bias_exp.astype(np.float64)
    if g.kind == "neuron":   # NetX has no initial voltage: spread v_init over the window
        bias_state = bias_state + float(g.fixed.get("v_init_int", 0)) / net.total_steps
    vth_state = float(VTH_MANT_MAX) if g.kind == "readout" else float(g.fixed["vth"][0])
    # a readout has no threshold to bound its voltage: Lava's v (NetX units x 64, 24 bits) must
    # stay below the readout's vThMant (crossing it fires and resets v to 0), for the peak the
    # calibration samples reached (``peak_state``, state integers) with READOUT_HEADROOM
    peak = float(g.fixed.get("peak_state", 0.0)) * READOUT_HEADROOM if g.kind == "readout" \
        else 0.0
    extra = 0
    while True:   # the finest NetX unit whose bias, threshold and readout voltage fit
        scale = 2.0 ** (1 - e - extra)
        top_bias = float(np.abs(bias_state).max(initial=0.0)) * scale
        if round(top_bias) <= BIAS_MANT_MAX and (
                (g.kind == "readout" and peak * scale < VTH_MANT_MAX)
                or (g.kind != "readout" and round(vth_state * scale) <= VTH_MANT_MAX)):
            break
        extra += 1
    vth_float = float(VTH_MANT_MAX) if g.kind == "readout" else vth_state * scale
    vth = int(min(round(vth_float), VTH_MANT_MAX))
    bias_f = (bias_state * scale).reshape(g.view)
    bias = np.round(bias_f).astype(np.int64)
    weights, exact = {}, True
    for b in blocks:
        w = 2 * b.mant.astype(np.int64) << (exps[b.name] - e)
        if extra:
            exact = exact and not np.any(w % (1 << extra))
            w = np.round(w / 2.0 ** extra).astype(np.int64)
        weights[b.name] = w
    return {"e": e, "extra": extra, "unit": 2.0 ** (e - 1 + extra), "vth": vth,
            "vth_exact": vth == vth_float, "bias": bias,
            "bias_err": float(np.abs(bias_f - bias).max(initial=0.0)),
            "decay_v": int(g.fixed.get("decay_v", 0) or 0), "weights": weights,
            "weights_exact": exact, "input_shift": shift}


def _why_not(net: Netlist, g: Group, prev: Group, flat: bool) -> str | None:
    blocks = net.blocks_into(g.name)
    if not blocks:
        return ("receives no synapses (all its weights are 0 in the model); a NetX layer needs "
                "a weight")
    if len(blocks) != 1:
        return (f"receives {len(blocks)} synapse blocks (a residual add or concat); NetX "
                "layers are strictly sequential")
    b = blocks[0]
    if b.src != prev.name:
        return f"reads '{b.src}', not the previous NetX layer '{prev.name}'"
    if g.kind == "relay":
        return ("a relay (graded pass-through of its current, inserted where a chain of linear "
                "ops is not one conv) has no NetX neuron")
    if not netx_exportable(g):
        return (f"neuron '{g.neuron}' ({g.spike} spikes) has no NetX neuron: CUBA sends binary "
                "spikes and resets to zero; SDNN (sigma-delta) sends the change of a "
                "rounded activation, not this neuron's payload (docs/netlist.md, section 8)")
    if b.offset != 0 or b.rows != g.view[0]:
        return "the block fills only part of the layer"
    if b.kind == "conv":
        if flat or len(g.shape) == 1:   # (C, H, W), or (C, L) of a 1-D conv: its (C, L, 1) view
            return "a conv on a flattened input"
        k = b.shape[2:]
        for axis in range(2):
            n_in, p, s, n_out = b.src_view[axis + 1], b.pads[axis], b.stride[axis], \
                b.out_hw[axis]
            if (n_in + 2 * p - k[axis]) // s + 1 != n_out:
                return "its padding is not symmetric (NetX pads both sides equally)"
    if b.kind == "dense" and not any(np.any(w) for w in netx_params(net, g)["weights"].values()):
        return ("all its NetX weights round to 0, and lava-dl 0.6's reader fails on an all-zero "
                "dense weight (netx/utils.py optimize_weight_bits: OverflowError)")
    return None


def _plan(net: Netlist) -> tuple[list[Group], list[dict[str, str]]]:
    """The exported groups (a sequential prefix) and the others with reasons."""
    exported, skipped = [], []
    prev, flat, stopped = net.groups[0], False, None
    for g in net.groups[1:]:
        if stopped is None:
            stopped = _why_not(net, g, prev, flat)
            if stopped is None:
                b = net.blocks_into(g.name)[0]
                flat = flat or b.kind == "dense"
                exported.append(g)
                prev = g
                continue
            skipped.append({"group": g.name, "reason": stopped})
        else:
            skipped.append({"group": g.name, "reason": "follows a layer NetX cannot express "
                            "(NetX connects layers in sequence)"})
    return exported, skipped


def write_netx(net: Netlist, path: str | os.PathLike) -> dict[str, Any]:
    """Write the longest sequential prefix of ``net`` that NetX can load; returns
    ``{"path", "layers", "not_exported": [{"group", "reason"}], "notes", "reason"}``.

    When no layer can be exported, nothing is written: ``path`` is None and ``reason`` says why
    (a NetX file with only an input layer would load as nothing Lava can run)."""
    path = Path(path)
    exported, skipped = _plan(net)
    inp = net.groups[0]
    fp = net.meta.get("quantization", {}).get("fixed_point", {})
    in_bits, payload_bits = int(fp.get("input_frac_bits", 8)), int(fp.get("payload_bits", 24))
    weight_bits = int(fp.get("weight_bits", 8))
    if weight_bits > 8:   # a wider FixedPoint (Python API): Lava's synapses take 8-bit weights
        return {"path": None, "layers": [], "not_exported": skipped, "notes": [],
                "reason": f"the netlist has {weight_bits}-bit weight mantissas (FixedPoint("
                          "weight_bits=...)) and NetX / Lava take 8-bit weights; network.net "
                          "not written"}
    if not exported:
        first = skipped[0] if skipped else {"group": "-", "reason": "the netlist has no layers"}
        reason = (f"no layer NetX can express: the first layer '{first['group']}' "
                  f"{first['reason']}; network.net not written")
        return {"path": None, "layers": [], "not_exported": skipped, "notes": [],
                "reason": reason}
    shift = netx_input_shift(net)
    in_bits -= shift
    notes = [f"input: sent to the first synapse as graded payloads round(x * 2**{in_bits}) "
             "every step (Network(..., input_message_bits="
             f"{payload_bits})); the input layer has no neuron"]
    if shift:
        exact = _exact_weights(net, shift)
        notes.append(f"input: {shift} fraction bits fewer than the netlist's "
                     f"{in_bits + shift}, so that the first layer's biases fit the 13-bit bias "
                     "mantissa " + ("with exact weights" if exact else
                                    f"(at most {MAX_INPUT_SHIFT}: its weights are rounded too)")
                     + " (the hardware semantics send the same)")
    last = exported[-1]
    readout = "voltage" if last.kind == "readout" else "spikes"
    with h5py.File(path, "w") as f:
        f.attrs.update({"snncc_format": "snncc-netx", "snncc_version": 1,
                        "snncc_total_steps": int(net.total_steps),
                        "snncc_counted_steps": int(net.counted_steps),
                        "snncc_input_frac_bits": in_bits,
                        "snncc_input_message_bits": payload_bits,
                        # Network(reset_interval=..., reset_offset=...): Lava's defaults (no
                        # reset) let the biases integrate while the pipeline fills
                        "snncc_reset_interval": int(net.total_steps), "snncc_reset_offset": 1,
                        "snncc_readout": readout, "snncc_readout_group": last.name})
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=np.int64(1))
        sim.create_dataset("tSample", data=np.int64(net.total_steps))
        layers = f.create_group("layer")
        first = layers.create_group("0")
        _type(first, "input")
        # a flat input stays flat for a dense first layer; a conv reads it as the map a Reshape
        # made of it (its view, even [N, 64, 1, 1])
        flat = len(inp.shape) == 1 and net.blocks_into(exported[0].name)[0].kind != "conv"
        first.create_dataset("shape", data=np.asarray(inp.shape if flat else inp.view,
                                                      dtype=np.int64))
        prev = inp
        for g in exported:
            b = net.blocks_into(g.name)[0]
            p = netx_params(net, g, shift)
            weight, bias = p["weights"][b.name], p["bias"]
            if p["extra"]:
                notes.append(f"{g.name}: NetX unit {p['unit']:g} state integers, 2**"
                             f"{p['extra']} coarser than the weights need, so that the biases "
                             f"fit the 13-bit bias mantissa" + ("" if p["weights_exact"] else
                                                                "; weights rounded"))
            if not p["vth_exact"]:
                notes.append(f"{g.name}: vThMant rounded/clipped to {p['vth']}")
            if p["bias_err"]:
                notes.append(f"{g.name}: biases rounded to NetX units (max error "
                             f"{p['bias_err']:.3g}; the hardware semantics use the same values)")
            if b.kind == "dense" and len(prev.shape) > 1 and prev is not inp:
                fl = layers.create_group(str(len(layers)))
                _type(fl, "flatten")
                fl.create_dataset("shape", data=np.asarray([prev.size], dtype=np.int64))
            layer = layers.create_group(str(len(layers)))
            if b.kind == "conv":
                _type(layer, "conv")
                layer.create_dataset("shape", data=np.asarray(g.view, dtype=np.int64))
                layer.create_dataset("inChannels", data=np.int64(b.src_view[0]))
                layer.create_dataset("outChannels", data=np.int64(b.rows))
                layer.create_dataset("kernelSize", data=np.asarray(b.shape[2:], np.int64))
                layer.create_dataset("stride", data=np.asarray(b.stride, np.int64))
                layer.create_dataset("padding", data=np.asarray(b.pads, np.int64))
                layer.create_dataset("dilation", data=np.asarray((1, 1), np.int64))
                layer.create_dataset("groups", data=np.int64(b.groups))
                per_channel = bias.reshape(bias.shape[0], -1)
                if np.all(per_channel == per_channel[:, :1]):
                    bias_out = per_channel[:, 0]                      # (C,): channel-wise
                else:
                    bias_out = bias.transpose(2, 1, 0)                # (W, H, C) = Lava (x, y, c)
            else:
                _type(layer, "dense")
                layer.create_dataset("shape", data=np.asarray([g.size], dtype=np.int64))
                layer.create_dataset("inFeatures", data=np.int64(b.shape[1]))
                layer.create_dataset("outFeatures", data=np.int64(b.rows))
                bias_out = bias.reshape(-1)
            layer.create_dataset("bias", data=bias_out.astype(np.int64))
            layer.create_dataset("weight", data=weight.astype(np.int64))
            _neuron(layer, p["vth"], p["decay_v"])
            if g.kind == "readout":
                notes.append(f"{g.name}: the readout is a non-spiking CUBA layer (vThMant "
                             f"{VTH_MANT_MAX}); its voltage over the counted steps is the output")
            elif g.fixed.get("reset", "subtract") != "zero" or g.fixed.get("compare") == ">=":
                notes.append(f"{g.name}: NetX CUBA fires on v > vth, resets v to 0 and starts "
                             f"at v = 0; snncc's '{g.neuron}' runs its own rule under the "
                             "emulated semantics (the hardware semantics equal NetX)")
            prev = g
    return {"path": path.name, "layers": [g.name for g in exported], "not_exported": skipped,
            "notes": notes, "reason": "", "input_frac_bits": in_bits}


# ----------------------------------------------------------------------------- checker

def _decoded_type(node: h5py.Group, where: str, problems: list[str]) -> str | None:
    if "type" not in node:
        problems.append(f"{where}: no 'type'")
        return None
    ds = node["type"]
    if ds.dtype.kind != "S" or ds.shape != (1,):
        problems.append(f"{where}/type: expected fixed-length bytes of shape (1,), got "
                        f"{ds.dtype} {ds.shape}")
        return None
    try:
        return ds[0].decode("ascii")
    except UnicodeDecodeError:
        problems.append(f"{where}/type: not ASCII")
        return None


def _int_array(node: h5py.Group, key: str, where: str, problems: list[str],
               length: int | None = None) -> np.ndarray | None:
    if key not in node:
        problems.append(f"{where}: missing '{key}'")
        return None
    value = np.asarray(node[key][()])
    if value.dtype.kind not in "iu":
        problems.append(f"{where}/{key}: dtype {value.dtype} is not an integer type")
        return None
    if length is not None and value.shape != (length,):
        problems.append(f"{where}/{key}: shape {value.shape}, expected ({length},)")
        return None
    return value


def _integral(node: h5py.Group, key: str, where: str, problems: list[str]) -> np.ndarray | None:
    value = np.asarray(node[key][()], dtype=np.float64)
    if np.any(value != np.round(value)):
        problems.append(f"{where}/{key}: values are not integers (the reader casts to int)")
    return value


def _check_neuron(layer: h5py.Group, where: str, problems: list[str]) -> None:
    if "neuron" not in layer:
        problems.append(f"{where}: missing 'neuron'")
        return
    n, w = layer["neuron"], f"{where}/neuron"
    kind = _decoded_type(n, w, problems)
    if kind is not None and kind not in NEURON_TYPES:
        problems.append(f"{w}/type: {kind!r} is not one of {NEURON_TYPES}")
    vth = _int_array(n, "vThMant", w, problems)
    if vth is not None and not 0 <= int(vth) <= VTH_MANT_MAX:
        problems.append(f"{w}/vThMant: {int(vth)} outside [0, {VTH_MANT_MAX}]")
    if kind in ("CUBA", "LOIHI"):
        i_decay = _int_array(n, "iDecay", w, problems)
        v_decay = _int_array(n, "vDecay", w, problems)
        if i_decay is not None and not 1 <= int(i_decay) <= 4096:
            problems.append(f"{w}/iDecay: {int(i_decay)} outside [1, 4096] (du = iDecay - 1 "
                            "must be a 12-bit decay)")
        if v_decay is not None and not 0 <= int(v_decay) <= 4096:
            problems.append(f"{w}/vDecay: {int(v_decay)} outside [0, 4096]")


def _check_weight(layer: h5py.Group, where: str, shape: tuple[int, ...],
                  problems: list[str]) -> None:
    if "weight" not in layer:
        problems.append(f"{where}: missing 'weight'")
        return
    w = _integral(layer, "weight", where, problems)
    if w.shape[:len(shape)] != shape or w.ndim not in (len(shape), len(shape) + 1) or \
            (w.ndim == len(shape) + 1 and w.shape[-1] != 1):
        problems.append(f"{where}/weight: shape {w.shape}, expected {shape}")
    if w.size and not np.any(w) and layer["type"][0].decode("ascii") == "dense":
        problems.append(f"{where}/weight: all zero; lava-dl 0.6's reader fails on it "
                        "(optimize_weight_bits divides by the largest weight: OverflowError)")
    if w.size and (w.min() < -256 or w.max() > 254):
        problems.append(f"{where}/weight: weights must fit 8 bits with the sign: integers in "
                        "[-256, 254] (Lava's optimize_weight_bits shifts them into the word)")


def check_netx(path: str | os.PathLike) -> list[str]:
    """Problems NetX's reader would hit with this file (empty list: loadable)."""
    problems: list[str] = []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [f"not an HDF5 file: {exc}"]
    with f:
        if "layer" not in f:
            return ["no root group 'layer'"]
        layers = f["layer"]
        keys = sorted(layers.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if keys != [str(i) for i in range(len(keys))]:
            return [f"layer keys {keys} are not '0'..'{len(keys) - 1}'"]
        prev: tuple[int, ...] | None = None
        flat = False
        for key in keys:
            layer, where = layers[key], f"layer/{key}"
            kind = _decoded_type(layer, where, problems)
            if kind not in LOADABLE:
                problems.append(f"{where}: type {kind!r} is not loadable (NetX loads "
                                f"{', '.join(LOADABLE)})")
                break
            if (key == "0") != (kind == "input"):
                problems.append(f"{where}: the input layer must be layer 0 and only there")
            shape = _int_array(layer, "shape", where, problems)
            if kind == "input":
                if "neuron" in layer:
                    _check_neuron(layer, where, problems)
                prev = tuple(int(s) for s in shape) if shape is not None else None
            elif kind == "flatten":
                flat = True
            elif kind == "conv":
                cin = _int_array(layer, "inChannels", where, problems)
                cout = _int_array(layer, "outChannels", where, problems)
                k = _int_array(layer, "kernelSize", where, problems, 2)
                s = _int_array(layer, "stride", where, problems, 2)
                p = _int_array(layer, "padding", where, problems, 2)
                d = _int_array(layer, "dilation", where, problems, 2)
                g = _int_array(layer, "groups", where, problems)
                _check_neuron(layer, where, problems)
                if any(v is None for v in (cin, cout, k, s, p, d, g, shape)) or prev is None:
                    continue
                g = int(g)
                _check_weight(layer, where, (int(cout), int(cin) // g, int(k[0]), int(k[1])),
                              problems)
                if flat or len(prev) != 3 or prev[0] != int(cin):
                    problems.append(f"{where}: inChannels {int(cin)} does not match the "
                                    f"previous layer's shape {prev}")
                else:
                    out = [(prev[i + 1] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1
                           for i in range(2)]
                    if tuple(int(v) for v in shape) != (int(cout), *out):
                        problems.append(f"{where}: shape {shape.tolist()} != conv output "
                                        f"{[int(cout), *out]}")
                if "bias" in layer:
                    bias = _integral(layer, "bias", where, problems)
                    lava_shape = tuple(int(v) for v in shape[::-1])   # (x, y, c)
                    if bias.shape not in (lava_shape, (int(cout),)):
                        problems.append(f"{where}/bias: shape {bias.shape}; the reader takes "
                                        f"the neuron shape (x, y, c) = {lava_shape} or one "
                                        f"value per channel ({int(cout)},)")
                prev = tuple(int(v) for v in shape)
            else:  # dense
                fin = _int_array(layer, "inFeatures", where, problems)
                fout = _int_array(layer, "outFeatures", where, problems)
                _check_neuron(layer, where, problems)
                if any(v is None for v in (fin, fout, shape)) or prev is None:
                    continue
                _check_weight(layer, where, (int(fout), int(fin)), problems)
                if len(prev) > 1 and not flat:
                    problems.append(f"{where}: dense after a {len(prev)}-D layer needs a "
                                    "flatten layer before it")
                if int(np.prod(prev)) != int(fin):
                    problems.append(f"{where}: inFeatures {int(fin)} != previous size "
                                    f"{int(np.prod(prev))}")
                if int(np.prod(shape)) != int(fout):
                    problems.append(f"{where}: shape {shape.tolist()} != outFeatures "
                                    f"{int(fout)}")
                if "bias" in layer:
                    _integral(layer, "bias", where, problems)
                prev, flat = (int(fout),), False
    return problems
