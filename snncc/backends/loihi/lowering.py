"""Lowering: the ANN-shaped spiking ONNX graph (after insert-neurons) to a float :class:`Netlist`.

:func:`lower` walks the graph in order and keeps every tensor as a sum of linear *terms* over
neuron groups plus a bias (:class:`_Expr`). Linear ops between neurons are composed into those
terms: average pooling folds into the following (or preceding) conv as a strided conv, a residual
Add or a Concat becomes several blocks into one group, Flatten + Gemm becomes a dense block. Each
neuron op turns its input expression into synapse blocks into a new group
(:mod:`snncc.backends.loihi.netlist` holds the data model, its linear kernels and its files).

A linear chain that one conv cannot express (a padded conv reading border positions of a pooled
map, a too large composed kernel, a conv after a dense map) gets a relay group in between.

Error codes (all collected, raised once): SNN-E270 op with no Loihi form, SNN-E271 unsupported
attribute, SNN-E272 non-constant weights, SNN-E273 linear chain that cannot be folded,
SNN-E275 concat / shape not expressible, SNN-E276 missing input shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from snncc.backends.common import AVG_HINT, channels_last_hint, matrix_weights, node_attrs as _attrs
from snncc.backends.loihi.netlist import (Block, Group, Netlist, conv2d, conv2d_adjoint)
from snncc.errors import Diagnostic, ModelInputError, UnsupportedNodeError
from snncc.ir import SNN_DOMAIN, proto_node_label

__all__ = ["lower", "PASS", "MAX_FOLDED_ELEMENTS"]

PASS = "loihi-lower"
#: Largest composed kernel (elements) the lowering builds before giving up (SNN-E273).
MAX_FOLDED_ELEMENTS = 1 << 26


@dataclass
class _Term:
    """One source's contribution to a tensor: a conv or dense map (in the count-only lowering
    also a deconv, :class:`~snncc.backends.loihi.netlist.Block`), rows at ``offset``."""

    src: str
    kind: str
    weight: np.ndarray
    src_view: tuple[int, int, int]
    offset: int = 0
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int] = (0, 0)
    groups: int = 1


@dataclass
class _Expr:
    """A tensor as a sum of terms plus a bias; ``view`` is its (C, H, W) view."""

    shape: tuple[int, ...]
    view: tuple[int, int, int]
    terms: list[_Term]
    bias: np.ndarray                      # shape `view`


class _LowerError(Exception):
    """``relay``: a linear chain that one conv cannot express but a relay group can (the
    lowering then materialises the chain's input as a relay and composes from there)."""

    def __init__(self, code: str, message: str, hint: str = "", relay: bool = False):
        super().__init__(message)
        self.code, self.message, self.hint, self.relay = code, message, hint, relay


def _view_of(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return tuple(int(s) for s in shape)
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    if len(shape) == 2:
        return (int(shape[0]), int(shape[1]), 1)
    raise _LowerError("SNN-E275", f"tensors of rank {len(shape) + 1} are not supported",
                      "the Loihi backend takes [N, C], [N, C, H] or [N, C, H, W] tensors")


def _identity(src: str, view: tuple[int, int, int], shape: tuple[int, ...]) -> _Expr:
    c = view[0]
    term = _Term(src, "conv", np.ones((c, 1, 1, 1)), view, groups=c)
    return _Expr(shape, view, [term], np.zeros(view))


def _full_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """[O, C/g, kh, kw] -> [O, C, kh, kw] with zeros off the group diagonal."""
    o, cg = w.shape[:2]
    if groups == 1:
        return w
    full = np.zeros((o, cg * groups) + w.shape[2:])
    og = o // groups
    for g in range(groups):
        full[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = w[g * og:(g + 1) * og]
    return full


def _compress_groups(w: np.ndarray, candidates: Iterable[int]) -> tuple[np.ndarray, int]:
    """The largest g in ``candidates`` for which full weight ``w`` is block-diagonal."""
    o, c = w.shape[:2]
    for g in sorted(set(candidates), reverse=True):
        if g <= 1 or o % g or c % g:
            continue
        og, cg = o // g, c // g
        mask = np.zeros((o, c), dtype=bool)
        for i in range(g):
            mask[i * og:(i + 1) * og, i * cg:(i + 1) * cg] = True
        if not np.any(w[~mask]):
            return np.stack([w[i * og:(i + 1) * og, i * cg:(i + 1) * cg]
                             for i in range(g)]).reshape(o, cg, *w.shape[2:]), g
    return w, 1


def _trim_rows(term: _Term) -> _Term | None:
    """Drop all-zero leading/trailing output rows (a term placed inside a wider tensor)."""
    nz = np.flatnonzero(np.any(term.weight.reshape(term.weight.shape[0], -1) != 0, axis=1))
    if nz.size == 0:
        return None
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    if (lo, hi) == (0, term.weight.shape[0]):
        return term
    if term.kind in ("conv", "deconv") and term.groups > 1:
        og = term.weight.shape[0] // term.groups
        lo, hi = lo // og * og, -(-hi // og) * og
        if (lo, hi) == (0, term.weight.shape[0]):
            return term
        cg = term.weight.shape[1]
        src_lo, src_hi = lo // og * cg, hi // og * cg
        if (src_lo, src_hi) != (0, term.src_view[0]):
            return term  # the kept groups read a channel slice: keep the full, sparse term
        groups = (hi - lo) // og
        return _Term(term.src, term.kind, term.weight[lo:hi], term.src_view, term.offset + lo,
                     term.stride, term.pads, groups)
    return _Term(term.src, term.kind, term.weight[lo:hi], term.src_view, term.offset + lo,
                 term.stride, term.pads, term.groups)


def _conv_after(term: _Term, mid_view: tuple[int, int, int], w2: np.ndarray,
                stride2: tuple[int, int], pads2: tuple[int, int, int, int], groups2: int,
                out_hw: tuple[int, int]) -> _Term | None:
    """Compose ``conv2(term)``; exact, or raises SNN-E273."""
    if term.kind != "conv":
        what = "a dense map (Gemm/MatMul)" if term.kind == "dense" else f"a {term.kind} map"
        raise _LowerError("SNN-E273", f"a conv or pooling follows {what} without a neuron in "
                          "between", "put a neuron between them", relay=True)
    rows = term.weight.shape[0]
    if (term.weight.shape[1:] == (1, 1, 1) and term.groups == rows == term.src_view[0]
            and term.offset == 0 and rows == mid_view[0] and term.stride == (1, 1)
            and term.pads == (0, 0) and term.src_view == mid_view):
        # the term is a per-channel scale (a neuron's identity): scale conv2's input channels
        cg = w2.shape[1]
        scale = term.weight[:, 0, 0, 0].reshape(groups2, 1, cg, 1, 1)
        w = (w2.reshape(groups2, -1, cg, *w2.shape[2:]) * scale).reshape(w2.shape)
        return _trim_rows(_Term(term.src, "conv", w, term.src_view, 0, stride2,
                                (pads2[0], pads2[1]), groups2))
    w1 = _full_weight(term.weight, term.groups)                # [M, C, k1h, k1w]
    w2f = _full_weight(w2, groups2)[:, term.offset:term.offset + w1.shape[0]]  # [O, M, k2h, k2w]
    (s1h, s1w), (p1t, p1l) = term.stride, term.pads
    h0, w0 = term.src_view[1:]
    h1, w1o = mid_view[1:]
    for axis, (s1, p1, k1, k2, s2, p2b, p2e, n_in, n_mid, n_out) in enumerate((
            (s1h, p1t, w1.shape[2], w2.shape[2], stride2[0], pads2[0], pads2[2], h0, h1,
             out_hw[0]),
            (s1w, p1l, w1.shape[3], w2.shape[3], stride2[1], pads2[1], pads2[3], w0, w1o,
             out_hw[1]))):
        low_ok = p2b == 0 or k1 <= s1 + p1
        last = (n_out - 1) * s2 - p2b + k2 - 1
        high_ok = last < n_mid or n_mid * s1 - p1 >= n_in
        if not (low_ok and high_ok):
            raise _LowerError("SNN-E273", "the padding of a conv/pool reads positions that the "
                              "previous linear layer computes from real inputs, so the two "
                              "cannot be folded into one conv",
                              "put a neuron between them, or remove the padding", relay=True)
    kh = w1.shape[2] + (w2.shape[2] - 1) * s1h
    kw = w1.shape[3] + (w2.shape[3] - 1) * s1w
    if w2f.shape[0] * w1.shape[1] * kh * kw > MAX_FOLDED_ELEMENTS:
        raise _LowerError("SNN-E273", f"folding gives a {kh}x{kw} kernel with "
                          f"{w2f.shape[0]}x{w1.shape[1]} channels, too large",
                          "put a neuron between the linear layers", relay=True)
    w = np.zeros((w2f.shape[0], w1.shape[1], kh, kw))
    for a in range(w2.shape[2]):
        for b in range(w2.shape[3]):
            w[:, :, a * s1h:a * s1h + w1.shape[2], b * s1w:b * s1w + w1.shape[3]] += np.einsum(
                "om,mckl->ockl", w2f[:, :, a, b], w1)
    cands = [groups2, term.groups, math.gcd(w.shape[0], w.shape[1])]
    w, g = _compress_groups(w, cands + [d for d in range(2, cands[-1] + 1) if cands[-1] % d == 0])
    new = _Term(term.src, "conv", w, term.src_view, 0, (s1h * stride2[0], s1w * stride2[1]),
                (p1t + pads2[0] * s1h, p1l + pads2[1] * s1w), g)
    return _trim_rows(new)


def _dense_after(term: _Term, in_view: tuple[int, int, int], wg: np.ndarray) -> _Term | None:
    """Compose a matrix ``wg`` [F_out, F_in] (F_in = prod(in_view)) after ``term``."""
    if term.kind not in ("conv", "dense"):
        raise _LowerError("SNN-E273", f"a Gemm/MatMul follows a {term.kind} map without a "
                          "neuron in between", "put a neuron between them")
    c, h, w = in_view
    rows = term.weight.shape[0]
    cols = wg[:, term.offset * h * w:(term.offset + rows) * h * w]
    if term.kind == "dense":
        dense = cols @ term.weight
    else:
        y = cols.reshape(cols.shape[0], rows, h, w)
        dense = conv2d_adjoint(y, term.weight, term.stride, term.pads, term.groups,
                               term.src_view[1:]).reshape(cols.shape[0], -1)
    return _trim_rows(_Term(term.src, "dense", dense, term.src_view))


def as_2d(attrs: dict[str, Any]) -> dict[str, Any]:
    """A 1-D conv's or pooling's attributes as the 2-D ones over its (C, L, 1) view: the length
    is the height, the width 1 (a [N, C, L] tensor's view, :func:`_view_of`)."""
    out = dict(attrs)
    for key in ("kernel_shape", "strides", "dilations"):
        if len(attrs.get(key, ())) == 1:
            out[key] = (int(attrs[key][0]), 1)
    if len(attrs.get("pads", ())) == 2:
        out["pads"] = (int(attrs["pads"][0]), 0, int(attrs["pads"][1]), 0)
    return out


def _spatial(attrs: dict[str, Any], k: tuple[int, int]) -> tuple[tuple[int, int],
                                                                   tuple[int, int, int, int]]:
    strides = tuple(attrs.get("strides", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    spatial = {len(strides), len(pads) // 2, len(attrs.get("kernel_shape", (0, 0))),
               len(attrs.get("dilations", (1, 1)))} | ({len(k)} if any(k) else set())
    if spatial != {2}:
        raise _LowerError("SNN-E271", "only 1-D and 2-D convolutions and poolings are supported",
                          "use --target ort for 3-D networks")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _LowerError("SNN-E271", f"auto_pad={attrs['auto_pad']} is not supported",
                          "export with explicit pads (compile writes them for SAME and VALID "
                          "where the input size is static)")
    if any(d != 1 for d in attrs.get("dilations", (1, 1))):
        raise _LowerError("SNN-E271", "dilated convolutions are not supported",
                          "use dilation 1")
    if attrs.get("ceil_mode", 0):
        raise _LowerError("SNN-E271", "ceil_mode=1 pooling is not supported",
                          "export the pooling with ceil_mode=0")
    return (int(strides[0]), int(strides[1])), tuple(int(p) for p in pads)


def in_bounds_taps(n_in: int, n_out: int, k: int, stride: int, pad: int) -> int:
    """Kernel taps over all ``n_out`` outputs of one axis that read a real input position, not
    the zero padding (the synapses the SNN count has; the ANN's MACs_l counts all k)."""
    return sum(max(0, min(k, n_in + pad - o * stride) - max(0, pad - o * stride))
               for o in range(n_out))


def _out_hw(view, k, stride, pads) -> tuple[int, int]:
    return ((view[1] + pads[0] + pads[2] - k[0]) // stride[0] + 1,
            (view[2] + pads[1] + pads[3] - k[1]) // stride[1] + 1)


class _Lowering:
    # in messages: the pass, what a diagnosed graph's error says, an op with no form
    pass_name = PASS
    cannot = "the graph cannot be lowered for Loihi"
    no_form = "no Loihi form"
    one_input = "the Loihi backend takes one input"
    ops_hint = ("the Loihi backend maps Conv, Gemm, MatMul, Add, Mul, Concat, AveragePool, "
                "GlobalAveragePool, Flatten, Reshape and neuron ops")
    def __init__(self, proto: onnx.ModelProto, timesteps: int, maxpool: str = "auto",
                 relay: bool = True):
        from snncc.passes.insert_neurons import spec_for_op
        from snncc.neurons.registry import validate_attrs

        self.spec_for_op, self.validate = spec_for_op, validate_attrs
        self.proto, self.T, self.maxpool, self.relay = proto, timesteps, maxpool, relay
        self.inits = {i.name: numpy_helper.to_array(i).astype(np.float64)
                      if numpy_helper.to_array(i).dtype.kind == "f"
                      else numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.values: dict[str, _Expr] = {}
        self.groups: list[Group] = []
        self.blocks: list[Block] = []
        self.diags: list[Diagnostic] = []
        self.ann_macs = 0
        self.ann_macs_in_bounds = 0   # without the multiplications by the zero padding
        self.steps: set[tuple[int, int]] = set()

    # -- helpers
    def _diag(self, node: onnx.NodeProto | None, err: _LowerError) -> None:
        where = proto_node_label(node) if node else ""
        self.diags.append(Diagnostic(err.code, err.message, pass_name=self.pass_name, node=where,
                                     hint=err.hint))

    def _const_input(self, node, i: int) -> np.ndarray:
        if i >= len(node.input) or not node.input[i]:
            return None
        if node.input[i] in self.inits:
            return self.inits[node.input[i]]
        raise _LowerError("SNN-E272", f"input {i} ('{node.input[i]}') is not a constant",
                          "weights, biases and shapes must be initializers")

    def _expr(self, name: str) -> _Expr:
        if name in self.values:
            return self.values[name]
        if name in self.inits:
            raise _LowerError("SNN-E272", f"'{name}' is a constant where a tensor is expected",
                              "fold constant subgraphs before compiling")
        raise _LowerError("SNN-E270", f"input '{name}' is produced by no node",
                          "the graph is malformed; run onnx.checker on it")

    def _new_group(self, g: Group, expr: _Expr | None) -> None:
        self.groups.append(g)
        for i, t in enumerate(expr.terms if expr else []):
            self.blocks.append(Block(f"{g.name}/in{i}", t.src, g.name, t.kind, t.weight,
                                     t.src_view, g.view, t.offset, t.stride, t.pads, t.groups))

    # -- driver
    def run(self) -> Netlist:
        graph = self.proto.graph
        graph_inputs = [i for i in graph.input if i.name not in self.inits]
        if len(graph_inputs) != 1:
            raise UnsupportedNodeError(f"{self.pass_name}: the model has {len(graph_inputs)} "
                                       "inputs",
                                       code="SNN-E276", hint=self.one_input)
        inp = graph_inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else 0
                for d in inp.type.tensor_type.shape.dim][1:]
        if not dims or any(d <= 0 for d in dims):
            raise ModelInputError(f"{self.pass_name}: input '{inp.name}' has no static shape "
                                  f"{dims}",
                                  code="SNN-E276", hint="pass --input-shape")
        shape = tuple(dims)
        view = _view_of(shape)
        self.groups.append(Group(inp.name, "input", shape, view, source=inp.name))
        self.values[inp.name] = _identity(inp.name, view, shape)
        failed: set[str] = set()
        for node in graph.node:
            if failed.intersection(node.input):
                # downstream of a reported node: only what the node gets wrong on its own
                failed.update(node.output)
                try:
                    self._own_check(node)
                except _LowerError as err:
                    self._diag(node, err)
                continue
            try:
                self._node(node)
            except _LowerError as err:
                self._diag(node, err)
                failed.update(node.output)
        outputs = []
        for out in graph.output:
            if out.name not in self.values:
                continue  # its producer was diagnosed
            outputs.append({"name": out.name, "group": self._output_group(out.name)})
        if self.diags:
            raise UnsupportedNodeError(f"{self.pass_name}: {self.cannot}",
                                       diagnostics=self.diags,
                                       code=sorted({d.code for d in self.diags})[0])
        if len(self.steps) > 1:
            raise UnsupportedNodeError(f"{self.pass_name}: neurons disagree on the number of "
                                       f"slices {sorted(self.steps)}", code="SNN-E275",
                                       hint="use one neuron type per network")
        total, counted = next(iter(self.steps)) if self.steps else (self.T, self.T)
        net = Netlist(self.groups, self.blocks, outputs, self.T, total, counted, self.ann_macs)
        net.meta["ann_macs_in_bounds"] = int(self.ann_macs_in_bounds)
        return net

    def _output_group(self, name: str) -> str:
        expr = self.values[name]
        for g in self.groups:
            if g.kind != "input" and self.values.get(f"@group:{g.name}") is expr:
                return g.name
        g = Group(f"readout:{name}", "readout", expr.shape, expr.view, spike="none",
                  source=name, bias=expr.bias)
        self._new_group(g, expr)
        return g.name

    def _node(self, node: onnx.NodeProto) -> None:
        if node.domain == SNN_DOMAIN:
            return self._neuron(node)
        self._handler(node)(node)

    def _own_check(self, node: onnx.NodeProto) -> None:
        """The errors a node has whatever its inputs: no Loihi form for the op, or pooling /
        conv attributes (auto_pad, dilations, ceil_mode) that the lowering refuses."""
        if node.domain == SNN_DOMAIN:
            return
        self._handler(node)
        if node.op_type in ("Conv", "AveragePool", "MaxPool"):
            _spatial(as_2d(_attrs(node)), (0, 0))

    def _handler(self, node: onnx.NodeProto):
        handler = getattr(self, f"_op_{node.op_type}", None)
        if node.op_type == "MaxPool" and self.maxpool == "avg":
            handler = self._maxpool_as_avg
        if handler is None or node.domain not in ("", "ai.onnx"):
            hint = (AVG_HINT if node.op_type == "MaxPool"
                    else "export the model without its final Softmax/LogSoftmax (the arg-max, "
                         "the predicted class, is the same), or use --target ort, which runs it "
                         "as the output head" if node.op_type in ("Softmax", "LogSoftmax")
                    else channels_last_hint(node, self.proto.graph) or self.ops_hint)
            raise _LowerError("SNN-E270", f"op {node.op_type} has {self.no_form}", hint)
        return handler

    # -- neurons
    def _neuron(self, node: onnx.NodeProto) -> None:
        spec = self.spec_for_op(node.op_type)
        if spec is None:
            raise _LowerError("SNN-E270", f"unknown neuron op {node.op_type}",
                              "compile with a registered neuron")
        expr = self._expr(node.input[0])
        attrs = _attrs(node)
        attrs.update(T=self.T, const_input=0)
        attrs = self.validate(spec, attrs, where=f"node '{node.name}': ")
        theta = np.asarray(attrs["theta"], dtype=np.float64).reshape(-1)
        if theta.size not in (1, expr.view[0]) or (theta.size > 1 and len(expr.shape) == 1
                                                   and expr.view[0] != expr.shape[0]):
            raise _LowerError("SNN-E275", f"theta has {theta.size} values for a tensor of "
                              f"shape {expr.shape}", "use one theta per channel")
        total = spec.total_steps(self.T, attrs)
        self.steps.add((total, spec.counted_steps(self.T, attrs)))
        attrs["T"] = total
        jsonable = {k: (list(map(float, v)) if isinstance(v, (list, tuple)) else v)
                    for k, v in attrs.items()}
        g = Group(node.name or node.output[0], "neuron", expr.shape, expr.view, neuron=spec.key,
                  attrs=jsonable, spike=spec.loihi.spike, source=node.name, bias=expr.bias)
        self._new_group(g, expr)
        out = _identity(g.name, expr.view, expr.shape)
        self.values[node.output[0]] = out
        self.values[f"@group:{g.name}"] = out

    # -- linear ops
    def _op_Identity(self, node):
        self.values[node.output[0]] = self._expr(node.input[0])

    _op_Dropout = _op_Identity

    def _op_Conv(self, node):
        x = self._expr(node.input[0])
        w = self._const_input(node, 1)
        b = self._const_input(node, 2)
        attrs = _attrs(node)
        if len(x.shape) == 2 and w.ndim == 3:   # 1-D: a [N, C, L] map runs as its (C, L, 1) view
            w, attrs = w[..., None], as_2d(attrs)
        elif len(x.shape) != 3 or w.ndim != 4:
            raise _LowerError("SNN-E271", "only 1-D and 2-D convolutions and poolings are "
                              "supported", "use --target ort for 3-D networks")
        stride, pads = _spatial(attrs, w.shape[2:])
        groups = int(attrs.get("group", 1))
        out_hw = _out_hw(x.view, w.shape[2:], stride, pads)
        self.ann_macs += int(w.shape[0] * out_hw[0] * out_hw[1] * np.prod(w.shape[1:]))
        self.ann_macs_in_bounds += int(w.shape[0] * w.shape[1] * np.prod(
            [in_bounds_taps(x.view[1 + a], out_hw[a], w.shape[2 + a], stride[a], pads[a])
             for a in range(2)]))
        self._conv_like(node, x, w, stride, pads, groups, out_hw, b)

    def _relayed(self, node, x: _Expr, compose):
        """``compose(term)`` over the terms of ``x``; where one conv cannot express the chain
        (``_LowerError.relay``), ``x`` becomes a relay group first and the composition starts
        from it (docs/netlist.md: relay groups)."""
        try:
            return x, [t for t in map(compose, x.terms) if t is not None]
        except _LowerError as err:
            if not (err.relay and self.relay):
                raise
        name = f"{node.name or node.output[0]}/relay"
        g = Group(name, "relay", x.shape, x.view, spike="graded", source=node.name,
                  bias=x.bias)
        self._new_group(g, x)
        x = _identity(name, x.view, x.shape)
        return x, [t for t in map(compose, x.terms) if t is not None]

    def _conv_like(self, node, x: _Expr, w, stride, pads, groups, out_hw, b=None):
        view = (w.shape[0],) + out_hw
        x, terms = self._relayed(node, x, lambda t: self._conv_term(t, x.view, w, stride, pads,
                                                                     groups, out_hw))
        bias = conv2d(x.bias[None], w, stride, pads[:2], groups, out_hw)[0]
        if b is not None:
            bias = bias + b.reshape(-1, 1, 1)
        self.values[node.output[0]] = _Expr(view[:len(x.shape)], view, terms, bias)

    def _conv_term(self, term: _Term, mid_view, w, stride, pads, groups, out_hw) -> _Term | None:
        """One term of ``conv(x)`` (:func:`_conv_after`; the count-only lowering adds kinds)."""
        return _conv_after(term, mid_view, w, stride, pads, groups, out_hw)

    def _window_attrs(self, node, x: _Expr) -> dict[str, Any]:
        """A pooling's attributes, a 1-D one's over a [N, C, L] map as 2-D (:func:`as_2d`)."""
        attrs = _attrs(node)
        return as_2d(attrs) if len(x.shape) == 2 else attrs

    def _op_AveragePool(self, node):
        x = self._expr(node.input[0])
        attrs = self._window_attrs(node, x)
        k = tuple(attrs["kernel_shape"])
        stride, pads = _spatial(attrs, k)
        if any(pads) and not attrs.get("count_include_pad", 0):
            raise _LowerError("SNN-E271", "padded average pooling with count_include_pad=0 "
                              "has position-dependent weights",
                              "pool without padding or with count_include_pad=1")
        self._pool(node, x, k, stride, pads)

    def _maxpool_as_avg(self, node):
        """``--maxpool avg``: MaxPool -> AveragePool with the same kernel, strides and pads,
        counting the padding (PyTorch's AvgPool2d default, as ``snncc finetune --maxpool avg``
        trains): one strided conv, exact. (Not counting it would need per-position weights.)"""
        if len(node.output) > 1 and node.output[1]:
            raise _LowerError("SNN-E271", "the MaxPool indices output is used",
                              "export the model without MaxPool indices")
        x = self._expr(node.input[0])
        attrs = self._window_attrs(node, x)
        if any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise _LowerError("SNN-E271", "a dilated MaxPool has no AveragePool equivalent",
                              "use an undilated MaxPool")
        k = tuple(attrs["kernel_shape"])
        stride, pads = _spatial(attrs, k)
        self._pool(node, x, k, stride, pads)

    def _pool(self, node, x: _Expr, k, stride, pads):
        c = x.view[0]
        w = np.full((c, 1) + tuple(k), 1.0 / (k[0] * k[1]))
        self._conv_like(node, x, w, stride, pads, c, _out_hw(x.view, k, stride, pads))

    def _op_GlobalAveragePool(self, node):
        x = self._expr(node.input[0])
        self._pool(node, x, x.view[1:], (1, 1), (0, 0, 0, 0))

    def _flatten(self, node, x: _Expr):
        size = int(np.prod(x.shape))
        self.values[node.output[0]] = _Expr((size,), x.view, x.terms, x.bias)

    def _op_Flatten(self, node):
        if _attrs(node).get("axis", 1) != 1:
            raise _LowerError("SNN-E271", "Flatten must keep the batch axis (axis=1)",
                              "flatten with axis=1")
        self._flatten(node, self._expr(node.input[0]))

    def _op_Reshape(self, node):
        x = self._expr(node.input[0])
        target = [int(v) for v in self._const_input(node, 1)]
        size = int(np.prod(x.shape))
        rest = [d for d in target[1:]]
        if target[0] in (0, -1, 1) and (rest in ([-1], [size])):
            return self._flatten(node, x)
        if self._input_reshape(node, x, target, size):
            return
        raise _LowerError("SNN-E271", f"Reshape to {target} is not a flatten",
                          "only Reshape(x, [N, -1]) (a flatten) is supported, and a reshape of "
                          "the graph input into a map")

    def _op_Unsqueeze(self, node):
        """``x.unsqueeze(1)`` of a flat input ([N, 64] -> [N, 1, 64]): the same as the Reshape
        (:meth:`_input_reshape`); any other Unsqueeze has no form."""
        x = self._expr(node.input[0])
        axes = _attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self._const_input(node, 1)
        if axes is not None:
            new = [1, *x.shape]   # the batch axis as 1
            for a in sorted(int(v) % (len(new) + len(axes)) for v in axes):
                new.insert(a, 1)
            if new[0] == 1 and self._input_reshape(node, x, [0, *new[1:]],
                                                   int(np.prod(x.shape))):
                return
        raise _LowerError("SNN-E270", f"op Unsqueeze has {self.no_form} (but of the flat "
                          "input into a map)", self.ops_hint)

    def _input_reshape(self, node, x: _Expr, target: list[int], size: int) -> bool:
        """A flat graph input reshaped into a map ([N, 64] -> [N, 1, 8, 8]) before anything else
        reads it: the input group takes the map's view (its flat order is the same C-order), so
        the layers after it see a map. False for any other Reshape."""
        inp = self.groups[0]
        rest = list(target[1:])
        if not (target[0] in (0, -1, 1) and len(rest) in (2, 3) and all(d > 0 for d in rest)
                and int(np.prod(rest)) == size and len(inp.shape) == 1
                and node.input[0] == inp.source and len(x.terms) == 1
                and x.terms[0].src == inp.name and not np.any(x.bias)
                and not any(b.src == inp.name for b in self.blocks)
                and sum(inp.source in n.input for n in self.proto.graph.node) == 1):
            return False
        view = tuple(rest) if len(rest) == 3 else tuple(rest) + (1,)
        inp.view = view
        self.values[node.output[0]] = _identity(inp.name, view, tuple(rest))
        return True

    def _matrix(self, node, x: _Expr, wg: np.ndarray, bias: np.ndarray | None):
        if len(x.shape) != 1 or wg.shape[1] != x.shape[0]:
            raise _LowerError("SNN-E271", f"Gemm/MatMul on a tensor of shape {x.shape}",
                              "flatten before the fully connected layer")
        self.ann_macs += int(wg.size)
        self.ann_macs_in_bounds += int(wg.size)
        terms = [t for t in (_dense_after(t, x.view, wg) for t in x.terms) if t is not None]
        b = wg @ x.bias.reshape(-1)
        if bias is not None:
            b = b + np.broadcast_to(bias.reshape(-1), b.shape)
        n = wg.shape[0]
        self.values[node.output[0]] = _Expr((n,), (n, 1, 1), terms, b.reshape(n, 1, 1))

    def _op_Gemm(self, node):
        w, bias = matrix_weights(node, self._const_input,
                                 lambda message, hint: _LowerError("SNN-E271", message, hint))
        self._matrix(node, self._expr(node.input[0]), w, bias)

    _op_MatMul = _op_Gemm

    def _op_Add(self, node):
        a, b = node.input[:2]
        if a in self.inits or b in self.inits:
            x = self._expr(b if a in self.inits else a)
            c = self.inits[a if a in self.inits else b]
            bias = x.bias + self._bcast(c, x)
            self.values[node.output[0]] = _Expr(x.shape, x.view, x.terms, bias)
            return
        x, y = self._expr(a), self._expr(b)
        if x.shape != y.shape or x.view != y.view:
            raise _LowerError("SNN-E275", f"Add of shapes {x.shape} and {y.shape}",
                              "both operands must have the same shape")
        self.values[node.output[0]] = _Expr(x.shape, x.view, x.terms + y.terms, x.bias + y.bias)

    def _bcast(self, c: np.ndarray, x: _Expr) -> np.ndarray:
        arr = np.asarray(c, dtype=np.float64)
        if arr.ndim > len(x.shape):
            arr = arr.reshape(arr.shape[arr.ndim - len(x.shape):])
        try:
            return np.broadcast_to(arr, x.shape).reshape(x.view)
        except ValueError:
            raise _LowerError("SNN-E275", f"constant of shape {arr.shape} does not broadcast "
                              f"to {x.shape}", "use a per-channel constant") from None

    def _op_Mul(self, node):
        a, b = node.input[:2]
        if not (a in self.inits or b in self.inits):
            raise _LowerError("SNN-E270", f"product of two tensors has {self.no_form}",
                              "only multiplication by a constant is supported")
        x = self._expr(b if a in self.inits else a)
        c = np.asarray(self.inits[a if a in self.inits else b], dtype=np.float64)
        per = c.reshape(-1)
        if per.size == 1:
            scale = np.full(x.view[0], per[0])
        elif len(x.shape) == 3 and c.size == x.view[0] and c.shape[-2:] in ((1, 1),):
            scale = per
        elif len(x.shape) == 2 and c.size == x.view[0] and c.shape[-1:] == (1,):   # 1-D map
            scale = per
        elif len(x.shape) == 1 and c.size == x.shape[0] and x.view[0] == x.shape[0]:
            scale = per
        else:
            raise _LowerError("SNN-E275", f"Mul by a constant of shape {c.shape}",
                              "only scalar or per-channel factors are supported")
        terms = []
        for t in x.terms:
            s = scale[t.offset:t.offset + t.weight.shape[0]]
            terms.append(_Term(t.src, t.kind, t.weight * s.reshape((-1,) + (1,) *
                                                                    (t.weight.ndim - 1)),
                               t.src_view, t.offset, t.stride, t.pads, t.groups))
        self.values[node.output[0]] = _Expr(x.shape, x.view, terms,
                                            x.bias * scale.reshape(-1, 1, 1))

    def _op_Concat(self, node):
        if _attrs(node).get("axis") not in (1, -len(self._expr(node.input[0]).shape) - 1):
            raise _LowerError("SNN-E275", "Concat must join channels (axis 1)",
                              "concatenate along the channel axis")
        parts = [self._expr(n) for n in node.input]
        if any(p.view[1:] != parts[0].view[1:] or len(p.shape) != len(parts[0].shape)
               or (len(p.shape) == 1 and p.view[1:] != (1, 1)) for p in parts):
            raise _LowerError("SNN-E275", "Concat of tensors with different spatial sizes "
                              "or of flattened feature maps", "concatenate channels of "
                              "equally sized feature maps")
        terms, off = [], 0
        for p in parts:
            for t in p.terms:
                terms.append(_Term(t.src, t.kind, t.weight, t.src_view, t.offset + off,
                                   t.stride, t.pads, t.groups))
            off += p.view[0]
        view = (off,) + parts[0].view[1:]
        shape = (off,) + tuple(parts[0].shape[1:])
        self.values[node.output[0]] = _Expr(shape, view, terms,
                                            np.concatenate([p.bias for p in parts]))


def lower(proto: onnx.ModelProto, timesteps: int, maxpool: str = "auto", *,
          relay: bool = True) -> Netlist:
    """Lower the ANN-shaped spiking graph (after insert-neurons) to a float netlist.

    ``maxpool="avg"`` (``--maxpool avg``) lowers MaxPool as AveragePool counting the padding;
    otherwise MaxPool has no Loihi form. A linear chain that one conv cannot express (a padded
    conv reading border positions of a pooled map, a too large composed kernel, a conv after a
    dense map) gets a relay group in between (``relay=False``: SNN-E273 instead). Raises
    :class:`UnsupportedNodeError` listing every node that has no Loihi form.
    """
    return _Lowering(proto, timesteps, maxpool, relay).run()
