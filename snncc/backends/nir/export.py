"""Build a NIR graph (``nir.NIRGraph``) from the ANN-shaped spiking graph after insert-neurons.

Mapping (NIR 1.0 primitives; shapes exclude the batch axis, time is discrete with dt = 1):

* graph input -> ``Input``; graph output -> ``Output`` (a ``Scale`` before it when the value
  still carries a pending factor, see below);
* ``Conv`` (2-D, symmetric pads) -> ``Conv2d``; a 1-D net (``[N, C, L]`` maps) is exported on its
  ``(C, L, 1)`` view, as the Loihi lowering does (NIR has Conv1d but no 1-D pooling, and Norse
  reads neither): its Input node takes ``(C, L, 1)`` and the file's metadata ``input_view``
  says so (``snncc run`` adds the axis itself); ``Gemm`` -> ``Affine``; ``MatMul`` by a constant
  matrix -> ``Linear``; a constant ``Add`` after a Conv/Gemm folds into its bias;
* ``AveragePool`` / ``GlobalAveragePool`` (and ``MaxPool`` under ``--maxpool avg``, counting the
  padding as the Loihi lowering does) -> ``SumPool2d`` (a padded one as a ``Conv2d`` with a 0/1
  kernel: the same sum, and Norse's reader drops a SumPool2d's padding);
  ``Flatten`` / ``Reshape(N, -1)`` -> ``Flatten(start_dim=0)``; ``Identity`` / ``Dropout`` vanish;
* ``IFNeuron`` -> ``IF(r=1, v_threshold, v_reset=0)``; ``LIFNeuron`` -> ``IF`` when leak == 1,
  else ``LIF(tau = 1/(1-leak), r = 1, v_threshold / tau, v_leak = 0)`` (forward Euler with
  dt = 1 gives ``v = leak*v + I/tau``: the membrane in units of 1/tau, so it crosses
  ``v_threshold/tau`` exactly when ``v = leak*v + I`` crosses ``v_threshold``; Norse's reader
  ignores ``r``, and needs ``dt=1``, the file's ``metadata["dt"]``).

Spike amplitudes: NIR neurons emit unit spikes, snncc's neurons emit theta (IF) or amplitude (LIF)
per spike. That factor, the 1/k of average pooling and any constant ``Mul`` are carried as a
pending per-channel scale and folded into the next Conv/Affine weights (per input channel) or
into the next neuron's threshold, so the file needs no ``Scale`` node except before an output
that still carries one. This keeps it loadable by importers that lack Scale/AvgPool2d (Norse).

What NIR cannot express (:func:`lossy_notes`): NIR IF/LIF reset to ``v_reset`` (no reset by
subtraction), fire on ``v > v_threshold`` (IF fires on ``>=``) and start at v = 0 (IF starts at
``v_init * theta``: without a leak that charge becomes a bias current ``v_init*theta/T`` on the
Conv/Affine feeding the neuron, as the NetX export does; otherwise it is dropped, with a note).
Graded neurons (gn, mt, bitserial) send multi-level spikes, which no NIR neuron has, and srp
masks and restarts neurons: refused.

Every neuron fact used here (the NIR node kind, the leak and amplitude attributes, the reset,
what is lost, why a neuron has no NIR form) is its registry entry's
:class:`snncc.neurons.registry.NirInfo`; this module never branches on a neuron name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from snncc.backends.common import AVG_HINT, channels_last_hint, matrix_weights, node_attrs as _attrs
from snncc.errors import Diagnostic
from snncc.ir import SNN_DOMAIN, proto_node_label

__all__ = ["build_graph", "lossy_notes", "ExportResult", "RESET_NOTE"]

PASS = "nir-export"
RESET_NOTE = ("NIR's IF/LIF reset the membrane to v_reset (0) after a spike; snncc's neurons "
              "reset by subtraction (soft reset), so the exported network is not the compiled "
              "one: residual charge above the threshold is lost at every spike")


@dataclass
class ExportResult:
    graph: Any                      # nir.NIRGraph
    nodes: list[str]                # NIR node names in order
    neurons: dict[str, str]         # NIR node name -> snncc neuron key
    notes: list[str]
    input_view: bool = False        # a 1-D net: the Input node takes (C, L, 1) for (C, L)


@dataclass
class _Value:
    node: str                       # NIR node producing it
    shape: tuple[int, ...]          # per sample
    scale: np.ndarray | None        # pending factor per channel (3-D) or per feature (1-D)


def _ungrouped(w: np.ndarray, groups: int) -> np.ndarray:
    """The dense [O, C, kh, kw] weight of a grouped conv weight [O, C/groups, kh, kw]."""
    o, cg = w.shape[:2]
    og = o // groups
    dense = np.zeros((o, cg * groups) + w.shape[2:], dtype=w.dtype)
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = w[g * og:(g + 1) * og]
    return dense


class _Refuse(Exception):
    def __init__(self, code: str, message: str, hint: str):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def lossy_notes(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Per neuron key present in the graph: what the NIR form loses (empty list = exact)."""
    from snncc.passes.insert_neurons import spec_for_op

    notes: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.domain != SNN_DOMAIN:
            continue
        spec = spec_for_op(node.op_type)
        if spec is None or spec.nir.node is None:
            continue
        lost = notes.setdefault(spec.key, [])
        for note in ((RESET_NOTE,) if spec.nir.soft_reset else ()) + spec.nir.lossy:
            if note not in lost:
                lost.append(note)
    return notes


