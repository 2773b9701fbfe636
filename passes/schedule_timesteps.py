"""schedule-timesteps: lay the spiking graph out in time, for ONNX Runtime.

Every neuron op of the graph runs ``S = spec.total_steps(T, attrs)`` slices and the network output
is the mean over the last ``C = spec.counted_steps(T, attrs)`` slices (docs/neuron-ops.md). All
neurons of one graph must agree on S and C (SNN-E245).

Schedules: ``auto`` (default) resolves to ``window`` when every neuron of the graph is driven by
its window-mean current (``spec.window_mean_driven``: bit-serial; any neuron at S = 1 gains
nothing, so ``folded``) and the output decodes the whole window (S == C), else to ``folded``.
The resolved name is what ``ctx.notes["schedule"]`` and the ``snncc.schedule`` metadata record.

Folded schedule (``--schedule folded``)
---------------------------------------
Time is folded into the batch: a *temporal* tensor is ``[S*N, ...]`` (time-major, row ``t*N+n``),
a *static* tensor ``[N, ...]``. Graph inputs are static; neuron outputs are temporal; an op from
:data:`TIME_OPS` (linear, per-row ops: Conv, Gemm, MatMul, Add, Mul by a non-temporal factor,
Concat, pools, reshapes, BatchNormalization as an affine map...) is temporal iff one of its inputs
is (``Shape``/``Size`` outputs never are), and a static input derived from a graph input is
repeated over time with ``Tile(repeats=[S, 1, ...])`` (one Tile per tensor). Static ops run once,
so the first layer's analog current is computed once and its neuron gets ``const_input=1``. Every
neuron gets ``T=S``.
A temporal graph output is decoded::

    y[S*N, ...] -> Reshape [S, -1, ...rest] -> Slice [S-C:S] on axis 0 -> ReduceMean(axis 0)

The graph output keeps its name; the temporal tensor is renamed.

Output head: an op fed by spikes that is not a per-row time op and has no neuron after it (role
*head* of :func:`snncc.passes.support.conversion_roles`, the rule ``snncc inspect`` and
canonicalize use too) runs once on the decoded output: each spiking input is decoded first, so a
Softmax / LogSoftmax after ``GlobalAveragePool -> Flatten -> Gemm`` sees the time-mean of the
logits, exactly what the SNN without the head outputs. Linear ops before it stay on the spike
train, since the mean commutes with them. Listed in ``ctx.notes["output_head"]``.

Ops touching the batch axis (Flatten axis 0, Transpose moving axis 0,
Concat/Split/Squeeze/Unsqueeze/Reduce/Slice on axis 0, Gemm transA) fail with SNN-E242; a
temporal Reshape with a literal batch size with SNN-E243 (canonicalize makes them batch-agnostic).

Window-collapsed schedule (``--schedule window``)
-------------------------------------------------
The folded layout, except that a neuron output is decoded where it is produced when that is
exact: when every path from it through per-row time ops (affine maps: they commute with the
mean over time) ends in a neuron whose spikes depend only on its window-mean current
(``spec.window_mean_driven``), a graph output, an output-head op or analog island, or an exactly
swapped MaxPool (all of which see only the mean over the window). A gated MaxPool, a product of
two spike-derived tensors or any other neuron keeps the train. The neuron keeps its whole train
as its output (renamed ``schedule-timesteps/<name>/train``; spike counts are those of the folded
schedule), followed by the decode ``Reshape [S, -1] -> MatMul([1/S]*S) -> Reshape [-1, ...rest]``
(``decode`` when the shape is unknown); the ops after it run once on ``[N, ...]`` and the next
neuron gets ``const_input=1``. For bit-serial that is every layer: linear ops run once per window
(about the ANN's MACs), the neurons still emit the T bits of q. Equal to the folded schedule up
to float32 summation order (``W mean_t(y_t) + b`` against ``mean_t(W y_t + b)``): bit-exact when
the sums are exact (tests/snn/test_window_collapsed.py). Needs S == C (no-op otherwise). Count
``collapsed``: neurons decoded at their output. A neuron with ``spec.decoded_attr`` (bit-serial:
``decoded=1``) writes the window mean q*unit itself, [N, ...]: no train, no decode ops, about one
quantizer pass instead of T bit planes plus a mean (count ``decoded_by_neuron``); its events are
still those of the train (popcount of q).

MaxPool (``--maxpool``)
-----------------------
* ``avg``: every MaxPool becomes AveragePool (same kernel/strides/pads, count_include_pad=0), for
  models trained that way.
* ``auto``: a MaxPool that consumes a neuron output (directly or through Identity) moves in front
  of the neuron, ``x -> MaxPool -> neuron``, when ``spec.maxpool_exact(T, attrs)`` or the neuron
  accumulates its whole window before firing (``spec.window_attr``). The neuron then sees the
  pooled time-mean of its input current as a constant current (``const_input=1``; the mean is
  inserted only when ``S > 1``). This is exact because the decoded output is a monotone map of
  that mean current: T = 1 neurons see one slice, the bit-serial neuron quantizes the window mean
  (pooling its per-slice bits instead would not be exact). If the neuron output has other
  consumers, the neuron is duplicated. Other MaxPools with a temporal input are spike-gated
  (below); the streaming schedule swaps only when ``S == 1``.
  In the folded and window schedules those are *window-gated*: per pooling window the input
  unit with the largest (weighted) spike total over the decoded slices (all S but SRP's
  pre-run) passes its whole train (ties: the first unit in MaxPool order), so the pooled train's
  decoded mean is exactly the largest of the input means, the max pooling of the decoded values
  (for bit-serial, whose totals rank the units as their q does, exact against the QANN). It
  looks at the whole window before passing a slice, which the folded schedule allows (a layer
  runs all its slices before the next) and a step-by-step one does not: the streaming schedule
  uses the running-sum gate below::

      K = [0 ... 0, 1 ... 1] in every row (ones from the first decoded slice), [S, S]
      v = Reshape(x, [S, -1]) ; c = MatMul(K, v) ; c' = Reshape(c, Shape(x))
      _, idx = MaxPool(c')                          # same attributes, flat indices into x
      y = Reshape(GatherElements(Reshape(x, [-1]), Reshape(idx, [-1])), Shape(idx))

* ``gate``: spike gating with a running sum for every MaxPool with a temporal input, in every
  schedule (folded = streaming). Per output window the spike of the input unit with the highest
  cumulative (weighted) spike count so far, the current slice included, passes (ties: the first
  unit in MaxPool order)::

      v = Reshape(x, [S, -1]) ; c = MatMul(tril(ones(S, S)), v) ; c' = Reshape(c, Shape(x))
                                # (= CumSum over the slices, faster; CumSum itself when S > 32)
      _, idx = MaxPool(c')                          # same attributes, flat indices into x
      y = Reshape(GatherElements(Reshape(x, [-1]), Reshape(idx, [-1])), Shape(idx))

  Streaming keeps the running sum as a state pair ``state_in/<node>`` / ``state_out/<node>``
  shaped like the MaxPool input. The running-sum gate approximates max pooling; it is not
  exact (a unit that leads early passes spikes a unit that ends higher does not).

MaxPools whose input is static stay as they are. ``ctx.notes["maxpool"]`` maps each MaxPool (the
pool-first pass's moved ones included, as "moved before its activation (pool-first)") to its
treatment ("swapped", "gated over the window", "gated", "avg"); counts ``maxpool_swapped``,
``maxpool_gated``, ``maxpool_avg``.

Analog islands (``--allow-analog``)
-----------------------------------
An op with no spiking form (Sigmoid, Tanh, LRN, a product of two temporal tensors...) and a temporal
input becomes a non-spiking island: each temporal input is decoded (mean over the counted slices),
the op runs once on ``[N, ...]``, and its static result reaches the next neuron as a constant
current through the ordinary static/temporal rules. Islands are listed in
``ctx.notes["analog_islands"]``. Without the flag such an op fails with SNN-E244.

Streaming schedule (``--schedule streaming``)
---------------------------------------------
A one-step model: every neuron op gets ``T=1``, ``const_input=0`` (and the window attribute ``= S``
for accumulate-then-fire neurons), inputs ``(x, state_in/<node>, step)`` and outputs
``(y, state_out/<node>)``. States are ``[state_planes, N, ...]`` graph inputs/outputs; ``step`` is
one shared int64 scalar graph input. The graph outputs are the per-step outputs (no decode).
Protocol: feed the analog input at every step; start with zero states and ``step = 0``; after each
call feed ``state_out/*`` back as ``state_in/*`` and increase ``step`` by one; run
``model.metadata["snncc.steps"]`` steps and average the outputs of the steps from
``metadata["snncc.decode_from"]`` on (SRP decodes the steps ``>= tau``). A bit-serial layer fires
the bits of epoch e during epoch e+1 (docs/neuron-ops.md), so a network whose longest chain has D
neurons is exact from epoch D on: run ``(D+1)*S`` steps and decode the last S. Where spike trains
of different depths meet (a residual Add), each shallower one passes a delay line of its depth
difference in epochs (a ``[k*S, ...]`` shift register ``state_in/<node>/delay``), so that every
input of the node carries the same frame and a stream of frames that change each epoch decodes
frame e - D in epoch e (the shortcuts had not been delayed: 81 % agreement on a ResNet), except
through a spike-gated MaxPool, whose running sum spans the stream. A head
Softmax/LogSoftmax with only reshapes after it is dropped: apply it to the averaged output (when
it is itself the graph output, metadata ``snncc.output_head`` records it, JSON
``{output: {"op": "LogSoftmax", "axis": 1}}``, and :mod:`snncc.simulate` applies it); other
head ops and analog islands need the folded schedule (SNN-E322). Streaming needs the kernel
library: the model-local functions implement the folded form only.

``--steps-per-call K`` (K dividing the steps; SNN-E375 otherwise): one call runs K steps. Every
data tensor then holds K steps time-major, ``[K*N, ...]``, as in the folded schedule (the same
batch-axis rules, SNN-E242/E243, hold for every op on them); the neurons get ``T=K`` and run
their K slices from the state (``step`` = the global index of the first); a delay line is the
register followed by the call's K steps, of which the first K leave and the last ``k*S`` stay; a
spike gate's running sum is a CumSum over [state, K steps] (the one-step order of additions).
States keep their one-step shapes. Metadata ``snncc.steps_per_call``.

Notes: ``ctx.notes["latency_steps"]`` (S, or ``(D+1)*S`` for bit-serial neurons, pipelined);
``ctx.notes["schedule"]``; model metadata ``snncc.*`` for :mod:`snncc.simulate`. A streaming model
that spike-gates a MaxPool adds a warning to ``ctx.warnings`` (the folded and window schedules
pool a bit-serial neuron's mean current exactly).
"""
from __future__ import annotations

