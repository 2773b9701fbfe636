"""calibrate: fill ``ctx.quant`` with ``(lam, L, phi)`` for every activation site; changes no node.

Sites (:func:`snncc.passes.quant_clip.activation_sites`): QCFS patterns, ReLU nodes and
Clip(0, max) nodes. Keys are the site's OUTPUT tensor name.

* A QCFS pattern already carries its parameters: ``ctx.quant[y]`` is read from it (source
  ``pattern``), no data needed.
* Every other site needs data: ``options.calib_path`` (.npy / .npz, see
  :mod:`snncc.calibration`), at most ``options.calib_max_samples`` samples. ORT runs a copy of the
  graph with every site's INPUT ``z`` added as an output; lambda is chosen per layer, or per
  channel (axis 1) with ``options.calib_per_channel``, by ``options.calib_method``
  (``max`` | ``percentile`` with ``options.calib_percentile`` | ``mse``). For a Clip(0, max)
  site lambda is capped at ``max``. ``L = options.levels`` (8 when None), ``phi = 0.5``.

``ctx.calibration[y]`` records per site: ``min``, ``max`` (of z), ``lam``, ``levels``, ``method``,
``samples`` (values seen) and ``subsampled`` (percentile/mse used a bounded subsample).

Errors: no data while some site is not a QCFS pattern -> :class:`CalibrationError` SNN-E401 listing
the sites; bad files -> SNN-E402..E410 (see :func:`snncc.calibration.load_samples`); unknown
method or percentile -> SNN-E411; ORT failure -> SNN-E412.

Counts: ``from_pattern``, ``calibrated``.

``placeholder=True`` (the driver's rehearsal, which runs the whole pipeline and the backend's
capability check before spending time on calibration) sets ``lam = 1`` for every site needing data
and reads no file.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from snncc import calibration, input_range, ir
from snncc.context import CompileContext, QuantClipParams
from snncc.errors import CalibrationError
from snncc.passes.base import Pass, PassResult
from snncc.passes.quant_clip import activation_sites

__all__ = ["CalibratePass", "METHODS", "split_holdout"]

DEFAULT_LEVELS = 8
#: ``snn``: per-channel/per-layer MSE start, then the SNN-aware walk (snncc.snn_calibration)
METHODS = (*calibration.METHODS, "snn")
#: fewest samples calibration keeps when held-out samples are taken for the fidelity estimate
MIN_CALIB_SAMPLES = 32


def split_holdout(samples: dict[str, np.ndarray], holdout: int, limit: int | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(calibration samples, held-out samples or None): the last ``holdout`` samples are held
    out as long as ``min(MIN_CALIB_SAMPLES, limit)`` remain to calibrate (else fewer are held
    out); calibration uses at most ``limit`` samples."""
    n = len(next(iter(samples.values())))
    limit = n if limit is None else limit
    k = min(holdout, n - min(MIN_CALIB_SAMPLES, limit))
    if holdout <= 0 or k < 1:
        return {name: a[:limit] for name, a in samples.items()}, None
    keep = min(limit, n - k)
    return ({name: a[:keep] for name, a in samples.items()},
            {name: a[n - k:] for name, a in samples.items()})


def _sample_warnings(options, available: int, used: int,
                     holdout: dict[str, np.ndarray] | None) -> list[str]:
    """What the user should know about the sample counts: too few to calibrate well, no
    fidelity estimate, or fewer held out than asked for."""
    out = []
    if used < MIN_CALIB_SAMPLES:
        out.append(f"warning: calibrating on {used} sample(s); lambda and bias are noisy below "
                   f"{MIN_CALIB_SAMPLES} (256 is the default; give more samples in --calib)")
    if options.wants_fidelity:
        held = 0 if holdout is None else len(next(iter(holdout.values())))
        if held == 0:
            out.append(f"warning: no fidelity estimate: the calibration file has {available} "
                       f"sample(s), and {MIN_CALIB_SAMPLES} must stay to calibrate (give at "
                       f"least {MIN_CALIB_SAMPLES + 32} samples, or --no-fidelity)")
        elif options.fidelity_samples is not None and held < options.fidelity_samples:
            out.append(f"warning: held out {held} of the {options.fidelity_samples} fidelity "
                       f"samples asked for ({available} in the file, {used} kept to calibrate)")
    return out


