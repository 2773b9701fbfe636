"""The pass manager and the one function that fixes the pass order.

Order of events for each pass: ``requires`` -> ``run`` -> (if modified) ``cleanup().toposort()``
-> structural ``verify`` (after each pass or only at the ends) -> instruments' ``after`` hooks.
Unexpected exceptions are wrapped in :class:`PassError` naming the pass and those before it;
:class:`SnnccError` subclasses (user errors) pass through untouched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.errors import PassError, SnnccError, VerificationError
from snncc.passes.base import Pass, PassResult

__all__ = ["Pipeline", "PipelineReport", "PassRow", "default_pipeline", "frontend_passes",
           "DumpAfter", "Snapshot"]


@dataclass
class PassRow:
    name: str
    modified: bool
    counts: dict[str, int]
    declines: list[dict[str, str]]
    ms: float

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.name, "changed": self.modified, "counts": self.counts,
                "declined": self.declines, "ms": round(self.ms, 3)}


@dataclass
class PipelineReport:
    rows: list[PassRow] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows]

    def format(self) -> str:
        # 'graph': whether the pass rewrote the graph (calibrate only measures: 'no')
        lines = [f"{'pass':<22} {'graph':<8} {'ms':>8}  counts / declines"]
        for r in self.rows:
            counts = ", ".join(f"{k}={v}" for k, v in r.counts.items()) or "-"
            lines.append(f"{r.name:<22} {'changed' if r.modified else 'same':<8} {r.ms:>8.1f}  "
                         f"{counts}")
            shown: dict[str, int] = {}
            for d in r.declines:  # at most SHOWN_DECLINES per code (a DenseNet listed 12 BNs)
                shown[d["code"]] = shown.get(d["code"], 0) + 1
                if shown[d["code"]] <= SHOWN_DECLINES:
                    lines.append(f"{'':<41}declined {d['node']}: [{d['code']}] {d['reason']}")
            for code, n in shown.items():
                if n > SHOWN_DECLINES:
                    lines.append(f"{'':<41}... and {n - SHOWN_DECLINES} more [{code}] "
                                 "(every one in the --report JSON)")
        return "\n".join(lines)


Instrument = Callable[[Pass, ir.Model, CompileContext], None]

#: declines of one code the pass table prints before "... and N more"
SHOWN_DECLINES = 3


class Snapshot:
    """Instrument that keeps the serialized graph after the named passes (``"all"``: every one)."""

    def __init__(self, names: Sequence[str]):
        self.names = set(names)
        self.graphs: dict[str, bytes] = {}

    def __call__(self, pass_: Pass, model: ir.Model, ctx: CompileContext) -> None:
        if pass_.name in self.names or "all" in self.names:
            self.graphs[pass_.name] = ir.to_proto(model).SerializeToString()

    def proto(self, name: str) -> "onnx.ModelProto":
        import onnx

        return onnx.load_from_string(self.graphs[name])


class DumpAfter(Snapshot):
    """Instrument backing ``--dump-after PASS``: keeps the graph after the named passes.

    The graphs are held in memory and written by :meth:`write` (the driver calls it once the
    compile succeeded), so a failed compile leaves no dump folder behind.
    """

    def __init__(self, names: Sequence[str], directory: str | Path):
        super().__init__(names)
        self.directory = Path(directory)

    def write(self) -> list[Path]:
        from snncc.outputs import atomic_dir

        with atomic_dir(self.directory) as tmp:
            for name, data in self.graphs.items():
                (tmp / f"after-{name}.onnx").write_bytes(data)
        return [self.directory / f"after-{name}.onnx" for name in self.graphs]


class Pipeline:
    def __init__(self, passes: Sequence[Pass], *, verify: str = "ends",
                 instruments: Sequence[Instrument] = (), progress: Callable | None = None):
        if verify not in ("off", "ends", "each"):
            raise ValueError(f"verify must be off|ends|each, not {verify!r}")
        self.passes = list(passes)
        self.verify = verify
        self.instruments = list(instruments)
        self.progress = progress

    @staticmethod
    def _verify(model: ir.Model, after: str) -> None:
        diags = ir.verify(model.graph)
        if diags:
            raise VerificationError(f"graph is malformed after '{after}'", diagnostics=diags)

    def run(self, model: ir.Model, ctx: CompileContext) -> PipelineReport:
        report = PipelineReport()
        done: list[str] = []
        # canonicalize checks raw models itself, with clearer messages (dangling inputs, cycles)
        if self.verify != "off" and not (self.passes and self.passes[0].name == "canonicalize"):
            self._verify(model, "load")
        for i, p in enumerate(self.passes):
            if self.progress:
                self.progress(p.name)
            start = time.perf_counter()
            try:
                p.requires(model, ctx)
                result: PassResult = p.run(model, ctx)
                if result.modified:
                    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            except SnnccError:
                raise
            except Exception as exc:
                raise PassError(p.name, done, exc) from exc
            ms = (time.perf_counter() - start) * 1e3
            last = i == len(self.passes) - 1
            if self.verify == "each" or (self.verify == "ends" and last):
                self._verify(model, p.name)
            for inst in self.instruments:
                inst(p, model, ctx)
            report.rows.append(PassRow(p.name, result.modified, dict(result.counts),
                                       [d.to_json() for d in result.declines], ms))
            done.append(p.name)
        return report


def frontend_passes(options: CompileOptions, *, rehearse: bool = False) -> list[Pass]:
    """The target-independent passes, in their fixed order (``rehearse``: placeholder lambda)."""
    from snncc.passes.calibrate import CalibratePass
    from snncc.passes.canonicalize import CanonicalizePass
    from snncc.passes.fold_batchnorm import FoldBatchNormPass
    from snncc.passes.pool_first import PoolFirstPass
    from snncc.passes.relu_to_quant_clip import ReluToQuantClipPass

    return [CanonicalizePass(), PoolFirstPass(), CalibratePass(placeholder=rehearse),
            FoldBatchNormPass(), ReluToQuantClipPass()]


def default_pipeline(options: CompileOptions, *, rehearse: bool = False,
                     **kwargs: Any) -> Pipeline:
    """The one place that fixes the pass order for a target.

    canonicalize -> pool-first -> calibrate -> fold-batchnorm -> relu-to-quant-clip
    [-> insert-neurons -> the backend's lowering passes, e.g. schedule-timesteps for ort].
    ``calibrate`` changes no node: it fills ``ctx.quant`` with (lambda, L) per activation site, from
    QCFS patterns already in the graph or from calibration data, because fold-batchnorm's bias
    shift needs lambda before relu-to-quant-clip runs. ``rehearse=True`` calibrates with a
    placeholder lambda (no data), so that every structural error surfaces in milliseconds.
    """
    passes = frontend_passes(options, rehearse=rehearse)
    if options.target != "qann":
        from snncc.backends.registry import get_backend
        from snncc.passes.insert_neurons import InsertNeuronsPass

        passes.append(InsertNeuronsPass())
        passes.extend(get_backend(options.target).lowering_passes(options))
    return Pipeline(passes, **kwargs)
