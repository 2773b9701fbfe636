"""Command-line interface: ``snncc inspect | compile | run | report | finetune``.

User errors (:class:`SnnccError`) print one clear message and exit with code 2; ``--debug`` shows
the traceback. Heavy imports (torch, matplotlib) happen only inside the subcommand that needs them.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
from typing import Any, Sequence

from snncc import __version__
from snncc.errors import (FidelityError, OptionError, SnnccError, cli_wording,
                          escape_controls)

__all__ = ["main", "build_parser"]

NEURON_KEYS = ("if", "bitserial", "mt", "gn", "srp", "lif")


def parse_floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers"
                                         ) from None


def _parse_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``input=1x3x32x32`` or ``1x3x32x32`` (for the single input)."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; write NAME=1x3x32x32") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; dimensions must be positive")
    if any(d >= 2 ** 31 for d in shape):   # ONNX's protobuf refused it deep in canonicalize: E500
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; a dimension of 2**31 or more "
                                         "is no input a network takes")
    return (name or None), shape


def _parse_kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"bad neuron parameter {text!r}; write KEY=VALUE")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    if "," in value:
        try:
            return key, [float(v) for v in value.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad neuron parameter {text!r}: a list must hold numbers only, e.g. "
                f"{key}=0.5,1,2") from None
    return key, value


def _input_shapes(model: str, shapes: Sequence[tuple[str | None, tuple[int, ...]]]) -> dict:
    if not shapes:
        return {}
    if any(name is None for name, _ in shapes):
        from snncc import ir

        proto = ir.read_proto(model)
        inits = {i.name for i in proto.graph.initializer}
        inputs = [i.name for i in proto.graph.input if i.name not in inits]
        if len(inputs) != 1 or len(shapes) != 1:
            raise OptionError("--input-shape without a name needs a model with one input",
                              code="SNN-E358", hint="write --input-shape NAME=1x3x32x32 for "
                              "each of: " + ", ".join(inputs))
        return {inputs[0]: shapes[0][1]}
    return {name: shape for name, shape in shapes}


# ------------------------------------------------------------------------------- subcommands

def cmd_inspect(args: argparse.Namespace) -> int:
    from snncc.inspect import format_inspect, inspect_model

    given = [f for f, v in (("--neuron", args.neuron), ("-T", args.timesteps)) if v is not None]
    if given and args.target is None:
        print(f"snncc inspect: warning: {', '.join(given)} ignored without --target (only its "
              "check reads them)", file=sys.stderr)
    neuron, timesteps = args.neuron or "if", args.timesteps
    if args.target is not None:   # what compile would take: a finetune output's own neurons
        meta = _train_meta(args.model)   # and trained T (inspect had checked -T 4 and 'if')
        spiking = _spiking_source(meta)
        neuron = spiking[0] if spiking and spiking[0] in NEURON_KEYS else neuron
        trained = _trained_timesteps(meta, args.neuron)
        if timesteps is None and trained:
            timesteps = trained[0]
    report = inspect_model(args.model, _input_shapes(args.model, args.input_shape),
                           target=args.target, neuron=neuron,
                           timesteps=4 if timesteps is None else timesteps)
    print(json.dumps(report, indent=2, default=str) if args.json else format_inspect(report))
    return 0


#: the dedicated flags of neuron parameters (argparse dest -> parameter): --mt-preset sets 'preset'
_PARAM_FLAGS = {"tau": "tau", "mt_preset": "preset", "mt_mode": "mode", "mt_n": "n"}


def _neuron_params(args: argparse.Namespace) -> dict[str, Any]:
    from snncc.errors import OptionError

    params: dict[str, Any] = dict(args.neuron_param or [])
    for key, name in _PARAM_FLAGS.items():
        value = getattr(args, key)
        if value is not None:
            if name in params and str(params[name]) != str(value):
                raise OptionError(f"--{key.replace('_', '-')} {value} and --neuron-param "
                                  f"{name}={params[name]} disagree", code="SNN-E309",
                                  hint="give the parameter once")
            params[name] = value
    return params


def _param_flags(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(flag, value) of every neuron-parameter option, as the user spells it."""
    return [(f"--{key.replace('_', '-')}", getattr(args, key)) for key in _PARAM_FLAGS] + \
        [("--neuron-param", args.neuron_param)]


def _qann_ignores(args: argparse.Namespace) -> list[str]:
    """Spiking options given with --target qann, which has no neurons or time (they would be
    silently ignored)."""
    given = [flag for flag, value in (("-T", args.timesteps), ("--neuron", args.neuron),
                                      *_param_flags(args)) if value]
    if args.schedule != "auto":
        given.append("--schedule")
    if args.steps_per_call != 1:
        given.append("--steps-per-call")
    if args.maxpool == "gate":   # a spike gate; --maxpool avg does change the QANN
        given.append("--maxpool gate")
    return given


