"""The ONNX Runtime backend: a spiking ONNX model plus a JSON manifest.

Lowering: schedule-timesteps (auto, folded, window or streaming, see :mod:`snncc.passes.schedule_timesteps`).
Output ``OUT.onnx``: the model with ``snncc.ops`` neuron nodes, the model-local function of every
neuron op (so plain ONNX Runtime runs it; with :func:`snncc.runtime.session_options` the C++
kernels replace the functions) and the opset imports; it passes ``onnx.checker`` with
``full_check``. ``OUT.onnx.json`` next to it records the snncc version, neuron, T, schedule, op
names and the kernel library version the model was built for.

check() codes: SNN-E601 a ``snncc.ops`` op that is not a registered neuron; SNN-E602 a node of a
domain ONNX Runtime does not know; SNN-E603 a neuron op without its model-local function;
SNN-E604 a ReLU-like activation left (insert-neurons did not run); SNN-E605 a neuron op that
schedule-timesteps did not lay out (no schedule metadata).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

import snncc
from snncc import ir
from snncc.backends.base import Artifact, Backend
from snncc.context import CompileContext, CompileOptions
from snncc.errors import BackendCapabilityError, Diagnostic
from snncc.op_classes import ORT_DOMAINS
from snncc.passes.base import Pass
from snncc.passes.insert_neurons import spec_for_op
from snncc.passes.quant_clip import activation_sites
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass
from snncc.simulate import neuron_nodes, summed_events

#: Bytes of fetched tensors per batch when the compile-time fidelity check runs the SNN.
PREDICT_BYTES = 64 << 20

__all__ = ["OrtBackend", "ORT_DOMAINS"]

logger = logging.getLogger("snncc.backends.ort")

def _library_version() -> str:
    """The op-set version of the kernel library the model targets (the domain version)."""
    from snncc import runtime

    return f"{runtime.DOMAIN}:{ir.SNN_DOMAIN_VERSION} ({', '.join(runtime.op_names())})"


class OrtBackend(Backend):
    name = "ort"
    output_kind = "file"

    def lowering_passes(self, options: CompileOptions) -> Sequence[Pass]:
        return [ScheduleTimestepsPass()]

    def check(self, model: ir.Model, ctx: CompileContext) -> list[Diagnostic]:
        functions = {(f.domain, f.name) for f in model.functions}
        diags = []
        neurons = False
        for node in model.graph.nodes:
            label = ir.node_label(node, model.provenance)
            domain = node.domain or ""
            if domain == ir.SNN_DOMAIN:
                neurons = True
                if spec_for_op(node.op) is None:
                    diags.append(Diagnostic("SNN-E601", f"'{node.op}' is not a registered neuron "
                                            "op", "ort", label, "re-export the model with a "
                                            "registered neuron"))
                elif (domain, node.op) not in functions:
                    diags.append(Diagnostic("SNN-E603", "the neuron op has no model-local "
                                            "function", "ort", label, "run insert-neurons, "
                                            "which adds it"))
            elif domain not in ORT_DOMAINS:
                diags.append(Diagnostic("SNN-E602", f"domain '{domain}' is unknown to ONNX "
                                        "Runtime", "ort", label, "replace the node with "
                                        "standard ONNX ops"))
        diags += [Diagnostic("SNN-E604", "ReLU-like activation left in the spiking model", "ort",
                             site.label, "run relu-to-quant-clip and insert-neurons")
                  for site in activation_sites(model.graph, model.provenance)
                  if site.kind != "pattern"]
        if neurons and "snncc.schedule" not in model.metadata:
            diags.append(Diagnostic("SNN-E605", "the neuron ops were not laid out in time",
                                    "ort", "", "run schedule-timesteps (the ort lowering)"))
        return diags

    def predict(self, model: ir.Model, ctx: CompileContext, feeds: dict[str, np.ndarray],
                batch: int = 16):
        """Folded and window models: ORT with the kernel library (the model-local functions when
        it is not built), one session for all parts; per neuron layer the mean over the counted
        slices. The per-position events of every neuron node, summed over the samples, go to
        ``ctx.measured_events`` once the last part is read (for the SynOp section, so the SNN runs
        once on the held-out samples), and so do those of every MaxPool in ``ctx.event_taps``.

        The first part is one sample; the others are up to ``batch`` samples, as many as keep
        the fetched spike trains within :data:`PREDICT_BYTES` (a 224x224 ResNet-34 fetches about
        56 MB per sample at T = 4: batches of 16 took its compile's peak memory from 2.1 GB
        without the check to 7.0 GB; now 3.9 GB)."""
        sched = ctx.notes.get("schedule", {})
        if sched.get("schedule") == "streaming":
            return self._predict_streaming(model, ctx, feeds, batch)
        if sched.get("schedule") not in ("folded", "window"):
            return None
        return self._predict_parts(model, ctx, feeds, batch, int(sched["steps"]),
                                   int(sched["decode_from"]))

    @staticmethod
    def _predict_streaming(model: ir.Model, ctx: CompileContext, feeds: dict[str, np.ndarray],
                           batch: int):
        """A streaming model through its step protocol (the kernel library runs it): outputs
        only, no per-layer rows; the SynOp section measures its own events."""
        from snncc import runtime
        from snncc.simulate import run_compiled

        if not runtime.is_built():
            ctx.notes["no_snn_estimate"] = ("a streaming model runs only with the C++ kernel "
                                            "library, which is not built here")
            return None
        proto = ir.to_proto(model)
        n = len(next(iter(feeds.values())))
        out = run_compiled(proto, feeds, spike_counts=False, batch_size=batch).outputs
        return iter([(slice(0, n), next(iter(out.values())), None)])   # state outputs excluded

    def _predict_parts(self, model: ir.Model, ctx: CompileContext, feeds: dict[str, np.ndarray],
                       batch: int, steps: int, start: int):
        import onnxruntime as ort

        from snncc import runtime

        proto = ir.to_proto(model)
        # every site's activation tensor: a neuron's spike train [S*N, ...] (folded), or its
        # decoded window mean [N, ...] (window schedule: the train is renamed, the site keeps y);
        # and every neuron's own output, whose events the SynOp section counts
        produced = {o for node in proto.graph.node for o in node.output}
        layers = [name for name in ctx.quant if name in produced]
        neurons = neuron_nodes(proto)
        # the events of each neuron node, and of each MaxPool the SynOp count taps
        from snncc.analysis.synops import event_reads
        from snncc.errors import SnnccError

        try:
            reads = event_reads(neurons, ctx.event_taps, produced)
        except SnnccError:   # the SynOp section then says why
            reads = event_reads(neurons, None, produced)
        first = proto.graph.output[0].name
        fetch = list(dict.fromkeys([first, *layers, *(t for t, _, _ in reads.values())]))
        proto = ir.with_outputs(proto, fetch)
        attrs = {node.name: ir.node_attrs(node) for node in neurons}
        so = runtime.session_options() if runtime.is_built() else ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(proto.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        del proto
        n = len(next(iter(feeds.values())))
        events: dict[str, np.ndarray] = {}
        i, size = 0, 1
        while i < n:
            part = {k: v[i:i + size] for k, v in feeds.items()}
            rows = len(next(iter(part.values())))
            values = dict(zip(fetch, sess.run(fetch, part)))
            if i == 0:
                fetched = sum(v.nbytes for v in values.values())
                size = max(1, min(batch, PREDICT_BYTES // max(fetched, 1)))
            means = {}
            for name in layers:
                y = values[name]
                if y.shape[0] == steps * rows and steps > 1:
                    y = y.reshape((steps, -1) + y.shape[1:])[start:].mean(axis=0)
                means[name] = y
            for key, (tensor, node, sl) in reads.items():  # unit events, all slices, samples
                part_sum = summed_events(node, values[tensor][:, sl], attrs[node.name], rows
                                         ).sum(axis=0, keepdims=True, dtype=np.int64)
                events[key] = part_sum + events.get(key, 0)
            out = values[first]
            del values
            yield slice(i, i + rows), out, means
            i += rows
        ctx.measured_events, ctx.measured_samples = events, n

    def emit(self, model: ir.Model, ctx: CompileContext, out: Path) -> Artifact:
        diags = self.check(model, ctx)
        if diags:
            raise BackendCapabilityError("ort: the model cannot be emitted", diagnostics=diags,
                                         code=diags[0].code)
        out = Path(out)
        proto = ir.to_proto(model)
        ir.check_onnx(proto)
        ir.save(proto, out)
        ops = Counter(n.op_type for n in proto.graph.node)
        neuron_ops = sorted({n.op_type for n in proto.graph.node if n.domain == ir.SNN_DOMAIN})
        o = ctx.options
        manifest = {
            "snncc_version": snncc.__version__,
            "neuron": o.neuron,
            "timesteps": o.timesteps,
            "schedule": ctx.notes.get("schedule", {}).get("schedule", o.schedule),
            # the model-local functions implement the folded form only
            "requires_runtime_library": o.schedule == "streaming",
            "neuron_ops": neuron_ops,
            "domain": {"name": ir.SNN_DOMAIN, "version": ir.SNN_DOMAIN_VERSION},
            "runtime_library": _library_version(),
            "opset": model.opset,
            "latency_steps": ctx.notes.get("latency_steps"),
            "steps": ctx.notes.get("schedule", {}).get("steps"),
            "decode_from": ctx.notes.get("schedule", {}).get("decode_from"),
            "inputs": [i.name for i in proto.graph.input],
            "outputs": [i.name for i in proto.graph.output],
            # what the streaming protocol's caller needs, as in the model's metadata (only there
            # before): steps that only fill a pipeline, and the head left to the caller
            "pipeline_fill": int(model.metadata.get("snncc.pipeline_fill", 0)),
            # a streaming call runs this many steps on as many frames, time-major
            "steps_per_call": int(model.metadata.get("snncc.steps_per_call", 1)),
            "output_head": json.loads(model.metadata.get("snncc.output_head", "{}")),
        }
        from snncc import runtime

        if manifest["requires_runtime_library"] and not runtime.is_built():
            ctx.warnings.append(f"warning: ort: the kernel library ({runtime.library_path()}) is "
                                "not built here, and a --schedule streaming model runs only "
                                f"with it: build it with {runtime._BUILD_HINT} before running this model, or "
                                "compile with --schedule folded")
        manifest_path = out.with_name(out.name + ".json")
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        logger.info("ort: model %s: %d nodes, %d neuron ops", out.name, len(proto.graph.node),
                    sum(ops[k] for k in neuron_ops))   # written to a temporary: its name only
        report = {"nodes": len(proto.graph.node), "ops": dict(sorted(ops.items())),
                  "neuron_nodes": sum(ops[k] for k in neuron_ops), "manifest": str(manifest_path),
                  **{k: manifest[k] for k in ("neuron_ops", "latency_steps", "schedule", "steps",
                                               "decode_from", "steps_per_call")}}
        return Artifact(path=out, files=[out, manifest_path], report=report)
