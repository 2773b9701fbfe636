"""The Loihi 2 backend: netlist + fixed point + core mapping + NetX export.

``check`` lowers, quantizes and maps the model in memory and returns every problem as a
diagnostic before anything is written; ``emit`` writes into the (driver-managed, atomic) output
directory:

* ``netlist.json`` + ``netlist.npz``: the versioned netlist (docs/netlist.md);
* ``cores.json``: the core mapping (cores used, lower bound, per-core utilisation);
* ``synops.json``: per group neurons, synapses and fan-out per spike; with calibration samples
  also the spikes, SynOps and energy per inference measured by the simulator, and the ANN's MACs
  and energy (:func:`snncc.analysis.synops.synops_section`);
* ``network.net``: the NetX HDF5 file of the sequential prefix NetX can load; what it cannot
  express is listed in ``netlist.json`` ``meta.netx`` and in the artifact report.

Reset semantics: the netlist keeps each neuron's own rule (soft reset for IF/GN/MT/SRP/LIF), to be
run by a Loihi 2 microcoded neuron; stock Loihi neurons reset to zero and fire on ``v > vth``.
Both are simulated (``simulator.run_netlist(..., semantics=...)``) and the report shows both
accuracies; the artifact report says which groups differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from snncc import input_range, ir
from snncc.analysis.synops import (artifact_sample_count, format_synops_line, loihi_samples,
                                   synops_section)
from snncc.backends.base import Artifact, Backend
from snncc.backends.loihi import netlist as nl
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.mapping import CoreLimits, dense_fanin_problems, map_cores
from snncc.backends.loihi.netx import write_netx
from snncc.backends.loihi.quantize import FixedPoint, quantize
from snncc.backends.loihi.simulator import saturation_message, simulate
from snncc.context import CompileContext
from snncc.errors import BackendCapabilityError, Diagnostic, SnnccError

__all__ = ["LoihiBackend"]

#: warn when more than this fraction of a block's nonzero weights round to a zero mantissa
#: (a healthy 3136 x 128 dense layer of the bundled MNIST CNN: 38 %; the dead-channel bug: 66-98 %)
ZEROED_WARN = 0.6
RESET_NOTE = ("soft reset / >= comparison emulated by a Loihi 2 microcoded neuron; stock Loihi "
              "neurons reset to 0 and fire on v > vth: simulate with semantics='hardware' and "
              "compare the accuracies")


@dataclass
class _Prepared:
    net: nl.Netlist | None
    mapping: dict[str, Any] | None
    diagnostics: list[Diagnostic]


def _soft_reset(group: nl.Group) -> bool:
    """A neuron group whose reset subtracts (IF, LIF, GN, SRP, bit-serial: "subtract"; MT:
    "soft"), which stock Loihi neurons (reset to 0) only emulate: MT had been left out of
    ``reset.emulated_soft_reset``."""
    return group.fixed.get("reset", "subtract") in ("subtract", "soft")


def _metadata(model: ir.Model | onnx.ModelProto) -> dict[str, str]:
    """Model-level metadata of an IR model or (the Python API's emit) an ONNX proto."""
    if isinstance(model, onnx.ModelProto):
        return {p.key: p.value for p in model.metadata_props}
    return dict(getattr(model, "metadata", {}) or {})


class LoihiBackend(Backend):
    name = "loihi"
    output_kind = "dir"
    output_names = ("netlist.json", "netlist.npz", "network.net", "cores.json", "synops.json")

    def __init__(self, fixed_point: FixedPoint = FixedPoint(),
                 limits: CoreLimits = CoreLimits()):
        self.fixed_point = fixed_point
        self.limits = limits
        self._cache: tuple[Any, Any, _Prepared] | None = None

    def _prepare(self, model: ir.Model | onnx.ModelProto, ctx: CompileContext) -> _Prepared:
        key = (model, ctx.options)  # the model object itself: an id() could be reused
        if self._cache is not None and self._cache[0] is model and self._cache[1] == ctx.options:
            return self._cache[2]
        proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
        try:
            net = lower(proto, ctx.options.timesteps, ctx.options.maxpool)
        except SnnccError as exc:
            diags = list(exc.diagnostics) or [Diagnostic(exc.code, exc.message, hint=exc.hint)]
            prepared = _Prepared(None, None, diags)
        else:
            ranges = input_range.parse(_metadata(model).get(input_range.METADATA_KEY))
            tops = [r["max_abs"] for r in ranges.values() if "max_abs" in r]
            _, qdiags = quantize(net, self.fixed_point, input_max=max(tops) if tops else None)
            if not qdiags:
                _readout_peaks(net, ctx)
            mapping, mdiags = map_cores(net, self.limits)
            prepared = _Prepared(net, mapping, qdiags + mdiags)
        self._cache = (*key, prepared)
        return prepared

    def check(self, model: ir.Model, ctx: CompileContext) -> list[Diagnostic]:
        return list(self._prepare(model, ctx).diagnostics)

    def precheck(self, model: ir.Model, ctx: CompileContext) -> list[Diagnostic]:
        """Lowering (ops, attributes, shapes: SNN-E27x) and the dense fan-in a core cannot take
        (SNN-E640), both structural; fixed point and the rest of the core mapping depend on the
        calibrated lambda and run in :meth:`check`."""
        try:
            net = lower(ir.to_proto(model), ctx.options.timesteps, ctx.options.maxpool)
        except SnnccError as exc:
            return list(exc.diagnostics) or [Diagnostic(exc.code, exc.message, hint=exc.hint)]
        return dense_fanin_problems(net, self.limits)

    def predict(self, model: ir.Model, ctx: CompileContext, feeds: dict):
        """The bit-accurate simulator (emulated soft reset), for the fidelity estimate."""
        prepared = self._prepare(model, ctx)
        if prepared.net is None or len(feeds) != 1:
            return None
        x = next(iter(feeds.values()))
        outputs, _ = _simulate(prepared.net, x, ctx)
        return iter([(slice(0, len(x)), next(iter(outputs.values())), None)])

    def predict_variants(self, model: ir.Model, ctx: CompileContext, feeds: dict):
        """Stock Loihi semantics (reset to 0, fire on ``>``, bit-accurate to Lava's CUBA, as
        real Lava runs ``network.net``) where the netlist emulates a soft reset: on the MNIST CNN
        (IF) real Lava gave 35 % at T = 3 while the emulated netlist gave 98 %. Its saturation
        count goes into the variant (``simulate`` itself does not warn; ``run_netlist`` does)."""
        from snncc.backends.loihi.netx import netx_exportable
        from snncc.backends.loihi.simulator import simulate

        prepared = self._prepare(model, ctx)
        net = prepared.net
        if net is None or len(feeds) != 1 or not any(
                g.kind == "neuron" and netx_exportable(g)
                and _soft_reset(g) for g in net.groups):
            return {}
        res = simulate(net, next(iter(feeds.values())), semantics="hardware")   # no warning
        return {"stock_loihi": {
            "what": "stock Loihi neurons (reset to 0, fire on >: what real Lava computes from "
                    "network.net)",
            "outputs": next(iter(res.outputs.values())), "saturations": int(res.saturations),
            "advice": "the main estimate is for the netlist's soft-reset neurons, which need a "
                      "Loihi 2 microcoded neuron. What stock neurons lose depends strongly on T: "
                      "compile other -T values and compare with snncc run DIR --semantics "
                      "hardware"}}

    def emit(self, model: ir.Model, ctx: CompileContext, out: Path) -> Artifact:
        prepared = self._prepare(model, ctx)
        if prepared.diagnostics:
            raise BackendCapabilityError("loihi: the model cannot be emitted",
                                         diagnostics=prepared.diagnostics,
                                         code=sorted({d.code for d in prepared.diagnostics})[0])
        net, mapping = prepared.net, prepared.mapping
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        soft = sorted({g.neuron for g in net.groups if g.kind == "neuron" and _soft_reset(g)})
        netx = write_netx(net, out / "network.net")
        net.meta.update(
            netx=netx, reset={"emulated_soft_reset": soft, "note": RESET_NOTE if soft else ""},
            mapping={k: mapping[k] for k in ("cores_used", "lower_bound", "ratio_to_bound")},
            core_limits=self.limits.to_json(),
            calibration_inputs=input_range.parse(_metadata(model).get(input_range.METADATA_KEY)))
        files = nl.save(net, out)
        cores = out / "cores.json"
        cores.write_text(_dumps(mapping))
        files += [cores] + ([out / "network.net"] if netx["path"] else [])
        netx_text = netx["reason"] or (f"network.net: {len(netx['layers'])} layers, input "
                                       f"round(x * 2**{netx['input_frac_bits']})")
        if not netx["path"]:  # never a stub: no layer NetX can run, no file
            ctx.warnings.append(f"warning: loihi: {netx['reason']}")
        elif netx["not_exported"]:   # a prefix only: say so where the user looks
            stop, total = netx["not_exported"][0], len(netx["layers"]) + len(netx["not_exported"])
            netx_text = (f"network.net: {len(netx['layers'])} of {total} layers (a sequential "
                         f"prefix), input round(x * 2**{netx['input_frac_bits']})")
            ctx.warnings.append(
                f"warning: loihi: network.net holds the first {len(netx['layers'])} of {total} "
                f"layers: '{stop['group']}' {stop['reason']}; the netlist and snncc run hold "
                "the whole network")
        lost = [w for w in net.meta["quantization"]["weights"]
                if w["nonzero"] and w["zeroed"] > ZEROED_WARN * w["nonzero"]]
        dead = [w for w in lost if w["zeroed"] == w["nonzero"]]
        if dead:   # no shared exponent to blame: even the largest weight is below one step
            ctx.warnings.append(
                "warning: loihi: " + "; ".join(f"block {w['block']} rounds all {w['nonzero']} "
                                               "of its weights to 0" for w in dead[:3])
                + (f" (and {len(dead) - 3} more blocks)" if len(dead) > 3 else "")
                + ": even its largest weight, in the layer's fixed point, is below one integer "
                "step (exponents cannot go below 0), so the layer gets no current and never "
                "spikes (e.g. an average pool over a large window folded into it); use --target "
                "ort, which keeps float weights")
            lost = [w for w in lost if w not in dead]
        if lost:   # one large weight sets a block's shared exponent; the small ones round to 0
            ctx.warnings.append(
                "warning: loihi: " + "; ".join(f"block {w['block']} rounds {w['zeroed']} of its "
                                               f"{w['nonzero']} weights to 0" for w in lost[:3])
                + (f" (and {len(lost) - 3} more blocks)" if len(lost) > 3 else "")
                + ": their 8-bit mantissas share one exponent per block, set by its largest "
                "weight (often one channel with a much smaller threshold than the others); "
                "the fidelity line measures what it costs; --per-layer (one threshold per "
                "layer) may keep more weights but calibrates less closely, so compare the two "
                "lines; the layer's calibration is in netlist.json meta.quantization")
        synops = self._synops(net, mapping, ctx)
        (out / "synops.json").write_text(_dumps(synops))
        files.append(out / "synops.json")
        quant = net.meta["quantization"]
        report = {
            "cores_used": mapping["cores_used"], "lower_bound": mapping["lower_bound"],
            "ratio_to_bound": mapping["ratio_to_bound"],
            "quantization_exact": quant["all_exact"],
            "max_weight_rel_err": max((w["max_rel_err"] for w in quant["weights"]), default=0.0),
            # the relative error is against each block's largest weight: it hides weights that
            # round to 0 (94 % of a block read as max_weight_rel_err=0.0073)
            "zeroed_weights": f"{sum(w['zeroed'] for w in quant['weights'])} of "
                              f"{sum(w['nonzero'] for w in quant['weights'])}",
            "input_frac_bits": quant["fixed_point"]["input_frac_bits"],
            "netx_layers": netx["layers"], "netx_not_exported": netx["not_exported"],
            "netx_notes": netx["notes"], "netx": netx_text, "reset": net.meta["reset"],
            "groups": len(net.groups), "blocks": len(net.blocks),
            "steps": net.total_steps, "counted_steps": net.counted_steps,
            "synops": format_synops_line(synops)}
        ctx.notes["loihi"] = report
        return Artifact(path=out, files=files, report=report, synops=synops)

    @staticmethod
    def _synops(net: nl.Netlist, mapping: dict[str, Any], ctx: CompileContext) -> dict[str, Any]:
        """``synops.json``: the static structure always; with calibration samples also the
        spikes, SynOps and energy measured by the bit-accurate simulator (emulated semantics, the
        neurons' own rules) on up to ``ARTIFACT_SAMPLES`` of the held-out samples, as the ORT
        target measures, else of the calibration samples (fewer for big networks,
        :func:`snncc.analysis.synops.artifact_sample_count`)."""
        path = ctx.options.calib_path
        if not path:
            return synops_section(net, timesteps=ctx.options.timesteps)
        inp = net.groups[0]
        if ctx.holdout and len(ctx.holdout) == 1:   # the samples the fidelity estimate scores
            x, which = next(iter(ctx.holdout.values())), "held-out"
        else:   # (the ORT target had measured on these, the Loihi one on calibrated ones)
            x, which = loihi_samples(path, inp.name, inp.shape, mean=ctx.options.calib_mean,
                                     std=ctx.options.calib_std), "calibration"
        x = x[:artifact_sample_count(net.ann_macs, net.total_steps, len(x))]
        _, events = _simulate(net, x, ctx)
        # the netlist (and network.net) sends the analog input as graded payloads every step,
        # so its first synapses work at every step, not once as in the ORT schedule
        return synops_section(net, events, mapping=mapping, timesteps=ctx.options.timesteps,
                              analog_once=False,
                              source="loihi netlist simulator (emulated semantics), "
                                     f"{len(x)} {which} samples")


def _readout_peaks(net: nl.Netlist, ctx: CompileContext) -> None:
    """Each readout's largest |voltage| (state integers) on up to 64 calibration samples (fewer
    for big nets, as synops.json), kept as
    ``fixed["peak_state"]``: its NetX unit (network.net and the hardware semantics) is sized so
    that Lava's 24-bit voltage holds it with headroom (``netx.netx_params``). Without samples
    the unit stays the finest one (the voltage is then unchecked)."""
    from snncc.analysis.synops import artifact_sample_count, loihi_samples

    if not ctx.options.calib_path or not any(g.kind == "readout" for g in net.groups):
        return
    inp = net.groups[0]
    x = loihi_samples(ctx.options.calib_path, inp.name, inp.shape, mean=ctx.options.calib_mean,
                      std=ctx.options.calib_std)
    x = x[:artifact_sample_count(net.ann_macs, net.total_steps, len(x))]
    for name, peak in simulate(net, x).readout_peaks.items():
        net.group(name).fixed["peak_state"] = peak


def _simulate(net: nl.Netlist, x, ctx: CompileContext):
    """The emulated run of the compile's own checks; a saturation warning goes to the compile's
    warnings once (not to the log: library users read CompileResult.warnings)."""
    res = simulate(net, x)
    message = saturation_message(res)
    if message and not any("membrane updates saturated at" in w for w in ctx.warnings):
        ctx.warnings.append(f"warning: {message}")
    return res.outputs, res.events


def _dumps(value: Any) -> str:
    import json
    return json.dumps(value, indent=1)