def _target_ignores(args: argparse.Namespace) -> list[str]:
    """Options that only another target reads (they would be silently ignored)."""
    given = []
    if args.allow_lossy and args.target != "nir":
        given.append("--allow-lossy (only --target nir exports lossily)")
    if args.schedule != "auto" and args.target in ("loihi", "nir"):
        given.append(f"--schedule {args.schedule} (an ONNX Runtime schedule; the {args.target} "
                     "target runs every step itself)")
    if args.steps_per_call != 1 and args.target in ("loihi", "nir"):
        given.append(f"--steps-per-call {args.steps_per_call} (a streaming ONNX Runtime model's; "
                     f"the {args.target} target runs every step itself)")
    return given


def _train_meta(path: str) -> dict:
    """The model's ``snncc finetune`` record (:func:`snncc.ir.train_metadata`), {} if none."""
    import onnx

    from snncc.ir import train_metadata

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:   # the front end reports unreadable models
        return {}
    return train_metadata({p.key: p.value for p in proto.metadata_props})


def _trained_timesteps(meta: dict, neuron: str | None) -> tuple[int, str] | None:
    """(T, what) when ``snncc finetune`` trained the model (its record ``meta``) for a number of
    timesteps: an SNN stage (``--iir``/``--mt``, whose neurons are in the graph, whatever
    ``--neuron`` says) or a QCFS net trained with the IF SNN in the loop, when ``neuron``
    (``--neuron``, None when not given) is IF (for gn at T = 1 or bit-serial, whose T counts
    bits, the IF's T means nothing)."""
    if meta.get("kind") == "snn" and isinstance(meta.get("timesteps"), int):
        # its neurons are in the graph: --neuron does not replace them (its T is the one)
        return meta["timesteps"], f"a {meta.get('neuron', 'spiking')} SNN of snncc finetune"
    trained = str(meta.get("trained_for", ""))
    if meta.get("kind") == "qcfs" and trained.startswith("if T=") and trained[5:].isdigit() and \
            neuron in (None, "if"):
        return int(trained[5:]), "a QCFS net trained with the IF SNN in the loop"
    return None


def _spiking_source(meta: dict) -> tuple[str, str] | None:
    """(neuron, 'lif neurons trained by snncc finetune') when the model (its finetune record
    ``meta``) has its neurons in the graph already (finetune --iir / --mt), else None."""
    if meta.get("kind") != "snn":
        return None
    neuron = str(meta.get("neuron", "spiking"))
    return neuron, f"{neuron} neurons trained by snncc finetune"


def cmd_compile(args: argparse.Namespace) -> int:
    from snncc.calibration import QUIET

    token = QUIET.set(bool(args.quiet))   # -q: no progress bars either
    try:
        return _compile(args)
    finally:
        QUIET.reset(token)


def _compile(args: argparse.Namespace) -> int:
    from snncc.driver import compile_model

    ignored = _qann_ignores(args) if args.target == "qann" else []
    if ignored:
        print(f"snncc compile: warning: ignored with --target qann: {', '.join(ignored)} (a "
              "quantized-clip ANN has no neurons or timesteps; its levels come from -L, default "
              "8, or from a QCFS-trained graph's own clips)", file=sys.stderr)
    for what in _target_ignores(args):
        print(f"snncc compile: warning: ignored with --target {args.target}: {what}",
              file=sys.stderr)
    if args.percentile is not None and args.calib_method != "percentile":
        print(f"snncc compile: warning: --percentile {args.percentile:g} is ignored: it sets "
              "--calib-method percentile's percentile (the method is "
              f"{args.calib_method or 'snn'})", file=sys.stderr)
    timesteps = 4 if args.timesteps is None else args.timesteps
    meta = _train_meta(args.model)
    spiking = _spiking_source(meta)   # (its neuron, what it is) or None
    if spiking and args.target == "qann":   # (it had written LIF ops as a 'QANN', 34.4 %)
        raise OptionError(f"compile: the model spikes already ({spiking[1]}): it has no "
                          "quantized-clip ANN form", code="SNN-E124",
                          hint="compile it for --target ort, loihi or nir")
    if spiking and args.neuron and args.neuron != spiking[0]:
        # (--neuron if had kept the LIF neurons, at T = 4 instead of the trained 1: 79.2 %)
        print(f"snncc compile: warning: --neuron {args.neuron} is ignored: the model's neurons "
              f"are in the graph ({spiking[1]}) and stay", file=sys.stderr)
    params = [flag for flag, value in _param_flags(args) if value is not None]
    if spiking and params:   # (they were checked against --neuron's default, 'if': E302)
        print(f"snncc compile: warning: {', '.join(params)} ignored: the model's neurons are in "
              f"the graph ({spiking[1]}) with their trained parameters", file=sys.stderr)
    trained = _trained_timesteps(meta, args.neuron) if args.target != "qann" else None
    if trained and trained[0] != timesteps:
        if args.timesteps is None:   # the best measured choice is what it was trained for
            timesteps = trained[0]
            if not args.quiet:
                print(f"snncc compile: note: -T {timesteps}: the model is {trained[1]}, trained "
                      f"at T = {timesteps} (give -T to choose another)", file=sys.stderr)
        else:
            print(f"snncc compile: warning: the model is {trained[1]}, trained at T = "
                  f"{trained[0]}; -T {timesteps} runs it at another T than it learned",
                  file=sys.stderr)
    try:
        options = _compile_options(args, timesteps, params=not spiking)
    except OptionError as exc:
        # said with the flags the user gave (it had said "neuron 'if' has no parameter(s)
        # preset" for --mt-preset)
        flags = {name: f"--{key.replace('_', '-')}" for key, name in _PARAM_FLAGS.items()
                 if getattr(args, key) is not None}
        if exc.code != "SNN-E302" or not flags:
            raise
        head, said, names = exc.message.partition("has no parameter(s) ")
        names = ", ".join(f"{n} ({flags[n]})" if n in flags else n for n in names.split(", "))
        raise OptionError(head + said + names, code=exc.code, hint=exc.hint) from None
    result = compile_model(args.model, args.output, options, report_path=args.report,
                           dump_after=args.dump_after or (), verify=args.verify,
                           force=args.force, min_agreement=args.min_agreement)
    return _compile_said(args, options, result)


