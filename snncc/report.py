"""``snncc report``: a Markdown or HTML page with PNG plots (matplotlib, Agg backend).

:func:`write_report` takes one dict; every key is optional and its section is left out when
absent:

* ``title`` (str), ``notes`` (list of str)
* ``accuracy``: ``{"name": value}`` side by side (e.g. QANN, ORT SNN, Loihi emulated, Loihi
  hardware reset-to-zero)
* ``accuracy_vs_T``: ``{"T": [1, 2, 4], "series": {"ORT SNN": [...], ...}}`` (and
  ``"measure": "agreement with the ANN"`` when the data has no labels)
* ``synops``: :func:`snncc.analysis.synops.count_synops` report (spike rates, SynOps per layer,
  per core when mapped)
* ``energy``: :func:`snncc.analysis.energy.estimate` result
* ``mapping``: :func:`snncc.backends.loihi.mapping.map_cores` report (``cores.json``)
* ``quantization``: the ``meta.quantization`` record of a netlist

The page is written to ``out_path`` (``.html`` gives HTML, anything else Markdown); the plots go
to ``<stem>_files/`` next to it. Returns every written path.

:func:`report_command` (``snncc report MODEL.onnx --data X.npz -T 1,2,4``) compiles the model for
every T (ORT, and Loihi with ``--target loihi``), runs it on the data, and writes the page: the
accuracy of the ORT SNN, of the Loihi netlist with its neurons' own (emulated) semantics and with
stock hardware semantics (reset to zero) side by side, and for the largest T the SynOps (events
measured on the data), energy and core mapping.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


__all__ = ["write_report", "add_report_arguments", "report_command"]

Table = tuple[Sequence[str], Sequence[Sequence[Any]]]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_MD_SPECIAL = str.maketrans({"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]",
                             "`": "\\`", "*": "\\*", "_": "\\_", "#": "\\#",
                             "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})


def _md(text: str) -> str:
    """Text from the model (layer names, the title) as Markdown shows it literally: a name
    holding '<script>', '|' or a newline with '## ...' had gone into the page raw, breaking the
    table and injecting HTML for any renderer that keeps it (the HTML page was escaped)."""
    return str(text).translate(_MD_SPECIAL)


def _md_prose(text: str) -> str:
    """snncc's own sentences, which may quote names: HTML and line breaks escaped, Markdown's
    emphasis left as written."""
    return str(text).translate(str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;",
                                              "\n": " ", "\r": " "}))


class _Page:
    def __init__(self, html_out: bool):
        self.html = html_out
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>" if self.html
                          else f"{'#' * level} {_md(text)}\n")

    def para(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>" if self.html else _md_prose(text) + "\n")

    def table(self, head: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.html:
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) +
                           "</tr>" for r in rows)
            self.parts.append(f"<table><tr>{cells}</tr>{body}</table>")
        else:
            lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md(_fmt(c)) for c in r) + " |" for r in rows]
            self.parts.append("\n".join(lines) + "\n")

    def image(self, rel: str, alt: str) -> None:
        # a link, percent-encoded: a page named 'run #1.html' had linked 'run ' (the rest a
        # fragment), and Markdown takes no space in a link
        url = urllib.parse.quote(rel, errors="surrogateescape")   # a non-UTF-8 name's bytes
        self.parts.append(f'<img src="{html.escape(url)}" alt="{html.escape(alt)}">'
                          if self.html else f"![{_md(alt)}]({url})\n")

    def render(self, title: str) -> str:
        from snncc.outputs import REPORT_MARK  # how a later run knows the page is snncc's

        if not self.html:
            return REPORT_MARK + "\n" + "\n".join(self.parts)
        return (f"<!DOCTYPE html>{REPORT_MARK}<html><head><meta charset='utf-8'><title>"
                f"{html.escape(title)}</title></head><body>" + "\n".join(self.parts)
                + "</body></html>\n")


def _label_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p]
    while len(parts) > 1 and (parts[-1].endswith("Neuron") or parts[-1] in ("Relu", "Clip")):
        parts.pop()
    return parts or [name]


def short_label(name: str) -> str:
    """'/features/features.0/features.0.2/Relu/IFNeuron' -> 'features.0.2' for plot axes."""
    return _label_parts(name)[-1]


def short_labels(names: Sequence[str]) -> list[str]:
    """:func:`short_label` of each name, with as many more of its path parts as make it
    unique among ``names`` (a ResNet's blocks each had 'relu1' and 'relu2': bars that could not
    be told apart)."""
    parts = [_label_parts(n) for n in names]
    depth = [1] * len(names)
    for _ in range(max((len(p) for p in parts), default=1)):
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        dup = {lb for lb in labels if labels.count(lb) > 1}
        if not dup:
            return labels
        depth = [d + 1 if lb in dup and d < len(p) else d
                 for p, d, lb in zip(parts, depth, labels)]
    seen: dict[str, int] = {}
    out = []
    for lb in ["/".join(p[-d:]) for p, d in zip(parts, depth)]:
        seen[lb] = seen.get(lb, 0) + 1
        out.append(lb if seen[lb] == 1 else f"{lb} #{seen[lb]}")
    return out


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported when a plot is drawn (the CLI builds
    report's parser for every command; pyplot takes 0.2-0.3 s to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(path: Path, labels: Sequence[str], series: Mapping[str, Sequence[float]],
         ylabel: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(labels) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(short_labels(labels), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)   # linear: on a log axis bar lengths say nothing
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: the files a report's plot folder may hold
PLOTS = ("accuracy_vs_T.png", "spike_rates.png", "synops.png", "energy.png", "cores.png")


def plots_dir(out_path: str | os.PathLike) -> Path:
    """The folder beside the page that holds its plots: ``<stem>_files``."""
    out = Path(out_path)
    return out.parent / f"{out.stem}_files"


def default_report_path(model: str | os.PathLike) -> Path:
    """The page beside the model when ``-o`` is not given: ``resnet34.report.md``."""
    model = Path(model)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    return model.with_name(stem + ".report.md")


def check_report_outputs(out_path: str | os.PathLike,
                         inputs: Sequence[str | os.PathLike | None] = (), *,
                         implied: bool = False) -> None:
    """Refuse a page or plot folder that would touch an input or anything snncc did not write
    (:func:`snncc.outputs.check_outputs`). ``implied``: the page is the default name, not one
    the user gave, so an existing page there is replaced only when snncc wrote it."""
    from snncc.errors import OutputPathError
    from snncc.outputs import Output, check_outputs, check_suffix, same_path, written_by_snncc

    # rep.md and rep.html share rep_files/: a second page would replace the first one's plots
    page = Path(out_path)
    twins = [page.with_suffix(sfx) for sfx in (".md", ".html", ".htm")] if page.suffix else []
    others = [p for p in twins if not same_path(p, page) and p.is_file()
              and written_by_snncc(p, "report")]
    if others and plots_dir(out_path).is_dir():
        raise OutputPathError(
            f"report: the plot folder '{plots_dir(out_path)}' holds the plots of another report "
            f"page, '{others[0]}'; writing '{page}' would replace them", code="SNN-E364",
            hint=f"give -o another name (e.g. {page.with_name(page.stem + '_2' + page.suffix)}), "
            "or remove the other report first")
    check_outputs([Output(Path(out_path), "file",
                          "-o (default: beside the model)" if implied else "-o", "report.md",
                          implied="report" if implied else ""),
                   Output(plots_dir(out_path), "dir", "-o (plots)", names=PLOTS)],
                  inputs, command="report", has_force=False)
    check_suffix(out_path, "-o", "a report page", (".md", ".html", ".htm"), "report")


def write_report(out_path: str | os.PathLike, data: Mapping[str, Any], *,
                 inputs: Sequence[str | os.PathLike | None] = (), implied: bool = False
                 ) -> list[Path]:
    """Write the report page and its plots; returns the written paths.

    The outputs are checked first (:func:`check_report_outputs`, never one of ``inputs``) and
    written atomically: the page and its plot folder appear together, or not at all.
    """
    from snncc.outputs import atomic_dir, atomic_file, transaction

    check_report_outputs(out_path, inputs, implied=implied)
    out = Path(out_path)
    figs = plots_dir(out)
    with transaction(), atomic_dir(figs) as tmp_figs, atomic_file(out) as tmp_page:
        written = _render(out, figs, tmp_figs, tmp_page, data)
    return [out, *written]


def _render(out: Path, figs: Path, tmp_figs: Path, tmp_page: Path,
            data: Mapping[str, Any]) -> list[Path]:
    page = _Page(out.suffix.lower() in (".html", ".htm"))
    title = data.get("title", "snncc report")
    page.heading(title, 1)
    written: list[Path] = []

    def plot(name: str, alt: str, draw) -> None:
        draw(tmp_figs / name)
        written.append(figs / name)
        page.image(f"{figs.name}/{name}", alt)

    for note in data.get("notes", ()):
        page.para(note)
    measure = data.get("accuracy_vs_T", {}).get("measure", "accuracy")
    if "accuracy" in data:
        page.heading(measure[0].upper() + measure[1:])
        page.table(["run", measure], list(data["accuracy"].items()))
    if "accuracy_vs_T" in data:
        acc = data["accuracy_vs_T"]
        page.heading(f"{measure[0].upper() + measure[1:]} vs T")
        page.table(["T", *acc["series"]], [[t, *(s[i] for s in acc["series"].values())]
                                          for i, t in enumerate(acc["T"])])

        def draw_acc(path: Path) -> None:
            plt = _pyplot()
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for i, (name, values) in enumerate(acc["series"].items()):
                # each its own marker and dash: equal series (ORT and Loihi emulated often
                # are) had hidden one line under the other
                ax.plot(acc["T"], values, marker="osd^"[i % 4], linestyle=("-", "--", ":",
                        "-.")[i % 4], markersize=7 - 1.5 * (i % 3), label=name)
            ax.set_xlabel("T")
            ax.set_xticks(acc["T"])   # whole steps (the default ticks had put 2.5 between)
            ax.set_ylabel(measure)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
        plot("accuracy_vs_T.png", f"{measure} vs T", draw_acc)
    syn = data.get("synops")
    if syn:
        layers = syn["layers"]
        names = list(layers)
        page.heading("Spikes and synaptic operations (per inference)")
        page.table(["layer", "neurons", "events", "spike rate", "SynOps in", "MACs"],
                   [[n, r.get("neurons", r.get("kind", "")),
                     r.get("events", r.get("pooled_events", "")), r.get("spike_rate", ""),
                     r["synops"], r["macs"]] for n, r in layers.items()])
        kinds = {r.get("kind") for r in layers.values() if "pooled_events" in r}
        pooled = "".join(text for kind, text in (
            ("max-pool", " A max-pool's events are the spikes it passes on (some of its "
             "neuron's)."),
            ("upsample", " An upsample's events are copies of its neuron's spikes."))
            if kind in kinds)
        once = ("counted once: the schedule computes the input layer's current once" if
                syn.get("analog_once", True) else "counted every slice: the input is sent "
                "every step")
        padding = syn.get("ann_macs_in_bounds", syn["ann_macs"])
        page.para(f"Total: {syn['total_synops']:.4g} SynOps, {syn['total_macs']:.4g} MACs "
                  f"(analog layers, {once}), ANN {syn['ann_macs']:.4g} MACs "
                  f"(k·k·C_in·H_out·W_out·C_out per conv; {padding:.4g} without the taps on "
                  f"the zero padding, where the SNN has no synapses), {syn['steps']} slices."
                  + pooled)
        page.para("Events: a layer's unit spikes (a graded output of k units, as MT, GN and "
                  "bit-serial send, counts k). Spike rate: events / (neurons x slices), SRP's "
                  "pre-run slices included. SynOps in: the synaptic operations that reach the "
                  "layer, i.e. the events of the layer before times their fan-out; the first "
                  "layer, fed by the analog input, has MACs instead.")
        rated = [n for n in names if "spike_rate" in layers[n]]
        plot("spike_rates.png", "spike rate per layer", lambda p: _bar(
            p, rated, {"events / (neuron x slice)": [layers[n]["spike_rate"] for n in rated]},
            "spike rate"))
        plot("synops.png", "SynOps per layer", lambda p: _bar(
            p, names, {"SynOps": [layers[n]["synops"] for n in names],
                       "MACs": [layers[n]["macs"] for n in names]}, "ops per inference"))
    energy = data.get("energy")
    if energy:
        page.heading("Energy per inference")
        models = energy["models"]
        page.table(["model", "SNN pJ", "ANN pJ (45 nm MACs, every row)", "ANN / SNN",
                    "ANN / SNN, the ANN's MACs on the zero padding left out",
                    "constants (source)"],
                   [[k, m["snn_pj"], m["ann_pj"], m["ratio"],
                     m.get("ratio_in_bounds", m["ratio"]), m["constants"]["source"]]
                    for k, m in models.items()])
        plot("energy.png", "ANN vs SNN energy", lambda p: _bar(
            p, list(models), {"SNN": [m["snn_pj"] for m in models.values()],
                              "ANN (45 nm MACs)": [m["ann_pj"] for m in models.values()]},
            "pJ per inference"))
    mapping = data.get("mapping")
    if mapping:
        page.heading("Loihi core mapping")
        page.para(f"{mapping['cores_used']} cores used, lower bound {mapping['lower_bound']} "
                  f"(ratio {mapping['ratio_to_bound']:.3f}).")
        cores = mapping["cores"]
        resources = list(cores[0]["utilisation"]) if cores else []

        def draw_cores(path: Path) -> None:
            plt = _pyplot()
            fig, ax = plt.subplots(figsize=(6, 3.2))
            for r in resources:
                ax.plot([c["utilisation"][r] for c in cores], marker=".", linestyle="",
                        label=r)
            ax.set_xlabel("core")
            ax.set_ylabel("utilisation")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
        plot("cores.png", "core utilisation", draw_cores)
    quant = data.get("quantization")
    if quant:
        page.heading("Fixed-point quantization")
        page.table(["block", "exp", "max rel. error", "rms rel. error", "exact"],
                   [[w["block"], w["exp"], w["max_rel_err"], w["rms_rel_err"], w["exact"]]
                    for w in quant["weights"]])
    tmp_page.write_text(page.render(title), encoding="utf-8")   # (LC_ALL=C, PYTHONUTF8=0: it had failed on '·')
    return written


# ----------------------------------------------------------------------------- CLI

def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the source ONNX CNN")
    p.add_argument("--data", required=True, metavar="X.npz|DIR",
                   help="samples ('x', or the input name) and labels 'y' for accuracy (a .npz, "
                   "or a folder holding x.npy and y.npy)")
    p.add_argument("-T", "--timesteps", default="4",
                   help="comma-separated T values for accuracy vs T (default 4)")
    p.add_argument("--target", default=None, choices=("ort", "loihi"),
                   help="loihi: the ONNX Runtime SNN, the Loihi netlist simulator "
                   "(emulated and stock hardware neurons) and the core mapping; ort: the ONNX "
                   "Runtime SNN only (default: loihi where the model has a Loihi form, else "
                   "ort, with a note that says why)")
    from snncc.cli import NEURON_KEYS
    p.add_argument("--neuron", default="if", choices=NEURON_KEYS,
                   help="neuron model (default if)")
    p.add_argument("--maxpool", default="auto", choices=("auto", "avg"),
                   help="as for compile: avg lowers MaxPool as AveragePool (Loihi has no max "
                   "pooling; default auto)")
    p.add_argument("--calib", metavar="FILE",
                   help="calibration samples (default: --data, which makes the accuracy "
                   "figures optimistic: they are measured on the samples calibrated on)")
    p.add_argument("--calib-method", default="snn", choices=("snn", "mse", "percentile", "max"),
                   help="how lambda is chosen from the calibration samples (default snn, as "
                   "compile: SNN-aware, per channel)")
    p.add_argument("--samples", type=int, default=256,
                   help="samples used, at least 1 (default 256)")
    from snncc.cli import _parse_shape

    p.add_argument("--input-shape", type=_parse_shape, action="append", default=[],
                   metavar="[NAME=]1x3x32x32",
                   help="as for compile: fix the model's dynamic input dims (an export with "
                   "dynamic height and width)")
    p.add_argument("-o", "--output", default=None,
                   help="report .md or .html, its plots in a folder beside it named "
                   "<stem>_files (default: beside the model, MODEL.report.md)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success but warnings (stderr)")


def _accuracy(out: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or out.ndim != 2:
        return None
    return float((out.argmax(axis=1) == labels[:len(out)]).mean())


def report_command(args: argparse.Namespace) -> int:
    """``snncc report``; an error whose hint names compile's --allow-analog says it of compile
    (report has no such option: its hint had sent users to a flag it does not take)."""
    import dataclasses

    from snncc.errors import UnsupportedNodeError

    try:
        return _report_command(args)
    except UnsupportedNodeError as exc:
        if "--allow-analog" not in exc.render():
            raise

        def said(hint: str) -> str:
            return hint.replace("compile with --allow-analog", "compile it with snncc compile "
                                "--allow-analog (report runs no analog layers)")

        raise type(exc)(exc.message, code=exc.code, hint=said(exc.hint), diagnostics=[
            dataclasses.replace(d, hint=said(d.hint)) for d in exc.diagnostics]) from exc


def _report_command(args: argparse.Namespace) -> int:
    _QUIET[0] = bool(getattr(args, "quiet", False))
    from snncc.analysis.energy import estimate
    from snncc.analysis.synops import count_netlist, count_synops, ort_events, pool_taps
    from snncc.backends.loihi.netlist import load
    from snncc.backends.loihi.simulator import saturation_message, simulate
    from snncc.driver import compile_model, make_options, rehearse
    from snncc.errors import BackendCapabilityError, ModelInputError, OptionError, SnnccError
    from snncc.ir import SNN_DOMAIN, read_proto
    from snncc.outputs import file_output, scratch, scratch_dir
    from snncc.run import check_label_range, load_inputs
    from snncc.simulate import run_compiled

    try:
        # ascending and once each: the tables and plot read T in order, and the per-layer,
        # energy and core sections are the largest T's (they were the last listed: -T 8,2 gave
        # T = 2's under a table whose largest T is 8)
        ts = sorted({int(t) for t in str(args.timesteps).split(",")})
    except ValueError:
        raise OptionError(f"-T {args.timesteps!r} is not a comma-separated list of integers",
                          code="SNN-E660", hint="e.g. -T 1,2,4") from None
    if args.samples < 1:
        raise OptionError(f"--samples must be at least 1, got {args.samples}", code="SNN-E661",
                          hint="e.g. --samples 256")
    chosen, args.target = args.target is not None, args.target or "loihi"
    inputs = [args.model, args.data, args.calib]
    implied = args.output is None
    args.output = str(default_report_path(args.model) if implied else
                      file_output(args.output, example="report.md", command="report"))
    check_report_outputs(args.output, inputs, implied=implied)
    source = read_proto(args.model)
    was_compiled = any(p.key in ("snncc.schedule", "snncc.target")
                       for p in source.metadata_props)
    if not was_compiled and any(n.domain == SNN_DOMAIN for n in source.graph.node):
        # (a compiled output gets canonicalize's E123: compile the source ANN again)
        raise ModelInputError(f"'{args.model}' spikes already (a snncc finetune --iir or --mt "
                              "output): snncc report compares an ANN with the SNNs compiled "
                              "from it, and this model has no ANN", code="SNN-E662",
                              hint=f"snncc compile {shlex.quote(args.model)}, then snncc run "
                              "the result on labelled data")
    # read before the options are checked: a missing --data is said as such (it had been
    # 'calibration data ... does not exist', without --calib)
    x, labels = load_inputs(args.data)
    x = x[:args.samples]
    from snncc.cli import _input_shapes

    common = dict(neuron=args.neuron, calib_path=args.calib or args.data,
                  calib_method=args.calib_method, maxpool=args.maxpool,
                  input_shapes=_input_shapes(args.model, args.input_shape),
                  fidelity_samples=0)   # its own accuracy figures replace the estimate
    for T in ts:  # every option checked before the first (slow) compile
        make_options(target=args.target, timesteps=T, **common)
    fallback = None
    try:
        rehearse(args.model, make_options(target=args.target, timesteps=ts[0], **common))
    except BackendCapabilityError as exc:
        if chosen:
            raise
        try:   # the default: Loihi where the model lowers, else the ONNX Runtime SNN alone
            rehearse(args.model, make_options(target="ort", timesteps=ts[0], **common))
        except SnnccError:
            raise exc from None
        why = _first_reason(exc)
        avg = (", and --maxpool avg gives a max-pool net one (it changes the net)"
               if any("MaxPool" in d.message for d in exc.diagnostics) else "")
        fallback = (f"target ort: the model has no Loihi form ({why}); --target loihi says all "
                    f"of why{avg}")
        args.target = "ort"
        _say(f"snncc report: note: {fallback}")
    from snncc import ir
    from snncc.passes.quant_clip import activation_sites

    # a QCFS-trained graph (snncc finetune) carries its lambdas: --data calibrates nothing
    calibrates = any(s.kind != "pattern" for s in activation_sites(ir.load(args.model).graph))
    if args.calib is None and calibrates:
        print("snncc report: warning: calibrating on --data, the samples the accuracy is "
              "measured on, so the figures are optimistic; give --calib other samples",
              file=sys.stderr)
    # without labels every run is scored by its top-1 agreement with the ANN (as compile's
    # fidelity estimate is); the ANN itself then scores 1
    ann = next(iter(run_compiled(args.model, x, use_library=False,
                                 spike_counts=False).outputs.values()))
    check_label_range(labels, ann, args.data)
    ref = labels if labels is not None else (ann.argmax(axis=1) if ann.ndim == 2 else None)
    series: dict[str, list[Any]] = {"ORT SNN": []}
    if args.target == "loihi":
        series.update({"Loihi emulated": [], "Loihi hardware (reset to 0)": []})
    source = (f"--data '{args.data}', the file it scores" if args.calib is None
              else f"'{args.calib}'")
    notes = [f"{len(x)} samples, neuron {args.neuron}, target {args.target}, " + (
        f"calibration {args.calib_method} on up to 256 samples of {source} (none held out; "
        "compile holds some out for its fidelity estimate by default, so its figures can differ "
        "a little)"
        if calibrates else "lambdas from the QCFS-trained graph (no calibration)")
        + (", --maxpool avg: every MaxPool an AveragePool in the SNN rows (the ANN row is the "
           "model as given)" if args.maxpool == "avg" else "")] + (
        [fallback[0].upper() + fallback[1:]] if fallback else [])
    data: dict[str, Any] = {"title": f"snncc report: {Path(args.model).name}", "notes": notes}
    saturated: list[str] = []   # the simulator's saturation notes, one per run
    no_synops = None
    for T in reversed(ts):   # the largest first: the sections' T, and what fails first
        with scratch_dir() as tmp, scratch():
            _progress(f"T = {T}: compiling and running the ONNX Runtime SNN")
            opts = make_options(target="ort", timesteps=T, **common)
            compile_model(args.model, tmp / "snn.onnx", opts, dump_after=["insert-neurons"],
                          dump_dir=tmp / "dump")
            ort_out = next(iter(run_compiled(tmp / "snn.onnx", x, use_library=False,
                                             spike_counts=False).outputs.values()))
            series["ORT SNN"].append(_accuracy(ort_out, ref))
            compiled = None
            if args.target == "loihi":
                _progress(f"T = {T}: compiling and simulating the Loihi netlist")
                try:
                    compiled = compile_model(args.model, tmp / "loihi",
                                             make_options(target="loihi", timesteps=T, **common))
                except BackendCapabilityError as exc:   # e.g. thresholds beyond the fixed point
                    if chosen or T != ts[-1]:
                        raise
                    why = _first_reason(exc)
                    args.target = "ort"
                    for name in ("Loihi emulated", "Loihi hardware (reset to 0)"):
                        series.pop(name)
                    notes[0] = notes[0].replace("target loihi", "target ort")
                    notes.append(f"Target ort: at T = {T} the Loihi fixed point cannot hold "
                                 f"the model ({why}); --target loihi says all of why")
                    _say(f"snncc report: note: target ort: the Loihi compile failed at T = {T} "
                         f"({exc.code}); --target loihi says all of why")
            if compiled is not None:
                notes.extend(f"T = {T}, Loihi compile: {w.removeprefix('warning: ')}"
                             for w in compiled.warnings if "loihi:" in w or "saturated" in w)
                net = load(tmp / "loihi")
                runs = {"emulated": simulate(net, x),
                        "stock hardware": simulate(net, x, semantics="hardware")}
                saturated += [f"T = {T}, {name} neurons on --data: {saturation_message(r)}"
                              for name, r in runs.items() if r.saturations]
                out, events = runs["emulated"].outputs, runs["emulated"].events
                hw = runs["stock hardware"].outputs
                series["Loihi emulated"].append(_accuracy(next(iter(out.values())), ref))
                series["Loihi hardware (reset to 0)"].append(
                    _accuracy(next(iter(hw.values())), ref))
                mapping = json.loads((tmp / "loihi" / "cores.json").read_text())
                syn = count_synops(tmp / "loihi", events, mapping=mapping,
                                   analog_once=False) if T == ts[-1] else None   # input: every step
                meta = json.loads((tmp / "loihi" / "netlist.json").read_text())["meta"]
                if T == ts[-1]:
                    data.update(mapping=mapping, quantization=meta["quantization"])
            elif T != ts[-1]:
                syn = None   # the per-layer sections are the largest T's
            else:
                import onnx
                snn = onnx.load(str(tmp / "snn.onnx"))
                try:
                    net = count_netlist(onnx.load(str(tmp / "dump" / "after-insert-neurons.onnx")),
                                        T, args.maxpool, snn)
                    events = ort_events(snn, {_input_name(tmp): x}, pool_taps(net))
                    syn = count_synops(net, events)
                except SnnccError as exc:   # what the count's lowering cannot express
                    syn = None
                    data.pop("synops", None)
                    data.pop("energy", None)
                    no_synops = _first_reason(exc, "node ")
            if syn is not None and T == ts[-1]:
                data.update(synops=syn, energy=estimate(syn))
    for values in series.values():   # run largest T first, tabled in ascending T
        values.reverse()
    notes.append("Spikes, SynOps and energy per layer" + (
        ", cores and quantization are the emulated Loihi run's" if args.target == "loihi"
        else " are the ONNX Runtime SNN's") + f", at the largest T ({ts[-1]})")
    if no_synops:
        hint = "; --maxpool avg lowers a MaxPool" if "MaxPool" in no_synops and \
            args.maxpool != "avg" else ""
        notes.append("Spike rates, SynOps and energy: not available (they are counted on the "
                     f"Loihi lowering, which refuses {no_synops}{hint})")
    if labels is None:
        notes.append("--data has no labels 'y': each run is scored by its top-1 agreement with "
                     "the ANN on these samples, not by accuracy")
    if saturated:
        notes.extend(f"Loihi simulator, {m}" for m in saturated)
        print(f"snncc report: warning: the Loihi simulator saturated membrane updates in "
              f"{len(saturated)} run(s); the page lists them", file=sys.stderr)
    if ref is not None:
        data["accuracy_vs_T"] = {"T": ts, "series": series}
        if labels is None:
            data["accuracy_vs_T"]["measure"] = "agreement with the ANN"
        data["accuracy"] = {"ANN": _accuracy(ann, ref),
                            **{f"{name} (T={ts[-1]})": values[-1]
                               for name, values in series.items()}}
    for path in write_report(args.output, data, inputs=inputs, implied=implied):
        _say(f"wrote {path}", err=False)
    return 0


#: report -q: no progress, notes or 'wrote' lines (warnings still go to stderr)
_QUIET = [False]


def _say(text: str, *, err: bool = True) -> None:
    if not _QUIET[0]:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _first_reason(exc: Exception, prefix: str = "") -> str:
    """An error's first diagnostic as 'node: message' (``prefix`` before the node), else its
    own message."""
    first = exc.diagnostics[0] if getattr(exc, "diagnostics", None) else None
    if first is None:
        return getattr(exc, "message", str(exc))
    return f"{prefix}{first.node}: {first.message}" if first.node else first.message


def _progress(message: str) -> None:
    _say(f"snncc report: {message} ...")


def _input_name(tmp: Path) -> str:
    import onnx
    proto = onnx.load(str(tmp / "snn.onnx"), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in inits)
