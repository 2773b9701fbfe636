"""pool-first: a MaxPool after a first-layer activation moves in front of it.

Before::   z -> act -> y -> MaxPool -> p          (act: ReLU, Clip(0, max) or a QCFS clip)
After::    z -> MaxPool -> z' -> act -> p

``act`` is elementwise, non-decreasing and per channel, so ``MaxPool(act(z)) = act(MaxPool(z))``
exactly (MaxPool ignores its padding): the ANN, and every QANN made from it, compute the same
function. The rewrite matters for the SNN. Only activations whose input ``z`` is *static* (computed
from the analog input alone, no activation upstream: a stem after direct encoding) move. Their
neuron then gets the pooled current as a constant input, so its spike train is exactly the train
of the unit with the largest current, which is what max pooling of the ANN activation asks for;
left after the neuron, the pool would run on spike trains and be spike-gated
(:mod:`snncc.passes.schedule_timesteps`), an approximation. The neuron also runs on the pooled
map (a quarter of the values for a 2x2 or 3x3/2 pool) and calibration sees the positions the
network keeps.

Declines (the pool stays after the activation, ``PassResult.declines``):

* ``TEMPORAL_INPUT``: an activation lies upstream of ``z``, directly or through an analog island
  (the neuron's current differs per slice; the schedule's gate or exact swap handles that pool).
* ``OTHER_READERS``: ``y`` is read by another node too, or is a graph output.
* ``INDICES_USED``: the MaxPool's indices output is read.
* ``POSITIONAL_CONSTANT``: a constant of a QCFS pattern varies along the pooled axes.

First, a MaxPool over a channel Concat becomes a Concat of MaxPools, one per branch (exact), so
that each can move (count ``maxpool_split_over_concat``).

Runs only with ``--maxpool auto`` (``avg`` makes every MaxPool an AveragePool, which does not
commute with the activation; ``gate`` asks for the gate). Count: ``maxpool_moved``.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from snncc import ir
from snncc.context import CompileContext
from snncc.passes.base import Decline, Pass, PassResult
from snncc.passes.quant_clip import ActivationSite, activation_sites
from snncc.passes.support import spike_fed

__all__ = ["PoolFirstPass"]


class PoolFirstPass(Pass):
    name = "pool-first"

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        if ctx.options.maxpool != "auto":
            return PassResult(modified=False, counts={"maxpool_moved": 0})
        graph = model.graph
        outputs = {id(t) for t in graph.outputs}
        split = self._split_over_concats(graph, outputs)
        fed = spike_fed(graph)
        moved, declines = 0, []
        for site in activation_sites(graph, model.provenance):
            pools = [n for n in site.y.outputs if n.op == "MaxPool"]
            if not pools:
                continue
            reason = self._decline(site, pools, fed, outputs)
            if reason:
                declines.append(Decline(ir.node_label(pools[0], model.provenance), *reason))
                continue
            self._move(graph, site, pools[0])
            ctx.notes.setdefault("pool_first", []).append(pools[0].name or
                                                          pools[0].outputs[0].name)
            moved += 1
            ctx.logger.debug("%s: %s moved in front of %s", self.name,
                             ir.node_label(pools[0]), site.label)
        return PassResult(modified=moved + split > 0,
                          counts={"maxpool_moved": moved, "maxpool_split_over_concat": split},
                          declines=tuple(declines))

    @staticmethod
    def _split_over_concats(graph: gs.Graph, outputs: set[int]) -> int:
        """``MaxPool(Concat(a, b, ..., axis=channels))`` -> ``Concat(MaxPool(a), MaxPool(b),
        ...)``, also when the Concat has other readers (they keep it): exact (the pool is per
        channel), and each pool then reads one branch, so that it can move in front of that
        branch's activation (here, or in the schedule for bit-serial and T = 1) instead of being
        spike-gated (an Inception block's pooled concatenation)."""
        done, todo = 0, [n for n in graph.nodes if n.op == "MaxPool"]
        while todo:  # a new pool over an inner Concat is split in turn
            mp = todo.pop()
            cat = ir.producer(mp.inputs[0]) if mp.inputs else None
            if cat is None or cat.op != "Concat" or \
                    (len(mp.outputs) > 1 and (mp.outputs[1].outputs or
                                              id(mp.outputs[1]) in outputs)):
                continue
            shape = cat.outputs[0].shape
            axis = int(cat.attrs.get("axis", 0))
            if axis < 0:
                axis += len(shape) if shape is not None else 0
            if axis != 1 or len(cat.inputs) < 2:
                continue
            attrs = {k: v for k, v in mp.attrs.items() if k != "storage_order"}
            pooled = []
            y_shape = mp.outputs[0].shape
            for i, t in enumerate(cat.inputs):
                shape = None if y_shape is None or t.shape is None else \
                    [y_shape[0], t.shape[1], *y_shape[2:]]
                out = gs.Variable(ir.unique_name(graph, f"{t.name}/pooled"), dtype=t.dtype,
                                  shape=shape)
                part = gs.Node("MaxPool", ir.unique_name(graph, f"{mp.name or 'MaxPool'}/part{i}"),
                               dict(attrs), [t], [out])
                graph.nodes.append(part)
                todo.append(part)
                pooled.append(out)
            y = mp.outputs[0]
            graph.nodes.append(gs.Node("Concat", ir.unique_name(graph, f"{cat.name or 'Concat'}"
                                                                        "/pooled"),
                                       {"axis": 1}, pooled, [y]))
            mp.inputs.clear()  # the Concat stays for its other readers (an Inception block's
            mp.outputs.clear()  # branches); dropped at once when it has none, as its inputs'
            if not cat.outputs[0].outputs and id(cat.outputs[0]) not in outputs:  # readers count
                cat.inputs.clear()
                cat.outputs.clear()
            done += 1
        graph.nodes = [n for n in graph.nodes if n.outputs]
        return done

    @staticmethod
    def _decline(site: ActivationSite, pools: list[gs.Node], fed: set[int],
                 outputs: set[int]) -> tuple[str, str] | None:
        mp = pools[0]
        if len(site.y.outputs) != 1 or id(site.y) in outputs:
            return "OTHER_READERS", f"'{site.y.name}' is read by other nodes too"
        if len(mp.outputs) > 1 and (mp.outputs[1].outputs or id(mp.outputs[1]) in outputs):
            return "INDICES_USED", "the MaxPool's indices output is read"
        if id(site.z) in fed:  # an activation upstream, also through an analog island
            return "TEMPORAL_INPUT", f"{site.label} is computed from spikes"
        spatial = len(mp.attrs.get("kernel_shape", ()))
        for node in site.nodes:
            for t in node.inputs:
                c = ir.const_value(t)
                if c is not None and c.size > 1 and (
                        c.ndim <= spatial or any(d != 1 for d in c.shape[-spatial:])):
                    return "POSITIONAL_CONSTANT", (f"constant '{t.name}' of {site.label} varies "
                                                   "along the pooled axes")
        return None

    @staticmethod
    def _move(graph: gs.Graph, site: ActivationSite, mp: gs.Node) -> None:
        z, y, p = site.z, site.y, mp.outputs[0]
        pooled = gs.Variable(ir.unique_name(graph, f"{z.name}/pooled"), dtype=z.dtype or np.float32,
                             shape=p.shape)
        mp.inputs[0] = z
        mp.outputs[0] = pooled
        for node in site.nodes:
            for i, t in enumerate(node.inputs):
                if t is z:
                    node.inputs[i] = pooled
        last = site.nodes[-1]
        last.outputs[[i for i, t in enumerate(last.outputs) if t is y][0]] = p
        for node in site.nodes:   # the activation's inner tensors now hold pooled maps: their
            for t in node.outputs:  # shapes from before (a QCFS pattern's, in value_info) are
                if t is not p:      # stale, and onnx.checker refused the QANN (SNN-E525)
                    t.shape = None
