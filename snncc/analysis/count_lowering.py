"""The count-only lowering: the netlist that the SynOp count of an ONNX Runtime SNN runs on.

:func:`count_lower` walks the ANN-shaped spiking graph (after insert-neurons) as the Loihi
lowering (:mod:`snncc.backends.loihi.lowering`) does, with no relay groups (ONNX Runtime events
have none), and also takes what an ORT SNN runs but Loihi has no form for:

* a MaxPool, which has no synapses, becomes a group of its own. Over a neuron's spikes it is a
  ``pool`` group whose events are the spikes it passes on, measured at the MaxPool's output
  tensor (the spike gate's, or the decoded pool's; ``attrs["events_of"]`` names the neuron whose
  spec counts them, ``attrs["channels"]`` its channels there: a pool over a Concat of neurons
  has one group per neuron). Over analog currents (a stem pool that pool-first moved in front
  of its activation) it is an ``analog`` group, whose incoming conv blocks are MACs. A MaxPool
  that the schedule swapped with the neuron before it (``neuron_outputs``: the compiled model's
  neuron nodes by output tensor; bit-serial, T = 1) pools that neuron's current: the neuron
  group takes the pooled view (its incoming blocks keep the conv's output size), or, where the
  neuron has other readers and the schedule duplicated it, a second neuron group with no
  synapses of its own. A MaxPool over a sum or a transform of spikes (a scale, a shift) has no
  count (SNN-E271);
* a nearest-neighbour Resize (an upsampling) copies spikes, as a MaxPool passes some of them
  on: it is a ``pool`` group too (``attrs["op"]`` tells them apart), whose events are the copies,
  measured at its output tensor. A linear Resize is a fixed per-channel linear map: where its
  structure is a deconv window (an integer upscale) it is counted as that deconv (below);
  otherwise, and in mode cubic, it has no count (SNN-E271);
* a ConvTranspose is a block of kind ``deconv`` (its synapses in conv layout, see
  :class:`~snncc.backends.loihi.netlist.Block`); a stride-1 conv after it without a neuron in
  between (a U-Net's Concat + conv) composes into one larger deconv block, as two convs compose
  into one (a strided conv, pooling or Gemm after it, or a conv that reaches a spike only
  through positions the ConvTranspose crops, has no count: SNN-E273);
* an output head (Softmax, LogSoftmax, ArgMax on a graph output) acts on the decoded output,
  after every synapse, and passes through;
* an analog island (``--allow-analog``: an op with no spiking form that reads spikes, as
  :func:`snncc.passes.support.conversion_roles` says, and the ops that read its values) is an
  ``analog`` group of one input and a static output shape: the spikes it reads are decoded, so
  they feed no synapse, and the layers after it count MACs, like those after the input.

Such a netlist is for counting only (:mod:`snncc.analysis.synops`), never for Loihi.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from snncc.backends.common import node_attrs as _attrs
from snncc.backends.loihi.lowering import (MAX_FOLDED_ELEMENTS, _compress_groups, _Expr,
                                           _full_weight, _identity, _Lowering, _LowerError,
                                           _Term, _trim_rows, _view_of, as_2d)
from snncc.backends.loihi.netlist import Block, Group, Netlist, conv2d_adjoint, window_matrix
from snncc.ir import SNN_DOMAIN

__all__ = ["count_lower", "HEADS"]

#: Output heads the count passes through (they act on the decoded output).
HEADS = ("Softmax", "LogSoftmax", "ArgMax")


def _is_copy(term: _Term, view: tuple[int, int, int]) -> bool:
    """``term`` is channel c of its source at the same position, unscaled."""
    c = view[0]
    return (term.kind == "conv" and term.weight.shape == (c, 1, 1, 1) and term.groups == c
            and term.offset == 0 and term.stride == (1, 1) and term.pads == (0, 0)
            and tuple(term.src_view) == tuple(view) and bool(np.all(term.weight == 1.0)))


def _channel_copy(term: _Term, hw: tuple[int, int]) -> bool:
    """``term`` reads every channel of its source at the same position (times a per-channel
    factor), into rows ``offset ...`` of a wider tensor (a Concat part)."""
    rows = term.weight.shape[0]
    return (term.kind == "conv" and term.weight.shape == (rows, 1, 1, 1) and term.groups == rows
            and term.stride == (1, 1) and term.pads == (0, 0)
            and tuple(term.src_view) == (rows,) + tuple(hw))


def _pool_out_hw(view: tuple[int, int, int], attrs: dict[str, Any]) -> tuple[int, int]:
    """Output size of a 2-D MaxPool (pads, strides, dilations, ceil_mode as ONNX defines them)."""
    k = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    dil = tuple(attrs.get("dilations", (1, 1)))
    if {len(k), len(strides), len(dil), len(pads) // 2} != {2} or attrs.get("auto_pad", "NOTSET") \
            not in ("NOTSET", ""):
        raise _LowerError("SNN-E271", "only 2-D MaxPools with explicit pads are counted",
                          "export with explicit pads (compile writes them for SAME and VALID "
                          "where the input size is static)")
    out = []
    for a in range(2):
        span = view[1 + a] + pads[a] + pads[a + 2] - ((k[a] - 1) * dil[a] + 1)
        n = (-(-span // strides[a]) if attrs.get("ceil_mode", 0) else span // strides[a]) + 1
        if attrs.get("ceil_mode", 0) and (n - 1) * strides[a] >= view[1 + a] + pads[a]:
            n -= 1   # the last window must start inside the input or its begin padding
        out.append(int(n))
    return out[0], out[1]


def _packed(t: _Term, candidates: tuple[int, ...]) -> _Term | None:
    """``t`` stored compactly: grouped where its weight is block-diagonal in one of the
    ``candidates``, all-zero edge rows dropped. (Only the size of the block: the count charges
    only pairs with a nonzero kernel, ``netlist.pair_mask``, however the block is stored.)"""
    w, g = _compress_groups(_full_weight(t.weight, t.groups), candidates)
    return _trim_rows(_Term(t.src, t.kind, w, t.src_view, t.offset, t.stride, t.pads, g))


def _deconv_then_conv(term: _Term, mid_view: tuple[int, int, int], w2: np.ndarray,
                      stride2: tuple[int, int], pads2: tuple[int, int, int, int], groups2: int,
                      out_hw: tuple[int, int]) -> _Term | None:
    """A stride-1 conv ``w2`` after a deconv ``term``: one deconv with the composed kernel.
    Deconv output r reads input i by tap t = r - i*s + p1, the conv output q reads r = q - p2 + u,
    so q reads i by tap t - u + k2 - 1 of a deconv with kernel k1 + k2 - 1 and pad
    p1 - p2 + k2 - 1. That deconv also reaches q through positions r that the ConvTranspose
    crops (the conv reads zeros there): where a pair (i, q) is joined only so, the structure
    differs, and the chain has no count (SNN-E273). (Its weights then differ at the border
    too; a count-only netlist uses only the structure.)"""
    if tuple(stride2) != (1, 1):
        raise _LowerError("SNN-E273", "a strided conv or a pooling follows a ConvTranspose or "
                          "a linear Resize without a neuron in between",
                          "put a neuron between them")
    w1 = _full_weight(term.weight, term.groups)                     # [M, C, k1h, k1w]
    w2f = _full_weight(w2, groups2)[:, term.offset:term.offset + w1.shape[0]]
    pads = []
    for a in range(2):
        s1, p1, k1, k2 = term.stride[a], term.pads[a], w1.shape[2 + a], w2.shape[2 + a]
        n_in, n_mid, n_out = term.src_view[1 + a], mid_view[1 + a], out_hw[a]
        pads.append(p1 - pads2[a] + k2 - 1)
        real = window_matrix(n_mid, n_out, k2, 1, pads2[a]) @ window_matrix(n_mid, n_in, k1, s1,
                                                                              p1).T
        composed = window_matrix(n_out, n_in, k1 + k2 - 1, s1, pads[-1]).T
        if not np.array_equal(real > 0, composed > 0):
            raise _LowerError("SNN-E273", "a conv reaches some spikes only through positions "
                              "that the ConvTranspose before it crops, so the two cannot be "
                              "composed", "put a neuron between them")
    kh, kw = w1.shape[2] + w2.shape[2] - 1, w1.shape[3] + w2.shape[3] - 1
    if w2f.shape[0] * w1.shape[1] * kh * kw > MAX_FOLDED_ELEMENTS:
        raise _LowerError("SNN-E273", f"composing gives a {kh}x{kw} kernel with "
                          f"{w2f.shape[0]}x{w1.shape[1]} channels, too large",
                          "put a neuron between the linear layers")
    w = np.zeros((w2f.shape[0], w1.shape[1], kh, kw))
    k2h, k2w = w2.shape[2:]
    for a in range(k2h):
        for b in range(k2w):
            w[:, :, k2h - 1 - a:k2h - 1 - a + w1.shape[2], k2w - 1 - b:k2w - 1 - b + w1.shape[3]] \
                += np.einsum("om,mckl->ockl", w2f[:, :, a, b], w1)
    return _packed(_Term(term.src, "deconv", w, term.src_view, 0, term.stride, tuple(pads)),
                   (groups2, term.groups))


def _resize_hw(x: _Expr, node: onnx.NodeProto, const, inferred: list | None = None
               ) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output size and scale factors of a 2-D Resize from its constant scales or sizes (or, for
    sizes read from a shape, the ``inferred`` output dims)."""
    ins = list(node.input) + [""] * 4
    scales_at, sizes_at = (1, None) if len(node.input) == 2 else (2, 3)   # opset 10: (X, scales)
    sizes = inferred if inferred is not None else \
        const(node, sizes_at) if sizes_at is not None and ins[sizes_at] else None
    scales = const(node, scales_at) if ins[scales_at] and inferred is None else None
    if sizes is not None and len(sizes):
        sizes = [None] + [int(v) for v in list(np.reshape(sizes, -1))[1:]]
        if len(sizes) != 4 or sizes[1] != x.view[0]:
            raise _LowerError("SNN-E271", f"Resize to sizes {sizes} changes more than height "
                              "and width", "resize only the spatial axes")
        return (sizes[2], sizes[3]), (sizes[2] / x.view[1], sizes[3] / x.view[2])
    if scales is None or scales.size != 4 or np.any(scales.reshape(-1)[:2] != 1):
        raise _LowerError("SNN-E271", "a Resize with other than 4 scales, or scaling the batch "
                          "or channel axis, is not counted", "resize only the spatial axes")
    f = scales.reshape(-1).astype(np.float32)
    return ((int(math.floor(np.float32(x.view[1]) * f[2])),
             int(math.floor(np.float32(x.view[2]) * f[3]))), (float(f[2]), float(f[3])))


