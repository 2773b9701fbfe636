"""Load an ONNX CNN as a trainable torch module (our own builder, not onnx2torch).

Why not onnx2torch (checked with torch 2.13.0+cpu): ``import onnx2torch`` imports torchvision
(its NMS/RoIAlign converters), and the PyPI torchvision wheels either require another torch
(0.29 needs torch >= 2.14) or, at the matching version (0.28.0, installed with ``--no-deps``), fail
to load their operators against the CPU torch build (``operator torchvision::nms does not exist``).
Its converted modules also carry TorchScript-export hooks of their own, while we need a plain module
whose activations we can swap and whose export we control. The op set of the CNNs snncc compiles is
small, so :class:`OnnxGraphModule` interprets the graph directly:

* every float initializer becomes a trainable ``nn.Parameter``; shape-like inputs (Reshape shape,
  Clip bounds, Squeeze/Unsqueeze/Split sizes) must be constants and are read once;
* every ``Relu`` node becomes its own ``nn.ReLU`` child module, every ReLU6-like ``Clip(0, c)``
  (constant bounds, c > 0 finite; the Clips compile takes as activations) a
  :class:`~snncc.train.qcfs.BoundedReLU` (``Clip(0)``: an ``nn.ReLU``), every ``MaxPool`` an
  ``nn.MaxPool2d`` (so :mod:`snncc.train.qcfs` and :mod:`snncc.train.iir` can swap them by type) and
  every ``BatchNormalization`` a :class:`BatchNorm` module (a torch ``_BatchNorm``, so callers can
  freeze its statistics as for ``nn.BatchNorm2d``; its four inputs must be initializers);
* an ``Identity`` of an initializer (how the exporter shares equal initializers) is folded: its
  output becomes an initializer of its own;
* ``forward`` runs the nodes in graph order; the module has one input and one output.

Supported ops: Conv (2-D), Gemm, MatMul, Add, Sub, Mul, Div, BatchNormalization, Relu, Clip,
AveragePool, MaxPool, GlobalAveragePool, ReduceMean, Flatten, Reshape, Concat, Split, Slice,
Transpose, Softmax, LogSoftmax, Log, Squeeze, Unsqueeze, Identity, Dropout, Constant. Anything else raises ``SNN-E801`` listing every such node;
an unsupported form of a supported op (auto_pad, 1-D/3-D pooling...) raises ``SNN-E802``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn.functional as F
from torch import nn

from snncc.errors import Diagnostic, ModelInputError, SnnccError, UnsupportedNodeError
from snncc.op_classes import op_info
from snncc.train.qcfs import BoundedReLU

__all__ = ["OnnxGraphModule", "SUPPORTED_OPS", "load_onnx_module"]

PASS = "finetune"

# input positions read as constants (never trained)
_STATIC_INPUTS = {"Reshape": (1,), "Clip": (1, 2), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
                  "ReduceMean": (1,), "Slice": (1, 2, 3, 4)}
_MODULE_INPUTS = {"BatchNormalization": (1, 2, 3, 4)}  # owned by the node's BatchNorm module


@dataclass
class _Step:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    module: str | None = None  # key in OnnxGraphModule.layers


def _finetune_hint(hint: str | None) -> str | None:
    """An op's conversion hint as finetune can follow it: finetune keeps no analog layers, so
    compile's --allow-analog (named in the shared hint) is compile's way, said as such."""
    if not hint:
        return hint
    return hint.replace("or compile with --allow-analog to keep it as a non-spiking layer",
                        "or, without fine-tuning, snncc compile --allow-analog keeps it as a "
                        "non-spiking layer (finetune trains spiking layers only)")


def _label(node: onnx.NodeProto) -> str:
    return f"'{node.name or node.output[0]}' ({node.domain or 'ai.onnx'}::{node.op_type})"


def _key(name: str, taken: set[str]) -> str:
    """A torch-safe attribute name derived from an ONNX name, unique within ``taken``."""
    base = re.sub(r"\W", "_", name).strip("_") or "t"
    if base[0].isdigit():
        base = "t_" + base
    key, i = base, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


def _pool_padding(node: onnx.NodeProto, attrs: dict[str, Any], problems: list[Diagnostic]) -> tuple[int, int]:
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        problems.append(Diagnostic("SNN-E802", f"asymmetric or non-2-D pads {pads}", PASS, _label(node),
                                   "re-export the model with symmetric padding"))
        return (0, 0)
    return (pads[0], pads[1])


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNormalization over axis 1 of an input of any rank >= 2 (ONNX semantics)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"BatchNormalization needs rank >= 2, got {x.dim()}")


class OnnxGraphModule(nn.Module):
    """A torch module that evaluates an ONNX CNN graph node by node (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelInputError(
                f"{PASS}: the model has {len(inputs)} input(s) and {len(graph.output)} output(s)",
                code="SNN-E808", hint="fine-tuning needs a classifier with one image input and one logits output")
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        self.input_dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in inputs[0].type.tensor_type.shape.dim]
        self.params = nn.ParameterDict()
        self.layers = nn.ModuleDict()
        self._tensor_key: dict[str, str] = {}   # ONNX tensor name -> key in params / buffers
        self._consts: dict[str, np.ndarray] = {}
        taken: set[str] = set()
        problems: list[Diagnostic] = []
        self.steps: list[_Step] = []
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] in inits and node.domain in ("", "ai.onnx"):
                # the TorchScript exporter shares equal initializers through Identity nodes: each user
                # gets its own copy (trained separately, exported as a plain initializer)
                inits[node.output[0]] = np.array(inits[node.input[0]])
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            step = _Step(node.op_type, node.name or node.output[0], list(node.input), list(node.output), attrs)
            if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
                info = op_info(node.op_type, node.domain)
                problems.append(
                    Diagnostic("SNN-E801", f"{node.op_type} has no spiking equivalent", PASS, _label(node),
                               _finetune_hint(info.hint)) if not info.spiking else
                    Diagnostic("SNN-E801", "op not supported by the fine-tuning builder", PASS,
                               _label(node), "supported: " + ", ".join(SUPPORTED_OPS)))
                continue
            if node.op_type == "Constant":
                self._consts[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
                continue
            static = _STATIC_INPUTS.get(node.op_type, ())
            owned = _MODULE_INPUTS.get(node.op_type, ())
            for pos, name in enumerate(node.input):
                if not name:
                    continue
                if pos in static or pos in owned:
                    if name not in inits and name not in self._consts:
                        problems.append(Diagnostic("SNN-E802", f"input {pos} ('{name}') must be a constant",
                                                   PASS, _label(node), "fold shape computations before fine-tuning"))
                    elif name in inits:
                        self._consts[name] = inits[name]
                    continue
                if name in inits and name not in self._tensor_key:
                    arr = inits[name]
                    key = _key(name, taken)
                    self._tensor_key[name] = key
                    tensor = torch.from_numpy(np.array(arr))
                    if not np.issubdtype(arr.dtype, np.floating):
                        self.register_buffer(key, tensor)
                    else:
                        self.params[key] = nn.Parameter(tensor)
            self._add_layer(node, step, attrs, taken, problems)
            self.steps.append(step)
        if problems:
            codes = {d.code for d in problems}
            # briefly: the unsupported ops counted in the header, one listed node per op (an
            # LSTM export brings a dozen Shape/Gather/Expand nodes with it)
            ops = Counter(d.node.rsplit("::", 1)[-1].rstrip(")") for d in problems
                          if d.code == "SNN-E801")
            shown, seen = [], set()
            for d in problems:
                op = d.node.rsplit("::", 1)[-1].rstrip(")")
                if d.code != "SNN-E801" or op not in seen:
                    shown.append(d)
                    seen.add(op)
            kinds = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in ops.items())
            raise UnsupportedNodeError(
                f"{PASS}: {len(problems)} node(s) cannot be loaded for training"
                + (f" ({kinds}; one node of each listed)" if len(shown) < len(problems) else ""),
                diagnostics=shown, code="SNN-E801" if "SNN-E801" in codes else "SNN-E802")

    def _add_layer(self, node: onnx.NodeProto, step: _Step, attrs: dict[str, Any], taken: set[str],
                   problems: list[Diagnostic]) -> None:
        """Create the child module of a Relu / MaxPool / AveragePool / BatchNormalization node; check op forms."""
        op = node.op_type
        if op in ("Conv", "AveragePool", "MaxPool") and attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            problems.append(Diagnostic("SNN-E802", "auto_pad is not supported", PASS, _label(node),
                                       "re-export the model with explicit pads"))
            return
        if op == "Relu":
            step.module = _key(step.name, taken)
            self.layers[step.module] = nn.ReLU()
        elif op == "Clip":   # an activation site where compile takes it as one: Clip(0, c > 0) or Clip(0)
            lo, hi = _clip_bounds(self, step)
            if lo == 0.0 and (hi is None or hi > 0.0):
                step.module = _key(step.name, taken)
                self.layers[step.module] = BoundedReLU(hi) if hi is not None and hi < np.inf else nn.ReLU()
        elif op in ("MaxPool", "AveragePool"):
            kernel = list(attrs.get("kernel_shape", []))
            if len(kernel) != 2 or list(attrs.get("dilations", [1, 1])) != [1, 1]:
                problems.append(Diagnostic("SNN-E802", "only 2-D pooling without dilation is supported", PASS,
                                           _label(node), "use 2-D pooling"))
                return
            stride = tuple(attrs.get("strides", [1, 1]))
            padding = _pool_padding(node, attrs, problems)
            ceil = bool(attrs.get("ceil_mode", 0))
            step.module = _key(step.name, taken)
            if op == "MaxPool":
                self.layers[step.module] = nn.MaxPool2d(tuple(kernel), stride, padding, ceil_mode=ceil)
            else:
                self.layers[step.module] = nn.AvgPool2d(tuple(kernel), stride, padding, ceil_mode=ceil,
                                                        count_include_pad=bool(attrs.get("count_include_pad", 0)))
        elif op == "BatchNormalization" and all(n in self._consts for n in node.input[1:5]):
            scale, bias, mean, var = (self._consts[n] for n in node.input[1:5])
            step.module = _key(step.name, taken)
            bn = BatchNorm(len(scale), eps=attrs.get("epsilon", 1e-5))
            for tensor, value in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), (scale, bias, mean, var)):
                tensor.data.copy_(torch.from_numpy(np.array(value, np.float32)))
            self.layers[step.module] = bn
        elif op == "Conv" and len(attrs.get("kernel_shape", [0, 0])) != 2:
            problems.append(Diagnostic("SNN-E802", "only 2-D convolution is supported", PASS, _label(node),
                                       "use Conv2d"))

    def _tensor(self, name: str) -> torch.Tensor:
        key = self._tensor_key[name]
        return self.params[key] if key in self.params else getattr(self, key)

    @property
    def softmax_head(self) -> bool:
        """Whether the graph ends in a Softmax over the classes (then only shape ops, e.g.
        Identity or Flatten): training skips it (:attr:`train_on_logits`), the export keeps it."""
        return self._head_softmax() is not None

    def _head_softmax(self) -> "_Step | None":
        for step in reversed(self.steps):
            if step.op == "Softmax":
                return step if step.attrs.get("axis", -1) in (1, -1) else None
            if step.op not in ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"):
                return None
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def get(name: str) -> torch.Tensor | None:
            if not name:
                return None
            if name in env:
                return env[name]
            if name in self._tensor_key:
                return self._tensor(name)
            return torch.as_tensor(np.array(self._consts[name]))   # writable (no torch warning)

        head = self._head_softmax() if getattr(self, "train_on_logits", False) else None
        for step in self.steps:
            if step is head:
                # the loss (cross-entropy, distillation) takes logits: on probabilities a
                # Softmax-headed net had trained ~10x slower, without a word
                env[step.outputs[0]] = get(step.inputs[0])
                continue
            fn = _OPS[step.op]
            if step.module is not None:
                out = self.layers[step.module](get(step.inputs[0]))
            else:
                out = fn(self, step, get)
            if isinstance(out, tuple):
                env.update(zip(step.outputs, out))
            else:
                env[step.outputs[0]] = out
        return env[self.output_name]

    def const(self, name: str) -> np.ndarray:
        return self._consts[name]

    @torch.no_grad()
    def fold_batchnorm(self) -> int:
        """Fold every BatchNormalization that is the sole consumer of a Conv output into that Conv
        (W·γ/σ, (b − μ)·γ/σ + β, as ``snncc compile``'s fold-batchnorm does); returns how many.

        Training the folded weights avoids what frozen BN statistics do to SGD: a channel with gain
        γ/σ = 15 sees its weight gradient scaled by 15² and can diverge at a normal learning rate.
        """
        uses: dict[str, int] = {self.output_name: 1}
        for st in self.steps:
            for name in st.inputs:
                uses[name] = uses.get(name, 0) + 1
        producer = {out: st for st in self.steps for out in st.outputs}
        folded = 0
        for bn_step in [st for st in self.steps if st.op == "BatchNormalization" and st.module is not None]:
            conv = producer.get(bn_step.inputs[0])
            if conv is None or conv.op != "Conv" or uses.get(bn_step.inputs[0], 0) != 1 \
                    or uses.get(conv.inputs[1], 0) != 1 or conv.inputs[1] not in self._tensor_key:
                continue
            bn = self.layers[bn_step.module]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = self._tensor(conv.inputs[1])
            if len(conv.inputs) > 2 and conv.inputs[2] and uses.get(conv.inputs[2], 0) == 1 \
                    and conv.inputs[2] in self._tensor_key:
                b = self._tensor(conv.inputs[2])
            else:
                if len(conv.inputs) > 2 and conv.inputs[2]:
                    continue   # a shared or constant bias: leave this pair alone
                name = f"{conv.name}.bias_folded"
                key = _key(name, set(self.params.keys()) | set(dict(self.named_buffers())))
                self.params[key] = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype,
                                                             device=w.device))
                self._tensor_key[name] = key
                conv.inputs = [*conv.inputs[:2], name]
                b = self.params[key]
            w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))))
            b.copy_((b - bn.running_mean) * scale + bn.bias)
            conv.outputs = [bn_step.outputs[0]]
            self.steps.remove(bn_step)
            del self.layers[bn_step.module]
            folded += 1
        return folded