def _compile_options(args: argparse.Namespace, timesteps: int, params: bool = True):
    from snncc.driver import make_options

    return make_options(
        target=args.target, timesteps=timesteps,
        neuron=args.neuron or "if",
        levels=args.levels,
        calib_path=args.calib, calib_method=args.calib_method or "snn",
        calib_percentile=99.99 if args.percentile is None else args.percentile,
        calib_per_channel=args.per_channel, calib_max_samples=args.calib_samples,
        calib_mean=args.mean, calib_std=args.std,
        fidelity_samples=args.fidelity_samples,
        input_shapes=_input_shapes(args.model, args.input_shape), bias_shift=args.bias_shift,
        maxpool=args.maxpool, allow_analog=args.allow_analog, allow_lossy=args.allow_lossy,
        schedule=args.schedule,   # other targets warned that they ignore --steps-per-call
        steps_per_call=args.steps_per_call if args.target == "ort" else 1,
        neuron_params=_neuron_params(args) if params else {})


def _compile_said(args: argparse.Namespace, options, result) -> int:
    """What compile prints once it wrote its outputs."""
    for warning in result.warnings:
        print(f"snncc compile: {warning}", file=sys.stderr)
    given = [f for f, v in (("--calib-method", args.calib_method),
                            ("--percentile", args.percentile)) if v is not None]
    counts = next((r["counts"] for r in result.report["passes"] if r["pass"] == "calibrate"),
                  {})
    if given and counts.get("from_pattern") and not counts.get("calibrated"):
        print(f"snncc compile: warning: {', '.join(given)} ignored: every activation of this "
              "QCFS-trained graph keeps its trained lambda (the samples only feed the fidelity "
              "estimate)", file=sys.stderr)
    if not args.quiet:
        from snncc.pipeline import PipelineReport, PassRow

        rows = PipelineReport([PassRow(r["pass"], r["changed"], r["counts"],
                                       r["declined"], r["ms"]) for r in result.report["passes"]])
        print(rows.format())
        _print_notes(result.report["notes"], options.target)
        if result.report.get("synops"):
            from snncc.analysis.synops import format_synops_line
            print(format_synops_line(result.report["synops"]))
        elif result.report["backend"].get("synops"):
            print(result.report["backend"]["synops"])
        if result.report.get("fidelity"):
            from snncc.fidelity import summary
            print(summary(result.report["fidelity"]))
        print(f"wrote {result.output} in {result.report['seconds']:.2f} s")
    return 0


def _print_notes(notes: dict[str, Any], target: str = "ort") -> None:
    """One short line per compile note; the full detail is in the --report JSON."""
    for key, value in notes.items():
        if key == "neurons":
            kinds: dict[str, int] = {}
            for site in value:
                kinds[site["neuron"]] = kinds.get(site["neuron"], 0) + 1
            value = ", ".join(f"{n} x {k}" for k, n in kinds.items())
        elif key == "snn_calibration" and value:
            before = sum(r["rel_error_before"] for r in value) / len(value)
            after = sum(r["rel_error_after"] for r in value) / len(value)
            key = "calibration (snn method: the clip plays the neuron)" if target == "qann" \
                else "calibration (snn)"
            value = (f"mean relative layer error {before:.3f} -> {after:.3f} over "
                     f"{len(value)} layers")
        elif key == "analog_prefix" and value:
            key = "run once on the input, as analog ops, not neurons"
            value = f"{len(value)}: " + ", ".join(value)
        elif isinstance(value, (list, dict)) and not value:
            continue
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in value.items()
                              if isinstance(v, (int, float, str)) and k != "synops")
        elif isinstance(value, list):
            sep = "; " if key == "analog_islands" else ", "   # an island lists its ops with ','
            value = (f"{len(value)}: " + sep.join(map(str, value[:5]))
                     + (" ..." if len(value) > 5 else ""))
        print(f"{key}: {value}")


