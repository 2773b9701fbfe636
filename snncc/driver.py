"""The compile driver: validate options, run the pipeline, let the backend check then emit.

Data flows one way: front end (``ir.load``) -> passes (``pipeline.default_pipeline``) -> backend.
Nothing is written to the output path unless compilation succeeds: files are written to a
temporary sibling and renamed into place, directories likewise.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from snncc import __version__, fidelity, ir
from snncc.context import MAX_LEVELS, MAX_TIMESTEPS, TARGETS, CompileContext, CompileOptions
from snncc.errors import (BackendCapabilityError, Diagnostic, OptionError, OutputPathError,
                          SnnccError, UnsupportedNodeError, api_wording, in_cli)
from snncc.outputs import (KNOWN_SUFFIXES, Output, atomic_dir, atomic_file, check_outputs,
                           check_suffix, default_output,
                           file_output, temp_dir, transaction, write_errors)
from snncc.passes.calibrate import MIN_CALIB_SAMPLES
from snncc.pipeline import DumpAfter, PipelineReport, Snapshot, default_pipeline

__all__ = ["make_options", "compile_model", "rehearse", "declared_outputs", "CompileResult",
           "MAX_TIMESTEPS", "CALIB_METHODS"]

log = logging.getLogger("snncc.driver")

CALIB_METHODS = ("max", "percentile", "mse", "snn")
MAXPOOL_MODES = ("auto", "avg", "gate")
SCHEDULES = ("auto", "folded", "window", "streaming")


def _choice(name: str, value: Any, allowed: Sequence[Any], code: str) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {name} {value!r}", code=code,
                          hint="choose one of: " + ", ".join(map(str, allowed)))


_INT_OPTIONS = ("timesteps", "levels", "fidelity_samples", "calib_max_samples", "opset",
                "steps_per_call")
_BOOL_OPTIONS = ("bias_shift", "calib_per_channel", "allow_analog", "allow_lossy")


def _api_type_error(name: str, value: Any, want: str) -> OptionError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."   # a model's bytes, say
    return OptionError(f"option {name}={shown} ({type(value).__name__}) must be {want}",
                       code="SNN-E349", hint=f"pass {name} as {want}")


def _typed(kw: dict[str, Any]) -> dict[str, Any]:
    """Python-API values of the right type (numpy scalars become Python ones), else SNN-E349:
    e.g. levels=4.5 or timesteps=True would otherwise compile something else than asked."""
    kw = dict(kw)
    for name in _INT_OPTIONS:
        value = kw.get(name)
        if value is None and name == "calib_max_samples" and name in kw:
            raise _api_type_error(name, value, "an integer (256)")
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise _api_type_error(name, value, "an integer")
        kw[name] = int(value)
    for name in _BOOL_OPTIONS:
        value = kw.get(name)
        if value is not None:
            if not isinstance(value, (bool, np.bool_)):
                raise _api_type_error(name, value, "True, False or None")
            kw[name] = bool(value)
    value = kw.get("calib_percentile")
    if value is not None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise _api_type_error("calib_percentile", value, "a number")
        kw["calib_percentile"] = float(value)
    for name in ("calib_mean", "calib_std"):
        value = kw.get(name)
        if value is not None:
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                value = [value]
            if isinstance(value, np.ndarray):
                value = value.reshape(-1).tolist()
            if not isinstance(value, (list, tuple)) or not value or not all(
                    isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                    for v in value):
                raise _api_type_error(name, value, "a number or a non-empty sequence of numbers")
            kw[name] = tuple(float(v) for v in value)
    value = kw.get("calib_path")
    if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
        raise _api_type_error("calib_path", value, "a path (str or os.PathLike) or None")
    if value is not None:
        kw["calib_path"] = os.path.expanduser(os.fspath(value))   # '~/' as the outputs take it
    for name in ("input_shapes", "neuron_params"):
        if name in kw and kw[name] is None:   # none given (inspect's own calls pass None)
            kw[name] = {}
        if name in kw and not isinstance(kw[name], Mapping):
            raise _api_type_error(name, kw[name], "a mapping (dict)")
    for name in ("target", "neuron", "calib_method", "maxpool", "schedule"):
        if name in kw and not isinstance(kw[name], str):
            raise _api_type_error(name, kw[name], "a string")
    if "derived_from" in kw:   # make_options' own record of what it derived, not an option
        raise OptionError("make_options: derived_from is set by make_options itself",
                          code="SNN-E349", hint="leave it out")
    params = kw.get("neuron_params")
    if params:
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise _api_type_error("neuron_params", params, "a dict with string keys")
        # a copy: a dict the caller goes on changing (a loop over values) must not change
        # options already made; numpy scalars as Python ones (the report's JSON)
        kw["neuron_params"] = {k: v.item() if isinstance(v, np.generic) else v
                               for k, v in params.items()}
    if "opset" in kw and kw["opset"] is None:
        raise _api_type_error("opset", None, "an integer (17)")
    if "opset" in kw and not 13 <= kw["opset"] <= 17:
        # the passes write opset-17 forms; onnx's converter takes a model down to 13 at best
        raise OptionError(f"option opset={kw['opset']} is outside 13..17", code="SNN-E349",
                          hint="the passes write opset 17 (the default); a lower one is only "
                          "for an older runtime")
    shapes = kw.get("input_shapes") or {}
    for name, dims in shapes.items():
        if isinstance(dims, np.ndarray):
            dims = dims.tolist()
        if isinstance(dims, (str, bytes)) or not isinstance(dims, (list, tuple)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
                for d in dims):
            raise _api_type_error(f"input_shapes[{name!r}]", dims, "a sequence of integers")
    if shapes:
        kw["input_shapes"] = {k: tuple(int(d) for d in (v.tolist() if isinstance(v, np.ndarray)
                                                          else v)) for k, v in shapes.items()}
    return kw


def make_options(**kw: Any) -> CompileOptions:
    """Build validated CompileOptions; resolves levels and bias shift from the chosen neuron.

    The keywords are the fields of :class:`snncc.context.CompileOptions` (the CLI flag in
    brackets): ``target`` (--target), ``timesteps`` (-T), ``neuron``, ``levels`` (-L),
    ``calib_path`` (--calib), ``calib_method``, ``calib_percentile``, ``calib_per_channel``,
    ``calib_max_samples`` (--calib-samples), ``calib_mean``/``calib_std`` (--mean/--std),
    ``fidelity_samples`` (None = automatic, the default here as in the CLI: with ``calib_path``
    the samples beyond ``calib_max_samples`` measure fidelity; 0 = --no-fidelity, which
    ``CompileOptions()`` itself defaults to), ``input_shapes``, ``bias_shift``,
    ``maxpool``, ``allow_analog``, ``allow_lossy``, ``schedule``, ``steps_per_call``
    (--steps-per-call), ``neuron_params`` (--neuron-param, --tau, --mt-*). Values of the wrong
    type (Python API) are SNN-E349; numpy integers are taken as ints."""
    kw.setdefault("fidelity_samples", None)   # the CLI's default (a user's API call gave
    # another calibration set than the same CLI command, and no low-fidelity warning)
    try:
        opts = CompileOptions(**_typed(kw))
    except TypeError as exc:  # an unknown keyword
        raise OptionError(f"make_options: {exc}", code="SNN-E349",
                          hint="the options are the fields of snncc.context.CompileOptions"
                          ) from None
    _choice("target", opts.target, TARGETS, "SNN-E350")
    _choice("calibration method", opts.calib_method, CALIB_METHODS, "SNN-E351")
    _choice("max-pool treatment", opts.maxpool, MAXPOOL_MODES, "SNN-E352")
    _choice("schedule", opts.schedule, SCHEDULES, "SNN-E353")
    if not isinstance(opts.timesteps, int) or opts.timesteps < 1:
        raise OptionError(f"-T must be a positive integer, got {opts.timesteps!r}", code="SNN-E354",
                          hint=f"give -T from 1 to {MAX_TIMESTEPS} (snncc targets 1 to 8); "
                          "try -T 4")
    if opts.timesteps > MAX_TIMESTEPS:
        raise OptionError(f"-T {opts.timesteps} is beyond the supported range 1..{MAX_TIMESTEPS}",
                          code="SNN-E354", hint=f"give -T from 1 to {MAX_TIMESTEPS}; snncc is "
                          "built for 1 to 8 (-T 4 is a good start)")
    if opts.levels is not None and not (1 <= opts.levels <= MAX_LEVELS):
        raise OptionError(f"--levels must be in 1..{MAX_LEVELS} (float32 counts exactly up to "
                          f"2^24), got {opts.levels}", code="SNN-E355",
                          hint="QCFS uses L = 4, 8 or 16")
    if not (50.0 < opts.calib_percentile <= 100.0):
        raise OptionError(f"--percentile must be in (50, 100], got {opts.calib_percentile}",
                          code="SNN-E356", hint="typical values are 99.9 and 99.99")
    if opts.calib_path is not None and not Path(opts.calib_path).exists():
        raise OptionError(f"calibration data '{opts.calib_path}' does not exist", code="SNN-E357",
                          hint="pass a .npy or .npz file of input samples, or an image folder")
    images = bool(opts.calib_path) and Path(opts.calib_path).is_dir() and \
        not (Path(opts.calib_path) / "x.npy").is_file()
    if (opts.calib_mean or opts.calib_std) and not images:
        raise OptionError("--mean/--std normalise images read from a --calib image folder, and "
                          + (f"'{opts.calib_path}' holds arrays" if opts.calib_path else
                             "no --calib is given"), code="SNN-E371",
                          hint="a .npy/.npz holds samples as the model takes them: normalise them "
                          "before saving, or drop --mean/--std")
    if not isinstance(opts.steps_per_call, int) or opts.steps_per_call < 1:
        raise OptionError(f"--steps-per-call must be a positive integer, got "
                          f"{opts.steps_per_call!r}", code="SNN-E375",
                          hint="e.g. --steps-per-call 4 with --schedule streaming (1: one step "
                          "per call, the default)")
    if opts.steps_per_call > 1 and (opts.schedule != "streaming" or opts.target != "ort"):
        raise OptionError(f"--steps-per-call {opts.steps_per_call} sets the steps of one call "
                          "of a streaming model, and this compile is "
                          + (f"for --target {opts.target}" if opts.target != "ort"
                             else f"--schedule {opts.schedule}"), code="SNN-E375",
                          hint="add --schedule streaming (ORT target), or drop --steps-per-call: "
                          "a folded or window model runs the whole window in one call already")
    if opts.fidelity_samples is not None and (not isinstance(opts.fidelity_samples, int)
                                              or opts.fidelity_samples < 0):
        raise OptionError(f"--fidelity-samples must be 0 or more, got {opts.fidelity_samples!r}",
                          code="SNN-E366", hint="e.g. --fidelity-samples 64, or --no-fidelity")
    if opts.calib_max_samples is not None and not (
            isinstance(opts.calib_max_samples, int) and opts.calib_max_samples >= 1):
        raise OptionError(f"--calib-samples must be at least 1, got {opts.calib_max_samples!r}",
                          code="SNN-E365", hint="e.g. --calib-samples 256")
    from snncc.neurons.registry import validate_neuron_params
    validate_neuron_params(opts)  # SNN-E301/E302/E309/E314 before any work
    per_channel = opts.calib_per_channel
    if opts.target == "qann":
        levels = opts.levels or 8
        shift = bool(opts.bias_shift)
        per_channel = True if per_channel is None else per_channel
    else:
        from snncc.neurons import get_neuron

        spec = get_neuron(opts.neuron)
        levels = opts.levels or spec.levels_for(opts.timesteps, opts) or 8
        shift = spec.needs_bias_shift if opts.bias_shift is None else opts.bias_shift
        if per_channel is None:
            per_channel = spec.per_channel_threshold
    return replace(opts, levels=levels, bias_shift=shift, calib_per_channel=per_channel,
                   derived_from=(_derivation_key(opts),
                                 (opts.levels, opts.bias_shift, opts.calib_per_channel),
                                 (levels, shift, per_channel)))


def _derivation_key(opts: CompileOptions) -> tuple:
    return (opts.target, opts.neuron, opts.timesteps,
            repr(sorted((opts.neuron_params or {}).items())))


_DERIVED = ("levels", "bias_shift", "calib_per_channel")


def _home(path: str | os.PathLike | None) -> str | Path | None:
    """``path`` with a leading ``~`` expanded (a str stays a str), or None."""
    if path is None:
        return None
    return os.path.expanduser(path) if isinstance(path, str) else Path(
        os.path.expanduser(os.fspath(path)))


def _revalidated(options: CompileOptions) -> CompileOptions:
    """``options`` as make_options builds them from their current fields: every check runs, and
    levels / bias shift / per-channel are derived again from the current target, neuron and T
    unless they were given (to make_options, or changed since, e.g. by dataclasses.replace)."""
    fields = {k: v for k, v in options.__dict__.items() if k != "derived_from"}
    if options.derived_from:
        if not (isinstance(options.derived_from, tuple) and len(options.derived_from) == 3):
            raise OptionError("derived_from is make_options' own record, not an option",
                              code="SNN-E349", hint="build options with make_options(...) and "
                              "change them with dataclasses.replace, leaving derived_from alone")
        key, given, derived = options.derived_from
        for name, was_given, was_derived in zip(_DERIVED, given, derived):
            if fields[name] == was_derived:      # untouched since make_options
                fields[name] = was_given if key != _derivation_key(options) else was_derived
    return make_options(**fields)


@dataclass
class CompileResult:
    """What :func:`compile_model` wrote and measured. ``output``: the model file or Loihi
    folder; ``report``: the ``--report`` JSON as a dict (keys ``passes``, ``options``,
    ``fidelity`` when estimated, ``synops``, the target's own section, ``seconds``...; the
    README and docs/netlist.md section 7 describe ``fidelity`` and ``synops``); ``files``: the
    files written (the output's, its manifest, a dump; not ``report_path``)."""

    output: Path
    report: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    #: what the CLI shows on stderr (e.g. a fidelity below the warning level, with hints)
    warnings: list[str] = field(default_factory=list)


def _quant_table(ctx: CompileContext) -> dict[str, Any]:
    return {name: p.to_json() for name, p in sorted(ctx.quant.items())}


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def declared_outputs(out: Path, options: CompileOptions, *, report_path=None,
                     dump_after: Sequence[str] = (), dump_dir=None,
                     default: bool = False) -> list[Output]:
    """Every path a compile writes: the output, the ORT manifest, the report, the dump folder.
    ``default``: the output is the name snncc chose beside the model (no ``-o``): an existing
    file there is replaced only when snncc compiled it (SNN-E364 otherwise)."""
    kind = "dir" if options.target == "loihi" else "file"
    names: tuple[str, ...] = ()
    if kind == "dir":
        from snncc.backends.registry import get_backend

        names = get_backend(options.target).output_names
    outs = [Output(out, kind, "-o (default: beside the model)" if default else "-o", names=names,
                   implied="compiled" if default and kind == "file" else "",
                   example="model.nir" if options.target == "nir" else "model.onnx")]
    if options.target == "ort" and out.name:  # no name: the -o check reports it
        outs.append(Output(out.with_name(out.name + ".json"), "file", "-o (manifest)",
                           implied="manifest"))
    if report_path:
        outs.append(Output(Path(report_path), "file", "--report", "report.json"))
    if dump_after:   # names: what sets a dump folder apart from another snncc folder
        dumps = tuple(f"after-{p.name}.onnx" for p in default_pipeline(options).passes)
        outs.append(Output(Path(dump_dir or out.parent / f"{out.name}.dump"), "dir",
                           "--dump-after", names=dumps))
    return outs


#: What each target writes, and the suffixes that name something else (a user's slip: a Loihi
#: folder called model.onnx, an ONNX model called x.npz).
_OUTPUT_KIND = {"ort": ("an ONNX model", ".onnx"), "qann": ("an ONNX model", ".onnx"),
                "nir": ("a NIR file", ".nir"), "loihi": ("a folder (network.net, netlist.json, ...)",
                                                         ".loihi")}
_OTHER_SUFFIXES = KNOWN_SUFFIXES


def _check_output_suffix(out: Path, options: CompileOptions) -> None:
    """Refuse (SNN-E372) an output named with the suffix of another kind of file."""
    what, suffix = _OUTPUT_KIND.get(options.target, ("", ""))
    got = out.suffix.lower()
    if suffix and got != suffix and got in _OTHER_SUFFIXES:
        raise OutputPathError(
            f"-o '{out}': the {options.target} target writes {what}, and '{got}' names another "
            "kind of file", code="SNN-E372",
            hint=f"name it {out.with_suffix(suffix).name}"
            + (f", or use --target ort to write {out.name}" if got == ".onnx" else ""))


def _as_pooled(qann: onnx.ModelProto, options: CompileOptions) -> onnx.ModelProto:
    """The QANN as the SNN pools: with ``--maxpool avg`` its MaxPools become AveragePools (a
    copy; the snapshot is left as it was)."""
    if options.maxpool != "avg" or not any(n.op_type == "MaxPool" for n in qann.graph.node):
        return qann
    from snncc.passes.schedule_timesteps import maxpools_to_average

    qann = onnx.ModelProto.FromString(qann.SerializeToString())
    maxpools_to_average(qann)
    return qann


def compile_model(model_path: str | os.PathLike, out: str | os.PathLike | None,
                  options: CompileOptions, *, report_path: str | os.PathLike | None = None,
                  dump_after: Sequence[str] = (), dump_dir: str | os.PathLike | None = None,
                  verify: str = "ends", force: bool = False,
                  min_agreement: float | None = None) -> CompileResult:
    """Compile ``model_path`` into ``out`` (a file for qann/ort/nir, a directory for loihi).

    ``out=None`` writes beside the model (:func:`snncc.outputs.default_output`). Every output is
    checked before any work starts (:func:`snncc.outputs.check_outputs`; ``force`` allows writing
    into a foreign non-empty directory) and written atomically.

    Two things only the CLI does: without ``-T`` it compiles a ``snncc finetune`` output at the T
    it was trained for (here, give ``timesteps``), and it warns when spiking options come with
    ``--target qann`` (here they are ignored: the QANN has no neurons or time).

    With calibration samples and ``options.fidelity_samples`` None (automatic: the samples beyond
    ``calib_max_samples``, 32 to 64) or above 0, the held-out samples measure
    ANN vs QANN vs SNN (:mod:`snncc.fidelity`) before anything is written; ``min_agreement``
    turns an SNN-ANN top-1 agreement below it into :class:`FidelityError` (nothing written).
    """
    start = time.perf_counter()
    if not isinstance(options, CompileOptions):
        raise _api_type_error("options", options, "CompileOptions from make_options(...)")
    options = _revalidated(options)   # built directly, or changed by dataclasses.replace
    for name, value in (("model_path", model_path), ("out", out), ("report_path", report_path),
                        ("dump_dir", dump_dir)):
        if (value is not None or name == "model_path") and not isinstance(value, (str,
                                                                                  os.PathLike)):
            raise _api_type_error(name, value, "a path (str or os.PathLike)")
    # '~/...' names the same file for reading as for writing (the outputs had expanded it, so
    # CompileResult.output named a path that did not exist, and a '~/' model was not found)
    model_path, out, report_path, dump_dir = (_home(v) for v in (model_path, out, report_path,
                                                                 dump_dir))
    if verify not in ("off", "ends", "each"):
        raise OptionError(f"verify={verify!r} is not one of off, ends, each", code="SNN-E349",
                          hint="verify='ends' (the default)")
    if isinstance(dump_after, str):
        dump_after = [dump_after]
    if not isinstance(dump_after, (list, tuple)) or not all(isinstance(d, str)
                                                             for d in dump_after):
        raise _api_type_error("dump_after", dump_after, "a pass name or a list of pass names")
    if not isinstance(force, (bool, np.bool_)):
        raise _api_type_error("force", force, "True or False")
    if min_agreement is not None:
        if isinstance(min_agreement, (bool, np.bool_)) or not isinstance(
                min_agreement, (int, float, np.number)):
            raise _api_type_error("min_agreement", min_agreement, "a number in [0, 1]")
        if not 0.0 <= min_agreement <= 1.0:
            raise OptionError(f"--min-agreement must be a fraction in [0, 1], got {min_agreement}",
                              code="SNN-E367", hint="e.g. --min-agreement 0.97")
        if not options.wants_fidelity:
            raise OptionError("--min-agreement needs the fidelity estimate: calibration samples "
                              "(--calib) and --fidelity-samples above 0", code="SNN-E368",
                              hint="drop --no-fidelity / pass --calib, or drop --min-agreement"
                              if in_cli() else "pass fidelity_samples=None (automatic, "
                              "make_options' default; CompileOptions() itself has 0) or N > 0 "
                              "and a calib_path, or drop min_agreement")
    default = out is None
    if out is None:
        out = default_output(model_path, options.target)
    elif options.target == "loihi":
        out = Path(out)
    else:
        out = file_output(out, example=default_output(model_path, options.target).name)
    check_outputs(declared_outputs(out, options, report_path=report_path, dump_after=dump_after,
                                   dump_dir=dump_dir, default=default),
                  [model_path, options.calib_path], force=force)
    _check_output_suffix(out, options)   # after E360: an input named as -o is said as such
    if report_path:
        check_suffix(report_path, "--report", "the compile report (JSON)", (".json",), "compile")
    backend = None
    if options.target != "qann":
        from snncc.backends.registry import get_backend

        backend = get_backend(options.target)
    options, fixed = _with_sample_shapes(model_path, options)
    shapes_said = [f"note: input '{k}' has free dims besides the batch: compiled for "
                   f"{'x'.join(map(str, v[1:]))} samples, the calibration samples' shape "
                   "(--input-shape to choose another)" for k, v in fixed.items()]
    if options.calib_path:
        _rehearse(model_path, options, backend)
    model = ir.load(model_path)
    ctx = CompileContext(options)
    dump = DumpAfter(dump_after, dump_dir or out.parent / f"{out.name}.dump") if dump_after else None
    fidelity_wanted = options.wants_fidelity
    snap = Snapshot((["canonicalize", "relu-to-quant-clip"] if fidelity_wanted else [])
                    + (["insert-neurons"] if options.target == "ort" else []))
    pipeline = default_pipeline(options, verify=verify,
                                instruments=[i for i in (dump, snap) if i is not None])
    known = [p.name for p in pipeline.passes]
    unknown = sorted(set(dump_after) - set(known) - {"all"})
    if unknown:
        raise OptionError(f"--dump-after names unknown pass(es) {', '.join(unknown)}",
                          code="SNN-E359", hint="choose from: all, " + ", ".join(known))
    try:
        rows: PipelineReport = pipeline.run(model, ctx)
    except UnsupportedNodeError as exc:   # without --calib there was no rehearsal
        raise _with_layout_problems(exc, model_path, options) from None

    artifact_report: dict[str, Any] = {}
    artifact = None
    files: list[Path] = []
    warnings: list[str] = shapes_said + _levels_warning(options, ctx) + \
        _bias_shift_warning(options)
    invalid = ir.checker_problem(model_path)
    if invalid:
        warnings.append(f"warning: onnx.checker rejects the input model ({invalid}), so ONNX "
                        "Runtime may refuse it too; snncc compiled it as written. Fix what the "
                        "checker names, or re-export the model")
    if backend is not None:
        diags = backend.check(model, ctx)
        if diags:
            raise BackendCapabilityError(f"the {backend.name} backend cannot express this model",
                                         diagnostics=diags,   # headed as the precheck heads it
                                         code=sorted({d.code for d in diags})[0])
    count_net = None
    if options.target == "ort":   # the SynOp count's netlist; its pool taps join the fidelity run
        from snncc.analysis.synops import artifact_netlist, pool_taps

        count_net = artifact_netlist(snap.proto("insert-neurons"), options, model)
        ctx.event_taps = pool_taps(count_net) if not isinstance(count_net, dict) else {}
    # a source that spikes already (snncc finetune --iir / --mt) has no ANN to compare with:
    # its graph is the SNN itself (ORT could not even run it without the kernel library)
    estimating = bool(fidelity_wanted and ctx.holdout)   # the snapshots exist only then
    spiking_source = estimating and any(n.domain == ir.SNN_DOMAIN
                                        for n in snap.proto("canonicalize").graph.node)
    if spiking_source:
        warnings.append("note: no fidelity estimate: the model spikes already (a snncc finetune "
                        "--iir or --mt output), so there is no ANN to compare with; its "
                        "accuracy is what snncc run measures on labelled data")
    fid = fidelity.estimate(snap.proto("canonicalize"), _as_pooled(snap.proto(
        "relu-to-quant-clip"), options), backend, model, ctx) \
        if estimating and not spiking_source else None
    if min_agreement is not None and fid is None and spiking_source:
        raise OptionError("--min-agreement: the model spikes already, so there is no ANN to "
                          "measure the agreement against", code="SNN-E368",
                          hint="drop --min-agreement; measure the accuracy with snncc run")
    if min_agreement is not None and fid is None:
        kept = min(MIN_CALIB_SAMPLES, options.calib_max_samples or MIN_CALIB_SAMPLES)
        raise OptionError("--min-agreement: no samples could be held out for the fidelity "
                          f"estimate (the calibration file needs more than {kept} samples)",
                          code="SNN-E368",
                          hint="give more calibration samples, or drop --min-agreement")
    if fid is not None:
        ops = {n.op_type for n in snap.proto("canonicalize").graph.node}
        trained = {p.levels for p in ctx.quant.values() if p.source == "pattern"}
        warnings += fidelity.check(fid, options, min_agreement, shlex.quote(str(model_path)),
                                   finetune=lambda: _finetune_takes(rows)
                                   and _finetune_loads(model_path), max_pools="MaxPool" in ops,
                                   trained_levels=min(trained) if trained else None)
    synops = _synops(snap, model, ctx, count_net) if options.target == "ort" else None
    with transaction():  # the output, its manifest, the dump and the report: all or none
        if backend is None:
            model.metadata["snncc.target"] = "qann"   # a QCFS graph's QANN has no other mark
            proto = _as_pooled(ir.to_proto(model, opset=options.opset), options)
            ir.check_onnx(proto)
            ir.save(proto, out)
            files = [out]
        else:
            artifact = _emit_atomically(backend, model, ctx, out)
            artifact_report = artifact.report
            files = artifact.files
        if synops is None and artifact is not None:
            synops = artifact.synops
        if fid is None and ctx.notes.get("nir", {}).get("lossy"):
            # (an --iir net's NIR file scored 42.5 % against its ORT SNN's 81.0 %, unsaid)
            spikes = any(r.counts.get("already_spiking") for r in rows.rows)   # an --iir net
            warnings.append("warning: the NIR file is a lossy export and no fidelity estimate "
                            "measured what it loses (" + (
                                "the model spikes already: there is no ANN to compare with"
                                if spikes else "it needs --calib samples") + "): compare snncc "
                            "run FILE.nir with the --target ort compile on labelled data")
        report = _compile_report(model_path, out, options, rows, ctx, artifact_report, fid,
                                 synops, start)
        # what stderr said, for a script that reads the report (a T = 1 compile's warning of a
        # 0.34 relative logit error had left no trace in it)
        said = [api_wording(w) for w in warnings + ctx.warnings]
        report["warnings"] = said
        if dump:
            files += dump.write()
        if report_path:
            _write_json_atomic(Path(report_path), report)
    # the passes' and emit's warnings too; worded for the caller (flags or keywords)
    return CompileResult(out, report, files, said)


def _compile_report(model_path, out: Path, options: CompileOptions, rows: PipelineReport,
                    ctx: CompileContext, artifact_report: dict[str, Any], fid, synops,
                    start: float) -> dict[str, Any]:
    return {
        "snncc_version": __version__,
        "model": str(model_path),
        "output": str(out),
        "options": {k: (dict(v) if isinstance(v, Mapping) else
                        os.fspath(v) if isinstance(v, os.PathLike) else v)
                    for k, v in options.__dict__.items() if k != "derived_from"},
        "passes": rows.to_json(),
        "quant": _quant_table(ctx),
        "notes": ctx.notes,
        "backend": artifact_report,
        "fidelity": fid,
        "synops": synops,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _finetune_takes(rows: PipelineReport) -> bool:
    """Whether ``snncc finetune`` takes the model, by compile's own count of its activation sites:
    ReLU or Clip(0, c) sites it converted (finetune trains those), and no QCFS pattern (a trained
    graph's Floor, which finetune does not load)."""
    counts = next((r.counts for r in rows.rows if r.name == "relu-to-quant-clip"), {})
    return counts.get("relu_replaced", 0) + counts.get("clip_replaced", 0) > 0 \
        and not counts.get("pattern_kept", 0)


def _finetune_loads(model_path: str | os.PathLike) -> bool:
    """Whether ``snncc finetune`` can build its trainable module from the model (asked only
    when a hint would name it: it imports torch): a 1-D net or a Resize compiled, and the hint
    to fine-tune led to E801/E802. Without torch the hint stays (finetune then says so)."""
    try:
        from snncc.train.onnx_to_torch import load_onnx_module
    except ImportError:
        return True
    try:
        load_onnx_module(model_path)
    except SnnccError:
        return False
    except Exception:   # noqa: BLE001  (a hint is never worth a failed compile)
        return True
    return True


def _synops(snap: Snapshot, model: ir.Model, ctx: CompileContext, net: Any) -> dict[str, Any]:
    """The ORT target's SynOp section (snncc.analysis.synops), measured on the held-out samples,
    else on the first calibration samples, else static only."""
    from snncc import calibration
    from snncc.analysis.synops import ARTIFACT_SAMPLES, artifact_synops

    samples = ctx.holdout
    ann = snap.proto("insert-neurons")
    if samples is None and ctx.options.calib_path:
        samples = calibration.load_samples(ctx.options.calib_path, calibration.model_inputs(ann),
                                           mean=ctx.options.calib_mean, std=ctx.options.calib_std,
                                           max_samples=ARTIFACT_SAMPLES)
    return artifact_synops(ir.to_proto(model), ann, samples, ctx.options,
                           events=ctx.measured_events if samples is ctx.holdout else None,
                           events_samples=ctx.measured_samples, net=net)


def rehearse(model_path, options: CompileOptions) -> None:
    """The compile's fail-fast check on its own (``snncc report`` runs it before its loop):
    raises what :func:`compile_model` would raise before calibrating."""
    from snncc.backends.registry import get_backend

    if not isinstance(options, CompileOptions):
        raise _api_type_error("options", options, "CompileOptions from make_options(...)")
    options, _ = _with_sample_shapes(model_path, _revalidated(options))   # as compile_model
    _rehearse(model_path, options,
              get_backend(options.target) if options.target != "qann" else None)


def _with_sample_shapes(model_path, options: CompileOptions
                        ) -> tuple[CompileOptions, dict[str, tuple[int, ...]]]:
    """``options`` with the free input dims the calibration samples fix (none given with
    --input-shape), and those shapes; E114 had asked for --input-shape the samples gave."""
    if not options.calib_path or options.input_shapes:
        return options, {}
    fixed = _shapes_from_samples(model_path, options.calib_path)
    return (replace(options, input_shapes=fixed) if fixed else options), fixed


def _shapes_from_samples(model_path, calib_path) -> dict[str, tuple[int, ...]]:
    """For inputs with free dims besides the batch (an export with dynamic height and width):
    the shape of their calibration samples, where a .npy/.npz file (or an x.npy folder) holds
    them with the model's rank and agrees with its fixed dims; {} where nothing is free."""
    proto = ir.read_proto(model_path)
    inits = {i.name for i in proto.graph.initializer}
    free = {}
    for inp in proto.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.HasField("shape") and any(d is None for d in dims[1:]):
            free[inp.name] = dims
    if not free:
        return {}
    path = Path(calib_path)
    if path.is_dir():
        path = path / "x.npy"
    arrays: dict[str, tuple[int, ...]] = {}
    try:
        if path.suffix == ".npy" and path.is_file():
            arrays = {"": np.load(path, mmap_mode="r").shape}
        elif path.suffix == ".npz" and path.is_file():   # headers only: nothing decompressed
            from snncc.calibration import npz_shapes

            arrays = npz_shapes(path)
    except Exception:   # unreadable: calibration says why (E403)
        return {}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    if len(names) == 1:   # the array load_samples feeds a one-input model
        one = next(iter(arrays.values())) if len(arrays) == 1 else arrays.get(
            names[0], arrays.get("x"))
        arrays = {names[0]: one} if one is not None else {}
    fixed = {}
    for name, dims in free.items():
        shape = arrays.get(name)
        if shape is None or len(shape) != len(dims) or any(
                d is not None and d != s for d, s in zip(dims[1:], shape[1:])):
            continue
        fixed[name] = (1,) + tuple(int(s) for s in shape[1:])
    return fixed


def _rehearse(model_path, options: CompileOptions, backend) -> None:
    """Fail fast: the whole pipeline with placeholder lambdas, then the backend's structural
    check, before calibration spends seconds to minutes (an unsupported op, head or layout)."""
    model = ir.load(model_path)
    ctx = CompileContext(options)
    try:
        default_pipeline(options, rehearse=True, verify="off").run(model, ctx)
    except UnsupportedNodeError as exc:
        raise _with_layout_problems(exc, model_path, options) from None
    diags = backend.precheck(model, ctx) if backend is not None else []
    if diags:
        raise BackendCapabilityError(f"the {backend.name} backend cannot express this model "
                                     "(found before calibration)", diagnostics=diags,
                                     code=sorted({d.code for d in diags})[0])


def _levels_warning(options: CompileOptions, ctx: CompileContext) -> list[str]:
    """An explicit -L that a binary neuron (if, lif, srp: at most one spike per step, T + 1
    output levels) cannot reproduce at -T: the SNN then approximates its L-level QANN. (A helper's
    -T 1 -L 64 IF net: 75.4 % against 91.6 % with the defaults, and nothing said why.) A
    QCFS-trained clip keeps its own L: an -L that differs is said to be ignored there."""
    from snncc.neurons.registry import get_neuron

    if options.levels is None:
        return []
    said: list[str] = []
    # an -L the user gave: make_options fills in the neuron's own (L = T; 8 for qann) when none
    # was, and that one is no choice to call ignored (a review: '-L 2 is ignored' for -T 2)
    own = 8 if options.target == "qann" else \
        get_neuron(options.neuron).levels_for(options.timesteps, options) or 8
    given = None if options.levels == own else options.levels
    trained = sorted({int(p.levels) for p in ctx.quant.values() if p.source == "pattern"})
    rest = sum(p.source != "pattern" for p in ctx.quant.values())
    if given is not None and trained and trained != [given]:
        # (it had warned about an L-level QANN that the output did not have)
        said.append(f"warning: -L {given} is ignored at the graph's QCFS-trained clips, which "
                    f"keep their trained L = {', '.join(map(str, trained))}"
                    + (f" (it applies to the {rest} other activation(s))" if rest else ""))
    if options.target == "qann" or (trained and not rest):   # -L changes no clip then
        return said
    spec = get_neuron(options.neuron)
    T = options.timesteps
    if spec.loihi.spike != "binary" or options.levels == T:
        return said
    return said + [f"warning: -L {options.levels} with --neuron {spec.key} at -T {T}: a binary "
                   f"neuron sends at most one spike per step ({T + 1} output levels), so the SNN "
                   f"matches its {options.levels}-level QANN only at -T {options.levels}; drop "
                   "-L (L = T)"]


def _bias_shift_warning(options: CompileOptions) -> list[str]:
    """--bias-shift with a neuron that takes the bias every step (if, lif, srp): lambda/(2L) per
    step sums to the theta/2 start of QCFS theory (neurons.md 1.2) only over T = L steps (and
    SRP's tau-step pre-run only at tau = L). A spec audit: digits CNN IF at -T 8 -L 4, relative
    logit error 0.210 with the shift against 0.083 without; at -T 2 agreement 71.9 % against
    100 %, and nothing said why. (GN and MT, whose tau*T = L is enforced, and bit-serial are
    exact with it.)"""
    from snncc.neurons.registry import get_neuron

    if not options.bias_shift or options.target == "qann" or options.levels is None:
        return []
    spec = get_neuron(options.neuron)
    if spec.needs_bias_shift or spec.key not in ("if", "lif", "srp"):
        return []
    T, L = options.timesteps, options.levels
    if spec.key == "srp":   # its pre-run, read as the neuron reads --neuron-param tau
        from snncc.neurons.common import neuron_param_int
        from snncc.neurons.srp import DEFAULT_TAU

        tau = neuron_param_int(options, "tau", DEFAULT_TAU, lo=0)
    else:
        tau = L
    if T == L and tau == L:
        return []
    steps = " and ".join(([f"T = {T} steps"] if T != L else [])
                         + ([f"SRP's tau = {tau}-step pre-run"] if tau != L else []))
    return [f"warning: --bias-shift adds lambda/(2L) = lambda/{2 * L} to every step's current of "
            f"--neuron {spec.key}; over {steps} that is not the theta/2 start QCFS theory gives "
            "the neuron (it is at T = L), so the SNN drifts from its QANN: drop --bias-shift "
            "(it is the default for bitserial only)"]


def _with_layout_problems(exc: UnsupportedNodeError, model_path,
                          options: CompileOptions) -> UnsupportedNodeError:
    """An E201 list (activations with no spiking form) with what schedule-timesteps would refuse
    next (an op with no spiking form fed by spikes, SNN-E244; work across the time axis,
    E242/E243), as ``inspect`` lists them: all at once, not one fix and one rerun at a time.
    Other errors, the qann target and --allow-analog: ``exc`` as it is."""
    if exc.code != "SNN-E201" or options.target == "qann" or options.allow_analog:
        return exc
    from snncc.inspect import inspect_model

    try:
        found = inspect_model(model_path, options.input_shapes or None)["unsupported"]
    except SnnccError:
        return exc
    listed = {d.node for d in exc.diagnostics}
    more = [Diagnostic(u["code"], u["message"], pass_name="schedule-timesteps", node=u["node"],
                       hint=u["hint"]) for u in found
            if u["code"] in ("SNN-E242", "SNN-E243", "SNN-E244") and u["node"] not in listed]
    if not more:
        return exc
    return UnsupportedNodeError(f"{exc.message}; {len(more)} more would receive spikes they "
                                "cannot take", diagnostics=[*exc.diagnostics, *more],
                                code=exc.code, hint=exc.hint)


def _emit_atomically(backend, model: ir.Model, ctx: CompileContext, out: Path):
    """Emit into a temporary sibling and move it into place only on success; paths in the
    artifact's report then name the final files, not the temporary ones."""
    if backend.output_kind == "dir":
        with atomic_dir(out) as tmp:
            artifact = backend.emit(model, ctx, tmp)
            artifact.files = [out / Path(f).relative_to(tmp) for f in artifact.files]
            artifact.report = _relocated(artifact.report, tmp, out)
        artifact.path = out
        return artifact
    tmpdir = temp_dir(out)
    try:
        with write_errors(out):
            artifact = backend.emit(model, ctx, tmpdir / out.name)
        moved = []
        for f in artifact.files or [tmpdir / out.name]:
            dest = out.parent / Path(f).name
            with atomic_file(dest) as tmp:
                os.replace(f, tmp)
            moved.append(dest)
        artifact.path = out
        artifact.files = moved
        artifact.report = _relocated(artifact.report, tmpdir, out.parent)
        return artifact
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _relocated(value: Any, staging: Path, final: Path) -> Any:
    """``value`` (a report: dicts, lists, strings) with paths under ``staging`` moved to
    ``final``."""
    if isinstance(value, dict):
        return {k: _relocated(v, staging, final) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, staging, final) for v in value]
    if isinstance(value, str) and value.startswith(str(staging)):
        return str(final) + value[len(str(staging)):]
    return value
