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
* an output head (Softmax, LogSoftmax, ArgMax on a graph output) acts on the decoded output,
  after every synapse, and passes through.

Such a netlist is for counting only (:mod:`snncc.analysis.synops`), never for Loihi.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from snncc.backends.common import node_attrs as _attrs
from snncc.backends.loihi.lowering import _Expr, _identity, _Lowering, _LowerError, _Term
from snncc.backends.loihi.netlist import Block, Group, Netlist
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
                          "canonicalize the model (explicit pads)")
    out = []
    for a in range(2):
        span = view[1 + a] + pads[a] + pads[a + 2] - ((k[a] - 1) * dil[a] + 1)
        n = (-(-span // strides[a]) if attrs.get("ceil_mode", 0) else span // strides[a]) + 1
        if attrs.get("ceil_mode", 0) and (n - 1) * strides[a] >= view[1 + a] + pads[a]:
            n -= 1   # the last window must start inside the input or its begin padding
        out.append(int(n))
    return out[0], out[1]


class _CountLowering(_Lowering):
    def __init__(self, proto: onnx.ModelProto, timesteps: int, maxpool: str,
                 neuron_outputs: dict[str, str] | None):
        super().__init__(proto, timesteps, maxpool, relay=False)
        self.neuron_outputs = dict(neuron_outputs or {})
        self.graph_outputs = {o.name for o in proto.graph.output}

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
            if node.op_type in HEADS and node.output[0] in self.graph_outputs:
                return self._head_count
        return super()._handler(node)

    def _own_check(self, node: onnx.NodeProto) -> None:
        if node.domain != SNN_DOMAIN and self._handler(node) == self._maxpool_count:
            _pool_out_hw((1, 1, 1), _attrs(node))
            return
        super()._own_check(node)

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
        if len(x.shape) != 3:
            raise _LowerError("SNN-E271", "only 2-D MaxPools are counted",
                              "use 2-D maps (N, C, H, W)")
        view = (x.view[0],) + _pool_out_hw(x.view, _attrs(node))
        name = node.name or node.output[0]
        kinds = {g.name: g for g in self.groups}
        srcs = [kinds[t.src] for t in x.terms]
        if all(g.kind in ("input", "analog") for g in srcs):
            self.groups.append(Group(name, "analog", view, view, source=node.output[0],
                                     bias=np.zeros(view)))
            for i, t in enumerate(x.terms):
                if srcs[i].kind == "analog" and _is_copy(t, x.view):
                    continue
                self.blocks.append(Block(f"{name}/in{i}", t.src, name, t.kind, t.weight,
                                         t.src_view, x.view, t.offset, t.stride, t.pads,
                                         t.groups))
            self.values[node.output[0]] = _identity(name, view, view)
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
            raise _LowerError("SNN-E271", "a MaxPool over a sum or a transform of spikes (a "
                              "scale, a shift) has no SynOp count",
                              "pool each neuron's spikes themselves")
        bias = np.zeros(view)
        swapped_into = self.neuron_outputs.get(node.output[0])
        if swapped_into is not None and len(parts) == 1 and parts[0][1].kind == "neuron":
            # the schedule pooled the neuron's current: the neuron (or its duplicate) runs on
            # the pooled map, and its own events are what the next blocks receive
            (term, src), = parts
            if swapped_into == src.source:
                src.shape, src.view = view, view
                src.bias = np.zeros(view)
            else:
                src = Group(swapped_into, "neuron", view, view, neuron=src.neuron,
                            attrs=src.attrs, spike=src.spike, source=swapped_into,
                            bias=np.zeros(view))
                self.groups.append(src)
            out = _Term(src.name, "conv", term.weight, view, groups=view[0])
            self.values[node.output[0]] = _Expr(view, view, [out], bias)
            return
        terms = []
        for k, (term, src) in enumerate(parts):   # a Concat: one pool group per neuron
            rows, lo = term.weight.shape[0], term.offset
            part = (rows,) + view[1:]
            pname = name if len(parts) == 1 else f"{name}/{k}"
            events_of = src.attrs["events_of"] if src.kind == "pool" else src.source
            self.groups.append(Group(pname, "pool", part, part, neuron=src.neuron,
                                     attrs={"events_of": events_of, "channels": [lo, lo + rows]},
                                     spike=src.spike, source=node.output[0],
                                     bias=np.zeros(part)))
            terms.append(_Term(pname, "conv", term.weight, part, lo, groups=rows))
        self.values[node.output[0]] = _Expr(view, view, terms, bias)


def count_lower(proto: onnx.ModelProto, timesteps: int, maxpool: str = "auto",
                neuron_outputs: dict[str, str] | None = None) -> Netlist:
    """The count-only netlist of the ANN-shaped spiking graph (module docstring). Raises what
    :func:`snncc.backends.loihi.lowering.lower` raises for what neither can express."""
    return _CountLowering(proto, timesteps, maxpool, neuron_outputs).run()