def cmd_run(args: argparse.Namespace) -> int:
    from snncc.run import run_command

    return run_command(args)


def cmd_report(args: argparse.Namespace) -> int:
    from snncc.report import report_command

    return report_command(args)


def cmd_finetune(args: argparse.Namespace) -> int:
    from snncc.train.cli import run_finetune

    return run_finetune(args)


# ------------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: a usage slip (an unknown flag, a bad choice, two
    flags that exclude each other) is one coded line with a hint, exit 2, as every other
    error; argparse had printed its whole usage block (20 lines for compile) and no code."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Python 3.14's argparse colours help and errors on a terminal: its ESC codes would
        # print as text through the stream wrapper, which escapes control characters
        self.color = False

    def error(self, message: str):   # type: ignore[override]
        self.exit(2, f"{self.prog}: error: [SNN-E374] {message}. Hint: `{self.prog} --help` "
                     "lists the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snncc",
        description="Compile a trained ONNX CNN into an ultra-low-latency spiking neural network.",
        epilog="Example: snncc compile model.onnx -T 4 --neuron mt --calib calib.npz -o snn.onnx")
    parser.add_argument("--version", action="version", version=f"snncc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each pass and decision")
    # the same two flags after the command (`snncc compile ... --debug`); SUPPRESS keeps the
    # value given before it when they are not repeated
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log each pass and decision")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    shape_help = ("fix dynamic dimensions, e.g. input=1x3x32x32 (repeatable), or 1x3x32x32 for "
                  "a model with one input; the batch dimension stays free")

    p = sub.add_parser("inspect", parents=[common],
                       help="list inputs, layers, MACs and unsupported ops",
                       description="Show the opset, inputs and shapes, each node grouped as "
                       "linear/activation/pooling/other, every op snncc cannot convert, and MACs "
                       "per layer and in total. With --target, also what that target's backend "
                       "refuses (e.g. a MaxPool on loihi), as compile finds it before "
                       "calibrating.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--input-shape", type=_parse_shape, action="append", default=[],
                   metavar="[NAME=]1x3x32x32", help=shape_help)
    p.add_argument("--target", choices=("ort", "loihi", "nir"), default=None,
                   help="also say what this target cannot express (as compile checks it before "
                   "calibrating; no data needed), for --neuron at -T")
    p.add_argument("--neuron", choices=NEURON_KEYS, default=None,
                   help="the neuron the --target check assumes (default: if, as compile)")
    p.add_argument("-T", "--timesteps", type=int, default=None,
                   help="the timesteps the --target check assumes (default 4, as compile)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compile", parents=[common],
                       help="compile an ONNX CNN to a QANN or a spiking network",
                       description="Run the pass pipeline (canonicalize, pool-first, "
                       "calibrate, fold-batchnorm, relu-to-quant-clip, insert-neurons, "
                       "schedule-timesteps) and emit the chosen target. Nothing is written "
                       "unless it succeeds.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", default=None,
                   help="output .onnx file (qann, ort), directory (loihi) or .nir file (nir); "
                   "default: beside the model, MODEL.snn.onnx / MODEL.qann.onnx / MODEL.loihi/ "
                   "/ MODEL.nir")
    p.add_argument("--force", action="store_true",
                   help="write into an existing directory that snncc did not create (nothing "
                   "else there is deleted), or replace a file that snncc names itself (the "
                   "default output beside the model, OUT.onnx.json) but did not write; inputs "
                   "are never overwritten")
    p.add_argument("--target", default="ort", choices=("qann", "ort", "loihi", "nir"),
                   help="qann: quantized-clip ANN; ort: ONNX Runtime SNN (default); "
                   "loihi: Loihi 2 netlist; nir: NIR file (IF/LIF networks; NIR neurons "
                   "reset to zero, so converted ones export only with --allow-lossy)")
    p.add_argument("--allow-lossy", action="store_true",
                   help="nir: export soft-reset neurons although NIR resets to v_reset (the "
                   "report notes the difference)")
    p.add_argument("-T", "--timesteps", type=int, default=None,
                   help="timesteps, 1..64 (bitserial 1..16: its levels are 2^T - 1; default 4, "
                   "or the T snncc finetune trained the model for)")
    p.add_argument("--neuron", default=None, choices=NEURON_KEYS,
                   help="spiking neuron model (default if: binary spikes, what every target and "
                   "stock neuromorphic neurons run; mt, gn and bitserial send graded spikes and "
                   "stay closer to the ANN at T <= 4: examples/results/defaults.md)")
    p.add_argument("--levels", "-L", type=int, default=None,
                   help="quantization levels L of the clip (default: what the neuron needs at "
                   "T, e.g. T for if, 2^T-1 for bitserial; 8 for --target qann)")
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", metavar="FILE", help=".npy or .npz of input samples (N x shape), "
                   "preprocessed as for inference; or a folder: images in one subfolder per "
                   "class (PNG/JPEG, read as pixel/255, then --mean/--std) or an x.npy")
    g.add_argument("--mean", type=parse_floats, metavar="M[,M,..]",
                   help="for a --calib folder: per-channel mean subtracted from pixel/255, "
                   "e.g. 0.485,0.456,0.406 for ImageNet models (default none)")
    g.add_argument("--std", type=parse_floats, metavar="S[,S,..]",
                   help="for a --calib folder: per-channel std divided by, e.g. "
                   "0.229,0.224,0.225 (default none)")
    g.add_argument("--calib-method", default=None, choices=("snn", "mse", "percentile", "max"),
                   help="how lambda is chosen: snn = SNN-aware, layer by layer, lambda and bias "
                   "from the simulated spiking layer (default); mse / percentile / max = from "
                   "the ANN activations only")
    g.add_argument("--percentile", type=float, default=None,
                   help="percentile for --calib-method percentile (default 99.99)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="one lambda per channel (default, except for neurons with one threshold "
                   "per layer: lif)")
    x.add_argument("--per-layer", dest="per_channel", action="store_false",
                   help="one lambda per layer")
    g.add_argument("--calib-samples", type=int, default=256,
                   help="at most this many samples are used (default 256)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--fidelity-samples", type=int, default=None, metavar="N",
                   help="hold out the last N calibration samples to measure ANN vs QANN vs SNN "
                   "(default: those beyond --calib-samples, at least 32 and at most 64, so 32 of "
                   "a 256-sample file; at least 32 samples stay for calibration). The estimate "
                   "holds for data like those samples: drawn from the training set, it reads "
                   "high")
    x.add_argument("--no-fidelity", dest="fidelity_samples", action="store_const", const=0,
                   help="skip the fidelity estimate (the held-out samples calibrate too, up to "
                   "--calib-samples); same as --fidelity-samples 0")
    g.add_argument("--min-agreement", type=float, metavar="X",
                   help="fail (SNN-E370, exit 3, nothing written) when the SNN agrees with the "
                   "ANN on fewer than this fraction of held-out samples, e.g. 0.97 (the main "
                   "estimate: a Loihi compile's stock-neuron variant is warned about, not gated)")
    g = p.add_argument_group("conversion")
    g.add_argument("--input-shape", type=_parse_shape, action="append", default=[],
                   metavar="[NAME=]1x3x32x32", help=shape_help)
    x = g.add_mutually_exclusive_group()
    x.add_argument("--bias-shift", dest="bias_shift", action="store_true", default=None,
                   help="fold +lambda/(2L) into the bias feeding each activation "
                   "(default: on for bitserial)")
    x.add_argument("--no-bias-shift", dest="bias_shift", action="store_false")
    g.add_argument("--maxpool", default="auto", choices=("auto", "avg", "gate"),
                   help="auto: exact where possible (a pool after a first-layer activation "
                   "moves in front of it; bit-serial and T = 1: every pool right after a neuron), "
                   "else a window gate: the unit with the largest spike total of the window "
                   "passes its train, so the pooled rate is the largest rate (folded schedules; "
                   "streaming gates with a running sum); avg: replace by AveragePool (models "
                   "trained that way); gate: the running-sum spike gate for every pool after a "
                   "neuron, in every schedule")
    g.add_argument("--allow-analog", action="store_true",
                   help="keep ops with no spiking form (Sigmoid, LRN, ...) as analog islands")
    g.add_argument("--schedule", default="auto",
                   choices=("auto", "folded", "window", "streaming"),
                   help="auto (default): window where it is exact (bit-serial), else folded; "
                   "folded: time in the batch, one run; window: linear layers run once per "
                   "window on the decoded value where the next neuron sees only the window mean "
                   "(same spikes, fewer MACs); streaming: one-step model with explicit "
                   "membrane state")
    g.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                   help="streaming: steps one call runs (default 1): the model takes K frames "
                   "time-major ([K*N, ...]) and returns the K per-step outputs, the membrane "
                   "state carried from call to call; K must divide the window's steps. One "
                   "call of K = T steps costs about what the folded model costs per window "
                   "(MNIST CNN: 1.01-1.09x), where T one-step calls cost up to 2.4x that")
    g = p.add_argument_group("neuron parameters")
    g.add_argument("--tau", type=int, help="gn: members per group, 1..2^23 (the op's range), "
                   "with tau*T <= 2^24 levels like -L (default 4: L = 4T, or L / T when -L is "
                   "given); srp: pre-run steps, 0..64 (default 4; like -T: every pre-run slice "
                   "holds the whole batch of activations)")
    g.add_argument("--mt-preset", choices=("equidistant", "pow2"),
                   help="mt threshold preset (default equidistant)")
    g.add_argument("--mt-mode", choices=("parallel", "cascade"),
                   help="mt firing mode (default: parallel for equidistant, cascade for pow2)")
    g.add_argument("--mt-n", type=int, help="mt: number of thresholds, 1..64, default 4 (each "
                   "slice "
                   "compares with all n, so time grows with n; more equidistant levels per "
                   "slice: --neuron gn); pow2 also needs (2^n - 1)*T <= 2^24")
    g.add_argument("--neuron-param", type=_parse_kv, action="append", metavar="KEY=VALUE",
                   help="any other neuron parameter (repeatable)")
    g = p.add_argument_group("diagnostics")
    g.add_argument("--report", metavar="FILE.json",
                   help="write the compile report: one row per pass with changes, counts, "
                   "declined sites with reasons, and time")
    g.add_argument("--dump-after", action="append", metavar="PASS",
                   help="write the graph after PASS (or 'all') next to the output")
    g.add_argument("--verify", default="ends", choices=("off", "ends", "each"),
                   help="structural check of the graph (every input produced, unique names, "
                   "acyclic and sorted) at the ends of the pipeline (default), after each pass, "
                   "or off")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success but warnings (stderr), e.g. low fidelity")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", parents=[common],
                       help="run a compiled model on inputs; print outputs and spikes",
                       description="Run a compiled .onnx (ONNX Runtime, with the C++ kernels "
                       "when built), a Loihi output directory (bit-accurate simulator) or a "
                       ".nir file (as NIR defines it, the outputs Norse gives).")
    p.add_argument("model", help="compiled .onnx file, Loihi output directory or .nir file")
    p.add_argument("--input", required=True, metavar="X.npy|X.npz|DIR",
                   help="inputs (.npy, or .npz with the input name or 'x'; labels 'y' optional; "
                   "or a folder holding x.npy and y.npy)")
    p.add_argument("-o", "--output", metavar="OUT.npz",
                   help="save the outputs ('outputs': the first; 'output/NAME': each by name) "
                        "and each layer's spike events summed over all samples and timesteps "
                        "('events/LAYER', one number)")
    p.add_argument("--no-library", action="store_true",
                   help="use the portable ONNX function bodies instead of the C++ kernels")
    p.add_argument("--batch-size", type=int, default=16,
                   help="samples per ONNX Runtime call (default 16: the [T*N, ...] tensors of a "
                   "folded SNN stay cache-sized; bench/results/window.md)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--semantics", choices=("emulated", "hardware"), default=None,
                   help="Loihi directory: 'emulated' (default) runs each neuron's own rule as a "
                   "microcoded neuron; 'hardware' runs stock Loihi CUBA neurons (IF, LIF, the "
                   "readout) as network.net deploys them (v from 0, fire on >, reset to 0; "
                   "bit-equal to Lava on the layers network.net holds); MT, GN and SRP (no "
                   "network.net) keep their own rule with > and a reset to 0, bit-serial its own "
                   "rule: the whole network, also past a residual net's NetX prefix")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", parents=[common],
                       help="write a Markdown/HTML report with plots",
                       description="Spike rates, SynOps and energy per layer, core use and "
                       "accuracy against T.")
    try:
        from snncc.report import add_report_arguments
        add_report_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("finetune", parents=[common],
                       help="QCFS fine-tuning / IIR training (needs torch)",
                       description="Fine-tune an ONNX CNN with trainable-lambda QCFS activations "
                       "(optionally with the spike-count regulariser), or train LIF/MT SNNs "
                       "directly, and export a graph snncc compiles without calibration.")
    try:
        from snncc.train.cli import add_finetune_arguments
        add_finetune_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=cmd_finetune)
    parser.commands = sub.choices   # name -> subparser, for its own usage line
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary file is removed on the way out."""


#: the signals that stopped commands of this process, newest last (:func:`entry` ends by it)
_SIGNALLED: list[int] = []


def _on_sigterm(signum, frame) -> None:
    from snncc.outputs import note_signal

    _SIGNALLED.append(signum)
    note_signal(Terminated)   # so that it is not lost if raised where Python drops it
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    from snncc.outputs import note_signal

    _SIGNALLED.append(signum)
    note_signal(KeyboardInterrupt)
    raise KeyboardInterrupt()


def _other_rank(args: argparse.Namespace | None) -> bool:
    """A torchrun process of finetune other than rank 0 (WORLD_SIZE > 1, RANK > 0): its interrupt
    message is rank 0's to say, its errors carry its rank. Elsewhere a RANK variable (another
    launcher's) changes nothing."""
    try:
        return getattr(args, "command", "") == "finetune" and \
            int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


