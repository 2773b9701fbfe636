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

A MaxPool has no synapses. An ONNX source is lowered count-only (:mod:`.count_lowering`): a
MaxPool over a neuron's spikes is a ``pool`` group whose events (the spikes the pool passes on,
measured at its output tensor: :func:`pool_taps`) feed the blocks after it; a MaxPool over analog
currents (a stem pool that pool-first moved in front of its activation) is an ``analog`` group
whose incoming conv is counted as MACs. Upsampling likewise: a nearest Resize copies spikes (a
``pool`` group), a ConvTranspose or an integer-scale linear Resize is a ``deconv`` block
(:mod:`.count_lowering`).

Error codes: SNN-E670 events missing or of the wrong shape.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from snncc.analysis.count_lowering import count_lower
from snncc.backends.loihi.mapping import hwc_order
from snncc.backends.loihi.netlist import (Block, Netlist, conv_box_sum, conv_fanout, load,
                                         pair_mask)
from snncc.errors import BackendCapabilityError

__all__ = ["fanout_map", "synops_per_target", "count_synops", "ort_events", "static_synops",
           "count_netlist", "pool_taps", "event_reads", "artifact_netlist",
           "synops_section", "artifact_synops", "format_synops_line",
           "ARTIFACT_SAMPLES", "artifact_sample_count"]


def fanout_map(block: Block, structural: bool = False) -> np.ndarray:
    """Synapses leaving every source neuron of the block: int64 [*src_view]. ``structural``: the
    block is a count-only netlist's, whose weights are the ONNX graph's structure (ones where
    it stores a weight): a (row, channel) pair with an all-zero kernel has no synapse (a group
    structure the block cannot express, e.g. a grouped conv over a part of a Concat)."""
    mask = pair_mask(block) if structural else None
    if block.kind == "dense":
        if mask is None:
            return np.full(block.src_view, block.rows, dtype=np.int64)
        return mask.sum(axis=0).astype(np.int64).reshape(block.src_view)
    return conv_fanout(block, mask)


def synops_per_target(block: Block, events: np.ndarray, structural: bool = False) -> np.ndarray:
    """SynOps received by each destination neuron of the block, summed over the batch:
    [rows, H, W]. Its total equals ``sum(events * fanout_map(block, structural))``."""
    ev = events.reshape((-1,) + block.src_view).sum(axis=0, keepdims=True).astype(np.int64)
    mask = pair_mask(block) if structural else None
    if block.kind == "dense":
        if mask is None:
            return np.full((block.rows,) + block.out_hw, int(ev.sum()), dtype=np.int64)
        return (mask.astype(np.int64) @ ev.reshape(-1)).reshape((block.rows,) + block.out_hw)
    return conv_box_sum(block, ev[0], mask)


def count_netlist(source: onnx.ModelProto | Any, timesteps: int, maxpool: str = "auto",
                  compiled: onnx.ModelProto | Any | None = None) -> Netlist:
    """The count-only netlist of the ANN-shaped spiking graph (after insert-neurons;
    ``ModelProto`` or ``ir.Model``): no relay groups (ONNX Runtime events have none), MaxPools
    as ``pool`` / ``analog`` groups. ``compiled``: the model compiled from it, whose events
    will be counted; it shows which MaxPools the schedule swapped with their neuron."""
    from snncc import ir

    if not isinstance(source, onnx.ModelProto):
        source = ir.to_proto(source)
    outputs = {}
    if isinstance(compiled, onnx.ModelProto):
        outputs = {n.output[0]: n.name for n in compiled.graph.node if n.domain == ir.SNN_DOMAIN}
    elif compiled is not None:   # an ir.Model: read its nodes, no serialisation of the weights
        outputs = {n.outputs[0].name: n.name for n in compiled.graph.nodes
                   if n.domain == ir.SNN_DOMAIN}
    return count_lower(source, timesteps, maxpool, outputs)


def pool_taps(net: Netlist) -> dict[str, tuple[str, str, int, int]]:
    """Pool group -> (the pool's output tensor, the neuron node whose spec counts its events,
    its channels' start and stop in that tensor): what :func:`ort_events` fetches besides the
    neurons' own outputs."""
    return {g.name: (g.source, g.attrs["events_of"], *g.attrs["channels"])
            for g in net.groups if g.kind == "pool"}


