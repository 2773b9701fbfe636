"""relu-to-quant-clip: replace each ReLU / ReLU6 by the QCFS quantized clip of its site.

Before::   z -> Relu -> y            (or z -> Clip(0, max) -> y)
After::    z -> Mul(k) -> Add(phi) -> Floor -> Clip(0, L) -> Mul(s) -> y

with ``y = lam * clip(floor(z*L/lam + phi)/L, 0, 1)``, ``k = L/lam``, ``s = lam/L`` in float32
(:func:`snncc.passes.quant_clip.emit_quant_clip`; the Add is omitted when ``phi == 0``, i.e. after
the bias shift). ``(lam, L, phi)`` come from ``ctx.quant[y]``, filled by ``calibrate`` (and
updated by ``fold-batchnorm``'s bias shift). For a ``Clip(0, max)`` site the clip bound is not
re-applied: calibration already caps ``lam`` at ``max``, so the quantized output stays <= max.

QCFS patterns already in the graph stay as they are (count ``pattern_kept``); their parameters are
recorded in ``ctx.quant`` when missing. Any other op is left alone.

Precondition: every ReLU / Clip(0, max) site has parameters in ``ctx.quant``; otherwise one
:class:`PreconditionError` (SNN-E220) lists all sites without them.

Counts: ``relu_replaced``, ``clip_replaced``, ``pattern_kept``.
"""
from __future__ import annotations

from snncc import ir
from snncc.context import CompileContext
from snncc.errors import Diagnostic, PreconditionError
from snncc.passes.base import Pass, PassResult
from snncc.passes.quant_clip import activation_sites, emit_quant_clip

__all__ = ["ReluToQuantClipPass"]


class ReluToQuantClipPass(Pass):
    name = "relu-to-quant-clip"

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        graph = model.graph
        sites = activation_sites(graph, model.provenance)
        missing = [s for s in sites if s.kind != "pattern" and s.y.name not in ctx.quant]
        if missing:
            raise PreconditionError(
                f"{self.name}: {len(missing)} activation(s) have no quantization parameters",
                code="SNN-E220",
                diagnostics=[Diagnostic("SNN-E220", f"no (lambda, L) for output '{s.y.name}'",
                                        pass_name=self.name, node=s.label,
                                        hint="run the calibrate pass first (pass --calib FILE)")
                             for s in missing],
                hint="run calibrate before relu-to-quant-clip")
        counts = {"relu_replaced": 0, "clip_replaced": 0, "pattern_kept": 0}
        for site in sites:
            if site.kind == "pattern":
                ctx.quant.setdefault(site.y.name, site.params)
                counts["pattern_kept"] += 1
                continue
            (node,) = site.nodes
            node.inputs.clear()
            node.outputs.clear()
            emit_quant_clip(graph, site.z, site.y, ctx.quant[site.y.name], prefix=self.name)
            counts[f"{site.kind}_replaced"] += 1
            ctx.logger.debug("%s: %s -> quant clip", self.name, site.label)
        modified = counts["relu_replaced"] + counts["clip_replaced"] > 0
        return PassResult(modified=modified, counts=counts)