import json
import logging
from collections import Counter

import networkx as nx
import numpy as np
import onnx

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.errors import Diagnostic, OptionError, UnsupportedNodeError
from snncc.op_classes import META_OPS as _META_OPS
from snncc.op_classes import OUTPUT_ONLY, TIME_OPS
from snncc.passes.base import Pass, PassResult
from snncc.passes.batch_axis import batch_axis_problem
from snncc.passes.support import HEAD, conversion_roles, feeds_only_outputs, time_op_ok
from snncc.passes.insert_neurons import spec_for_op

__all__ = ["ScheduleTimestepsPass", "TIME_OPS", "SCHEDULES", "MAXPOOL_MODES",
           "batch_axis_problem", "maxpools_to_average"]

logger = logging.getLogger("snncc.passes.schedule_timesteps")

SCHEDULES = ("auto", "folded", "window", "streaming")
#: the MaxPool gate's running sum is a triangular MatMul up to this many slices, else CumSum
MATMUL_CUMSUM_MAX = 32
MAXPOOL_MODES = ("auto", "avg", "gate")
PREFIX = "schedule-timesteps"

# TIME_OPS (per-row ops that commute with time folding) lives in snncc.op_classes, the one table.
TRAILING = tuple(sorted(OUTPUT_ONLY))
#: Ops whose output describes a tensor instead of holding its values: never temporal. The shape of
#: a temporal tensor has S*N rows, which is what a reshape of that tensor needs.
META_OPS = tuple(sorted(_META_OPS))
_INT64_MAX = np.iinfo(np.int64).max


def _is_neuron(node: ir.Node) -> bool:
    return node.domain == ir.SNN_DOMAIN


def _analog_data(t: ir.Tensor) -> bool:
    """A float tensor computed from the graph's inputs (not a weight, not a shape)."""
    return isinstance(t, ir.Variable) and t.dtype is not None and \
        np.dtype(t.dtype).kind == "f"


def _bit_serial(spec) -> bool:
    """Accumulate-then-fire neurons (``spec.window_attr``) fire a whole window's bits one epoch
    later (docs/neuron-ops.md): their output depends only on the window's mean current."""
    return spec.window_attr is not None


def _hint(node: ir.Node) -> str:
    """The node's name, or its first output's name for unnamed nodes."""
    return node.name or node.outputs[0].name


