"""Fidelity at compile time: how close the compiled network is to the one the user gave.

On calibration samples held out from calibration (``--fidelity-samples``; by default the samples
beyond ``--calib-samples``, at least 32 and at most 64: ``CompileOptions.fidelity_holdout``), the
driver runs three networks: the ANN (the canonical graph, before
any quantization), the QANN (the graph after relu-to-quant-clip) and the SNN (the target's own
execution: ONNX Runtime with the kernel library for ``ort``, the bit-accurate simulator for
``loihi``). For each pair it reports

* ``top1_agreement``: the fraction of samples whose arg-max class agrees (for a dense output
  ``[N, C, H, W]``, e.g. segmentation, the fraction of output positions whose arg-max over C
  agrees; ``per_position`` is then set);
* ``top1_agreement_95``: the 95 % Wilson interval of that fraction for the number of held-out
  samples (32 samples at 100 %: 89-100 %), where unseen data may put it;
* ``rel_logit_error``: ``||a - b|| / ||b||`` over all outputs (b the reference, the later name;
  None for class indices, an ArgMax head);

and per neuron layer (ORT target) the relative error of the layer's time-mean output against the
QANN activation at the same site (``rel_error``) and against the ANN activation
(``rel_error_vs_ann``); ``error_grows_from`` names the layer whose error against the ANN grows
most over the layer before (None while every layer stays below :data:`GROWTH_LEVEL`). SNN-aware calibration fits each layer to the ANN, not to the QANN, so
its SNN may be closer to the ANN than its QANN is. The estimate is made on held-out samples, never
on the samples calibration was fitted to.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from snncc import ir
from snncc.errors import FidelityError
from snncc.passes.calibrate import MIN_CALIB_SAMPLES

__all__ = ["WARN_BELOW", "Reference", "LayerErrors", "pair", "wilson_interval", "measure", "summary",
           "hints", "estimate", "check"]

#: below this top-1 agreement of the SNN with the ANN, compile warns
WARN_BELOW = 0.95
#: a layer whose relative error passes this is where "error grows"
GROWTH_LEVEL = 0.1
#: a relative logit error from which compile warns even when the agreement looks high: of the
#: 120 cells of examples/results/{defaults,other_nets}.json, 14 agree >= 95 % at an error of 0.3
#: or more, and 12 of them lost 1.3 to 13.7 pt of test accuracy (the two others: LIF, -0.3);
#: below 0.3 the largest loss is 2.2 pt, most are under 0.5
LOGIT_WARN = 0.3
#: held-out samples from which one ANN class for all of them is warned about
ONE_CLASS_MIN = 16


class Reference:
    """A plain ONNX model (ANN or QANN) in one ORT session, run part by part over the samples:
    its first output and, on request, the activation tensors ``extra``."""

    def __init__(self, proto: onnx.ModelProto, extra: Sequence[str] = ()):
        model = ir.with_outputs(proto, extra, free_batch=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self.first = model.graph.output[0].name
        self.extra = [n for n in extra if n != self.first]

    def run(self, feeds: Mapping[str, np.ndarray], layers: bool = True
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        names = [self.first, *(self.extra if layers else ())]
        values = self.session.run(names, dict(feeds))
        return values[0], dict(zip(names[1:], values[1:]))


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``p`` measured on ``n`` samples: how far the
    agreement on unseen data may lie from the held-out estimate (32 samples: about +-10 pt)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Pair:
    top1_agreement: float | None   # None: one output value per sample, no arg-max to compare
    rel_logit_error: float | None  # None: class indices (an ArgMax head), no logits to compare
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"top1_agreement": None if self.top1_agreement is None
                               else round(self.top1_agreement, 4),
                               "rel_logit_error": None if self.rel_logit_error is None
                               else round(self.rel_logit_error, 4)}
        if self.top1_agreement is not None and self.samples:
            lo, hi = wilson_interval(self.top1_agreement, self.samples)
            out["top1_agreement_95"] = [round(float(lo), 4), round(float(hi), 4)]
        return out


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(a - ref)) / denom if denom > 0 else float(np.linalg.norm(a))


def _dense(a: np.ndarray) -> bool:
    """An output with classes at several positions, ``[N, C, H, W]`` (not ``[N, C, 1, 1]``)."""
    return a.ndim > 2 and a.shape[1] > 1 and int(np.prod(a.shape[2:])) > 1


def pair(a: np.ndarray, ref: np.ndarray) -> Pair:
    """Top-1 agreement of ``a`` with ``ref`` (the arg-max over the class axis 1; for a dense
    output ``[N, C, H, W]`` at every position, as a segmentation net is read) and the relative
    error. The interval counts samples, not positions (positions of a sample are not
    independent)."""
    if np.asarray(a).dtype.kind in "iu":  # an ArgMax head: class indices, compared as such
        agree = float(np.mean(np.all(a.reshape(len(a), -1) == ref.reshape(len(ref), -1),
                                     axis=1)))
        return Pair(agree, None, len(a))
    elif _dense(a):
        agree = float(np.mean(a.argmax(1) == ref.argmax(1)))
    else:
        a2, r2 = a.reshape(len(a), -1), ref.reshape(len(ref), -1)
        agree = float(np.mean(a2.argmax(1) == r2.argmax(1))) if a2.shape[1] > 1 else None
    return Pair(agree, _rel(a, ref), len(a))


def _squares(a: np.ndarray, ref: np.ndarray | None = None, step: int = 1 << 20) -> float:
    """sum((a - ref)^2) in float64 (sum(a^2) without ``ref``), a cache-sized slice at a time
    (10x faster than converting a 51 M-value map at once)."""
    a = np.asarray(a).ravel()
    ref = None if ref is None else np.asarray(ref).ravel()
    total = 0.0
    for i in range(0, a.size, step):
        d = a[i:i + step].astype(np.float64)
        if ref is not None:
            d -= ref[i:i + step]
        total += float(np.dot(d, d))
    return total


class LayerErrors:
    """Per neuron layer, the relative error of the SNN's time-mean output against the QANN and
    the ANN activation (``||s - r|| / ||r||``, as :func:`pair`), from running sums over parts of
    the samples: a 224x224 ResNet-34 holds about 190 MB of activations per sample and network."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, float]] = {}

    def add(self, snn: Mapping[str, np.ndarray], qann: Mapping[str, np.ndarray],
            ann: Mapping[str, np.ndarray]) -> None:
        for name, q in qann.items():   # QANN (graph) order
            if name not in snn:
                continue
            s = snn[name]
            acc = self.sums.setdefault(name, {"snn": 0.0, "dq": 0.0, "q": 0.0})
            acc["snn"] += _squares(s)
            acc["dq"] += _squares(s, q)
            acc["q"] += _squares(q)
            if name in ann:
                acc["da"] = acc.get("da", 0.0) + _squares(s, ann[name])
                acc["a"] = acc.get("a", 0.0) + _squares(ann[name])

    def rows(self) -> list[dict[str, Any]]:
        def rel(diff: float, ref: float, own: float) -> float:
            return round(float(np.sqrt(diff / ref)) if ref > 0 else float(np.sqrt(own)), 5)

        out = []
        for name, acc in self.sums.items():
            row = {"layer": name, "rel_error": rel(acc["dq"], acc["q"], acc["snn"])}
            if "da" in acc:
                row["rel_error_vs_ann"] = rel(acc["da"], acc["a"], acc["snn"])
            out.append(row)
        return out