def _has_1d_maps(graph: onnx.GraphProto) -> bool:
    """A [N, C, L] input read by a Conv or a pool somewhere (a 1-D net), not only flattened."""
    return any(n.op_type in ("Conv", "AveragePool", "MaxPool", "GlobalAveragePool")
               for n in graph.node)


class _Builder:
    def __init__(self, proto: onnx.ModelProto, timesteps: int, maxpool: str = "auto"):
        import nir

        self.nir = nir
        self.proto = proto
        self.timesteps = timesteps
        self.maxpool = maxpool
        self.inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.values: dict[str, _Value] = {}
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.neurons: dict[str, str] = {}
        self.diags: list[Diagnostic] = []
        self.used: set[str] = set()
        self.notes: list[str] = []
        self.view1d = False             # 1-D net exported on its (C, L, 1) view

    # -- helpers
    def _name(self, onnx_name: str, fallback: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", onnx_name or fallback).strip("_.") or fallback
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def _add(self, name: str, node: Any, src: _Value | None) -> str:
        self.nodes[name] = node
        if src is not None:
            self.edges.append((src.node, name))
        return name

    def _const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        if node.input[i] not in self.inits:
            raise _Refuse("SNN-E693", f"input {i} ('{node.input[i]}') is not a constant",
                          "weights, biases and shapes must be initializers")
        return np.asarray(self.inits[node.input[i]], dtype=np.float64)

    def _value(self, name: str) -> _Value:
        if name not in self.values:
            raise _Refuse("SNN-E692", f"input '{name}' comes from a node the export skipped",
                          "see the other diagnostics")
        return self.values[name]

    def _spatial(self, attrs: dict[str, Any], key: str, default: int) -> tuple[int, int]:
        """A 2-D attribute (kernel_shape, strides, dilations); a 1-D op's on the (L, 1) view."""
        vals = tuple(int(v) for v in attrs.get(key, ()))
        if len(vals) == 1 and self.view1d:
            return vals[0], 1
        if len(vals) == 2:
            return vals
        if not vals:
            return default, default
        raise _Refuse("SNN-E693", f"{key}={list(vals)}: only 1-D and 2-D maps are supported",
                      "use Conv1d / Conv2d and their pools")

    def _pads(self, attrs: dict[str, Any], k: tuple[int, int]) -> tuple[int, int]:
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise _Refuse("SNN-E693", f"auto_pad={attrs['auto_pad']} is not supported",
                          "export with explicit pads")
        given = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        pads = [given[0], 0, given[1], 0] if len(given) == 2 and self.view1d else given
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise _Refuse("SNN-E693", f"asymmetric pads {given}: NIR padding is symmetric",
                          "pad symmetrically")
        return pads[0], pads[1]

    # -- driver
    def run(self) -> ExportResult:
        nir = self.nir
        graph = self.proto.graph
        inputs = [i for i in graph.input if i.name not in self.inits]
        if len(inputs) != 1:
            raise _Refuse("SNN-E692", f"the model has {len(inputs)} inputs",
                          "the NIR export takes one input")
        dims = [d.dim_value if d.HasField("dim_value") else 0
                for d in inputs[0].type.tensor_type.shape.dim][1:]
        if not dims or any(d <= 0 for d in dims):
            raise _Refuse("SNN-E693", f"input '{inputs[0].name}' has no static shape {dims}",
                          "pass --input-shape")
        name = self._name("input", "input")
        if len(dims) == 2 and _has_1d_maps(graph):  # [N, C, L]: the (C, L, 1) view (Norse
            # reads no Conv1d); an input only flattened keeps its own shape
            self.view1d = True
            dims = [*dims, 1]
        self._add(name, nir.Input(input_type={"input": np.array(dims)}), None)
        self.values[inputs[0].name] = _Value(name, tuple(dims), None)
        failed: set[str] = set()
        for node in graph.node:
            try:
                if failed.intersection(node.input):
                    failed.update(node.output)  # downstream of a reported node: only its kind
                    self._kind_only(node)
                    continue
                self._node(node)
            except _Refuse as err:
                where = proto_node_label(node)
                self.diags.append(Diagnostic(err.code, err.message, PASS, where, err.hint))
                failed.update(node.output)
        order = list(self.nodes)
        for out in graph.output:
            if out.name not in self.values:
                continue
            v = self.values[out.name]
            if v.scale is not None:
                full = self._broadcast(v.scale, v.shape)
                v = _Value(self._add(self._name(f"scale_{out.name}", "scale"),
                                     nir.Scale(scale=full.astype(np.float32)), v),
                           v.shape, None)
            self._add(self._name(f"output_{out.name}", "output"),
                      nir.Output(output_type={"output": np.array(v.shape)}), v)
        return ExportResult(None, order, self.neurons, self.notes, self.view1d)

    @staticmethod
    def _broadcast(scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if len(shape) == 3:
            return np.broadcast_to(scale.reshape(-1, 1, 1), shape).copy()
        return np.broadcast_to(scale.reshape(-1), shape).copy()

    def _kind_only(self, node: onnx.NodeProto) -> None:
        """Refuse a node by its kind alone (op without a NIR form, graded neuron)."""
        if node.domain == SNN_DOMAIN:
            from snncc.passes.insert_neurons import spec_for_op
            spec = spec_for_op(node.op_type)
            if spec is not None and spec.nir.node is not None:
                return
        elif getattr(self, f"_op_{node.op_type}", None) is not None and \
                node.domain in ("", "ai.onnx") and (node.op_type not in ("Add", "Mul") or
                                                   any(i in self.inits for i in node.input)):
            return
        elif node.op_type == "MaxPool" and node.domain in ("", "ai.onnx") and \
                self.maxpool == "avg":   # --maxpool avg gives it a form: nothing of its own
            return
        self._node(node)

    def _node(self, node: onnx.NodeProto) -> None:
        if node.domain == SNN_DOMAIN:
            return self._neuron(node)
        handler = getattr(self, f"_op_{node.op_type}", None)
        if node.op_type == "MaxPool":
            if self.maxpool != "avg":
                raise _Refuse("SNN-E692", "MaxPool has no NIR form (NIR has no max pooling)",
                              AVG_HINT)
            handler = self._maxpool_as_avg
        if handler is None or node.domain not in ("", "ai.onnx"):
            raise _Refuse("SNN-E692", f"op {node.op_type} has no NIR form in snncc's export",
                          "export the model without its final Softmax/LogSoftmax (the arg-max, "
                          "the predicted class, is the same), or use --target ort, which runs it "
                          "as the output head"
                          if node.op_type in ("Softmax", "LogSoftmax") else
                          channels_last_hint(node, self.proto.graph) or
                          "the NIR export maps Conv, Gemm, MatMul, AveragePool, "
                          "GlobalAveragePool, Flatten, Reshape (flatten), Mul/Add by a "
                          "constant and IF/LIF neurons; use --target ort, which runs any "
                          "ONNX op (the Loihi lowering takes about the same ops as NIR)")
        handler(node)

    # -- neurons
    def _neuron(self, node: onnx.NodeProto) -> None:
        from snncc.passes.insert_neurons import spec_for_op

        nir = self.nir
        spec = spec_for_op(node.op_type)
        if spec is None:
            raise _Refuse("SNN-E692", f"unknown neuron op {node.op_type}",
                          "compile with --neuron if or lif")
        info = spec.nir
        if info.node is None:
            raise _Refuse("SNN-E691", (info.refusal or f"neuron '{spec.key}' has no NIR form") +
                          "; NIR's IF/LIF send binary spikes and reset to v_reset",
                          "compile with --neuron if or --neuron lif for NIR")
        x = self._value(node.input[0])
        a = _attrs(node)
        shape = x.shape
        channels = shape[0]
        theta = np.asarray(a.get("theta", [1.0]), dtype=np.float64).reshape(-1)
        if theta.size not in (1, channels):
            raise _Refuse("SNN-E693", f"theta has {theta.size} values for shape {shape}",
                          "use one theta per channel")
        theta = np.broadcast_to(theta, (channels,)) if theta.size == 1 else theta
        s_in = x.scale if x.scale is not None else np.ones(channels)
        if np.any(s_in <= 0):
            raise _Refuse("SNN-E693", "a non-positive constant factor feeds the neuron",
                          "scale by positive constants only")
        vth = self._broadcast(theta / s_in, shape).astype(np.float32)
        ones = np.ones(shape, dtype=np.float32)
        zeros = np.zeros(shape, dtype=np.float32)
        leak = float(a.get(info.leak_attr, 1.0)) if info.leak_attr else 1.0
        v_init = float(a.get("v_init", 0.0))
        if v_init:
            self._initial_charge(node, x, spec.key, v_init * theta / s_in, leak,
                                 int(a.get("T", self.timesteps)) or 1)
        if info.node == "IF" or leak == 1.0:
            nn = nir.IF(r=ones, v_threshold=vth, v_reset=zeros)
        else:
            # tau dv/dt = -v + r*I with dt = 1 is v <- leak*v + (r/tau)*I; r = 1 and the threshold
            # over tau (v in units of 1/tau) spikes exactly when r = tau would, and Norse, which
            # ignores r, then runs it (with dt = 1, the file's metadata)
            tau = np.full(shape, 1.0 / (1.0 - leak), dtype=np.float32)
            nn = nir.LIF(tau=tau, r=ones, v_leak=zeros, v_threshold=(vth / tau).astype(np.float32),
                         v_reset=zeros)
        name = self._add(self._name(node.name, spec.key), nn, x)
        self.neurons[name] = spec.key
        amp = theta if info.amplitude_attr is None else \
            np.full(channels, float(a.get(info.amplitude_attr, 1.0)))
        self.values[node.output[0]] = _Value(name, shape, amp.astype(np.float64))

    def _initial_charge(self, node, x: _Value, key: str, charge: np.ndarray, leak: float,
                        steps: int) -> None:
        """NIR neurons start at v = 0. Without a leak, the initial charge (stored units, per
        channel) is given instead as a bias current charge/steps over the window, added to the
        bias of the Conv/Affine that feeds only this neuron (as the NetX export does); the
        threshold then sees the same total charge, spread in time. Else it is dropped."""
        producer = self.nodes.get(x.node)
        alone = not any(src == x.node for src, _ in self.edges)
        if leak == 1.0 and alone and isinstance(producer, (self.nir.Conv2d, self.nir.Affine)):
            producer.bias = (np.asarray(producer.bias, np.float64) + charge / steps
                             ).astype(np.float32)
            note = (f"{key}: the initial charge v_init*theta is a bias current "
                    f"v_init*theta/{steps} over the {steps} steps (NIR neurons start at v = 0)")
        else:
            note = f"{key}: the initial charge v_init*theta is dropped (NIR neurons start at v = 0)"
        if note not in self.notes:
            self.notes.append(note)

    # -- linear ops
    def _op_Identity(self, node):
        self.values[node.output[0]] = self._value(node.input[0])

    _op_Dropout = _op_Identity

    def _op_Conv(self, node):
        x = self._value(node.input[0])
        w = self._const(node, 1)
        b = self._const(node, 2)
        a = _attrs(node)
        if self.view1d and len(x.shape) == 3 and x.shape[2] == 1 and w.ndim == 3:
            w = w[..., None]                    # a Conv1d on the (C, L, 1) view: (k, 1)
        if len(x.shape) != 3 or w.ndim != 4:
            raise _Refuse("SNN-E693", "only 1-D and 2-D convolutions are supported",
                          "use Conv1d or Conv2d")
        groups = int(a.get("group", 1))
        if groups > 1:
            # nir's Conv2d types its input as weight.shape[1] channels, so a grouped weight
            # fails NIR's own type check: export the same conv with block-diagonal weights
            w = _ungrouped(w, groups)
            self.notes.append(f"{node.name}: the conv with groups={groups} is exported as a "
                              "dense Conv2d with block-diagonal (zero-padded) weights")
        if x.scale is not None:
            w = w * x.scale.reshape(1, -1, 1, 1)
        stride = self._spatial(a, "strides", 1)
        dil = self._spatial(a, "dilations", 1)
        pad = self._pads(a, w.shape[2:])
        bias = np.zeros(w.shape[0]) if b is None else b.reshape(-1)
        conv = self._conv2d(node, x, w, stride, pad, dil, bias)
        out = conv.output_type["output"]
        name = self._add(self._name(node.name, "conv"), conv, x)
        self.values[node.output[0]] = _Value(name, tuple(int(d) for d in out), None)

    def _conv2d(self, node, x: _Value, w: np.ndarray, stride, pad, dil, bias: np.ndarray):
        """nir.Conv2d for ``w``; a non-square kernel as a square one giving the same output:
        nir 1.0 types a Conv2d's output from the kernel's height alone (both axes), so a
        (3, 1) kernel's file fails ``nir.read``'s type check. A (kh, kw) kernel is zero-padded
        to (K, K) with the padding widened by as many taps (kh and kw of one parity); on a
        width-1 map (the 1-D view) the (k, 1) kernel is the middle column of a (k, k) one with
        width padding k // 2 and, for even k, width stride 2 (one output column either way)."""
        kh, kw = w.shape[2:]
        if kh != kw:
            if x.shape[2] == 1 and kw == 1 and pad[1] == 0 and dil[1] == 1:
                wide = np.zeros(w.shape[:2] + (kh, kh), w.dtype)
                wide[..., kh // 2] = w[..., 0]
                w, pad, stride = wide, (pad[0], kh // 2), (stride[0], 1 if kh % 2 else 2)
            elif (kh - kw) % 2:
                raise _Refuse("SNN-E693", f"a ({kh}, {kw}) kernel: nir 1.0 types a Conv2d's "
                              "output as if its kernel were square, and a square kernel with "
                              "the same output needs kh and kw of one parity",
                              "use --target ort or loihi, or kernels of one parity")
            else:
                k = max(kh, kw)
                eh, ew = (k - kh) // 2, (k - kw) // 2
                wide = np.zeros(w.shape[:2] + (k, k), w.dtype)
                wide[..., eh:eh + kh, ew:ew + kw] = w
                w, pad = wide, (pad[0] + dil[0] * eh, pad[1] + dil[1] * ew)
            self.notes.append(f"{node.name}: the ({kh}, {kw}) kernel is exported as a "
                              f"zero-padded ({w.shape[2]}, {w.shape[3]}) one (nir 1.0 types "
                              "Conv2d outputs from square kernels)")
        return self.nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=w.astype(np.float32),
                               stride=tuple(stride), padding=tuple(pad), dilation=tuple(dil),
                               groups=1, bias=bias.astype(np.float32))

    def _affine(self, node, x: _Value, w: np.ndarray, bias: np.ndarray | None):
        if len(x.shape) != 1 or w.shape[1] != x.shape[0]:
            raise _Refuse("SNN-E693", f"Gemm/MatMul on a tensor of shape {x.shape}",
                          "flatten before the fully connected layer")
        if x.scale is not None:
            w = w * x.scale.reshape(1, -1)
        if bias is None:
            nn = self.nir.Linear(weight=w.astype(np.float32))
        else:
            nn = self.nir.Affine(weight=w.astype(np.float32),
                                 bias=np.broadcast_to(bias.reshape(-1), (w.shape[0],))
                                 .astype(np.float32))
        name = self._add(self._name(node.name, "affine"), nn, x)
        self.values[node.output[0]] = _Value(name, (w.shape[0],), None)

    def _op_Gemm(self, node):
        w, bias = matrix_weights(node, self._const,
                                 lambda message, hint: _Refuse("SNN-E693", message, hint))
        self._affine(node, self._value(node.input[0]), w, bias)

    _op_MatMul = _op_Gemm

    def _sumpool(self, node, x: _Value, k, stride, pad):
        if len(x.shape) != 3:
            raise _Refuse("SNN-E693", "pooling of a tensor that is not C x H x W or C x L",
                          "pool 1-D or 2-D maps")
        if any(pad):   # Norse's SumPool2d drops the padding: the same sum as a 0/1 Conv2d
            c = x.shape[0]
            ones = np.zeros((c, c) + tuple(k), dtype=np.float32)
            ones[np.arange(c), np.arange(c)] = 1.0
            pool = self._conv2d(node, x, ones, stride, pad, (1, 1), np.zeros(c))
        else:
            pool = self.nir.SumPool2d(kernel_size=np.array(k), stride=np.array(stride),
                                      padding=np.array(pad))
        h = (x.shape[1] + 2 * pad[0] - k[0]) // stride[0] + 1
        w = (x.shape[2] + 2 * pad[1] - k[1]) // stride[1] + 1
        name = self._add(self._name(node.name, "pool"), pool, x)
        scale = (x.scale if x.scale is not None else np.ones(x.shape[0])) / (k[0] * k[1])
        self.values[node.output[0]] = _Value(name, (x.shape[0], h, w), scale)

    def _op_AveragePool(self, node):
        a = _attrs(node)
        k = self._spatial(a, "kernel_shape", 1)
        if a.get("ceil_mode", 0):
            raise _Refuse("SNN-E693", "ceil_mode=1 pooling is not supported",
                          "export the pooling with ceil_mode=0")
        pad = self._pads(a, k)
        if any(pad) and not a.get("count_include_pad", 0):
            raise _Refuse("SNN-E693", "padded average pooling with count_include_pad=0 has "
                          "position-dependent weights", "pool without padding")
        self._sumpool(node, self._value(node.input[0]), k, self._spatial(a, "strides", 1), pad)

    def _maxpool_as_avg(self, node):
        """``--maxpool avg``: MaxPool as an average pool counting the padding (as the Loihi
        lowering does): SumPool2d with zero padding and 1/k folded into the next layer."""
        a = _attrs(node)
        if len(node.output) > 1 and node.output[1]:
            raise _Refuse("SNN-E693", "the MaxPool indices output is used",
                          "export the model without MaxPool indices")
        if any(int(d) != 1 for d in a.get("dilations", (1, 1))) or a.get("ceil_mode", 0):
            raise _Refuse("SNN-E693", "a dilated or ceil_mode MaxPool has no average-pool form",
                          "use an undilated MaxPool with ceil_mode=0")
        k = self._spatial(a, "kernel_shape", 1)
        self._sumpool(node, self._value(node.input[0]), k, self._spatial(a, "strides", 1),
                      self._pads(a, k))

    def _op_GlobalAveragePool(self, node):
        x = self._value(node.input[0])
        self._sumpool(node, x, tuple(x.shape[1:]), (1, 1), (0, 0))

    def _flatten(self, node, x: _Value):
        if len(x.shape) == 1:
            self.values[node.output[0]] = x
            return
        size = int(np.prod(x.shape))
        flat = self.nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0,
                                end_dim=-1)
        name = self._add(self._name(node.name, "flatten"), flat, x)
        scale = None if x.scale is None else np.repeat(x.scale, size // x.shape[0])
        self.values[node.output[0]] = _Value(name, (size,), scale)

    def _op_Flatten(self, node):
        if _attrs(node).get("axis", 1) != 1:
            raise _Refuse("SNN-E693", "Flatten must keep the batch axis (axis=1)",
                          "flatten with axis=1")
        self._flatten(node, self._value(node.input[0]))

    def _op_Reshape(self, node):
        x = self._value(node.input[0])
        target = [int(v) for v in self._const(node, 1)]
        size = int(np.prod(x.shape))
        if target[0] in (0, -1, 1) and target[1:] in ([-1], [size]):
            return self._flatten(node, x)
        raise _Refuse("SNN-E693", f"Reshape to {target} is not a flatten",
                      "only Reshape(x, [N, -1]) (a flatten) is supported")

    def _channel_const(self, c: np.ndarray, x: _Value) -> np.ndarray | None:
        """A constant that is one value per channel (or a scalar) of x, as [C]; else None."""
        c = np.asarray(c, dtype=np.float64)
        while c.ndim > len(x.shape):
            if c.shape[0] != 1:
                return None
            c = c[0]
        if c.size == 1:
            return np.full(x.shape[0], float(c.reshape(-1)[0]))
        if c.shape[0] == x.shape[0] and c.size == x.shape[0]:
            return c.reshape(-1)
        return None

    def _op_Mul(self, node):
        a, b = node.input[:2]
        if not (a in self.inits or b in self.inits):
            raise _Refuse("SNN-E692", "product of two tensors has no NIR form",
                          "only multiplication by a constant is supported")
        x = self._value(b if a in self.inits else a)
        c = self._channel_const(self.inits[a if a in self.inits else b], x)
        if c is None:
            raise _Refuse("SNN-E693", "Mul by a constant that is not per channel",
                          "use a scalar or per-channel factor")
        scale = (x.scale if x.scale is not None else np.ones(x.shape[0])) * c
        self.values[node.output[0]] = _Value(x.node, x.shape, scale)

    def _op_Add(self, node):
        a, b = node.input[:2]
        if not (a in self.inits or b in self.inits):
            raise _Refuse("SNN-E692", "Add of two tensors (a residual connection) is not "
                          "exported to NIR", "the NIR export takes sequential networks; "
                          "--target ort or loihi compile residual ones")
        x = self._value(b if a in self.inits else a)
        c = self._channel_const(self.inits[a if a in self.inits else b], x)
        producer = self.nodes.get(x.node)
        if c is not None and isinstance(producer, self.nir.Linear) and x.scale is None and \
                not any(e[0] == x.node for e in self.edges):
            # MatMul + Add (the Keras Dense / tf2onnx form): the Linear becomes an Affine
            producer = self.nodes[x.node] = self.nir.Affine(
                weight=np.asarray(producer.weight, np.float32),
                bias=np.zeros(np.asarray(producer.weight).shape[0], np.float32))
        if isinstance(producer, self.nir.Input):
            raise _Refuse("SNN-E693", "an offset on the model input (an in-model normalisation "
                          "(x - mean) / std) has no NIR form: NIR feeds the input to the first "
                          "layer as it is", "normalise the inputs before feeding them and "
                          "export the model without it, or use --target ort or loihi, which "
                          "take it")
        if c is None or x.scale is not None or \
                not isinstance(producer, (self.nir.Conv2d, self.nir.Affine)) or \
                sum(1 for e in self.edges if e[0] == x.node):
            raise _Refuse("SNN-E693", "Add of a constant that does not fold into the bias of "
                          "the Conv/Gemm before it (e.g. a BatchNormalization after the "
                          "activation, whose shift NIR's spiking layers cannot carry)",
                          "put BatchNormalization before the ReLU (Conv-BN-ReLU), or use "
                          "--target ort")
        producer.bias = (np.asarray(producer.bias, np.float64) + c).astype(np.float32)
        self.values[node.output[0]] = x


def build_graph(proto: onnx.ModelProto, timesteps: int = 4, maxpool: str = "auto"
                ) -> tuple[ExportResult | None, list[Diagnostic]]:
    """The NIR graph of ``proto`` (after insert-neurons), or the diagnostics of everything that
    has no NIR form (all collected). ``timesteps``: T where a neuron has no ``T`` attribute;
    ``maxpool="avg"`` (``--maxpool avg``) exports MaxPool as an average pool. Requires the
    ``nir`` package."""
    b = _Builder(proto, timesteps, maxpool)
    try:
        res = b.run()
    except _Refuse as err:
        return None, [Diagnostic(err.code, err.message, PASS, "", err.hint)]
    if b.diags:
        return None, b.diags
    graph = b.nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={}, type_check=True)
    res.graph = graph
    res.nodes = list(b.nodes)
    return res, []
