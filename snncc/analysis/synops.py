"""Synaptic operations (SynOps) per block, per layer, per core and in total, shared by every target.

Definition (neurons.md §7.2, sinabs/SNN-TB style): a unit spike event of a source neuron costs one
synaptic operation per synapse leaving it, so

    SynOps(block) = sum over source positions of events[pos] x fanout[pos]

with the exact structural fan-out of every position of the block (conv borders, strides, padding,
groups; folded average pooling included because the pool is part of the block's kernel; zero
weights count, as stored synapses do). Events are measured on real data: per group an int array
[N, *shape] of unit events summed over all slices (graded spikes count as ``spec.events`` says:
GN c per slice, MT thresholds passed, bit-serial one per set bit). They come from the Loihi
simulator (:func:`snncc.backends.loihi.simulator.run_netlist`) or from an ORT run
(:func:`ort_events`). Blocks fed by the analog input are MACs (every synapse once per
computation), counted once when the schedule computes that current once (``analog_once``).
Results are per inference (divided by the batch size N).

Error codes: SNN-E670 events missing or of the wrong shape.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import onnx

from snncc.backends.loihi.mapping import hwc_order
from snncc.backends.loihi.netlist import Block, Netlist, conv2d, conv2d_adjoint, load, lower
from snncc.errors import BackendCapabilityError

__all__ = ["fanout_map", "synops_per_target", "count_synops", "ort_events"]


def fanout_map(block: Block) -> np.ndarray:
    """Synapses leaving every source neuron of the block: int64 [*src_view]."""
    if block.kind == "dense":
        return np.full(block.src_view, block.rows, dtype=np.int64)
    ones = np.ones((1, block.rows) + block.out_hw, dtype=np.int64)
    return conv2d_adjoint(ones, np.ones(block.shape, np.int64), block.stride, block.pads,
                          block.groups, block.src_view[1:])[0]


def synops_per_target(block: Block, events: np.ndarray) -> np.ndarray:
    """SynOps received by each destination neuron of the block, summed over the batch:
    [rows, H, W]. Its total equals ``sum(events * fanout_map(block))``."""
    ev = events.reshape((-1,) + block.src_view).sum(axis=0, keepdims=True).astype(np.int64)
    if block.kind == "dense":
        return np.full((block.rows,) + block.out_hw, int(ev.sum()), dtype=np.int64)
    return conv2d(ev, np.ones(block.shape, np.int64), block.stride, block.pads, block.groups,
                  block.out_hw)[0]


def _netlist(source: Any, timesteps: int | None) -> Netlist:
    if isinstance(source, Netlist):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(source)
    if not isinstance(source, onnx.ModelProto):
        from snncc import ir
        source = ir.to_proto(source)
    if timesteps is None:
        raise BackendCapabilityError("count_synops on an ONNX model needs timesteps",
                                     code="SNN-E670", hint="pass timesteps=T")
    return lower(source, timesteps)


def count_synops(source: Netlist | str | os.PathLike | onnx.ModelProto | Any,
                 events_per_layer: Mapping[str, np.ndarray], *, timesteps: int | None = None,
                 analog_once: bool = True, mapping: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Count SynOps and MACs per inference.

    ``source``: a netlist, a compiled Loihi directory, or the ANN-shaped ONNX model after
    insert-neurons (``ModelProto`` or ``ir.Model``; then ``timesteps`` is required). Groups are
    named after the neuron nodes. ``events_per_layer[group]``: int array [N, *shape], events
    over all slices. ``mapping``: the report of :func:`snncc.backends.loihi.mapping.map_cores`,
    to add ``cores`` (SynOps received by each core's neurons) and ``host_synops`` (received by
    readouts the host accumulates).
    """
    net = _netlist(source, timesteps)
    kinds = {g.name: g for g in net.groups}
    spiking = [g for g in net.groups if g.kind == "neuron"]
    missing = [g.name for g in spiking if g.name not in events_per_layer]
    if missing:
        raise BackendCapabilityError("events are missing for: " + ", ".join(missing),
                                     code="SNN-E670",
                                     hint="pass events of every neuron group (run_netlist or "
                                          "ort_events give them)")
    batch = None
    for g in spiking:
        ev = np.asarray(events_per_layer[g.name])
        if ev.ndim != len(g.shape) + 1 or tuple(ev.shape[1:]) != tuple(g.shape) or \
                (batch is not None and ev.shape[0] != batch):
            raise BackendCapabilityError(
                f"events of '{g.name}' have shape {ev.shape}, expected [N, "
                f"{', '.join(map(str, g.shape))}] with one N for all layers", code="SNN-E670",
                hint="give per-position event counts summed over slices, not totals")
        batch = ev.shape[0]
    batch = batch or 1
    steps = net.total_steps
    per_neuron = {g.name: np.zeros(g.view) for g in net.groups if g.kind != "input"}
    blocks, layers = [], {}
    for b in net.blocks:
        src = kinds[b.src]
        if src.kind == "input":
            times = 1 if analog_once else steps
            value, kind = float(fanout_map(b).sum() * times), "macs"
        else:
            ev = np.asarray(events_per_layer[b.src])
            target = synops_per_target(b, ev) / batch
            per_neuron[b.dst][b.offset:b.offset + b.rows] += target
            value, kind = float(target.sum()), "synops"
        blocks.append({"block": b.name, "src": b.src, "dst": b.dst, "kind": kind,
                       "per_inference": value})
        row = layers.setdefault(b.dst, {"synops": 0.0, "macs": 0.0})
        row[kind] += value
    for g in net.groups:
        if g.kind == "input":
            continue
        row = layers.setdefault(g.name, {"synops": 0.0, "macs": 0.0})
        row["neurons"] = g.size
        if g.kind == "neuron":
            events = float(np.asarray(events_per_layer[g.name]).sum()) / batch
            row["events"] = events
            row["spike_rate"] = events / (g.size * steps)
    report = {"steps": steps, "batch": batch, "analog_once": analog_once, "blocks": blocks,
              "layers": layers,
              "total_synops": sum(r["synops"] for r in layers.values()),
              "total_macs": sum(r["macs"] for r in layers.values()),
              "ann_macs": net.ann_macs,
              "neuron_updates": sum(g.size for g in net.groups if g.kind != "input") * steps}
    if mapping is not None:
        report["cores"] = _per_core(net, per_neuron, mapping)
        report["host_synops"] = float(sum(per_neuron[h["group"]].sum()
                                          for h in mapping.get("host_groups", ())))
    return report


def _per_core(net: Netlist, per_neuron: dict[str, np.ndarray], mapping: Mapping[str, Any]
              ) -> list[float]:
    ordered = {g: per_neuron[g].reshape(-1)[hwc_order(net.group(g).view)] for g in per_neuron}
    return [float(sum(ordered[c["group"]][c["start"]:c["stop"]].sum() for c in core["chunks"]))
            for core in mapping["cores"]]


def ort_events(compiled: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str,
                                                                                   np.ndarray]:
    """Per-position events of every neuron node of a *folded* compiled ORT model:
    node name -> int64 [N, *shape] summed over slices (``spec.events`` per slice)."""
    import onnxruntime as ort

    from snncc.passes.insert_neurons import spec_for_op
    from snncc.simulate import neuron_nodes, node_attrs, with_neuron_outputs

    proto, names = with_neuron_outputs(compiled)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(inputs))))
    batch = next(iter(inputs.values())).shape[0]
    out = {}
    for node in neuron_nodes(proto):
        y = values[names[node.name]]
        ev = spec_for_op(node.op_type).events(y, node_attrs(node))
        out[node.name] = ev.reshape((-1, batch) + y.shape[1:]).sum(axis=0)
    return out