def measure(ann: np.ndarray, qann: np.ndarray, snn: np.ndarray | None,
            per_layer: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``fidelity`` section of the compile report from the three networks' outputs and the
    per-layer rows of :class:`LayerErrors` (graph order)."""
    out: dict[str, Any] = {"samples": int(len(ann)), "qann_vs_ann": pair(qann, ann).to_json()}
    if _dense(ann):   # a dense output: agreement per position
        out["per_position"] = True
    elif ann.ndim == 2 and ann.shape[1] > 1 and len(ann) >= ONE_CLASS_MIN:
        top = np.unique(ann.argmax(axis=1))
        if len(top) == 1:   # e.g. samples not scaled or normalised as the model expects
            out["ann_one_class"] = int(top[0])
    if snn is None:
        return out
    out["snn_vs_qann"] = pair(snn, qann).to_json()
    out["snn_vs_ann"] = pair(snn, ann).to_json()
    rows = [dict(r) for r in per_layer]
    out["per_layer"] = rows
    errors = [r.get("rel_error_vs_ann", r["rel_error"]) for r in rows]
    jumps = [e - (errors[i - 1] if i else 0.0) for i, e in enumerate(errors)]
    grows = rows[int(np.argmax(jumps))]["layer"] if rows and max(errors) >= GROWTH_LEVEL \
        else None
    out["error_grows_from"] = grows
    return out


def _interval(pair_json: Mapping[str, Any]) -> str:
    iv = pair_json.get("top1_agreement_95")
    return f" (95 % interval {100 * iv[0]:.0f}-{100 * iv[1]:.0f} %)" if iv else ""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _of_samples(fid: Mapping[str, Any]) -> str:
    n = fid["samples"]
    return (f"of the output positions of {n} held-out samples" if fid.get("per_position")
            else f"of {n} held-out samples")


def _logit_error(p: Mapping[str, Any]) -> str:
    e = p.get("rel_logit_error")
    return "" if e is None else f"; relative logit error {e:.3f}"


def summary(fid: Mapping[str, Any]) -> str:
    """One line: 'SNN agrees with the ANN on 97.2 % of 64 held-out samples; ...'."""
    if "snn_vs_ann" not in fid:
        q = fid["qann_vs_ann"]
        return (f"fidelity: QANN agrees with the ANN on {_pct(q['top1_agreement'])} "
                f"{_of_samples(fid)}{_interval(q)}{_logit_error(q)}")
    s, q = fid["snn_vs_ann"], fid["qann_vs_ann"]
    text = (f"fidelity: {fid.get('snn_is', 'SNN')} agrees with the ANN on "
            f"{_pct(s['top1_agreement'])} {_of_samples(fid)}{_interval(s)}; QANN "
            f"{_pct(q['top1_agreement'])}{_interval(q)}{_logit_error(s)}")
    if fid.get("error_grows_from") and (s["top1_agreement"] or 0) < 1.0:
        text += f"; error grows from layer {ir.shown(fid['error_grows_from'])}"
    for name, v in fid.get("variants", {}).items():
        text += (f"; {v['what'].split(' (')[0]} {_pct(v['top1_agreement'])}{_interval(v)}"
                 + (f", {v['saturations']} membrane updates saturated"
                    if v.get("saturations") else ""))
    return text


def _per_channel_ok(options: Any) -> bool:
    if options.target == "qann":
        return True
    from snncc.neurons import get_neuron

    return get_neuron(options.neuron).per_channel_threshold


def hints(options: Any, fid: Mapping[str, Any], model: str = "MODEL.onnx",
          finetune: bool | Callable[[], bool] = True, max_pools: bool = False,
          trained_levels: int | None = None) -> list[str]:
    """Ranked, concrete ways to a closer SNN, most effective first (measured on the trained
    examples, examples/results/defaults.md); ``model``: the source model's path, for the
    commands; ``finetune``: whether ``snncc finetune`` takes the model (it trains ReLU and
    Clip(0, c) activations, not a QCFS-trained graph), or a callable that finds out when asked;
    ``max_pools``: whether the ANN pools by max (``--maxpool avg`` then changes the network);
    ``trained_levels``: L of a QCFS-trained graph (a neuron that needs other levels is no
    hint then: bit-serial at T needs L = 2^T - 1, SNN-E308)."""
    out = []
    if max_pools and options.maxpool == "avg":
        q = fid.get("qann_vs_ann", {}).get("top1_agreement")
        seen = f" (its QANN, pooling by average too, agrees {100 * q:.1f} %)" if q is not None \
            else ""
        if options.target in ("loihi", "nir"):   # they cannot pool by max: the net must change
            out.append(f"this net pools by max, which {options.target} cannot, and --maxpool avg "
                       f"changes the network itself{seen}: train it with average pooling (then "
                       "compile without --maxpool), or use --target ort, which pools by max "
                       "exactly")
        else:
            out.append(f"drop --maxpool avg: this net pools by max, and averaging instead "
                       f"changes the network itself{seen}; the ORT target pools by max "
                       + ("in the folded schedule (drop --schedule streaming)"
                          if options.schedule == "streaming" else "exactly"))
    if options.calib_method != "snn":
        out.append("--calib-method snn (SNN-aware calibration of lambda and bias per layer)")
    if not options.calib_per_channel and _per_channel_ok(options):
        out.append("--per-channel (one lambda per channel)")
    if options.target == "qann":   # the QANN itself is the output: more levels, or training
        out.append(f"-L {2 * options.levels} (more quantization levels)")
        if _resolved(finetune):
            out.append(f"snncc finetune {model} --data TRAIN.npz -L {options.levels} (QCFS "
                       "fine-tuning trains the net for its quantization)")
        return out
    if options.target == "nir":   # NIR takes IF/LIF only; its loss is the reset to zero
        out.append("--target ort (or loihi, whose netlist keeps the soft reset; its "
                   "network.net resets to zero as NIR does): NIR's IF/LIF nodes reset to zero "
                   "(the --allow-lossy export), which drops the charge above threshold that the "
                   "compiled SNN keeps; the NIR estimate measures that network")
        return out
    T = options.timesteps
    # graded spikes: no stock Loihi neuron sends them
    no_netx = ("; Loihi runs it as a microcoded neuron, with no network.net"
               if options.target == "loihi" else "")
    graded = ("--neuron mt (graded spikes, one per threshold crossed: at T = 1 97.5 % on the "
              f"digits CNN where IF gave 90.6, examples/results/defaults.md{no_netx})")
    binary = options.neuron in ("if", "lif", "srp")
    if binary and T == 1:
        out.append(graded)
    if options.neuron != "bitserial" and T >= 2 and trained_levels in (None, 2 ** T - 1):
        out.append(f"--neuron bitserial (equals its {2 ** T - 1}-level QANN at T = {T}"
                   f"{no_netx})")
    if binary and T == 2:
        out.append(graded)
    if T < 8:
        out.append(f"-T {min(2 * T, 8)} (more timesteps)")
    q = fid.get("qann_vs_ann", {}).get("top1_agreement", 1.0)
    if (q < WARN_BELOW or T <= 2) and _resolved(finetune):
        if options.neuron == "lif":   # a QCFS graph's per-channel lambda is no LIF threshold
            out.append(f"snncc finetune {model} --data TRAIN.npz --iir (trains LIF neurons "
                       "directly, T = 5 down to 1)")
        else:
            out.append(f"snncc finetune {model} --data TRAIN.npz -L {max(T, 1)} (QCFS "
                       f"fine-tuning trains the net for its quantization at T = {T}: "
                       "examples/results/training)")
    return out


#: samples per ORT call for the ANN and QANN where no SNN part sets the size
REFERENCE_PART = 16


def estimate(ann_proto: onnx.ModelProto, qann_proto: onnx.ModelProto, backend: Any,
             model: Any, ctx: Any) -> dict[str, Any]:
    """ANN vs QANN vs SNN on ``ctx.holdout``: the graphs after canonicalize and after
    relu-to-quant-clip run in plain ORT, the compiled ``model`` through ``backend.predict``
    (``backend=None``: the qann target, no SNN). All three run part by part (the backend's
    parts), and only the outputs and per-layer running sums are kept."""
    feeds = ctx.holdout or {}
    sites = list(ctx.quant)

    def produced(proto: onnx.ModelProto) -> list[str]:
        names = {o for n in proto.graph.node for o in n.output}
        return [s for s in sites if s in names]

    ann_ref = Reference(ann_proto, produced(ann_proto))
    qann_ref = Reference(qann_proto, produced(qann_proto))
    parts = backend.predict(model, ctx, feeds) if backend is not None else None
    n = len(next(iter(feeds.values())))
    if parts is None:
        parts = ((slice(i, i + REFERENCE_PART), None, None) for i in range(0, n, REFERENCE_PART))
    anns, qanns, snns = [], [], []
    errors = LayerErrors()
    for rows, snn, snn_layers in parts:
        part = {k: v[rows] for k, v in feeds.items()}
        ann, ann_layers = ann_ref.run(part, layers=bool(snn_layers))
        qann, qann_layers = qann_ref.run(part, layers=bool(snn_layers))
        anns.append(ann)
        qanns.append(qann)
        if snn is not None:
            snns.append(snn)
        if snn_layers:
            errors.add(snn_layers, qann_layers, ann_layers)
        del snn_layers, ann_layers, qann_layers
    snn_all = np.concatenate(snns) if snns else None
    ann_all = np.concatenate(anns)
    fid = measure(ann_all, np.concatenate(qanns), snn_all, errors.rows())
    if backend is not None and snn_all is None:
        fid["note"] = ctx.notes.pop("no_snn_estimate", None) or (
            f"the {backend.name} target cannot evaluate this model at compile time")
    if backend is not None and snn_all is not None:
        if backend.fidelity_subject != "SNN":
            fid["snn_is"] = backend.fidelity_subject
        variants = backend.predict_variants(model, ctx, feeds)
        if variants:
            fid["variants"] = {
                name: {**{k: v for k, v in var.items() if k != "outputs"},
                       **pair(np.asarray(var["outputs"]), ann_all).to_json()}
                for name, var in variants.items()}
    return fid


#: fewer held-out samples than the automatic hold-out's least: a --min-agreement gate that passes
#: on them is warned about (1 sample at 100 %: 95 % interval 21-100 %)
MIN_GATE_SAMPLES = 32


def _resolved(finetune: bool | Callable[[], bool]) -> bool:
    return bool(finetune()) if callable(finetune) else bool(finetune)


def check(fid: Mapping[str, Any], options: Any, min_agreement: float | None,
          model: str = "MODEL.onnx", finetune: bool | Callable[[], bool] = True,
          max_pools: bool = False, trained_levels: int | None = None) -> list[str]:
    """Warnings (for stderr) when the agreement is below :data:`WARN_BELOW`;
    :class:`~snncc.errors.FidelityError` (SNN-E370) below ``min_agreement``, or when the ANN
    gives one class to every held-out sample (an agreement then says nothing)."""
    key = "snn_vs_ann" if "snn_vs_ann" in fid else "qann_vs_ann"
    agree = fid[key]["top1_agreement"]
    if agree is None:  # one output per sample: nothing to gate on
        return []
    what = (("the NIR network" if options.target == "nir" else "the compiled network")
            if key == "snn_vs_ann" else "the compiled QANN"
            if options.target == "qann" else "the QANN (" + fid.get(
                "note", "the target cannot evaluate the SNN at compile time") + ")")
    # only where a message needs them, once (finetune may be a probe that imports torch)
    ranked_hints = functools.cache(lambda: hints(options, fid, model, finetune, max_pools,
                                                 trained_levels))

    if min_agreement is not None and "ann_one_class" in fid:
        raise FidelityError(f"compile: the ANN itself gives class {fid['ann_one_class']} to all "
                            f"{fid['samples']} held-out calibration samples, so the agreement "
                            f"cannot pass --min-agreement {min_agreement:g}", code="SNN-E370",
                            hint="check that the calibration samples are scaled and normalised "
                            "as the model expects (--mean/--std for an image folder)")
    if min_agreement is not None and agree < min_agreement:
        ranked = ranked_hints()
        raise FidelityError(f"compile: {summary(fid)}; below --min-agreement {min_agreement:g}",
                            code="SNN-E370", hint="try, in this order: " + "; ".join(ranked)
                            if ranked else "lower --min-agreement")
    out = []
    n = int(fid.get("samples") or 0)
    if min_agreement is not None and n < MIN_GATE_SAMPLES:   # passed, on too few to tell
        lo, hi = wilson_interval(agree, n)
        out.append(f"warning: --min-agreement {min_agreement:g} passed on {n} held-out "
                   f"sample{'' if n == 1 else 's'} only (95 % interval {100 * lo:.0f}-"
                   f"{100 * hi:.0f} %): too few to gate on; hold out at least "
                   f"{MIN_GATE_SAMPLES} (--fidelity-samples), which needs a calibration file "
                   f"of at least {MIN_GATE_SAMPLES + MIN_CALIB_SAMPLES} samples "
                   f"({MIN_CALIB_SAMPLES} stay to calibrate on)")
    if "ann_one_class" in fid:
        out.append(f"warning: the ANN itself gives class {fid['ann_one_class']} to all "
                   f"{fid['samples']} held-out calibration samples: are they scaled and "
                   "normalised as the model expects (--mean/--std for an image folder)? "
                   "Calibration and this estimate use them as they are")
    head = None
    if agree < WARN_BELOW:
        head = f"warning: {what} agrees with the ANN on only {100 * agree:.1f} % {_of_samples(fid)}"
    elif (fid[key].get("rel_logit_error") or 0.0) >= LOGIT_WARN and key == "snn_vs_ann" \
            and ranked_hints():
        head = (f"warning: {what} agrees with the ANN on {100 * agree:.1f} % {_of_samples(fid)}, "
                f"but its relative logit error is {fid[key]['rel_logit_error']:.2f}: 12 of 14 "
                "trained-net SNNs that agreed this well with an error of 0.3 or more lost 1.3 to "
                "13.7 pt on test data (examples/results/other_nets.md)")
    if head:
        out.append("\n".join([head + ". To get closer, try (best first):"]
                              + [f"  {i + 1}. {h}" for i, h in enumerate(ranked_hints())]))
    for v in fid.get("variants", {}).values():
        low = v["top1_agreement"]
        if low is not None and low < WARN_BELOW:
            out.append(f"warning: on {v['what']}, the SNN agrees with the ANN on only "
                       f"{100 * low:.1f} % {_of_samples(fid)}"
                       + (f" ({v['saturations']} membrane updates saturated)"
                          if v.get("saturations") else "") + f"; {v.get('advice', '')}")
    return out