def _conv(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x, w, b = get(s.inputs[0]), get(s.inputs[1]), get(s.inputs[2]) if len(s.inputs) > 2 else None
    pads = list(s.attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = [0, 0]
    return F.conv2d(x, w, b, tuple(s.attrs.get("strides", [1, 1])), tuple(pads[:2]),
                    tuple(s.attrs.get("dilations", [1, 1])), s.attrs.get("group", 1))


def _gemm(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    a, b = get(s.inputs[0]), get(s.inputs[1])
    c = get(s.inputs[2]) if len(s.inputs) > 2 else None
    alpha, beta = s.attrs.get("alpha", 1.0), s.attrs.get("beta", 1.0)
    trans_a, trans_b = s.attrs.get("transA", 0), s.attrs.get("transB", 0)
    if trans_b and not trans_a and alpha == 1.0 and beta == 1.0:
        return F.linear(a, b, c)
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _clip_bounds(m: OnnxGraphModule, s: _Step) -> tuple[float | None, float | None]:
    """(min, max) of a Clip: constant inputs 1 and 2 (opset >= 11; one-element tensors) or the
    min/max attributes (opset 6). A bound that is not a constant (already reported as SNN-E802)
    reads as NaN, so the Clip is no activation site."""
    def bound(pos: int, attr: str) -> float | None:
        if len(s.inputs) > pos and s.inputs[pos]:
            value = np.asarray(m._consts.get(s.inputs[pos], np.nan))
            return float(value.reshape(-1)[0]) if value.size == 1 else float("nan")
        return float(s.attrs[attr]) if attr in s.attrs else None
    return bound(1, "min"), bound(2, "max")


def _clip(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    lo, hi = _clip_bounds(m, s)
    x = get(s.inputs[0])
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)   # no bounds: the identity


def _reshape(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x = get(s.inputs[0])
    shape = [x.shape[i] if d == 0 and not s.attrs.get("allowzero", 0) else int(d)
             for i, d in enumerate(m.const(s.inputs[1]).tolist())]
    return x.reshape(shape)


def _axes(m: OnnxGraphModule, s: _Step) -> list[int]:
    if len(s.inputs) > 1 and s.inputs[1]:
        return [int(a) for a in m.const(s.inputs[1]).reshape(-1)]
    return list(s.attrs.get("axes", []))


def _reduce_mean(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    """``x.mean((2, 3))``, torch's global average pool, exports as ReduceMean (axes as an
    attribute before opset 18, as an input from 18 on)."""
    x = get(s.inputs[0])
    axes = _axes(m, s)
    if not axes:
        if s.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return x.mean(dim=tuple(axes), keepdim=bool(s.attrs.get("keepdims", 1)))


def _squeeze(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x = get(s.inputs[0])
    axes = _axes(m, s)
    return torch.squeeze(x, tuple(axes)) if axes else torch.squeeze(x)


def _unsqueeze(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x = get(s.inputs[0])
    axes = _axes(m, s)
    out_rank = x.dim() + len(axes)
    for a in sorted(a % out_rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _transpose(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x = get(s.inputs[0])
    return x.permute(*(s.attrs.get("perm") or reversed(range(x.dim()))))


def _split(m: OnnxGraphModule, s: _Step, get: Callable) -> tuple[torch.Tensor, ...]:
    x = get(s.inputs[0])
    axis = s.attrs.get("axis", 0)
    if len(s.inputs) > 1 and s.inputs[1]:
        sizes = [int(v) for v in m.const(s.inputs[1])]
    elif "split" in s.attrs:
        sizes = list(s.attrs["split"])
    else:
        n = len(s.outputs)
        sizes = [-(-x.shape[axis] // n)] * n
    return tuple(torch.split(x, sizes, dim=axis))


def _slice(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    """ONNX Slice with constant starts / ends / axes / steps (a channel slice of a concat)."""
    x = get(s.inputs[0])
    consts = [[int(v) for v in np.asarray(m.const(n)).reshape(-1)] if n else None
              for n in (list(s.inputs[1:]) + [""] * 4)[:4]]
    starts, ends, axes, steps = consts
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise ModelInputError(f"{PASS}: Slice '{s.name}' steps by {step}", code="SNN-E802",
                                  hint="only forward slices (step >= 1) are trained")
        index[axis % x.dim()] = slice(start, min(end, x.shape[axis % x.dim()]), step)
    return x[tuple(index)]


def _flatten(m: OnnxGraphModule, s: _Step, get: Callable) -> torch.Tensor:
    x = get(s.inputs[0])
    axis = s.attrs.get("axis", 1) % max(x.dim(), 1)
    if axis == 0:
        return x.reshape(1, -1)
    x = torch.flatten(x, axis)
    return x if axis == 1 else torch.flatten(x, 0, axis - 1)


_OPS: dict[str, Callable[[OnnxGraphModule, _Step, Callable], torch.Tensor]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda m, s, g: torch.matmul(g(s.inputs[0]), g(s.inputs[1])),
    "Add": lambda m, s, g: g(s.inputs[0]) + g(s.inputs[1]),
    "Sub": lambda m, s, g: g(s.inputs[0]) - g(s.inputs[1]),
    "Mul": lambda m, s, g: g(s.inputs[0]) * g(s.inputs[1]),
    "Div": lambda m, s, g: g(s.inputs[0]) / g(s.inputs[1]),
    "BatchNormalization": None,  # module
    "Relu": None,          # module
    "MaxPool": None,       # module
    "AveragePool": None,   # module
    "Clip": _clip,         # a module where it is ReLU6-like (BoundedReLU)
    "GlobalAveragePool": lambda m, s, g: F.adaptive_avg_pool2d(g(s.inputs[0]), 1),
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": lambda m, s, g: torch.cat([g(n) for n in s.inputs], dim=s.attrs["axis"]),
    "Transpose": _transpose,
    "Softmax": lambda m, s, g: torch.softmax(g(s.inputs[0]), dim=s.attrs.get("axis", -1)),
    # a log-softmax head: cross-entropy on its output is cross-entropy on the logits
    "LogSoftmax": lambda m, s, g: torch.log_softmax(g(s.inputs[0]), dim=s.attrs.get("axis", -1)),
    "Log": lambda m, s, g: torch.log(g(s.inputs[0])),
    "Slice": _slice,
    "Split": _split,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Identity": lambda m, s, g: g(s.inputs[0]),
    "Dropout": lambda m, s, g: g(s.inputs[0]),
    "Constant": None,      # folded at load time
}
SUPPORTED_OPS = tuple(sorted(_OPS))


def load_onnx_module(path_or_proto: Any,
                     input_shapes: dict[str, tuple[int, ...]] | None = None) -> OnnxGraphModule:
    """Read an ONNX file (or proto) and build the trainable module; raises typed errors.
    ``input_shapes`` (input name -> shape, as compile's) fixes dynamic dims where the model's
    shape computations must be folded."""
    from snncc import ir

    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else ir.read_proto(path_or_proto)
    _refuse_compiled_or_training_mode(proto)
    try:
        return OnnxGraphModule(proto)
    except UnsupportedNodeError as exc:
        if not exc.codes <= {"SNN-E801", "SNN-E802"}:
            raise
        canonical = _canonical(proto, input_shapes or {})
        if not isinstance(canonical, onnx.ModelProto):
            if input_shapes or "SNN-E114" in canonical.codes:
                # dynamic dims (--input-shape makes it load), or the shapes given do not fit
                raise canonical from None
            raise
        try:
            return OnnxGraphModule(canonical)
        except SnnccError:
            raise exc from None


def _canonical(proto: onnx.ModelProto, input_shapes: dict) -> onnx.ModelProto | SnnccError:
    """The model as compile's canonicalize pass leaves it (shape computations folded, e.g. the
    ``Shape -> Gather -> Concat -> Reshape`` of ``x.view(x.size(0), -1)`` with a dynamic batch;
    ``Sum``, spatial ``ReduceMean`` and ``Max(x, 0)`` in their plain forms), or the error of that
    pass where it refuses it. Loaded only when the exported graph itself does not build, so a
    model the builder takes as it is trains on exactly its own graph."""
    from snncc import ir
    from snncc.context import CompileContext, CompileOptions
    from snncc.passes.canonicalize import CanonicalizePass
    from snncc.pipeline import Pipeline

    try:
        model = ir.load(proto)
        Pipeline([CanonicalizePass(require_activation=False)], verify="off").run(
            model, CompileContext(CompileOptions(target="qann", allow_analog=True,
                                                 input_shapes=input_shapes)))
        return ir.to_proto(model)
    except SnnccError as err:
        return err


def _refuse_compiled_or_training_mode(proto: onnx.ModelProto) -> None:
    """What compile refuses up front, refused alike: a model snncc compiled (SNN-E123: its time
    axis folded into the batch; it had been E801 on its neuron and Shape/Slice nodes), and a
    BatchNormalization or Dropout exported in training mode (SNN-E208: finetune had trained such
    a model, and its output then compiled past compile's check)."""
    from snncc.ir import load, node_label, train_metadata
    from snncc.op_classes import TRAINING_HINT
    from snncc.passes.canonicalize import compiled_output
    from snncc.passes.support import training_mode

    model = load(proto)
    compiled = compiled_output(model)
    if compiled:
        raise ModelInputError(f"{PASS}: the model is already an snncc output (schedule "
                              f"{compiled['schedule']}, T = {compiled['timesteps']})",
                              code="SNN-E123", hint="fine-tune the source ANN")
    trained = train_metadata(model.metadata)
    kind = trained.get("kind")
    if kind in ("qcfs", "snn"):   # its Floor / neuron nodes had been E801 'op not supported'
        what = (f"QCFS, L = {trained.get('levels')}: its clips are trained" if kind == "qcfs"
                else "an SNN trained with --iir / --mt: its neurons are in the graph")
        raise ModelInputError(f"{PASS}: the model is already an snncc finetune output ({what})",
                              code="SNN-E123", hint="compile it as it is, fine-tune the source "
                              "ANN again (" + ("another -L or more --epochs), or continue a run "
                                               "with --checkpoint / --resume" if kind == "qcfs"
                                               else "more --epochs or other --timesteps stages)"))
    if model.metadata.get("snncc.target") == "qann":   # a compiled QANN (its Floor: E801 before)
        raise ModelInputError(f"{PASS}: the model is already an snncc output (a quantized-clip "
                              "ANN, --target qann)", code="SNN-E123",
                              hint="fine-tune the source ANN")
    graph = model.graph
    bad = [Diagnostic("SNN-E208", f"{n.op} is in training mode ({why})", PASS, node_label(n),
                      TRAINING_HINT)
           for n in graph.nodes if n.op in ("BatchNormalization", "Dropout")
           and (why := training_mode(graph, n))]
    if bad:
        raise UnsupportedNodeError(f"{PASS}: the model was exported in training mode: {len(bad)} "
                                   "node(s) would compute their training form",
                                   diagnostics=bad, code="SNN-E208", hint=TRAINING_HINT)