def _linear_taps(n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """[n_out, n_in]: the weights of a 1-D linear Resize (ONNX's coordinate transforms, the
    source coordinate clamped to the input as ONNX Runtime does)."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        if mode in ("half_pixel", "pytorch_half_pixel"):
            x = (o + 0.5) / scale - 0.5 if n_out > 1 or mode == "half_pixel" else 0.0
        elif mode == "align_corners":
            x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        elif mode == "asymmetric":
            x = o / scale
        else:
            raise _LowerError("SNN-E271", f"a linear Resize with coordinate_transformation_mode "
                              f"{mode} is not counted", "use half_pixel or asymmetric")
        x = min(max(x, 0.0), n_in - 1.0)
        i = int(math.floor(x))
        m[o, i] += 1 - (x - i)
        m[o, min(i + 1, n_in - 1)] += x - i
    return m


def _as_deconv(m: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """A 1-D linear map [n_out, n_in] whose structure is a deconv window: (kernel, stride,
    pad, taps), or SNN-E271."""
    n_out, n_in = m.shape
    if n_out % n_in == 0:
        s = n_out // n_in
        for k in range(1, 2 * s + 2):
            for pad in range(k):
                window = window_matrix(n_out, n_in, k, s, pad).T
                if np.array_equal(window > 0, m != 0):
                    taps = np.ones(k)
                    i = n_in // 2
                    for t in range(k):
                        o = i * s - pad + t
                        if 0 <= o < n_out and m[o, i]:
                            taps[t] = m[o, i]
                    return k, s, pad, taps
    raise _LowerError("SNN-E271", f"a linear Resize from {n_in} to {n_out} is not a fixed "
                      "window (an integer upscale; align_corners only at x2)",
                      "upsample by an integer factor, or with mode nearest")


def _per_source(x: _Expr, what: str, make) -> list[_Term]:
    """``make(term, factors)`` for every term of ``x``, each a source's own channels at the same
    positions times per-channel ``factors`` (a neuron's spikes, a Concat part, a scale), or
    SNN-E273; the terms it drops (None) left out."""
    terms = []
    for t in x.terms:
        if not _channel_copy(t, x.view[1:]):
            raise _LowerError("SNN-E273", f"a {what} follows another linear layer without a "
                              "neuron in between", "put a neuron between them")
        terms.append(make(t, t.weight[:, 0, 0, 0]))
    return [t for t in terms if t is not None]


class _CountLowering(_Lowering):
    pass_name = "synop-count"
    cannot = "the graph has no SynOp count"
    no_form = "no SynOp count"
    one_input = "the SynOp count takes models with one input"
    ops_hint = ("the count takes Conv, ConvTranspose, Gemm, MatMul, Add, Mul, Concat, "
                "AveragePool, MaxPool, GlobalAveragePool, Resize (nearest, or linear by an "
                "integer factor), Flatten, Reshape, "
                "an output head and neuron ops")

    def __init__(self, proto: onnx.ModelProto, timesteps: int, maxpool: str,
                 neuron_outputs: dict[str, str] | None):
        super().__init__(proto, timesteps, maxpool, relay=False)
        # the count needs the structure only: every stored weight of a layer is a one, so no
        # composition cancels to zero and a zero kernel is one the graph does not store
        # (groups). A Mul keeps its factors: a pool over scaled spikes must still show them.
        for node in proto.graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            names = node.input[1:2] if node.op_type in ("Conv", "ConvTranspose", "Gemm",
                                                         "MatMul") else []
            for name in names:
                value = self.inits.get(name)
                if value is not None and value.dtype.kind == "f":
                    self.inits[name] = np.ones_like(value)
        self.neuron_outputs = dict(neuron_outputs or {})
        self.shape_values: set[str] = set()
        self.dims = {v.name: [d.dim_value if d.HasField("dim_value") else None
                              for d in v.type.tensor_type.shape.dim]
                     for v in (*proto.graph.value_info, *proto.graph.output)}
        self.graph_outputs = {o.name for o in proto.graph.output}
        self.islands: set[str] | None = None   # outputs of analog-island nodes, when needed

    def _new_group(self, g: Group, expr: _Expr | None) -> None:
        if expr is not None:   # the value of a max-pooled current itself: no synapse, no MAC
            kinds = {x.name: x.kind for x in self.groups}
            expr = _Expr(expr.shape, expr.view, [t for t in expr.terms if not (
                kinds.get(t.src) == "analog" and _is_copy(t, g.view))], expr.bias)
        super()._new_group(g, expr)

    def _handler(self, node: onnx.NodeProto):
        if node.domain in ("", "ai.onnx"):
            if node.op_type == "MaxPool" and self.maxpool != "avg":
                return self._maxpool_count
            if node.op_type in ("ConvTranspose", "Resize", "Shape"):
                return getattr(self, f"_count_{node.op_type}")
            if node.op_type == "Concat" and node.input and all(
                    i in self.shape_values or i in self.inits for i in node.input):
                return self._count_Shape
            if node.op_type in HEADS and node.output[0] in self.graph_outputs:
                return self._head_count
        try:
            return super()._handler(node)
        except _LowerError as err:
            if err.code == "SNN-E270" and self._is_island(node):
                return self._count_island
            raise

    def _is_island(self, node: onnx.NodeProto) -> bool:
        """An op with no spiking form that the compiled model runs as an analog island
        (``--allow-analog``: it reads spikes, the schedule decodes them), or one that reads
        such an island's values."""
        if self.islands is None:   # the schedule's own rule, once per count
            from snncc import ir
            from snncc.passes.support import ISLAND, conversion_roles

            graph = ir.load(self.proto).graph
            roles = conversion_roles(graph)
            self.islands = {n.outputs[0].name for n in graph.nodes
                            if roles.get(id(n)) == ISLAND and n.outputs}
        if node.output and node.output[0] in self.islands:
            return True
        kinds = {g.name: g.kind for g in self.groups}
        ins = [i for i in node.input if i and i not in self.inits]
        return bool(ins) and all(i in self.values and all(
            kinds.get(t.src) == "analog" for t in self.values[i].terms) for i in ins)

    def _count_island(self, node):
        """An analog island (module docstring): an ``analog`` group of its output's size, with
        no synapses of its own (the spikes it reads are decoded); the layers after it count
        MACs. Synapses that reach it through linear ops from spikes (a conv right before it)
        are its incoming blocks."""
        ins = [i for i in node.input if i and i not in self.inits]
        dims = self.dims.get(node.output[0], [])
        if len(ins) != 1 or len(dims) < 2 or not all(isinstance(d, int) and d > 0
                                                      for d in dims[1:]):
            raise _LowerError("SNN-E270", f"op {node.op_type} has {self.no_form} (an analog "
                              "island with several inputs or no static output shape)",
                              self.ops_hint)
        x = self._expr(ins[0])
        shape = tuple(dims[1:])
        view = _view_of(shape)
        kinds = {g.name: g for g in self.groups}
        terms = [t for t in x.terms if not (_is_copy(t, x.view) and kinds[t.src].kind in
                                            ("neuron", "pool", "analog", "input"))]
        if terms and tuple(x.view) != tuple(view):
            raise _LowerError("SNN-E270", f"op {node.op_type} has {self.no_form} (an analog "
                              "island of another shape after a linear op)", self.ops_hint)
        name = node.name or node.output[0]
        self._new_group(Group(name, "analog", shape, view, source=node.output[0],
                              attrs={"op": node.op_type, "island": True}, bias=np.zeros(view)),
                        _Expr(shape, view, terms, np.zeros(view)))
        self.values[node.output[0]] = _identity(name, view, shape)

    def _own_check(self, node: onnx.NodeProto) -> None:
        if node.domain != SNN_DOMAIN and self._handler(node) == self._maxpool_count:
            _pool_out_hw((1, 1, 1), as_2d(_attrs(node)))
            return
        super()._own_check(node)

    def _conv_term(self, term: _Term, mid_view, w, stride, pads, groups, out_hw) -> _Term | None:
        if term.kind == "deconv":
            return _deconv_then_conv(term, mid_view, w, stride, pads, groups, out_hw)
        return super()._conv_term(term, mid_view, w, stride, pads, groups, out_hw)

    def _count_ConvTranspose(self, node):
        """A ConvTranspose over spikes (or the input): ``deconv`` terms, its weight in conv
        layout, one per source (module docstring)."""
        x = self._map(node)
        w, b = self._const_input(node, 1), self._const_input(node, 2)
        attrs = _attrs(node)
        if w.ndim != 4 or w.shape[0] != x.view[0]:
            raise _LowerError("SNN-E271", "only 2-D ConvTransposes are counted",
                              "use 2-D maps (N, C, H, W)")
        if attrs.get("output_shape") or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") \
                or any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise _LowerError("SNN-E271", "a ConvTranspose with output_shape, auto_pad or "
                              "dilation is not counted", "export it with explicit pads")
        groups = int(attrs.get("group", 1))
        cin, og, kh, kw = w.shape
        stride = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
        extra = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
        out_hw = tuple(stride[a] * (x.view[1 + a] - 1) + extra[a] + w.shape[2 + a] - pads[a]
                       - pads[a + 2] for a in range(2))
        view = (og * groups,) + out_hw
        self.ann_macs += int(w.size * x.view[1] * x.view[2])
        self.ann_macs_in_bounds += int(w.size * x.view[1] * x.view[2])   # cropped outputs too
        full = _full_weight(w.reshape(groups, cin // groups, og, kh, kw).transpose(0, 2, 1, 3, 4)
                            .reshape(og * groups, cin // groups, kh, kw), groups)   # [O, C, ..]
        terms = _per_source(x, "ConvTranspose", lambda t, f: _packed(_Term(
            t.src, "deconv", full[:, t.offset:t.offset + f.size] * f.reshape(1, -1, 1, 1),
            t.src_view, 0, stride, (pads[0], pads[1])), (groups,)))
        bias = conv2d_adjoint(x.bias[None], w, stride, pads[:2], groups, out_hw)[0]
        if b is not None:
            bias = bias + b.reshape(-1, 1, 1)
        self.values[node.output[0]] = _Expr(view, view, terms, bias)

    def _count_Shape(self, node):
        """A shape (or a Concat of one with constants): no tensor of the count, only a value a
        Resize may take its sizes from."""
        self.shape_values.add(node.output[0])

    def _count_Resize(self, node):
        """A nearest-neighbour Resize copies spikes: a ``pool`` group (module docstring)."""
        attrs = _attrs(node)
        mode = attrs.get("mode", "nearest")
        if mode not in ("nearest", "linear"):
            raise _LowerError("SNN-E271", f"a Resize in mode {mode} is not counted",
                              "upsample with mode nearest or linear, or a ConvTranspose")
        if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" or \
                attrs.get("axes") is not None:
            raise _LowerError("SNN-E271", "a Resize with a crop or with axes is not counted",
                              "resize the spatial axes of the whole map")
        x = self._map(node)
        dims = None
        if len(node.input) > 3 and node.input[3] in self.shape_values:
            # sizes made from the input's batch (canonicalize): the output size shape inference
            # gave, which the sizes' constant part fixes
            dims = self.dims.get(node.output[0], [])
            if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
                raise _LowerError("SNN-E271", "a Resize to sizes read from a shape has no "
                                  "static output size", "resize by constant scales")
        out_hw, scales = _resize_hw(x, node, self._const_input, dims)
        if out_hw == tuple(x.view[1:]):   # ONNX Runtime copies the input, whatever the scales
            self.values[node.output[0]] = x
            return
        if mode == "nearest":
            return self._copy_group(node, x, (x.view[0],) + out_hw)
        # linear: a fixed per-channel linear map, counted as the deconv of its window
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        taps = [_linear_taps(x.view[1 + a], out_hw[a], scales[a], ctm) for a in range(2)]
        (kh, sh, ph, th), (kw, sw, pw, tw) = map(_as_deconv, taps)
        terms = _per_source(x, "linear Resize", lambda t, f: _Term(
            t.src, "deconv", f.reshape(-1, 1, 1, 1) * np.outer(th, tw)[None, None], t.src_view,
            t.offset, (sh, sw), (ph, pw), f.size))
        view = (x.view[0],) + out_hw
        bias = np.einsum("oh,chw,pw->cop", taps[0], x.bias, taps[1])
        self.values[node.output[0]] = _Expr(view, view, terms, bias)

    def _map(self, node) -> _Expr:
        """The node's input, which must be a 2-D map (N, C, H, W), or SNN-E271."""
        x = self._expr(node.input[0])
        if len(x.shape) != 3:
            raise _LowerError("SNN-E271", f"only 2-D {node.op_type}s are counted",
                              "use 2-D maps (N, C, H, W)")
        return x

    def _head_count(self, node):
        """An output head (Softmax, LogSoftmax, ArgMax on the graph output)
        runs on the decoded logits, after every synapse: the readout counts as without it."""
        self.values[node.output[0]] = self._expr(node.input[0])

    def _maxpool_count(self, node):
        """A MaxPool as a ``pool`` group (over one neuron's spikes; over a
        Concat of several, one per neuron) or an ``analog`` group (over currents computed from
        the input); see the module docstring."""
        if len(node.output) > 1 and node.output[1]:
            raise _LowerError("SNN-E271", "the MaxPool indices output is used",
                              "export the model without MaxPool indices")
        x = self._expr(node.input[0])
        if len(x.shape) != 2:   # a [N, C, L] map pools as its (C, L, 1) view
            x = self._map(node)
        self._copy_group(node, x, (x.view[0],) + _pool_out_hw(x.view,
                                                              self._window_attrs(node, x)))

    def _copy_group(self, node, x: _Expr, view: tuple[int, int, int]) -> None:
        """The groups of a MaxPool or a nearest Resize of size ``view`` over ``x``: ``analog``
        over currents from the input, else ``pool`` (one per neuron of a Concat), or the
        swapped neuron's pooled view (module docstring)."""
        name = node.name or node.output[0]
        kinds = {g.name: g for g in self.groups}
        srcs = [kinds[t.src] for t in x.terms]
        shape = view[:len(x.shape)]   # (C, L) for a 1-D map
        if all(g.kind in ("input", "analog") for g in srcs):
            self.groups.append(Group(name, "analog", shape, view, source=node.output[0],
                                     attrs={"op": node.op_type}, bias=np.zeros(view)))
            for i, t in enumerate(x.terms):
                if srcs[i].kind == "analog" and _is_copy(t, x.view):
                    continue
                self.blocks.append(Block(f"{name}/in{i}", t.src, name, t.kind, t.weight,
                                         t.src_view, x.view, t.offset, t.stride, t.pads,
                                         t.groups))
            self.values[node.output[0]] = _identity(name, view, shape)
            return
        flat_bias = x.bias.reshape(x.view[0], -1)
        parts = sorted(zip(x.terms, srcs), key=lambda p: p[0].offset)
        starts = np.cumsum([0] + [t.weight.shape[0] for t, _ in parts])
        # the spikes themselves: a scale or a shift (a BatchNorm after the ReLU) would make the
        # neuron's spec count transformed values as events
        if not parts or [t.offset for t, _ in parts] != starts[:-1].tolist() or \
                starts[-1] != x.view[0] or \
                not all(_channel_copy(t, x.view[1:]) and np.all(t.weight == 1.0)
                        and g.kind in ("neuron", "pool") for t, g in parts) or \
                np.any(flat_bias != 0):
            raise _LowerError("SNN-E271", f"a {node.op_type} over a sum or a transform of "
                              "spikes (a scale, a shift) has no SynOp count",
                              f"{'pool' if node.op_type == 'MaxPool' else 'resize'} each "
                              "neuron's spikes themselves")
        bias = np.zeros(view)
        swapped_into = self.neuron_outputs.get(node.output[0])
        if swapped_into is not None and len(parts) == 1 and parts[0][1].kind == "neuron":
            # the schedule pooled the neuron's current: the neuron (or its duplicate) runs on
            # the pooled map, and its own events are what the next blocks receive
            (term, src), = parts
            if swapped_into == src.source:
                src.shape, src.view = shape, view
                src.bias = np.zeros(view)
            else:
                src = Group(swapped_into, "neuron", shape, view, neuron=src.neuron,
                            attrs=src.attrs, spike=src.spike, source=swapped_into,
                            bias=np.zeros(view))
                self.groups.append(src)
            out = _Term(src.name, "conv", term.weight, view, groups=view[0])
            self.values[node.output[0]] = _Expr(shape, view, [out], bias)
            return
        terms = []
        for k, (term, src) in enumerate(parts):   # a Concat: one pool group per neuron
            rows, lo = term.weight.shape[0], term.offset
            part = (rows,) + view[1:]
            pname = name if len(parts) == 1 else f"{name}/{k}"
            events_of = src.attrs["events_of"] if src.kind == "pool" else src.source
            self.groups.append(Group(pname, "pool", part[:len(shape)], part, neuron=src.neuron,
                                     attrs={"events_of": events_of, "channels": [lo, lo + rows],
                                            "op": node.op_type},
                                     spike=src.spike, source=node.output[0],
                                     bias=np.zeros(part)))
            terms.append(_Term(pname, "conv", term.weight, part, lo, groups=rows))
        self.values[node.output[0]] = _Expr(shape, view, terms, bias)


def count_lower(proto: onnx.ModelProto, timesteps: int, maxpool: str = "auto",
                neuron_outputs: dict[str, str] | None = None) -> Netlist:
    """The count-only netlist of the ANN-shaped spiking graph (module docstring), its weights
    the graph's structure (``meta["structural"]``). Raises what
    :func:`snncc.backends.loihi.lowering.lower` raises for what neither can express."""
    net = _CountLowering(proto, timesteps, maxpool, neuron_outputs).run()
    net.meta["structural"] = True
    return net
