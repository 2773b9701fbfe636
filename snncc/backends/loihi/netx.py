"""Export the sequential part of a quantized netlist as a lava-dl NetX HDF5 file (``.net``), and
check a file against what NetX's reader expects (lava-dl is not installable here).

The reader (``lava.lib.dl.netx.hdf5.Network``; ecosystem.md B2) walks ``layer/0 .. layer/n-1`` in
order and connects each layer to the previous one; it instantiates only ``input``, ``conv``,
``flatten`` and ``dense``. Encodings followed exactly:

* ``type``: fixed-length bytes, shape (1,), dtype ``S10`` (read as ``value[0].decode('ascii')``);
* ``shape``: (C, H, W) for input/conv (reversed to Lava's x, y, z), (features,) for dense;
* conv: ``inChannels``, ``outChannels``, ``kernelSize``, ``stride``, ``padding``, ``dilation``
  (pairs in (y, x) order, reversed by the reader), ``groups``, ``weight`` PyTorch layout
  (out, in/groups, kH, kW), optional ``bias`` (per neuron);
* dense: ``inFeatures``, ``outFeatures``, ``weight`` (out, in), optional ``bias``;
* ``neuron``: ``type`` (``CUBA``), ``vThMant``, ``iDecay``, ``vDecay``, ``refDelay``,
  ``wgtExp``, ``gradedSpike``; the reader maps ``du = iDecay - 1``, ``dv = vDecay``,
  ``vth = vThMant`` (all x 2**6 in Lava, like weights and biases);
* weights and biases are read with ``astype(int)``: weights are even integers in [-256, 254]
  (``2 * mant``), so ``vThMant`` and biases are rescaled by ``2 / 2**exp``.

What NetX cannot express is never dropped silently: :func:`write_netx` returns the groups it did
not export with the reason (residual adds and concats, graded or microcoded neurons, a layer after
one of those), plus notes on where the NetX semantics differ (reset to zero, strict ``>``,
current decay, the input encoder, the readout).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from snncc.backends.loihi.netlist import Block, Group, Netlist
from snncc.neurons.registry import get_neuron

__all__ = ["LOADABLE", "write_netx", "check_netx"]

LOADABLE = ("input", "conv", "flatten", "dense")
NEURON_TYPES = ("CUBA", "LOIHI", "SDNN")
VTH_MANT_MAX = (1 << 17) - 1
I_DECAY_FULL = 4096       # du = 4095: the current keeps 1/4096 (Lava's du = iDecay - 1)
#: The input encoder written for the ``input`` layer: CUBA IF with vThMant 128 driven by
#: 2*64*x - 64 + 64 = 128*x, i.e. about x spikes per step for x in [0, 1].
INPUT_WEIGHT, INPUT_BIAS, INPUT_VTH = 64, 64, 128


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


def _netx_neuron(g: Group) -> bool:
    """A neuron group whose neuron NetX CUBA can express (``LoihiInfo.netx``)."""
    return g.kind == "neuron" and get_neuron(g.neuron).loihi.netx


def _why_not(net: Netlist, g: Group, prev: Group, flat: bool) -> str | None:
    blocks = net.blocks_into(g.name)
    if len(blocks) != 1:
        return (f"receives {len(blocks)} synapse blocks (a residual add or concat); NetX "
                "layers are strictly sequential")
    b = blocks[0]
    if b.src != prev.name:
        return f"reads '{b.src}', not the previous NetX layer '{prev.name}'"
    if g.kind == "neuron" and not _netx_neuron(g):
        return (f"neuron '{g.neuron}' ({g.spike} spikes) has no NetX neuron: CUBA sends binary "
                "spikes and resets to zero, SDNN is a sigma-delta neuron")
    if b.offset != 0 or b.rows != g.view[0]:
        return "the block fills only part of the layer"
    if b.kind == "conv":
        if flat or len(g.shape) != 3:
            return "a conv on a flattened input"
        k = b.shape[2:]
        for axis in range(2):
            n_in, p, s, n_out = b.src_view[axis + 1], b.pads[axis], b.stride[axis], \
                b.out_hw[axis]
            if (n_in + 2 * p - k[axis]) // s + 1 != n_out:
                return "its padding is not symmetric (NetX pads both sides equally)"
    return None


def _scaled(b: Block, g: Group, extra_exp: int) -> tuple[np.ndarray, float, np.ndarray]:
    """(even weights, vThMant, bias) in NetX units, before rounding."""
    exp = b.exp + extra_exp
    k = 2.0 / 2.0 ** exp
    vth = g.fixed["vth"][0] * k if g.kind == "neuron" else float(VTH_MANT_MAX)
    bias = (g.bias_mant.astype(np.float64) * 2.0 ** g.bias_exp) * k
    return 2 * b.mant.astype(np.int64), vth, bias


def write_netx(net: Netlist, path: str | os.PathLike) -> dict[str, Any]:
    """Write the longest sequential prefix of ``net`` that NetX can load; returns
    ``{"layers": [...], "not_exported": [{"group", "reason"}], "notes": [...]}``."""
    path = Path(path)
    exported, skipped, notes = [], [], []
    inp = net.groups[0]
    notes.append("input: NetX re-encodes the input with CUBA neurons (2*w*x - w + b, vThMant "
                 f"{INPUT_VTH}); snncc feeds the analog current directly, so the first layer "
                 "sees rate-coded spikes in NetX")
    with h5py.File(path, "w") as f:
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=np.int64(1))
        sim.create_dataset("tSample", data=np.int64(net.total_steps))
        layers = f.create_group("layer")
        first = layers.create_group("0")
        _type(first, "input")
        first.create_dataset("shape", data=np.asarray(inp.view, dtype=np.int64))
        first.create_dataset("weight", data=np.int64(INPUT_WEIGHT))
        first.create_dataset("bias", data=np.int64(INPUT_BIAS))
        _neuron(first, INPUT_VTH)
        prev, flat, stopped = inp, False, None
        for g in net.groups[1:]:
            if stopped is None:
                stopped = _why_not(net, g, prev, flat)
                if stopped is not None:
                    skipped.append({"group": g.name, "reason": stopped})
                    continue
            else:
                skipped.append({"group": g.name, "reason": "follows a layer NetX cannot "
                                "express (NetX connects layers in sequence)"})
                continue
            b = net.blocks_into(g.name)[0]
            weight, vth, bias = _scaled(b, g, net.meta.get("quantization", {}).get(
                "fixed_point", {}).get("input_frac_bits", 0) if prev is inp else 0)
            vth_int = int(round(min(vth, VTH_MANT_MAX)))
            if vth != vth_int:
                notes.append(f"{g.name}: vThMant {vth:g} rounded to {vth_int}")
            if np.any(bias != np.round(bias)):
                notes.append(f"{g.name}: biases rounded to integers (max error "
                             f"{np.abs(bias - np.round(bias)).max():.3g} NetX units)")
            if b.kind == "dense" and len(prev.shape) == 3 and not flat:
                fl = layers.create_group(str(len(layers)))
                _type(fl, "flatten")
                fl.create_dataset("shape", data=np.asarray([prev.size], dtype=np.int64))
                flat = True
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
                layer.create_dataset("bias", data=np.round(bias).astype(np.float32))
            else:
                _type(layer, "dense")
                layer.create_dataset("shape", data=np.asarray([g.size], dtype=np.int64))
                layer.create_dataset("inFeatures", data=np.int64(b.shape[1]))
                layer.create_dataset("outFeatures", data=np.int64(b.rows))
                layer.create_dataset("bias", data=np.round(bias).reshape(-1).astype(np.float32))
                flat = True
            layer.create_dataset("weight", data=weight.astype(np.float32))
            _neuron(layer, vth_int, g.fixed.get("decay_v", 0))
            exported.append(g.name)
            if g.kind == "readout":
                notes.append(f"{g.name}: the readout is a non-spiking CUBA layer (vThMant "
                             f"{VTH_MANT_MAX}); read its voltage after the run")
            elif _netx_neuron(g):
                notes.append(f"{g.name}: NetX CUBA fires on v > vth and resets v to 0, snncc's "
                             f"'{g.neuron}' subtracts the threshold (hardware semantics)")
            prev = g
    return {"path": str(path), "layers": exported, "not_exported": skipped, "notes": notes}


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
    if w.size and (w.min() < -256 or w.max() > 254 or np.any(np.mod(w, 2))):
        problems.append(f"{where}/weight: 8-bit weights must be even integers in [-256, 254]")


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
                    _integral(layer, "bias", where, problems)
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