def _netlist(source: Any, timesteps: int | None, maxpool: str = "auto",
             compiled: Any = None) -> Netlist:
    if isinstance(source, Netlist):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(source)
    if timesteps is None:
        raise BackendCapabilityError("count_synops on an ONNX model needs timesteps",
                                     code="SNN-E670", hint="pass timesteps=T")
    return count_netlist(source, timesteps, maxpool, compiled)


def count_synops(source: Netlist | str | os.PathLike | onnx.ModelProto | Any,
                 events_per_layer: Mapping[str, np.ndarray], *, timesteps: int | None = None,
                 analog_once: bool = True, mapping: Mapping[str, Any] | None = None,
                 summed_over: int | None = None, maxpool: str = "auto",
                 compiled: onnx.ModelProto | None = None) -> dict[str, Any]:
    """Count SynOps and MACs per inference.

    ``source``: a netlist, a compiled Loihi directory, or the ANN-shaped ONNX model after
    insert-neurons (``ModelProto`` or ``ir.Model``; then ``timesteps`` is required). Groups are
    named after the neuron nodes. ``events_per_layer[group]``: int array [N, *shape], events
    over all slices. ``mapping``: the report of :func:`snncc.backends.loihi.mapping.map_cores`,
    to add ``cores`` (SynOps received by each core's neurons) and ``host_synops`` (received by
    readouts the host accumulates). ``summed_over``: the events are already summed over this
    many samples, each array [1, *shape] (what the compile-time fidelity run keeps: per-sample
    counts of a 224x224 ResNet-34 take about 190 MB per sample). ``maxpool``: as the compile's
    ``--maxpool``. ``compiled``: for an ONNX source, the model the events were measured on
    (:func:`count_netlist`).
    """
    net = _netlist(source, timesteps, maxpool, compiled)
    kinds = {g.name: g for g in net.groups}
    spiking = [g for g in net.groups if g.sends_events]
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
    if summed_over is not None:
        if batch not in (None, 1):
            raise BackendCapabilityError(f"events summed over samples have {batch} rows, not 1",
                                         code="SNN-E670", hint="sum over axis 0 with keepdims")
        batch = summed_over
    batch = batch or 1
    steps = net.total_steps
    structural = bool(net.meta.get("structural"))
    per_neuron = {g.name: np.zeros(g.view) for g in net.groups if g.kind != "input"}
    blocks, layers = [], {}
    for b in net.blocks:
        src = kinds[b.src]
        if src.kind in ("input", "analog"):
            times = 1 if analog_once else steps
            value, kind = float(fanout_map(b, structural).sum() * times), "macs"
        else:
            ev = np.asarray(events_per_layer[b.src])
            target = synops_per_target(b, ev, structural) / batch
            if target.shape[1:] == per_neuron[b.dst].shape[1:]:   # else a max-pooled current
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
        if g.kind == "pool":   # the spikes it passes on are some of its neuron's: not summed
            row["pooled_events"] = float(np.asarray(events_per_layer[g.name]).sum(
                dtype=np.int64)) / batch
            row["pool_of"] = g.attrs["events_of"]
        if g.kind in ("pool", "analog"):   # analog: its MACs are the conv's before the pool
            resize = g.attrs.get("op") == "Resize"
            row["kind"] = f"analog island ({g.attrs['op']})" if g.attrs.get("island") else {
                ("pool", False): "max-pool", ("analog", False): "conv + max-pool",
                ("pool", True): "upsample", ("analog", True): "upsampled current"}[g.kind, resize]
            continue
        row["neurons"] = g.size
        if g.sends_events:
            events = float(np.asarray(events_per_layer[g.name]).sum(dtype=np.int64)) / batch
            row["events"] = events
            row["spike_rate"] = events / (g.size * steps)
    order = [g.name for g in net.groups if g.name in layers]   # the netlist's (topological)
    layers = {name: layers[name] for name in order + [n for n in layers if n not in order]}
    report = {"steps": steps, "batch": batch, "analog_once": analog_once, "blocks": blocks,
              "layers": layers,
              "total_synops": sum(r["synops"] for r in layers.values()),
              "total_macs": sum(r["macs"] for r in layers.values()),
              "ann_macs": net.ann_macs,
              "ann_macs_in_bounds": net.ann_macs_in_bounds,
              "neuron_updates": sum(g.size for g in net.groups if g.updates) * steps}
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