def _topological(graph: ir.Graph) -> list[ir.Node]:
    """Nodes in a dependency order, stable with respect to the node list (no graph mutation)."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(index.values())
    for node in graph.nodes:
        for t in node.inputs:
            for prod in t.inputs:
                if id(prod) in index:
                    dag.add_edge(index[id(prod)], index[id(node)])
    return [graph.nodes[i] for i in nx.lexicographical_topological_sort(dag)]


#: ops that only reshape a head op's output: not named among the ops after it
_SHAPE_ONLY = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"})

class _Emitter:
    """Builds the standard-op subgraphs of this pass (names under ``schedule-timesteps/``)."""

    def __init__(self, graph: ir.Graph, opset: int, slices: int):
        self.graph, self.opset, self.S = graph, opset, slices

    def var(self, hint: str, dtype=np.float32, shape=None) -> ir.Variable:
        return ir.Variable(ir.unique_name(self.graph, f"{PREFIX}/{hint}"), dtype=dtype, shape=shape)

    def const(self, hint: str, value, dtype=np.int64) -> ir.Constant:
        return ir.new_const(self.graph, f"{PREFIX}/{hint}", value, dtype=dtype)

    def op(self, op: str, inputs: list, hint: str, *, attrs: dict | None = None,
           outputs: list | None = None, dtype=np.float32) -> list[ir.Tensor]:
        outs = outputs or [self.var(f"{hint}/{op}", dtype)]
        name = ir.unique_name(self.graph, f"{PREFIX}/{hint}/{op}")
        self.graph.nodes.append(ir.Node(op, name=name, attrs=attrs or {}, inputs=inputs,
                                        outputs=outs))
        return outs

    def rest_shape(self, x: ir.Tensor, hint: str) -> ir.Tensor:
        """Shape(x)[1:] as an int64 tensor."""
        shape = self.op("Shape", [x], hint, dtype=np.int64)[0]
        return self.op("Slice", [shape, self.const(f"{hint}/one", [1]),
                                 self.const(f"{hint}/end", [_INT64_MAX])], hint, dtype=np.int64)[0]

    def time_view(self, x: ir.Tensor, hint: str) -> ir.Tensor:
        """[S*N, ...] -> [S, N, ...]."""
        target = self.op("Concat", [self.const(f"{hint}/S", [self.S, -1]),
                                    self.rest_shape(x, hint)], hint, attrs={"axis": 0},
                         dtype=np.int64)[0]
        return self.op("Reshape", [x, target], hint)[0]

    def mean_time(self, v: ir.Tensor, hint: str, out: ir.Tensor | None = None) -> ir.Tensor:
        """ReduceMean over axis 0 without keeping it."""
        if self.opset >= 18:
            return self.op("ReduceMean", [v, self.const(f"{hint}/axis", [0])], hint,
                           attrs={"keepdims": 0}, outputs=[out] if out else None)[0]
        return self.op("ReduceMean", [v], hint, attrs={"axes": [0], "keepdims": 0},
                       outputs=[out] if out else None)[0]

    def decode(self, x: ir.Tensor, first: int, hint: str, out: ir.Tensor | None = None
               ) -> ir.Tensor:
        """Mean of the slices ``first..S-1`` of a temporal tensor: [S*N, ...] -> [N, ...]."""
        v = self.time_view(x, hint)
        if first > 0:
            v = self.op("Slice", [v, self.const(f"{hint}/first", [first]),
                                  self.const(f"{hint}/last", [self.S]),
                                  self.const(f"{hint}/axis0", [0])], hint)[0]
        return self.mean_time(v, hint, out)

    def tile(self, x: ir.Tensor, rank: int, hint: str) -> ir.Tensor:
        """[N, ...] -> [S*N, ...], time-major."""
        return self.op("Tile", [x, self.const(f"{hint}/repeats", [self.S] + [1] * (rank - 1))],
                       hint)[0]

    def gate(self, node: ir.Node, cumulative: ir.Tensor, x: ir.Tensor, hint: str) -> None:
        """Rewrite MaxPool ``node`` (input x) as the spike gate of its window (module doc)."""
        attrs = {k: v for k, v in node.attrs.items() if k != "storage_order"}
        pooled = self.var(f"{hint}/pooled")
        indices = self.var(f"{hint}/indices", dtype=np.int64)
        out = node.outputs[0]
        self.op("MaxPool", [cumulative], hint, attrs=attrs, outputs=[pooled, indices])
        flat = self.const(f"{hint}/flat", [-1])
        picked = self.op("GatherElements", [self.op("Reshape", [x, flat], hint)[0],
                                            self.op("Reshape", [indices, flat], hint,
                                                    dtype=np.int64)[0]], hint)[0]
        node.inputs.clear()
        node.outputs.clear()
        self.op("Reshape", [picked, self.op("Shape", [indices], hint, dtype=np.int64)[0]], hint,
                outputs=[out])


def _average_attrs(maxpool_attrs) -> dict:
    """``--maxpool avg``: the AveragePool that stands for a MaxPool (same window, padding not
    counted)."""
    attrs = {k: v for k, v in maxpool_attrs.items() if k in
             ("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode")}
    attrs["count_include_pad"] = 0
    return attrs


def maxpools_to_average(proto: onnx.ModelProto) -> int:
    """``--maxpool avg`` on a plain graph (the QANN: ``--target qann`` and the fidelity estimate's
    QANN, so that it pools as the SNN does): every MaxPool of the main graph becomes the
    AveragePool this pass emits for it, in place. Returns how many; a dilated MaxPool or one whose
    indices are read -> SNN-E249 / SNN-E248, as in the pass."""
    read = ({i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}) \
        - {""}   # an empty name is an omitted optional input, not a read
    bad, changed = [], 0
    for node in proto.graph.node:
        if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        label = f"node '{node.name}' (ai.onnx::MaxPool)"
        if len(node.output) > 1 and node.output[1] in read:
            bad.append(Diagnostic("SNN-E248", "the MaxPool indices output is used",
                                  pass_name="maxpool-avg", node=label,
                                  hint="export the model without return_indices"))
            continue
        if any(d != 1 for d in attrs.get("dilations", [1])):
            bad.append(Diagnostic("SNN-E249", "a dilated MaxPool has no AveragePool equivalent",
                                  pass_name="maxpool-avg", node=label,
                                  hint="leave out --maxpool avg: the default keeps the max-pool (spike-gated where spikes feed it)"))
            continue
        node.op_type = "AveragePool"
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v)
                              for k, v in sorted(_average_attrs(attrs).items()))
        del node.output[1:]
        changed += 1
    if bad:
        raise UnsupportedNodeError("--maxpool avg: some MaxPools have no AveragePool form",
                                   diagnostics=bad, code=bad[0].code)
    return changed


def window_keys(slices: int, counted: int) -> np.ndarray:
    """The window gate's [S, S] float32 product: every row ``[0 ... 0, 1 ... 1]``, ones in the
    last ``counted`` (decoded) columns, so that every slice is keyed by the total of those. The
    schedule emits it, the calibration walk copies it, runtime.gates recognises it."""
    return np.broadcast_to(np.arange(slices) >= slices - counted,
                           (slices, slices)).astype(np.float32)


class ScheduleTimestepsPass(Pass):
    name = "schedule-timesteps"

    def requires(self, model: ir.Model, ctx: CompileContext) -> None:
        o = ctx.options
        if o.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule {o.schedule!r}", code="SNN-E320",
                              hint="choose one of: " + ", ".join(SCHEDULES))
        if o.maxpool not in MAXPOOL_MODES:
            raise OptionError(f"unknown maxpool treatment {o.maxpool!r}", code="SNN-E321",
                              hint="choose one of: " + ", ".join(MAXPOOL_MODES))
        if not isinstance(o.timesteps, int) or o.timesteps < 1:
            raise OptionError(f"timesteps={o.timesteps!r} must be an integer >= 1",
                              code="SNN-E323", hint="pass e.g. -T 4")

    # ---------------------------------------------------------------------------------- run

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        graph, options = model.graph, ctx.options
        neurons = [n for n in graph.nodes if _is_neuron(n)]
        if not neurons:
            logger.info("schedule-timesteps: the graph has no neuron ops; nothing to schedule")
            return PassResult(modified=False, counts={"neurons": 0})
        slices, counted, bit_serial = self._slices(neurons, options.timesteps)
        self.bit_serial = bit_serial
        self.shapes = self._shapes(model)
        self.emit = _Emitter(graph, model.opset, slices)
        self.counts: dict[str, int] = {"neurons": len(neurons)}
        # pools the pool-first pass moved in front of their first-layer activation (exact)
        self.notes_maxpool: dict[str, str] = {name: "moved before its activation (pool-first)"
                                              for name in ctx.notes.get("pool_first", [])}
        self.diags: list[Diagnostic] = []
        self.model, self.ctx = model, ctx
        schedule = self._resolve(options.schedule, neurons, options.timesteps, slices, counted)
        streaming = schedule == "streaming"

        pooled = self._treat_maxpools(options, slices, streaming)
        if streaming:
            depth = self._stream(pooled)
        else:
            collapse = self._collapsible(pooled) if schedule == "window" else set()
            depth = self._fold(pooled, counted, collapse)
        if self.diags:
            codes = {d.code for d in self.diags}
            code = "SNN-E322" if codes == {"SNN-E322"} else sorted(codes)[0]
            cls = OptionError if code == "SNN-E322" else UnsupportedNodeError
            raise cls("schedule-timesteps: the graph cannot be laid out in time",
                      diagnostics=self.diags, code=code)

        # the window gate is exact for bit-serial (its totals rank the units as their decoded
        # values do, and its neuron reads only the window mean); the running-sum gate is not
        gated = sum(1 for v in self.notes_maxpool.values() if v == "gated")
        if streaming and gated and options.target == "ort":
            ctx.warnings.append(
                f"warning: --schedule streaming spike-gates {gated} MaxPool(s) with a running "
                "sum, which approximates max pooling (the fidelity line measures what it costs "
                "here) and, summing over the whole stream, mixes frames that change" + (
                    "; the folded and window schedules pool a MaxPool right after a "
                    f"{options.neuron} neuron exactly" if bit_serial else
                    "; the folded schedule window-gates them, the pooled rate being the "
                    "largest rate") + ": drop --schedule streaming where a stream is not "
                "needed (--maxpool avg streams exactly only for a net trained with average "
                "pooling: it changes the network)")
        elif bit_serial and gated and options.target == "ort":
            ctx.warnings.append(
                f"warning: {options.neuron} spike-gates {gated} MaxPool(s) with a running sum "
                "(--maxpool gate), which approximates max pooling: the SNN is not exact against "
                "its QANN there (--maxpool auto pools them exactly)")
        latency = (depth + 1) * slices if bit_serial else slices
        steps, decode_from = (latency, latency - slices) if streaming and bit_serial else \
            (slices, slices - counted)
        per_call = options.steps_per_call if streaming else 1
        if steps % per_call:
            fits = [k for k in range(1, steps + 1) if steps % k == 0]
            raise OptionError(f"--steps-per-call {per_call} does not divide the {steps} steps "
                              "of this streaming model's window" + (
                                  f" ({depth + 1} pipelined windows of {slices})"
                                  if bit_serial else ""), code="SNN-E375",
                              hint="give one of " + ", ".join(map(str, fits)))
        ctx.notes["latency_steps"] = latency
        ctx.notes["maxpool"] = self.notes_maxpool
        ctx.notes["schedule"] = {"schedule": schedule, "total_slices": slices,
                                 "counted_slices": counted, "steps": steps,
                                 "steps_per_call": per_call,
                                 "decode_from": decode_from, "spiking_depth": depth}
        model.metadata.update({"snncc.schedule": schedule, "snncc.timesteps":
                               str(options.timesteps), "snncc.steps": str(steps),
                               "snncc.decode_from": str(decode_from),
                               # steps that only fill a pipelined model's pipeline: one inference
                               # of a stream costs the steps after them (as the SynOps count)
                               "snncc.pipeline_fill": str(steps - slices if streaming else 0),
                               "snncc.steps_per_call": str(per_call),
                               # the model-local functions implement the folded form only: an
                               # app holding just the .onnx can tell it needs libsnncc_ops
                               "snncc.requires_runtime_library": str(streaming).lower()})
        return PassResult(modified=True, counts=self.counts)

    # ------------------------------------------------------------------------------ helpers

    @staticmethod
    def _resolve(schedule: str, neurons: list[ir.Node], T: int, slices: int, counted: int
                 ) -> str:
        """``auto``: ``window`` when it is exact for the whole graph (every neuron is driven by
        its window-mean current, ``spec.window_mean_driven``, and the output decodes the whole
        window) and saves work (S > 1); else ``folded``."""
        if schedule != "auto":
            return schedule
        driven = all(spec_for_op(n.op).window_mean_driven(T, n.attrs) for n in neurons)
        return "window" if driven and slices == counted and slices > 1 else "folded"

    def _collapsible(self, pooled: set[int]) -> set[str]:
        """Neuron outputs that may be decoded where they are produced (window schedule).

        A spike train may be replaced by its time-mean (then static, ``[N, ...]``) when every
        path from it through per-row time ops (affine: they commute with the mean) ends in a
        consumer that only sees the mean over the whole window: a neuron whose output depends
        only on its window-mean current (``spec.window_mean_driven``), a graph output, an output
        head op or analog island, or an exactly swapped MaxPool (these decode their input). A
        gated MaxPool (not affine) or any other neuron keeps the whole train. Only when every
        decode averages the whole window (S == C)."""
        sched = self.emit.S
        graph = self.model.graph
        counted = {spec_for_op(n.op).counted_steps(self.ctx.options.timesteps, n.attrs)
                   for n in graph.nodes if _is_neuron(n)}
        if counted != {sched}:
            return set()
        memo: dict[int, bool] = {}
        T = self.ctx.options.timesteps

        def ok(t: ir.Tensor) -> bool:
            if id(t) in memo:
                return memo[id(t)]
            memo[id(t)] = False  # cycles never occur; a guard all the same
            good = True
            for c in list(t.outputs):
                if _is_neuron(c):
                    good = spec_for_op(c.op).window_mean_driven(T, c.attrs)
                elif c.op in META_OPS or id(c) in pooled:
                    good = True
                elif c.op == "MaxPool":
                    good = False
                elif time_op_ok(c.op, c.domain, [i for i, x in enumerate(c.inputs) if x is t]):
                    if c.op in ("Mul", "Div") and any(x is not t and _spike_derived(x)
                                                      for x in c.inputs):
                        good = False  # a product of two trains is not the product of means
                    else:
                        good = all(ok(o) for o in c.outputs)
                else:  # output head / analog island (decodes its inputs) or an error later
                    good = True
                if not good:
                    break
            memo[id(t)] = good
            return good

        def _spike_derived(x: ir.Tensor, seen: set[int] | None = None) -> bool:
            seen = set() if seen is None else seen
            prod = ir.producer(x)
            if prod is None or id(prod) in seen or prod.op in META_OPS:
                return False
            seen.add(id(prod))
            return _is_neuron(prod) or any(_spike_derived(i, seen) for i in prod.inputs)

        return {n.outputs[0].name for n in graph.nodes if _is_neuron(n) and n.outputs
                and ok(n.outputs[0])}

    @staticmethod
    def _slices(neurons: list[ir.Node], T: int) -> tuple[int, int, bool]:
        """(S, C, whether a neuron is bit-serial); SNN-E245 when the neurons disagree."""
        per_node = {}
        bit_serial = False
        for node in neurons:
            spec = spec_for_op(node.op)
            per_node[_hint(node)] = (spec.total_steps(T, node.attrs),
                                     spec.counted_steps(T, node.attrs))
            bit_serial |= _bit_serial(spec)
        kinds = set(per_node.values())
        if len(kinds) != 1:
            listing = ", ".join(f"{n}: S={s}, C={c}" for n, (s, c) in sorted(per_node.items()))
            raise UnsupportedNodeError(
                f"schedule-timesteps: the neuron ops need different numbers of slices ({listing})",
                code="SNN-E245", hint="use one neuron type and one T for the whole model")
        slices, counted = kinds.pop()
        return slices, counted, bit_serial

    @staticmethod
    def _shapes(model: ir.Model) -> dict[str, list | None]:
        """Tensor shapes as loaded; ONNX shape inference fills the gaps (run once)."""
        tensors = ir.tensor_map(model.graph)
        shapes = {name: t.shape for name, t in tensors.items()}
        if any(s is None for name, s in shapes.items() if isinstance(tensors[name], ir.Variable)):
            inferred = ir.infer_shapes(ir.to_proto(model))
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
                if shapes.get(vi.name) is None and vi.type.tensor_type.HasField("shape"):
                    shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else
                                       (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]
        return shapes

    def _rank(self, t: ir.Tensor) -> int | None:
        shape = self.shapes.get(t.name)
        return None if shape is None else len(shape)

    def _diag(self, code: str, node: ir.Node, what: str, hint: str) -> None:
        self.diags.append(Diagnostic(code, what, pass_name=self.name,
                                     node=ir.node_label(node, self.model.provenance), hint=hint))

    def _neuron_source(self, t: ir.Tensor) -> tuple[ir.Node | None, list[ir.Node]]:
        """The neuron producing ``t`` directly or through Identity nodes, and those nodes."""
        chain = []
        prod = ir.producer(t)
        while prod is not None and prod.op == "Identity" and len(prod.outputs[0].outputs) == 1:
            chain.append(prod)
            prod = ir.producer(prod.inputs[0])
        return (prod if prod is not None and _is_neuron(prod) else None), chain

    # ---------------------------------------------------------------------------- maxpool

    def _treat_maxpools(self, options: CompileOptions, slices: int, streaming: bool) -> set[int]:
        """avg replacement and exact swaps; returns ids of MaxPools that pool a neuron current."""
        graph = self.model.graph
        pooled: set[int] = set()
        for mp in [n for n in graph.nodes if n.op == "MaxPool"]:
            if len(mp.outputs) > 1 and (mp.outputs[1].outputs or mp.outputs[1] in graph.outputs):
                self._diag("SNN-E248", mp, "the MaxPool indices output is used", "export the "
                           "model without return_indices")
                continue
            if options.maxpool == "avg":
                self._to_average(mp)
                continue
            if options.maxpool != "auto" or (streaming and slices != 1):
                continue
            neuron, chain = self._neuron_source(mp.inputs[0])
            if neuron is None:
                continue
            spec = spec_for_op(neuron.op)
            if not (spec.maxpool_exact(options.timesteps, neuron.attrs) or _bit_serial(spec)):
                continue
            self.notes_maxpool[_hint(mp)] = "swapped"
            pooled.add(id(self._swap(mp, neuron, chain)))
            self.counts["maxpool_swapped"] = self.counts.get("maxpool_swapped", 0) + 1
        return pooled

    def _to_average(self, mp: ir.Node) -> None:
        if any(d != 1 for d in mp.attrs.get("dilations", [1])):
            self._diag("SNN-E249", mp, "a dilated MaxPool has no AveragePool equivalent",
                       "leave out --maxpool avg: the default keeps the max-pool (spike-gated where spikes feed it)")
            return
        attrs = _average_attrs(mp.attrs)
        hint = _hint(mp)
        x, y = mp.inputs[0], mp.outputs[0]
        mp.inputs.clear()
        mp.outputs.clear()
        self.emit.op("AveragePool", [x], hint, attrs=attrs, outputs=[y])
        self.notes_maxpool[hint] = "avg"
        self.counts["maxpool_avg"] = self.counts.get("maxpool_avg", 0) + 1

    def _swap(self, mp: ir.Node, neuron: ir.Node, chain: list[ir.Node]) -> ir.Node:
        """x -> neuron -> [Identity]* -> MaxPool -> p  becomes  x -> MaxPool -> neuron -> p."""
        graph = self.model.graph
        x, a, p = neuron.inputs[0], neuron.outputs[0], mp.outputs[0]
        hint = _hint(mp)
        shape = self.shapes.get(p.name)
        pooled_x = self.emit.var(f"{hint}/pooled_current", shape=shape)
        self.shapes[pooled_x.name] = shape
        sole = len(a.outputs) == 1 and a not in graph.outputs
        new_mp = ir.Node("MaxPool", name=ir.unique_name(graph, f"{PREFIX}/{hint}/MaxPool"),
                         attrs={k: v for k, v in mp.attrs.items() if k != "storage_order"},
                         inputs=[x], outputs=[pooled_x])
        graph.nodes.append(new_mp)
        for n in [mp] + (chain if sole else []):
            n.inputs.clear()
            n.outputs.clear()
        if sole:
            neuron.inputs[0] = pooled_x
            neuron.outputs[0] = p
        else:
            name = ir.unique_name(graph, f"{_hint(neuron)}/pooled")
            graph.nodes.append(ir.Node(neuron.op, name=name, attrs=dict(neuron.attrs),
                                       inputs=[pooled_x], outputs=[p], domain=ir.SNN_DOMAIN))
        return new_mp

    # ----------------------------------------------------------------------------- folded

    def _fold(self, pooled: set[int], counted: int, collapse: set[str]) -> int:
        graph, emit, S = self.model.graph, self.emit, self.emit.S
        first = S - counted
        self.window_static: set[str] = set()  # static tensors computed from decoded spikes
        temporal: set[str] = set()
        batched: set[str] = {t.name for t in graph.inputs}
        depth: dict[str, int] = {}
        tiles: dict[str, ir.Tensor] = {}
        islands: list[str] = []
        analog: dict[str, int] = {}        # a decoded tensor an island computes -> its island
        members: dict[int, list[str]] = {}  # island -> the ops after its first, on its values
        head: list[str] = []
        after_head: dict[int, list[str]] = {}   # head op -> the ops after it, on its values
        head_of: dict[str, int] = {}            # a value computed from a head op's output
        roles = conversion_roles(graph)
        for node in _topological(graph):
            outputs = list(node.outputs)
            if not outputs:
                continue
            hint = _hint(node)
            t_idx = [i for i, t in enumerate(node.inputs) if t.name in temporal]
            d = max((depth.get(t.name, 0) for t in node.inputs), default=0)
            if _is_neuron(node):
                node.attrs["T"] = S
                node.attrs["const_input"] = 0 if t_idx else 1
                self._count("const_input", not t_idx)
                d += 1
                temporal.update(t.name for t in node.outputs)
                if node.outputs[0].name in collapse:
                    self._collapse(node, temporal, batched)
            elif node.op in META_OPS:
                pass
            elif not t_idx:
                if any(t.name in batched for t in node.inputs):
                    batched.update(t.name for t in outputs)
                island = next((analog[t.name] for t in node.inputs if t.name in analog), None)
                if island is not None:   # runs on an island's values: part of that island
                    members.setdefault(island, []).append(node.op)
                    analog.update((t.name, island) for t in outputs)
                lead = next((head_of[t.name] for t in node.inputs if t.name in head_of), None)
                if lead is not None:   # after a head op (a Conv, a LeakyRelu after a HardSwish
                    if node.op not in _SHAPE_ONLY:                    # had gone unnamed)
                        after_head.setdefault(lead, []).append(node.op)
                    head_of.update((t.name, lead) for t in outputs)
                elif any(t.name in self.window_static for t in node.inputs):  # decoded spikes
                    if roles.get(id(node)) == HEAD:
                        head.append(ir.node_label(node, self.model.provenance))
                        head_of.update((t.name, len(head) - 1) for t in outputs)
                    else:
                        self.window_static.update(t.name for t in outputs)
            elif id(node) in pooled:  # one slice: pool it as it is; else its time-mean
                if S == 1:
                    temporal.update(t.name for t in outputs)
                else:
                    node.inputs[0] = emit.decode(node.inputs[0], 0, hint)
                    batched.update(t.name for t in outputs)
            elif node.op == "MaxPool":
                x = node.inputs[0]
                window = self.ctx.options.maxpool == "auto"
                self._note_gate(node, window)
                emit.gate(node, self._window_total_folded(x, hint, counted) if window
                          else self._cumulative_folded(x, hint), x, hint)
                temporal.add(outputs[0].name)
            elif self._time_op_ok(node, t_idx):
                self._check_axes(node, [i for i, t in enumerate(node.inputs)
                                        if i in t_idx or t.name in batched])
                for i, t in enumerate(node.inputs):
                    if i not in t_idx and t.name in batched:
                        node.inputs[i] = self._tiled(t, tiles, node)
                temporal.update(t.name for t in node.outputs)
            else:
                in_head = roles.get(id(node)) == HEAD
                if not (in_head or self.ctx.options.allow_analog):
                    self._unsupported(node)
                    continue
                for i in t_idx:
                    node.inputs[i] = emit.decode(node.inputs[i], first, hint)
                batched.update(t.name for t in outputs)
                (head if in_head else islands).append(ir.node_label(node, self.model.provenance))
                if not in_head:
                    analog.update((t.name, len(islands) - 1) for t in outputs)
                else:
                    head_of.update((t.name, len(head) - 1) for t in outputs)
            for t in outputs:
                depth[t.name] = d
        self._decode_outputs(temporal, first)
        for t in ir.tensor_map(graph).values():
            if t.name in temporal and isinstance(t, ir.Variable) and t.shape is not None:
                t.shape = [None] + list(t.shape[1:])
        # each island by its first node, and the ops that run after it on its values (an LSTM
        # behind a Sigmoid was kept and not named)
        def named(labels: list[str], more: dict[int, list[str]]) -> list[str]:
            return [label + (f" + {len(more[i])} more: " + ", ".join(
                f"{op} x{k}" if k > 1 else op for op, k in Counter(more[i]).items())
                if more.get(i) else "") for i, label in enumerate(labels)]

        self.ctx.notes["analog_islands"] = named(islands, members)
        self.ctx.notes["output_head"] = named(head, after_head)
        if head:
            self.counts["output_head_ops"] = len(head)
        self.counts["tiles"] = len(tiles)
        self.counts["analog_islands"] = len(islands)
        return max(depth.values(), default=0)

    def _collapse(self, node: ir.Node, temporal: set[str], batched: set[str]) -> None:
        """Window schedule: decode the neuron's spike train where it is produced, so that the
        ops after it run once on ``[N, ...]``; the neuron keeps its whole train as output (spike
        counts), renamed ``schedule-timesteps/<name>/train``."""
        y = node.outputs[0]
        hint = _hint(node)
        spec = spec_for_op(node.op)
        temporal.discard(y.name)
        batched.add(y.name)
        self.window_static.add(y.name)
        self._count("collapsed")
        if spec.decoded_attr and len(node.inputs) == 1:  # the kernel writes the mean itself
            node.attrs[spec.decoded_attr] = 1
            self._count("decoded_by_neuron")
            return
        train = self.emit.var(f"{y.name}/train")
        node.outputs[0] = train
        temporal.add(train.name)
        shape = self.shapes.get(y.name)
        S = self.emit.S
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) and d > 0
                                                         for d in shape[1:]):
            # the mean over the window as a [1, S] x [S, rest] product: MLAS runs it about 3x
            # faster than ReduceMean over axis 0 (a float summation order, as any decode)
            mean = self._slice_matmul(train, np.full((1, S), 1.0 / S), "mean_weights", hint)
            self.emit.op("Reshape", [mean, self.emit.const(f"{hint}/rest", [-1] +
                                                           list(shape[1:]))], hint, outputs=[y])
        else:
            self.emit.decode(train, 0, hint, out=y)

    def _slice_matmul(self, x: ir.Tensor, weights: np.ndarray, name: str, hint: str
                      ) -> ir.Tensor:
        """``weights`` [R, S] times ``x`` viewed as [S, rest] (its slices as rows): [R, rest]."""
        view = self.emit.op("Reshape", [x, self.emit.const(f"{hint}/window", [self.emit.S, -1])],
                            hint)[0]
        return self.emit.op("MatMul", [self.emit.const(f"{hint}/{name}", weights,
                                                       dtype=np.float32), view], hint)[0]

    def _count(self, key: str, when: bool = True) -> None:
        if when:
            self.counts[key] = self.counts.get(key, 0) + 1

    def _note_gate(self, node: ir.Node, window: bool = False) -> None:
        self.notes_maxpool[_hint(node)] = "gated over the window" if window else "gated"
        self._count("maxpool_gated")

    def _time_op_ok(self, node: ir.Node, t_idx: list[int]) -> bool:
        return time_op_ok(node.op, node.domain, t_idx)

    def _check_axes(self, node: ir.Node, batched: list[int], per_call: int = 1) -> None:
        """SNN-E242/E243 when ``node`` (its inputs ``batched`` holding the batch axis) would mix
        the steps that axis holds."""
        problem = batch_axis_problem(node, self._rank(node.inputs[0]), batched, per_call)
        if problem:
            self._diag(*problem[:1], node, *problem[1:])

    def _tiled(self, t: ir.Tensor, tiles: dict[str, ir.Tensor], node: ir.Node) -> ir.Tensor:
        """``t`` repeated over the S slices (one Tile per tensor; none needed when S == 1)."""
        if self.emit.S == 1:
            return t
        if t.name not in tiles:
            rank = self._rank(t)
            if rank is None:
                self._diag("SNN-E247", node, f"the rank of '{t.name}' is unknown, so it cannot "
                           "be repeated over time", "run canonicalize (shape inference) first")
                return t
            tiles[t.name] = self.emit.tile(t, rank, t.name)
        return tiles[t.name]

    def _cumulative_folded(self, x: ir.Tensor, hint: str) -> ir.Tensor:
        """Running sum over the slices. Up to :data:`MATMUL_CUMSUM_MAX` slices it is a
        lower-triangular [S, S] x [S, rest] product: the same sequential float sums as CumSum
        over axis 0, and faster (ResNet-34, IF, batch 16: 177 ms against CumSum's 259 of a 2.3 s
        run). Beyond, the product costs S^2 and MLAS adds blocks of the K axis (above 128) in
        another order, so CumSum stays."""
        emit, S = self.emit, self.emit.S
        shape = emit.op("Shape", [x], hint, dtype=np.int64)[0]
        if S > MATMUL_CUMSUM_MAX:
            summed = emit.op("CumSum", [emit.time_view(x, hint),
                                        emit.const(f"{hint}/axis", 0)], hint)[0]
            return emit.op("Reshape", [summed, shape], hint)[0]
        summed = self._slice_matmul(x, np.tril(np.ones((S, S))), "cumulative", hint)
        return emit.op("Reshape", [summed, shape], hint)[0]

    def _window_total_folded(self, x: ir.Tensor, hint: str, counted: int) -> ir.Tensor:
        """Every slice holds the sum over the ``counted`` (decoded) slices, the window gate's
        key: the [S, S] x [S, rest] product with :func:`window_keys` (SRP's pre-run slices are
        not decoded, so they do not rank the units), each row summed as the running sum's
        lower-triangular product sums its last row."""
        emit, S = self.emit, self.emit.S
        shape = emit.op("Shape", [x], hint, dtype=np.int64)[0]
        summed = self._slice_matmul(x, window_keys(S, counted), "window_total", hint)
        return emit.op("Reshape", [summed, shape], hint)[0]

    def _unsupported(self, node: ir.Node) -> None:
        self._diag("SNN-E244", node, f"{node.op} has no spiking form and its input carries "
                   "spikes", "retrain without it, or compile with --allow-analog to keep it as "
                   "a non-spiking island (folded schedule)")

    def _decode_outputs(self, temporal: set[str], first: int) -> None:
        graph = self.model.graph
        for out in list(graph.outputs):
            if out.name not in temporal:
                continue
            inner = self.emit.var(f"{out.name}/time")
            prod = ir.producer(out)
            for node in list(out.outputs):
                for i, t in enumerate(node.inputs):
                    if t is out:
                        node.inputs[i] = inner
            prod.outputs[prod.outputs.index(out)] = inner
            temporal.add(inner.name)
            temporal.discard(out.name)
            self.emit.decode(inner, first, f"{out.name}/decode", out=out)
            self._count("decoded_outputs")

    # -------------------------------------------------------------------------- streaming

    def _stream(self, pooled: set[int]) -> int:
        graph, emit = self.model.graph, self.emit
        self.per_call = K = self.ctx.options.steps_per_call
        # with K steps per call every data tensor holds K steps, time-major ([K*N, ...]), as
        # the folded schedule's do: the same batch-axis rules hold for every op on them
        batched = {t.name for t in graph.inputs}
        step = ir.Variable(ir.unique_name(graph, "step"), dtype=np.int64, shape=[])
        graph.inputs.append(step)
        temporal: set[str] = set()
        depth: dict[str, int] = {}
        dropped: list[str] = []
        heads: dict[str, dict[str, object]] = {}  # output -> the dropped Softmax/LogSoftmax
        roles = conversion_roles(graph)
        outputs_ids = {id(t) for t in graph.outputs}
        for node in _topological(graph):
            outputs = list(node.outputs)
            if not outputs:
                continue
            hint = _hint(node)
            t_idx = [i for i, t in enumerate(node.inputs) if t.name in temporal]
            d = max((depth.get(t.name, 0) for t in node.inputs), default=0)
            if self.bit_serial and t_idx and d > 0:
                # branches of different pipeline depths meet (a residual Add): each bit-serial
                # layer fires one epoch late, so the shallower ones wait in a delay line of
                # (depth difference) epochs and every input carries the same frame; an analog
                # branch from the input (depth 0, this step's frame: a review's conv shortcut
                # from x into a block) waits the whole depth
                for i in [i for i, t in enumerate(node.inputs)
                          if i in t_idx or (_analog_data(t) and t is not step)]:
                    lag = d - depth.get(node.inputs[i].name, 0)
                    if lag:
                        node.inputs[i] = self._delay(node, node.inputs[i], lag * emit.S)
            on_batch = [i for i, t in enumerate(node.inputs) if t.name in batched]
            if K > 1 and node.op not in META_OPS and on_batch:
                self._check_axes(node, on_batch, K)
                batched.update(t.name for t in outputs)
            if _is_neuron(node):
                self._stream_neuron(node, step)
                d += 1
                temporal.add(node.outputs[0].name)
            elif not t_idx or id(node) in pooled or node.op in META_OPS:
                pass
            elif node.op == "MaxPool":
                x = node.inputs[0]
                state_in, state_out = self._state_pair(node, self.shapes.get(x.name))
                if K == 1:
                    cumulative = emit.op("Add", [state_in, x], hint, outputs=[state_out])[0]
                else:
                    cumulative = self._running_sum(x, state_in, state_out, hint)
                self._note_gate(node)
                emit.gate(node, cumulative, x, hint)
                temporal.add(outputs[0].name)
            elif self._time_op_ok(node, t_idx):
                temporal.update(t.name for t in node.outputs)
            elif (node.op in TRAILING and roles.get(id(node)) == HEAD
                  and feeds_only_outputs(node.outputs[0], outputs_ids)):
                dropped.append(node.outputs[0].name)
                if id(node.outputs[0]) in outputs_ids:  # no reshape after: the axis still holds
                    heads[node.outputs[0].name] = {"op": node.op,
                                                   "axis": int(node.attrs.get("axis", -1))}
                ir.bypass_node(graph, node)
                temporal.add(dropped[-1])
            elif roles.get(id(node)) == HEAD:
                self._diag("SNN-E322", node, f"{node.op} belongs to the output head, which runs "
                           "once on the decoded output; a streaming model emits per-step outputs",
                           "use --schedule folded, or end the model at the logits and apply "
                           f"{node.op} to the averaged output")
            elif self.ctx.options.allow_analog:
                self._diag("SNN-E322", node, f"{node.op} would be an analog island, which needs "
                           "the whole spike train", "use --schedule folded")
            else:
                self._unsupported(node)
            for t in outputs:
                depth[t.name] = d
        self.ctx.notes["streaming_dropped_softmax"] = dropped
        if K > 1:   # the shapes inferred for one step hold K times the rows (inspect reads them)
            for t in ir.tensor_map(graph).values():
                if (isinstance(t, ir.Variable) and t.name in batched and t.shape
                        and not t.name.startswith("state_")):
                    n = t.shape[0]
                    if n is not None and n != "":
                        t.shape = [K * n if isinstance(n, int) else f"{K}*{n}"] + \
                            list(t.shape[1:])
        if heads:  # for the step loop's user: apply it to the averaged output
            self.model.metadata["snncc.output_head"] = json.dumps(heads, sort_keys=True)
        self.ctx.notes["analog_islands"] = []
        return max(depth.values(), default=0)

    def _state_pair(self, node: ir.Node, shape, suffix: str = ""
                    ) -> tuple[ir.Variable, ir.Variable]:
        graph = self.model.graph
        name = _hint(node) + suffix
        if shape is None:
            self._diag("SNN-E247", node, "the input shape is unknown, so the state tensor "
                       "cannot be declared", "run canonicalize (shape inference) first")
        state_in = ir.Variable(ir.unique_name(graph, f"state_in/{name}"), dtype=np.float32,
                               shape=shape)
        state_out = ir.Variable(ir.unique_name(graph, f"state_out/{name}"), dtype=np.float32,
                                shape=shape)
        graph.inputs.append(state_in)
        graph.outputs.append(state_out)
        self._count("state_pairs")
        return state_in, state_out

    def _running_sum(self, x: ir.Tensor, state_in: ir.Tensor, state_out: ir.Tensor, hint: str
                     ) -> ir.Tensor:
        """The spike gate's running sum over the K steps of a call, from ``state_in`` (the sum
        before the call): CumSum over [state, x_1 .. x_K] adds in the order K one-step calls
        add, so the sums are the same floats; ``state_out`` is its last slice."""
        emit, K = self.emit, self.per_call
        shape = emit.op("Shape", [x], hint, dtype=np.int64)[0]
        steps = emit.op("Reshape", [x, emit.op("Concat", [
            emit.const(f"{hint}/K", [K, -1]), emit.rest_shape(x, hint)], hint,
            attrs={"axis": 0}, dtype=np.int64)[0]], hint)[0]
        first = emit.op("Unsqueeze", [state_in, emit.const(f"{hint}/axis0", [0])], hint)[0]
        summed = emit.op("CumSum", [emit.op("Concat", [first, steps], hint, attrs={"axis": 0})[0],
                                    emit.const(f"{hint}/cumsum_axis", 0)], hint)[0]
        emit.op("Gather", [summed, emit.const(f"{hint}/last", K)], hint, attrs={"axis": 0},
                outputs=[state_out])
        after = emit.op("Slice", [summed, emit.const(f"{hint}/one", [1]),
                                  emit.const(f"{hint}/end", [_INT64_MAX]),
                                  emit.const(f"{hint}/slice_axis", [0])], hint)[0]
        return emit.op("Reshape", [after, shape], hint)[0]

    def _delay(self, node: ir.Node, x: ir.Tensor, steps: int) -> ir.Tensor:
        """``x`` as it was ``steps`` steps ago: a shift register ``state_in/X`` of shape
        ``[steps, *x]`` (zeros at step 0, as every state): the output is its first slice, and
        ``state_out/X`` is the rest with ``x`` appended. With K steps per call the register
        followed by the call's K steps gives the first K slices out and keeps the last
        ``steps``."""
        emit, hint = self.emit, f"{_hint(node)}/delay"
        x_shape = self.shapes.get(x.name)
        state_in, state_out = self._state_pair(
            node, None if x_shape is None else [steps] + list(x_shape), "/delay")
        K = self.per_call
        if K > 1:
            shape = emit.op("Shape", [x], hint, dtype=np.int64)[0]
            view = emit.op("Reshape", [x, emit.op("Concat", [
                emit.const(f"{hint}/K", [K, -1]), emit.rest_shape(x, hint)], hint,
                attrs={"axis": 0}, dtype=np.int64)[0]], hint)[0]
            line = emit.op("Concat", [state_in, view], hint, attrs={"axis": 0})[0]
            emit.op("Slice", [line, emit.const(f"{hint}/keep", [K]),
                              emit.const(f"{hint}/end", [_INT64_MAX]),
                              emit.const(f"{hint}/axis0", [0])], hint, outputs=[state_out])
            out = emit.op("Slice", [line, emit.const(f"{hint}/zero", [0]),
                                    emit.const(f"{hint}/K_end", [K]),
                                    emit.const(f"{hint}/out_axis", [0])], hint)[0]
            self._count("delays")
            return emit.op("Reshape", [out, shape], hint)[0]
        old = emit.op("Gather", [state_in, emit.const(f"{hint}/first", 0)], hint,
                      attrs={"axis": 0})[0]
        rest = emit.op("Slice", [state_in, emit.const(f"{hint}/one", [1]),
                                 emit.const(f"{hint}/end", [_INT64_MAX]),
                                 emit.const(f"{hint}/axis0", [0])], hint)[0]
        one_more = emit.op("Concat", [emit.const(f"{hint}/lead", [1]),
                                      emit.op("Shape", [x], hint, dtype=np.int64)[0]], hint,
                           attrs={"axis": 0}, dtype=np.int64)[0]
        emit.op("Concat", [rest, emit.op("Reshape", [x, one_more], hint)[0]], hint,
                attrs={"axis": 0}, outputs=[state_out])
        self._count("delays")
        return old

    def _stream_neuron(self, node: ir.Node, step: ir.Variable) -> None:
        spec = spec_for_op(node.op)
        if _bit_serial(spec):
            node.attrs[spec.window_attr] = self.emit.S
        node.attrs["T"] = self.per_call
        node.attrs["const_input"] = 0
        x_shape = self.shapes.get(node.inputs[0].name)
        shape = None if x_shape is None else [spec.state_planes] + list(x_shape)
        state_in, state_out = self._state_pair(node, shape)
        while len(node.inputs) > 1:
            node.inputs.pop()
        while len(node.outputs) > 1:
            node.outputs.pop()
        node.inputs.extend([state_in, step])
        node.outputs.append(state_out)