def _interrupted(exc: KeyboardInterrupt, before: int, args: argparse.Namespace | None = None
                 ) -> int:
    """The message on Ctrl-C or SIGTERM: what this command (its outputs installed after the
    first ``before`` of the thread's) had already written, and for a finetune checkpoint how to
    go on from it. Under torchrun only rank 0 says it (rank 1 had said 'nothing was written'
    after rank 0 named the checkpoint: :func:`_other_rank`)."""
    from pathlib import Path

    from snncc.outputs import installed, take_signal

    take_signal()   # handled here
    done = list(dict.fromkeys(str(p) for p in installed()[before:]))   # a checkpoint: once
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    # on a line of its own: a progress bar may hold the cursor at the end of its line
    checkpoint = getattr(args, "checkpoint", None) if getattr(args, "command", "") == \
        "finetune" else None
    more = (f"; go on with the same command and --resume {checkpoint}" if checkpoint and any(
        Path(d).resolve() == Path(checkpoint).resolve() for d in done) else "")
    if not _other_rank(args):
        command = getattr(args, "command", None)
        prog = f"snncc {command}" if command else "snncc"
        print(f"\n{prog}: {what}; " + (f"already written: {', '.join(done)}" if done
                               else "nothing was written") + more, file=sys.stderr)
    return 143 if isinstance(exc, Terminated) else 130