def event_reads(nodes: Sequence[onnx.NodeProto],
                taps: Mapping[str, tuple[str, str, int, int]] | None, produced: set[str]
                ) -> dict[str, tuple[str, onnx.NodeProto, slice]]:
    """What to read for the events of every neuron node (its output) and of every tapped pool
    group (its channels of the pool's output): key -> (tensor, the neuron node whose spec
    counts them, channel slice). A tap the compiled model lacks is SNN-E670."""
    by_name = {n.name: n for n in nodes}
    reads = {n.name: (n.output[0], n, slice(None)) for n in nodes}
    for group, (tensor, neuron, lo, hi) in (taps or {}).items():
        if tensor not in produced or neuron not in by_name:
            raise BackendCapabilityError(f"the compiled model has no tensor '{tensor}' of the "
                                         f"MaxPool '{group}' (or no neuron '{neuron}')",
                                         code="SNN-E670", hint="count events on the model "
                                         "compiled from the same graph")
        reads[group] = (tensor, by_name[neuron], slice(lo, hi))
    return reads


def _tapped(compiled: onnx.ModelProto, taps: Mapping[str, tuple[str, str, int, int]] | None
            ) -> tuple[onnx.ModelProto, dict[str, tuple[str, onnx.NodeProto, slice]]]:
    """``compiled`` with every neuron's output and every tapped tensor as graph outputs, and
    its :func:`event_reads`."""
    from snncc import ir
    from snncc.simulate import neuron_nodes

    produced = {o for n in compiled.graph.node for o in n.output}
    reads = event_reads(neuron_nodes(compiled), taps, produced)
    return ir.with_outputs(compiled, [t for t, _, _ in reads.values()]), reads


def ort_events(compiled: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
               taps: Mapping[str, tuple[str, str, int, int]] | None = None
               ) -> dict[str, np.ndarray]:
    """Per-position events of every neuron node of a *folded* compiled ORT model:
    node name -> int64 [N, *shape] summed over slices (``spec.events`` per slice); with
    ``taps`` (:func:`pool_taps`) also of every pool group, from its output tensor."""
    import onnxruntime as ort

    from snncc.simulate import node_attrs, summed_events

    proto, reads = _tapped(compiled, taps)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(inputs))))
    batch = next(iter(inputs.values())).shape[0]
    return {key: summed_events(node, values[tensor][:, sl], node_attrs(node), batch)
            for key, (tensor, node, sl) in reads.items()}


# ----------------------------------------------------------------------------- artifact section

#: Calibration samples simulated for the measured part of an artifact's SynOp section.
ARTIFACT_SAMPLES = 64
#: ... fewer for big networks: at most this many ANN MACs x slices simulated in all (about 10 s
#: of the Loihi simulator on one core), but always at least one sample.
ARTIFACT_MAC_STEPS = 1e9


