"""The NIR backend (``--target nir``): one ``.nir`` file (HDF5, written by ``nir.write``).

``check`` builds the whole NIR graph in memory and returns every problem as a diagnostic before
anything is written (:mod:`snncc.backends.nir.export` gives the mapping):

* SNN-E690: the network has soft-reset neurons (every IF and LIF of snncc); NIR's IF/LIF reset
  to ``v_reset`` and have no reset by subtraction, so the export is lossy. Refused unless
  ``--allow-lossy``; then the artifact report and the file's metadata carry the note.
* SNN-E691: graded neurons (gn, mt, bitserial, srp): NIR has no multi-level spikes.
* SNN-E692 / SNN-E693: an op / an attribute with no NIR form (residual Add, Concat, MaxPool,
  asymmetric pads, ...), all listed at once.
* SNN-E694: the ``nir`` package is not installed.

The file reads back with ``nir.read`` and runs in NIR importers; ``emit`` reads it back
before it returns, so a file that ``nir.read`` rejects is never left in place.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from snncc import input_range, ir
from snncc.backends.base import Artifact, Backend
from snncc.backends.nir.export import ExportResult, build_graph, lossy_notes
from snncc.context import CompileContext
from snncc.errors import BackendCapabilityError, Diagnostic

__all__ = ["NirBackend"]

PASS = "nir-export"
VIEW_NOTE = ("a 1-D net exported on its (C, L, 1) view: feed each [C, L] sample as [C, L, 1] "
             "(x[..., None]); snncc run does this itself")


class NirBackend(Backend):
    name = "nir"
    output_kind = "file"
    fidelity_subject = "NIR network (reset to 0)"

    def __init__(self):
        self._cache: tuple[Any, Any, tuple[ExportResult | None, list[Diagnostic]]] | None = None

    def _build(self, model: ir.Model | onnx.ModelProto, ctx: CompileContext):
        # keyed on the model object itself (held, so its id cannot be reused by another one)
        if self._cache is not None and self._cache[0] is model and self._cache[1] == ctx.options:
            return self._cache[2]
        key = (model, ctx.options)
        try:
            import nir  # noqa: F401
        except ImportError:
            result = (None, [Diagnostic("SNN-E694", "the 'nir' package is not installed", PASS,
                                        "", "pip install nir")])
            self._cache = (*key, result)
            return result
        proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
        res, diags = build_graph(proto, ctx.options.timesteps, ctx.options.maxpool)
        lossy = lossy_notes(proto)
        if not getattr(ctx.options, "allow_lossy", False):
            for key_, notes in sorted(lossy.items()):
                if not notes:
                    continue
                more = f" (also: {'; '.join(notes[1:])})" if notes[1:] else ""
                diags.append(Diagnostic(
                    "SNN-E690", f"neuron '{key_}' resets by subtraction (soft reset), but NIR's "
                    f"IF/LIF reset to v_reset: the NIR network would not be the compiled "
                    f"one{more}", PASS, "", "pass --allow-lossy to export anyway (the report "
                    "records the difference), or use --target ort for the exact network (or loihi: its "
                    "netlist keeps the soft reset, its network.net resets to zero like NIR)"))
        result = (res, diags)
        self._cache = (*key, result)
        return result

    def check(self, model: ir.Model, ctx: CompileContext) -> list[Diagnostic]:
        return list(self._build(model, ctx)[1])

    def predict(self, model: ir.Model, ctx: CompileContext, feeds: dict):
        """What a NIR consumer computes (NIR's reset-to-zero neurons, dt = 1), for the
        compile-time fidelity estimate; None when the model cannot be exported."""
        from snncc.backends.nir.simulate import run_graph

        res, diags = self._build(model, ctx)
        if res is None or diags or len(feeds) != 1:
            return None
        x = next(iter(feeds.values()))
        outputs = run_graph(res.graph, x[..., None] if res.input_view else x,
                            ctx.options.timesteps)
        return iter([(slice(0, len(x)), next(iter(outputs.values())).astype(np.float32), None)])

    def emit(self, model: ir.Model, ctx: CompileContext, out: Path) -> Artifact:
        import nir

        res, diags = self._build(model, ctx)
        if diags or res is None:
            raise BackendCapabilityError("nir: the model cannot be emitted", diagnostics=diags,
                                         code=diags[0].code)   # the first in graph order: the cause
        proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
        lossy = {k: v for k, v in lossy_notes(proto).items() if v}
        notes = [f"{k}: {n}" for k, v in sorted(lossy.items()) for n in v] + list(res.notes)
        res.graph.metadata = {"producer": "snncc", "timesteps": int(ctx.options.timesteps),
                              "dt": 1.0, "lossy": "; ".join(notes) or "none"}
        if res.input_view:   # a 1-D net on its (C, L, 1) view: what a user feeds
            res.graph.metadata["input_view"] = VIEW_NOTE
        meta = {p.key: p.value for p in proto.metadata_props}
        if input_range.METADATA_KEY in meta:   # the scale to feed it on (mean, std, max_abs)
            res.graph.metadata["calibration_inputs"] = meta[input_range.METADATA_KEY]
        out = Path(out)
        # HDF5 is built in memory and written by Python: h5py writing the file itself had
        # crashed the process (a segfault after a dozen tracebacks) on a full disk
        buffer = io.BytesIO()
        nir.write(buffer, res.graph)
        out.write_bytes(buffer.getvalue())
        back = nir.read(out)                 # the real reader must accept what we wrote
        kinds: dict[str, int] = {}
        for node in back.nodes.values():
            kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
        report = {"nodes": len(back.nodes), "edges": len(back.edges), "node_types": kinds,
                  "neurons": res.neurons, "timesteps": ctx.options.timesteps,
                  "lossy": bool(lossy), "lossy_notes": notes,
                  **({"input_view": VIEW_NOTE} if res.input_view else {}),
                  "semantics": "discrete time, dt = 1: each step feeds the analog input "
                               "again; the output is the mean over the steps"}
        ctx.notes["nir"] = {"nodes": len(back.nodes), "lossy": bool(lossy),
                            **({"note": "lossy export (--allow-lossy): " + notes[0]}
                               if notes else {})}
        # a NIR simulator's neurons (reset to v_reset, fire on >) spike otherwise than the
        # compiled network, and each simulator differently: ORT's counts would not describe them
        synops = {"available": False,
                  "reason": "[SNN-E695] nir-export: a NIR file's spikes depend on the simulator "
                            "that runs it (its neurons reset to v_reset): no SynOp count. "
                            "Hint: compile with --target ort or loihi for SynOps and energy"}
        return Artifact(path=out, files=[out], report=report, synops=synops)