def main(argv: Sequence[str] | None = None) -> int:
    from snncc.outputs import installed, signals_recorded, take_signal

    before = len(installed())
    # SIGTERM cleans up like Ctrl-C, except under torchrun, which stops ranks waiting in a
    # collective with SIGTERM (a Python handler would not run until the collective returned)
    previous = interrupt = None
    hangup = None   # a closed terminal (SIGHUP) cleans up like SIGTERM; under nohup it is ignored
    if not _torchrun_finetune(sys.argv[1:] if argv is None else list(argv)):
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
            if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
                hangup = signal.signal(signal.SIGHUP, _on_sigterm)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                interrupt = signal.signal(signal.SIGINT, _on_sigint)
        except ValueError:  # main() called from a thread other than the main one
            pass
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    root = logging.getLogger()   # left as it was: main() also runs inside notebooks and apps
    root_state = root.level, list(root.handlers)
    # the main thread's command records its signals (a worker thread's main() gets none)
    armed = previous is not None or hangup is not None or interrupt is not None
    try:
        try:
            with cli_wording(), (signals_recorded() if armed else contextlib.nullcontext()):
                try:
                    code = _main(argv, before)
                except SystemExit as exc:   # --help / --version: what argparse printed counts
                    if not (isinstance(sys.stdout, _PipeSafe) and sys.stdout.failed):
                        raise
                    code = exc.code if isinstance(exc.code, int) else 0
                lost = take_signal() if armed else None
            if lost is not None:   # its exception was dropped (raised inside a __del__)
                return _interrupted(lost(), before)
            failed = sys.stdout.failed if isinstance(sys.stdout, _PipeSafe) else None
            if failed is not None and code == 0:
                print(f"snncc: error: [SNN-E369] writing the standard output failed ({failed}); "
                      "what it printed is incomplete. Hint: free space where it is redirected",
                      file=sys.stderr)
                return 2
            return code
        finally:
            root.setLevel(root_state[0])
            for handler in [h for h in root.handlers if h not in root_state[1]]:
                root.removeHandler(handler)
            _restore_handlers(previous, hangup, interrupt)
            _restore(streams)
    except KeyboardInterrupt as exc:  # came just as _main returned, past its own handler
        _restore_handlers(previous, hangup, interrupt)   # (the restore above may be what it
        return _interrupted(exc, before)                 # cut short)