def artifact_sample_count(ann_macs: int, steps: int, available: int, *,
                          budget: float = ARTIFACT_MAC_STEPS) -> int:
    """How many calibration samples an artifact's SynOp measurement runs."""
    budget = int(budget // max(1, int(ann_macs) * max(1, int(steps))))
    return max(1, min(ARTIFACT_SAMPLES, available, budget))

_DEFINITION = ("SynOps per inference = sum over source neurons of unit events x synapses leaving "
               "the neuron (exact structural fan-out); blocks fed by the analog input count "
               "MACs instead. fanout_per_spike = synapses leaving one neuron of the group "
               "(mean and max); synapses_in = stored synapses into the group. ann.macs = sum "
               "of k_h k_w C_in H_out W_out C_out per conv and in x out per dense layer "
               "(docs/netlist.md, section 7), including the taps on a conv's zero padding, "
               "which have no synapse; ann.macs_in_bounds leaves them out (energy: "
               "ann_over_snn_in_bounds).")


def static_synops(net: Netlist) -> dict[str, Any]:
    """Per group: neurons, synapses into and out of it, fan-out per spike (mean, max). No data
    needed: the structure of the netlist alone."""
    groups: dict[str, dict[str, Any]] = {}
    fan: dict[str, np.ndarray] = {}
    for g in net.groups:
        groups[g.name] = {"kind": g.kind, "neuron": g.neuron,
                          "neurons": g.size if g.updates or g.kind == "input" else 0,
                          "synapses_in": 0, "synapses_out": 0}
    for b in net.blocks:
        f = fanout_map(b, bool(net.meta.get("structural")))
        total = int(f.sum())
        groups[b.dst]["synapses_in"] += total
        groups[b.src]["synapses_out"] += total
        fan[b.src] = f.reshape(-1) + fan[b.src] if b.src in fan else f.reshape(-1).copy()
    for name, row in groups.items():
        f = fan.get(name)
        row["fanout_per_spike"] = float(f.mean()) if f is not None else 0.0
        row["fanout_max"] = int(f.max()) if f is not None else 0
    return {"groups": groups,
            "neurons": sum(r["neurons"] for r in groups.values() if r["kind"] != "input"),
            "synapses": sum(r["synapses_in"] for r in groups.values()),
            "ann_macs": int(net.ann_macs),
            "ann_macs_in_bounds": net.ann_macs_in_bounds}


def synops_section(net: Netlist, events: Mapping[str, np.ndarray] | None = None, *,
                   mapping: Mapping[str, Any] | None = None, source: str = "",
                   timesteps: int | None = None, summed_over: int | None = None,
                   analog_once: bool = True) -> dict[str, Any]:
    """The SynOp section of an artifact (``synops.json`` of a Loihi directory, ``synops`` of the
    ORT ``--report``): the static structure always; with ``events`` (per group, int [N, *shape],
    as :func:`run_netlist` or :func:`ort_events` give them) also the measured spikes and SynOps
    per inference, the energy under every model of :mod:`snncc.analysis.energy` and the ANN's
    MACs and energy side by side. ``summed_over``, ``analog_once``: as :func:`count_synops`
    (a Loihi netlist sends its analog input every step: ``analog_once=False``)."""
    from snncc.analysis.energy import DEFAULT_MODELS, estimate

    static = static_synops(net)
    ann_pj = static["ann_macs"] * DEFAULT_MODELS["digital45nm"].e_mac_pj
    section: dict[str, Any] = {
        "format": "snncc-synops", "version": 1, "available": True, "definition": _DEFINITION,
        "timesteps": timesteps if timesteps is not None else net.timesteps,
        "steps": net.total_steps, **static,
        "ann": {"macs": static["ann_macs"], "energy_pj": ann_pj,
                "energy_model": "digital45nm (FP32 MAC 4.6 pJ)",
                # MACs_l counts every kernel tap (neurons.md 7.2), also those on the zero padding,
                # for which the SNN count has no synapse: the same count without them
                "macs_in_bounds": static["ann_macs_in_bounds"],
                "energy_in_bounds_pj": static["ann_macs_in_bounds"]
                * DEFAULT_MODELS["digital45nm"].e_mac_pj},
        "measured": None, "energy": None}
    if events is None:
        return section
    syn = count_synops(net, events, mapping=mapping, summed_over=summed_over,
                       analog_once=analog_once)
    for name, row in syn["layers"].items():
        target = section["groups"].setdefault(name, {})
        target.update({k: row[k] for k in ("events", "spike_rate", "pooled_events", "pool_of")
                       if k in row},
                      synops_in=row["synops"], macs_in=row["macs"])
    section["measured"] = {
        "source": source, "samples": syn["batch"],
        "spikes_per_inference": float(sum(r.get("events", 0.0) for r in syn["layers"].values())),
        "synops_per_inference": syn["total_synops"], "macs_per_inference": syn["total_macs"],
        "neuron_updates": syn["neuron_updates"], "analog_once": syn["analog_once"]}
    if "cores" in syn:
        section["measured"].update(cores=syn["cores"], host_synops=syn["host_synops"])
    energy = estimate(syn)
    section["energy"] = {name: {"snn_pj": m["snn_pj"], "ann_pj": m["ann_pj"],
                                "ann_over_snn": m["ratio"],
                                "ann_over_snn_in_bounds": m["ratio_in_bounds"],
                                "breakdown": m["breakdown"],
                                "source": m["constants"]["source"]}
                         for name, m in energy["models"].items()}
    return section


def loihi_samples(path: str | os.PathLike, input_name: str, input_shape: tuple[int, ...],
                  limit: int = ARTIFACT_SAMPLES, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray:
    """Up to ``limit`` calibration samples for the one input of a netlist (same checks as the
    calibrate pass)."""
    from snncc.calibration import InputSpec, load_samples

    spec = InputSpec(input_name, (None, *input_shape), np.dtype(np.float32))
    return load_samples(path, [spec], max_samples=limit, mean=mean, std=std)[input_name]


def _stream_events(compiled: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                   taps: Mapping[str, tuple[str, str, int, int]] | None = None,
                   window: int | None = None) -> dict[str, np.ndarray]:
    """Per-position events of a *streaming* compiled model (step protocol of
    :mod:`snncc.simulate`), with the kernel library; ``taps`` as :func:`ort_events`.
    ``window``: count only the last this many steps (a pipelined model runs one window per
    layer of depth to fill its pipeline; once full, every step of a stream costs what the
    last window's steps cost, which is what one inference costs in the folded schedule)."""
    from snncc.passes.insert_neurons import spec_for_op
    from snncc.simulate import _run_streaming, _session, node_attrs

    proto, reads = _tapped(compiled, taps)
    meta = {p.key: p.value for p in proto.metadata_props}
    sess = _session(proto, True, False)
    out_names = [o.name for o in sess.get_outputs()]
    acc: dict[str, np.ndarray] = {}
    def count(values: dict[str, np.ndarray]) -> None:
        for key, (tensor, node, sl) in reads.items():
            ev = spec_for_op(node.op_type).events(values[tensor][:, sl], node_attrs(node))
            acc[key] = ev.astype(np.int64) + acc[key] if key in acc else ev.astype(np.int64)

    _run_streaming(sess, proto, meta, dict(inputs), out_names, out_names[:1], count,
                   count_from=max(0, int(meta["snncc.steps"]) - window) if window else 0)
    return acc


def artifact_netlist(ann_proto: onnx.ModelProto | Any, options: Any,
                     compiled: onnx.ModelProto | Any) -> Netlist | dict[str, Any]:
    """:func:`count_netlist` for an artifact's section (``options``: the compile's), or the
    section that says why it is not available."""
    from snncc.errors import SnnccError

    try:
        return count_netlist(ann_proto, options.timesteps, getattr(options, "maxpool", "auto"),
                             compiled)
    except SnnccError as exc:
        return {"available": False, "reason": exc.render()}


def artifact_synops(snn_proto: onnx.ModelProto | Any, ann_proto: onnx.ModelProto | Any,
                    samples: Mapping[str, np.ndarray] | None, options: Any, *,
                    events: Mapping[str, np.ndarray] | None = None,
                    events_samples: int | None = None,
                    net: Netlist | dict[str, Any] | None = None) -> dict[str, Any]:
    """The SynOp section for an ORT SNN (the ``synops`` key of ``compile --report``).

    ``snn_proto``: the compiled spiking model (what the ORT backend wrote, folded or streaming).
    ``ann_proto``: the ANN-shaped spiking graph after insert-neurons (``ModelProto`` or
    ``ir.Model``; ``pipeline.Snapshot(["insert-neurons"])`` keeps it): it gives the structure
    (synapses, fan-out, ANN MACs). ``samples``: calibration inputs (name -> array), of which the
    first :data:`ARTIFACT_SAMPLES` (fewer for big networks: :func:`artifact_sample_count`) are
    run to measure spikes; None gives the static part only.
    ``events``: per-position events already measured on ``samples`` (node or pool group ->
    integer [N, ...], :func:`ort_events`' form, e.g. by the compile-time fidelity run); used
    instead of a new run when they cover every group. With ``events_samples`` they are sums over
    that many samples, [1, ...] (as the fidelity run keeps them).
    ``net``: :func:`artifact_netlist` of ``ann_proto``, when the caller has it already.
    A model the structural lowering cannot express (e.g. analog islands) gives
    ``{"available": False, "reason": ...}`` instead of failing the compile.
    """
    from snncc import ir
    from snncc.errors import SnnccError

    if not isinstance(snn_proto, onnx.ModelProto):
        snn_proto = ir.to_proto(snn_proto)
    net = artifact_netlist(ann_proto, options, snn_proto) if net is None else net
    if isinstance(net, dict):
        return net
    if not samples:
        return synops_section(net, timesteps=options.timesteps)
    try:   # a count that does not fit what was compiled: not available, not a failed compile
        meta = {p.key: p.value for p in snn_proto.metadata_props}
        # a streaming model is one step: the caller feeds the input and the first layer runs
        # on it every step; the folded and window schedules compute that current once
        streaming = meta.get("snncc.schedule") == "streaming"
        if events is not None and all(g.name in events for g in net.groups if g.sends_events):
            return synops_section(net, dict(events),
                                  source="ONNX Runtime (kernels, fidelity run)",
                                  timesteps=options.timesteps, summed_over=events_samples,
                                  analog_once=not streaming)
        n = artifact_sample_count(net.ann_macs, net.total_steps,
                                  min(len(v) for v in samples.values()),
                                  budget=10 * ARTIFACT_MAC_STEPS)   # ONNX Runtime is faster
        feeds = {k: np.asarray(v)[:n] for k, v in samples.items()}
        taps = pool_taps(net)
        if streaming:
            events = _stream_events(snn_proto, feeds, taps, window=net.total_steps)
            source = "ONNX Runtime (streaming, kernels)"
        else:
            events, source = ort_events(snn_proto, feeds, taps), "ONNX Runtime (folded)"
        return synops_section(net, events, source=source, timesteps=options.timesteps,
                              analog_once=not streaming)
    except SnnccError as exc:
        return {"available": False, "reason": exc.render()}


def format_synops_line(section: Mapping[str, Any] | None) -> str:
    """One line of totals for ``compile``: measured SynOps and the 45 nm energies when samples
    were run, else the static synapse count."""
    if not section or not section.get("available", True):
        lines = (section or {}).get("reason", "no section").splitlines()
        items = [line.strip()[2:] for line in lines[1:] if line.strip().startswith("- ")]
        reason = (items[0] if items else lines[0]).split(". Hint: ")[0]  # the first diagnostic
        if "SNN-E701" in reason:   # a streaming model counts its spikes with the library only
            from snncc.runtime import _BUILD_HINT

            reason += f"; build it with {_BUILD_HINT} to count them"
        more = f"; {len(items) - 1} more in the report" if len(items) > 1 else ""
        return f"SynOps: not available ({reason}{more})"
    ann = section["ann"]
    m = section.get("measured")
    if not m:
        return (f"SynOps: {section['synapses']:.3g} synapses, {section['neurons']} neurons "
                f"(ANN MACs {ann['macs']:.3g}); no calibration samples, no measured SynOps")
    e = section["energy"]["digital45nm"]
    inner = ann.get("macs_in_bounds", ann["macs"])
    macs = f"{ann['macs']:.3g}" if inner == ann["macs"] else \
        f"{ann['macs']:.4g}, {inner:.4g} without padding"   # 4 digits: the two can be close
    line = (f"SynOps/inference {m['synops_per_inference']:.3g} (ANN MACs {macs}); "
            f"energy 45nm: SNN {e['snn_pj'] * 1e-6:.3g} uJ vs ANN {e['ann_pj'] * 1e-6:.3g} uJ")
    if "loihi" in section["energy"]:
        line += f"; Loihi {section['energy']['loihi']['snn_pj'] * 1e-6:.3g} uJ"
    n = int(m["samples"])
    # a Loihi netlist's spikes are its own neurons' (soft reset), not network.net's stock ones
    how = ", the netlist's own neurons" if "emulated semantics" in str(m.get("source")) else ""
    return line + f" (measured on {n} sample{'' if n == 1 else 's'}{how})"