class CalibratePass(Pass):
    """``progress``: tqdm bar (None = only on a terminal); ``batch_size`` for dynamic batch axes;
    ``max_values``: per-site sample budget of percentile/mse."""

    name = "calibrate"

    def __init__(self, *, progress: bool | None = None, batch_size: int = 8,
                 max_values: int = 1 << 20, seed: int = 0, placeholder: bool = False):
        self.progress, self.batch_size, self.max_values, self.seed = (progress, batch_size,
                                                                      max_values, seed)
        self.placeholder = placeholder

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        options = ctx.options
        levels = options.levels or DEFAULT_LEVELS
        records = ctx.calibration if isinstance(ctx.calibration, dict) else {}
        sites = activation_sites(model.graph, model.provenance)
        need = [s for s in sites if s.kind != "pattern"]
        if not need and options.calib_path and not self.placeholder:
            # no calibration needed: all samples may measure fidelity, and they still give the
            # input range (a QCFS graph's Loihi relay on the input had been bounded by the whole
            # payload, E634, with --calib given)
            proto = ir.to_proto(model)
            samples = calibration.load_samples(
                options.calib_path, calibration.model_inputs(proto),
                max_samples=options.fidelity_max if options.wants_fidelity else
                options.calib_max_samples, mean=options.calib_mean, std=options.calib_std)
            model.metadata[input_range.METADATA_KEY] = json.dumps(input_range.summarize(samples))
            if options.wants_fidelity:
                ctx.holdout = samples
        for site in sites:
            if site.kind == "pattern":
                ctx.quant[site.y.name] = site.params
                records[site.y.name] = {"method": "pattern", "lam": site.params.lam.tolist(),
                                        "levels": site.params.levels}
        if need and self.placeholder:  # a rehearsal of the pipeline: any valid lambda will do
            for site in need:
                ctx.quant[site.y.name] = QuantClipParams(lam=np.float32(1.0), levels=levels)
            return PassResult(modified=False, counts={"placeholder": len(need)})
        if need:
            if not options.calib_path:
                names = [s.nodes[0].name or s.y.name for s in need[:3]]
                more = f" and {len(need) - 3} more" if len(need) > 3 else ""
                raise CalibrationError(
                    f"{self.name}: {len(need)} activation(s) need calibration data to choose "
                    f"their clipping level lambda ({', '.join(map(repr, names))}{more})",
                    code="SNN-E401",
                    hint="pass --calib FILE, a .npy (or .npz keyed by input name) holding about "
                    "256 input samples preprocessed as for inference, e.g. "
                    "numpy.save('calib.npy', x_train[:256]); or compile a QCFS-trained graph "
                    "(snncc finetune), which carries lambda")
            if options.calib_method not in METHODS:
                raise CalibrationError(
                    f"{self.name}: unknown calibration method '{options.calib_method}'; "
                    f"accepted: {', '.join(METHODS)}", code="SNN-E411",
                    hint="pass --calib-method " + "|".join(METHODS))
            proto = ir.to_proto(model)
            samples = calibration.load_samples(
                options.calib_path, calibration.model_inputs(proto),
                max_samples=options.calib_max_samples + options.fidelity_max,
                mean=options.calib_mean, std=options.calib_std)
            available = len(next(iter(samples.values())))
            holdout = options.fidelity_holdout(available)
            samples, ctx.holdout = split_holdout(samples, holdout, options.calib_max_samples)
            used = len(next(iter(samples.values())))
            ctx.notes["calibration_samples"] = used
            model.metadata[input_range.METADATA_KEY] = json.dumps(input_range.summarize(samples))
            ctx.warnings += _sample_warnings(options, available, used, ctx.holdout)
            names = list(dict.fromkeys(s.z.name for s in need))
            with np.errstate(over="ignore", invalid="ignore"):   # E414 says it, not numpy
                self._calibrate(proto, need, names, samples, ctx, records, levels)
        ctx.calibration = records
        return PassResult(modified=False, counts={"from_pattern": len(sites) - len(need),
                                                  "calibrated": len(need)})

    def _calibrate(self, proto, need, names, samples, ctx: CompileContext, records,
                   levels: int) -> None:
        """λ per site by the chosen method, then the SNN-aware walk (``--calib-method snn``);
        SNN-E414 where a value is not finite."""
        options = ctx.options
        stats = calibration.collect_statistics(
            proto, names, samples, per_channel=options.calib_per_channel is not False,
            batch_size=self.batch_size, max_values=self.max_values, progress=self.progress,
            seed=self.seed)
        method = "mse" if options.calib_method == "snn" else options.calib_method
        for site in need:
            st = stats[site.z.name]
            lam = calibration.choose_lambda(st, method, levels=levels,
                                            percentile=options.calib_percentile)
            if site.clip_max is not None:
                lam = np.minimum(lam, np.float32(site.clip_max))
            ctx.quant[site.y.name] = QuantClipParams(lam=lam, levels=levels, phi=0.5,
                                                     source="calibration")
            records[site.y.name] = {"min": np.asarray(st.min).tolist(),
                                    "max": np.asarray(st.max).tolist(), "lam": lam.tolist(),
                                    "levels": levels, "method": options.calib_method,
                                    "samples": st.count, "subsampled": st.subsampled}
            ctx.logger.debug("%s: %s lambda=%s", self.name, site.label, lam)
        self._check_finite(need, ctx)
        if options.calib_method == "snn":
            self._refine(proto, need, samples, ctx, records)
            self._check_finite(need, ctx)

    def _check_finite(self, need, ctx: CompileContext) -> None:
        """SNN-E414 where a clipping level or bias is not finite: activations beyond float32 on
        the calibration samples (samples x 1e37 had written a model with a -inf bias, exit 0;
        x 1e38 failed in the walk as a bad neuron attribute, E303)."""
        bad = [s.label for s in need if not all(
            np.all(np.isfinite(np.asarray(v, np.float64))) for v in
            (ctx.quant[s.y.name].lam, ctx.quant[s.y.name].bias) if v is not None)]
        if bad:
            raise CalibrationError(
                f"{self.name}: {len(bad)} activation(s) are not finite on the calibration "
                f"samples (NaN, or beyond float32), so their clipping level or bias is not "
                f"either: {', '.join(bad[:3])}"
                f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}",
                code="SNN-E414", hint="preprocess the samples as for inference (values that "
                "reach the float32 limit inside the network), and check the model's weights "
                "before these activations")

    def _refine(self, proto, need, samples, ctx: CompileContext, records) -> None:
        """The SNN-aware walk over the calibrated sites, in graph order."""
        from snncc.snn_calibration import Site, refine_sites

        options = ctx.options
        spec = None
        if options.target != "qann":
            from snncc.neurons import get_neuron
            spec = get_neuron(options.neuron)
        order = {n.name: i for i, n in enumerate(proto.graph.node)}
        producer = {o: n.name for n in proto.graph.node for o in n.output}
        sites = sorted({s.y.name: s for s in need}.values(),
                       key=lambda s: order.get(producer.get(s.y.name, ""), -1))
        refined, reports = refine_sites(
            proto, [Site(s.z.name, s.y.name, s.label) for s in sites], ctx.quant, samples,
            options, neuron_spec=spec, progress=self.progress)
        for site, rep in zip(sites, reports):
            params = refined[site.y.name]
            if site.clip_max is not None:
                params = dataclasses.replace(params, lam=np.minimum(
                    params.lam, np.float32(site.clip_max)).astype(np.float32))
            ctx.quant[site.y.name] = params
            records[site.y.name].update(lam=np.asarray(params.lam).tolist(), method="snn",
                                        snn=rep.to_json())
        ctx.notes["snn_calibration"] = [r.to_json() for r in reports]