def _torchrun_finetune(argv: Sequence[str]) -> bool:
    """finetune under torchrun (TORCHELASTIC_RUN_ID, or WORLD_SIZE above 1), which keeps the
    default SIGTERM. A WORLD_SIZE that a cluster exports to every process had turned off the
    cleanup of every command (a report's scratch folder stayed in TMPDIR)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "finetune":
        return False
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def entry() -> None:
    """The console script and ``python -m snncc``: exit with :func:`main`'s code, except that a
    command a signal stopped ends, once it has cleaned up, by that same signal, as programs do:
    a shell loop over snncc commands went on to the next one after Ctrl-C (bash stops a loop
    only when its child dies of SIGINT, not when it exits with 130)."""
    code = main()
    if code in (130, 143) and _SIGNALLED:
        signum = _SIGNALLED[-1]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(code)


def _restore_handlers(sigterm, sighup, sigint) -> None:
    for sig, handler in ((signal.SIGTERM, sigterm), (signal.SIGHUP, sighup),
                         (signal.SIGINT, sigint)):
        if handler is not None:
            signal.signal(sig, handler)


class _PipeSafe:
    """stdout / stderr for one command: when the reader of a pipe leaves (``snncc report ... |
    head``) or the terminal hangs up, what is printed after is dropped and the work goes on (or
    the SIGHUP cleanup runs), so the outputs are still written and the exit code is the
    command's own (a BrokenPipeError had ended finetune and report with exit 0 and no output;
    EIO after a hang-up turned the 'terminated' message into a traceback)."""

    def __init__(self, stream):
        self.stream, self.gone = stream, stream is None   # None: started with it closed (>&-)
        self.failed: OSError | None = None   # a write that failed otherwise (a full disk)
        self.errors = getattr(stream, "errors", None)
        if self.errors == "strict":   # a name or path the terminal's encoding cannot show
            try:                      # (LC_ALL=C, PYTHONUTF8=0) had been an internal error
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, OSError):
                self.errors = None

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                # a name from a model never drives the terminal: its ESC sequences (window
                # title, clearing the screen) and other controls print as escapes; snncc's own
                # output uses none of them but newline, tab and carriage return
                return self.stream.write(escape_controls(text, keep_layout=True))
            except OSError as exc:   # EPIPE: the reader left; EIO: the terminal hung up
                self.gone = True
                if exc.errno not in (errno.EPIPE, errno.EIO):   # (> /dev/full had exit 0)
                    self.failed = exc
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError as exc:
                self.gone = True
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    self.failed = exc

    def __getattr__(self, name: str):
        if self.stream is None:   # a closed stream: no terminal, nothing to report
            if name == "isatty":
                return lambda: False
            raise AttributeError(name)
        return getattr(self.stream, name)


def _restore(streams) -> None:
    """Put back the streams :func:`main` wrapped; one whose reader left becomes /dev/null (the
    interpreter's final flush would report the broken pipe otherwise)."""
    for name, original in zip(("stdout", "stderr"), streams):
        current = getattr(sys, name)
        if isinstance(current, _PipeSafe):
            if current.errors == "strict":
                try:
                    current.stream.reconfigure(errors="strict")
                except (AttributeError, ValueError, OSError):
                    pass
            if current.gone:
                try:
                    original = open(os.devnull, "w")
                except OSError:
                    pass
            setattr(sys, name, original)


class _LogFormat(logging.Formatter):
    """snncc's own warnings read like the CLI's (``snncc run: warning: ...``); ``-v`` logs and
    other libraries' records keep the logger's name; a logged exception keeps its traceback."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        own = record.name == "snncc" or record.name.startswith("snncc.")
        if own and record.levelno >= logging.WARNING:
            text = f"snncc {self.command}: {record.levelname.lower()}: {record.getMessage()}"
        else:
            text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Stderr(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (a caller may have replaced it since)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr(command: str, verbose: bool) -> None:
    """One stderr handler for the process, naming the current command (main() may run several
    commands in one process: tests, notebooks)."""
    root = logging.getLogger()
    mine = [h for h in root.handlers if isinstance(h.formatter, _LogFormat)]
    if mine:
        mine[0].formatter.command = command
    else:
        handler = _Stderr()
        handler.setFormatter(_LogFormat(command))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _main(argv: Sequence[str] | None, before: int) -> int:
    try:
        parser = build_parser()
        given = sys.argv[1:] if argv is None else list(argv)
        if not given:   # a bare `snncc`: the command list, not only "COMMAND is required"
            parser.print_help(sys.stderr)
            return 2
        args, extra = parser.parse_known_args(given)
        if extra:   # said with the command's own usage line, not the top-level one
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "quiet", False) and args.verbose:   # -v is global, -q the command's
            parser.commands[args.command].error("argument -q/--quiet: not allowed with "
                                                "argument -v/--verbose")
    except KeyboardInterrupt as exc:  # Ctrl-C while the modules load
        return _interrupted(exc, before)
    _log_to_stderr(args.command, args.verbose)
    try:
        if not (args.verbose or args.debug):  # ORT's graph-optimizer warnings ("cannot remove
            import onnxruntime  # node ...") say nothing a user can act on; -v / --debug keep them

            onnxruntime.set_default_logger_severity(3)
    except KeyboardInterrupt as exc:  # Ctrl-C while ONNX Runtime loads
        return _interrupted(exc, before)
    except ImportError as exc:   # its extension turns a Ctrl-C into "initialization failed"
        if isinstance(exc.__context__, KeyboardInterrupt) or \
                isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(KeyboardInterrupt(), before)
        raise
    try:
        return args.func(args)
    except SnnccError as exc:
        if args.debug:   # the traceback, and still a user error's exit code (it had been 1)
            import traceback

            # formatted, not printed: Python 3.13+ colours a printed traceback on a terminal,
            # and the stream wrapper would show its codes as text
            sys.stderr.write(traceback.format_exc())
        # torchrun: a rank above 0 says which it is (an error of its own shard is no duplicate)
        rank = f" [rank {os.environ.get('RANK')}]" if _other_rank(args) else ""
        said = str(exc)   # "[SNN-E804] finetune: ..." under "snncc finetune: error:" said it twice
        said = said.replace(f"] {args.command}: ", "] ", 1) if said.startswith("[") else said
        print(f"snncc {args.command}{rank}: error: {said}", file=sys.stderr)
        # a fidelity gate that failed is not a usage slip: a pipeline tells them apart by code
        return 3 if isinstance(exc, FidelityError) else 2
    except KeyboardInterrupt as exc:
        return _interrupted(exc, before, args)
    except BrokenPipeError:  # e.g. `snncc run ... | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # an internal bug: say so briefly, trace only with --debug
        if args.debug:
            raise
        print(f"snncc {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "Rerun with --debug for the traceback and report it with the model.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
