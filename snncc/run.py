"""``snncc run``: feed inputs to a compiled model and summarise outputs and spike activity.

Inputs are checked before anything runs, each problem with its own code: an unreadable file or
no array for an input (SNN-E104), samples not shaped like the model input (SNN-E105), labels
``y`` that are not one per sample (SNN-E680), NaN or Inf values (SNN-E681), no samples
(SNN-E682), a multi-input model without an array for every input (SNN-E683), and
``--batch-size`` below 1 (SNN-E684); ONNX Runtime refusing the samples is SNN-E685. A model with several inputs takes each from the ``.npz``
array of the same name. ``-o`` is checked like every snncc output (:mod:`snncc.outputs`: never an
input, never a directory) and written atomically to exactly the path given.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from snncc import input_range
from snncc.errors import Diagnostic, ModelInputError, OptionError, OutputPathError

__all__ = ["load_inputs", "load_feeds", "run_command"]


def _open(path: str | Path):
    path = Path(path)
    if not path.is_file():
        what = ("is a directory, not a file (a folder holding x.npy, and y.npy for labels, is "
                "read as those)" if path.is_dir() else "does not exist")
        raise ModelInputError(f"input file '{path}' {what}", code="SNN-E104",
                              hint="pass a .npy or .npz file of samples")
    from snncc.calibration import not_numpy

    problem = not_numpy(path)
    if problem:
        raise ModelInputError(f"input file '{path}' {problem}", code="SNN-E104",
                              hint="save inputs with numpy.save or savez")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelInputError(f"'{path}' is not a readable .npy/.npz file ({exc})",
                              code="SNN-E104", hint="save inputs with numpy.save or savez") from exc


def _read(data, path: Path, key: str) -> np.ndarray:
    try:
        return data[key]
    except Exception as exc:  # a damaged member of an otherwise readable .npz
        raise ModelInputError(f"array '{key}' in '{path}' is unreadable ({exc})",
                              code="SNN-E104", hint="save inputs with numpy.savez") from exc


def _check_samples(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    from snncc.simulate import check_samples

    return check_samples(x, f"{what} in '{path}'")


def _check_labels(labels: Any, n: int, path: Path) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ModelInputError(f"labels 'y' in '{path}' have shape {list(labels.shape)}, but there "
                              f"are {n} samples", code="SNN-E680",
                              hint=f"store one class index per sample: y of shape [{n}]")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)) \
            or labels.dtype == np.bool_:
        raise ModelInputError(f"labels 'y' in '{path}' are {labels.dtype}, not class indices",
                              code="SNN-E680", hint="store y as integers")
    if not np.all(np.isfinite(labels)):
        raise ModelInputError(f"labels 'y' in '{path}' hold NaN or Inf", code="SNN-E680",
                              hint="store y as integers")
    if np.any(labels < 0) or np.any(labels != np.round(labels)):
        raise ModelInputError(f"labels 'y' in '{path}' are not class indices (negative or "
                              "fractional values)", code="SNN-E680",
                              hint="store y as the integer class index of each sample")
    return labels


def load_feeds(path: str | Path, input_names: Sequence[str]
               ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Samples for every model input (and labels 'y' if present) from .npy or .npz (or a folder
    holding x.npy and, for labels, y.npy, for a one-input model).

    One input: a .npy, or the .npz array named after the input, else ``x``, else the only array
    besides ``y``. Several inputs: the .npz must hold an array named after each (SNN-E683).
    Every array is checked (see the module doc) and all share the sample count N (SNN-E105).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(f"the samples are a {type(path).__name__}, not a path",
                          code="SNN-E349", hint="pass the path of a .npy or .npz file")
    path = Path(path)
    names = list(input_names) or ["x"]
    if path.is_dir() and (path / "x.npy").is_file() and len(names) == 1:
        # an x.npy (+ y.npy) folder, as --calib and finetune --data take it
        x = _check_samples(np.asarray(_open(path / "x.npy")), path / "x.npy", "inputs")
        labels = np.asarray(_open(path / "y.npy")) if (path / "y.npy").is_file() else None
        return {names[0]: x}, _check_labels(labels, len(x), path / "y.npy")
    data = _open(path)
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.files)
        if len(names) == 1:
            name = names[0]
            key = name if name in keys else ("x" if "x" in keys else None)
            if key is None:
                candidates = [k for k in keys if k != "y"]
                if len(candidates) != 1:
                    wanted = f"'{name}' or 'x'" if name != "x" else "'x'"
                    raise ModelInputError(f"'{path}' has arrays {keys}; none is named {wanted}",
                                          code="SNN-E104",
                                          hint="name the input array after the model input or 'x'")
                key = candidates[0]
            arrays = {name: _read(data, path, key)}
        else:
            missing = [n for n in names if n not in keys]
            if missing:
                raise ModelInputError(
                    f"the model has {len(names)} inputs ({', '.join(names)}) but '{path}' has no "
                    f"array named {', '.join(repr(m) for m in missing)} (it has {keys})",
                    code="SNN-E683", hint="save one array per model input, named after it: "
                    "numpy.savez(FILE, " + ", ".join(f"{n}=..." for n in names) + ")")
            arrays = {n: _read(data, path, n) for n in names}
        labels = _read(data, path, "y") if "y" in keys else None
        read = set(names) | ({key} if len(names) == 1 else set())
        unused = [k for k in keys if k not in read and k not in ("x", "y")]
        if labels is None and unused:
            logging.getLogger("snncc.run").warning(
                "no accuracy: '%s' has no labels under 'y' (its other arrays: %s); save them "
                "as y=... to get one", path, ", ".join(unused))
    else:
        if len(names) > 1:
            raise ModelInputError(f"the model has {len(names)} inputs ({', '.join(names)}) but "
                                  f"'{path}' is a single .npy array", code="SNN-E683",
                                  hint="save one array per model input in a .npz, named after "
                                  "it: numpy.savez(FILE, " + ", ".join(f"{n}=..." for n in names)
                                  + ")")
        arrays = {names[0]: data}
    feeds = {n: _check_samples(np.asarray(a), path,
                               "inputs" if len(arrays) == 1 else f"input '{n}'")
             for n, a in arrays.items()}
    from snncc.simulate import check_sample_counts

    return feeds, _check_labels(labels, check_sample_counts(feeds, f"the inputs in '{path}'"),
                                path)


def load_inputs(path: str | Path, input_name: str | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples for a single-input model (and labels 'y' if present); see :func:`load_feeds`."""
    feeds, labels = load_feeds(path, [input_name or "x"])
    return next(iter(feeds.values())), labels


def _summary(all_outputs: dict[str, np.ndarray], labels: np.ndarray | None,
             activity: dict[str, Any]) -> dict:
    """Predictions and accuracy from the first output; every output's shape by name."""
    outputs = next(iter(all_outputs.values()))
    summary: dict[str, Any] = {"samples": int(outputs.shape[0]),
                               "output_shape": list(outputs.shape),
                               "outputs": {k: list(v.shape) for k, v in all_outputs.items()}}
    if outputs.dtype.kind in "iu" and (outputs.ndim == 1 or outputs.shape[1:] == (1,)):
        pred = outputs.reshape(len(outputs))  # an ArgMax head: the classes themselves
        summary["predictions_head"] = pred[:10].tolist()
        if labels is not None:
            summary["accuracy"] = float((pred == labels[: len(pred)]).mean())
    elif outputs.ndim == 2:
        pred = outputs.argmax(axis=1)
        summary["predictions_head"] = pred[:10].tolist()
        if labels is not None:
            summary["accuracy"] = float((pred == labels[: len(pred)]).mean())
    summary["activity"] = activity
    return summary


def _check_run_output(args: argparse.Namespace) -> Path | None:
    """Refuse a bad ``-o`` before any work (the rules of :mod:`snncc.outputs`)."""
    from snncc.outputs import Output, check_outputs, check_suffix, file_output

    if args.output is None:
        return None
    out = file_output(args.output, example="outputs.npz", command="run")
    model = Path(args.model)
    try:
        where = Path(os.path.abspath(os.path.expanduser(out))).resolve()
    except (RuntimeError, OSError):   # a symlink loop: check_outputs says so (E369)
        where = Path(os.path.abspath(os.path.expanduser(out)))
    if model.is_dir() and model.resolve() in where.parents:
        raise OutputPathError("run: refusing to write the output", code="SNN-E360", diagnostics=[
            Diagnostic("SNN-E360", f"-o '{out}' lies inside the input model directory '{model}'",
                       "run", hint="write the outputs outside the compiled model")])
    # the compiled model's manifest (MODEL.onnx.json) belongs to the model: never an output
    check_outputs([Output(out, "file", "-o", "outputs.npz")],
                  [args.model, f"{args.model}.json", args.input], command="run")
    # numpy writes a zip archive whatever the name says: not under another kind's suffix
    check_suffix(out, "-o", "the outputs as a .npz archive", (".npz",), "run")
    return out


def _write_outputs(out: Path, all_outputs: dict[str, np.ndarray], summary: dict[str, Any]
                   ) -> None:
    """``outputs``: the first model output; ``output/<name>``: every output by name;
    ``events/<layer>``: the layer's spike events summed over all samples and slices (a scalar)."""
    from snncc.outputs import atomic_file

    events = {f"events/{k}": np.asarray(v)
              for k, v in summary["activity"].get("events_per_layer", {}).items()}
    named = {f"output/{k}": np.asarray(v) for k, v in all_outputs.items()}
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a path
            np.savez_compressed(f, outputs=next(iter(all_outputs.values())), **named, **events)


def _activity_table(totals: dict[str, tuple[float, int]], n: int, steps: int,
                    binary: Callable[[str], bool]) -> dict[str, Any]:
    """The activity table of a simulator run, in the units of :meth:`RunResult.activity`, from
    each layer's (events summed over samples and slices, neurons): the rate is unit events per
    neuron and slice. Spikes (and the spike rate) equal the events for a ``binary`` layer and
    are not known (None) for a graded one (the simulators keep events summed over slices)."""
    layers = []
    for k, (total, units) in totals.items():
        rate = total / (n * max(steps, 1) * max(units, 1))
        layers.append({"name": k, "events_per_sample": total / n,
                       "spikes_per_sample": total / n if binary(k) else None,
                       "rate": rate, "spike_rate": rate if binary(k) else None})
    return {"events_per_layer": {k: total for k, (total, _) in totals.items()}, "layers": layers}


def _netlist_activity(net, events: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """The activity table of a Loihi run (events per sample and position, [N, ...])."""
    spike = {g.name: g.spike for g in net.groups}
    return _activity_table({k: (float(v.sum()), v[0].size) for k, v in events.items()}, n,
                           net.total_steps, lambda k: spike.get(k) == "binary")


def _run_nir(path: Path, inputs: str) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
    """A ``--target nir`` file run as NIR defines it (snncc's NIR simulator, which Norse's
    ``from_nir`` equals: tests/nir): outputs, the activity table (binary spikes: events =
    spikes), labels."""
    try:
        import nir
    except ImportError:
        raise OptionError("run: reading a NIR file needs the nir package", code="SNN-E694",
                          hint="pip install nir") from None
    from snncc.backends.nir.simulate import run_graph

    try:
        graph = nir.read(str(path))
    except Exception as exc:  # h5py / nir raise several types for a file that is no NIR graph
        raise ModelInputError(f"'{path}' is not a readable NIR file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120] if str(exc) else ''})",
                              code="SNN-E102", hint="give a file snncc compile --target nir "
                              "wrote") from None
    steps = int(graph.metadata.get("timesteps", 0) or 0)
    if steps < 1:
        raise ModelInputError(f"'{path}' names no timesteps in its metadata", code="SNN-E102",
                              hint="give a file snncc compile --target nir wrote")
    x, labels = load_inputs(inputs)
    inp = next(n for n in graph.nodes.values() if isinstance(n, nir.Input))
    want = tuple(int(d) for d in np.asarray(next(iter(inp.input_type.values()))).reshape(-1))
    if graph.metadata.get("input_view") and tuple(x.shape[1:]) == want[:-1] and want[-1] == 1:
        x = x[..., None]     # a 1-D net's (C, L, 1) view: the samples the ONNX model took
    if tuple(x.shape[1:]) != want:
        raise ModelInputError(f"inputs of shape {tuple(x.shape)}, the NIR graph takes "
                              f"[N, {', '.join(map(str, want))}]", code="SNN-E105",
                              hint="give the samples the compiled model took")
    stored = input_range.parse(graph.metadata.get("calibration_inputs"))
    input_range.warn(stored, {name: x for name in stored} if len(stored) == 1 else {})
    spikes: dict[str, np.ndarray] = {}
    # the export names each Output node output_<the ONNX output's name>: keyed as ONNX runs are
    outputs = {k.removeprefix("output_"): v.astype(np.float32)
               for k, v in run_graph(graph, x, steps, spikes).items()}
    totals = {k: (float(v.sum()), v.size) for k, v in spikes.items()}   # binary spikes only
    return outputs, _activity_table(totals, max(len(x), 1), steps, lambda k: True), labels


def check_label_range(labels: np.ndarray | None, out: np.ndarray, path: str) -> None:
    """SNN-E680 for class labels beyond a classifier output's width (they would score as
    misses: 20 of 100 such labels turned a report's 92 % into 73 %)."""
    if labels is not None and out.ndim == 2 and out.dtype.kind == "f" and len(labels) and \
            labels.max() >= out.shape[1]:
        raise ModelInputError(f"labels 'y' in '{path}' go up to {int(labels.max())}, but "
                              f"the model has {out.shape[1]} outputs", code="SNN-E680",
                              hint=f"store y as class indices 0..{out.shape[1] - 1}")


class _Said(logging.Handler):
    """What snncc's loggers warned about during a run (the input-scale warning, a simulator's
    saturations), for ``--json``'s ``warnings``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.levelname.lower()}: {record.getMessage()}")


def _say(said: list[str], text: str) -> None:
    """Print a note or warning of the run on stderr, and keep it for ``--json``."""
    print(f"snncc run: {text}", file=sys.stderr)
    said.append(text)


def run_command(args: argparse.Namespace) -> int:
    handler = _Said()
    root = logging.getLogger("snncc")
    root.addHandler(handler)
    try:
        return _run_command(args, handler)
    finally:
        root.removeHandler(handler)


def _run_command(args: argparse.Namespace, logged: _Said) -> int:
    said = logged.texts   # in the order stderr shows them
    if args.batch_size is not None and args.batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {args.batch_size}",
                          code="SNN-E684", hint="e.g. --batch-size 16 (the default)")
    out = _check_run_output(args)
    target = Path(args.model)
    is_nir = target.suffix.lower() == ".nir" and target.is_file()
    ignored = ([f for f, v in (("--no-library", args.no_library),
                               ("--batch-size", args.batch_size not in (None, 16))) if v]
               if target.is_dir() or is_nir else [])
    ignored += ["--semantics"] if args.semantics and not target.is_dir() else []
    if ignored and target.exists():   # a missing path gets its own error, without this
        kind = ("a Loihi directory" if target.is_dir() else "a NIR file" if is_nir
                else "an ONNX model")
        _say(said, f"warning: ignored for {kind}: {', '.join(ignored)}")
    if is_nir:
        all_outputs, activity, labels = _run_nir(target, args.input)
    elif target.is_dir():
        from snncc.backends.loihi.netlist import load
        from snncc.backends.loihi.simulator import run_netlist

        net = load(target)
        x, labels = load_inputs(args.input)
        stored = input_range.parse(net.meta.get("calibration_inputs"))
        input_range.warn(stored, {name: x for name in stored} if len(stored) == 1 else {})
        semantics = getattr(args, "semantics", None) or "emulated"
        netx = net.meta.get("netx") or {}
        if semantics == "hardware" and not (netx.get("path") and not netx.get("not_exported")):
            held = (f"network.net holds the first {len(netx.get('layers', []))} of "
                    f"{len(netx.get('layers', [])) + len(netx.get('not_exported', []))} layers"
                    if netx.get("path") else "the folder has no network.net")
            rest = "the other layers" if netx.get("path") else "every layer"
            _say(said, f"note: {held}; the hardware semantics run {rest} with stock rules "
                 "too (> and a reset to 0; bit-serial by its own rule), which no Lava file "
                 "checks")
        all_outputs, events = run_netlist(net, x, semantics=semantics)
        activity = _netlist_activity(net, events, max(len(x), 1))
    else:
        from snncc import ir
        from snncc.ir import SNN_DOMAIN
        from snncc.simulate import check_shape, data_inputs, run_compiled

        proto = ir.read_proto(target)
        names = data_inputs(proto)
        if not proto.graph.node:   # an empty graph: nothing to feed or run
            raise ModelInputError(f"'{target}' has no nodes: nothing to run", code="SNN-E102",
                                  hint="run a compiled model (snncc compile MODEL.onnx --calib "
                                  "CALIB.npz)")
        feeds, labels = load_feeds(args.input, names)
        for name, x in feeds.items():
            if name in names:
                check_shape(proto, name, x)
        result = run_compiled(proto, feeds if names else next(iter(feeds.values())),
                              use_library=not args.no_library, batch_size=args.batch_size)
        if not any(p.key.startswith("snncc.") for p in proto.metadata_props) and \
                not any(n.domain == SNN_DOMAIN for n in proto.graph.node):
            _say(said, f"note: '{target}' holds no spiking neurons and is no snncc compile "
                 "output: it ran as the plain ONNX model it is (compile it first: snncc "
                 f"compile {target} --calib CALIB.npz)")
        all_outputs = dict(result.outputs)
        activity = result.activity()
    check_label_range(labels, next(iter(all_outputs.values())), args.input)
    summary = _summary(all_outputs, labels, activity)
    if out is not None:
        _write_outputs(out, all_outputs, summary)
    if args.json:
        # what stderr said (input scale, ignored flags, notes), for a script that reads stdout
        print(json.dumps({**summary, "warnings": list(said)}, indent=2))
    else:
        print(f"samples: {summary['samples']}  output shape: {summary['output_shape']}")
        if len(summary["outputs"]) > 1:
            print("outputs: " + ", ".join(f"{k} {v}" for k, v in summary["outputs"].items())
                  + f" (predictions and accuracy from {next(iter(summary['outputs']))})")
        if "accuracy" in summary:
            print(f"accuracy: {summary['accuracy']:.4f}")
        if "predictions_head" in summary:
            print(f"predictions (first 10): {summary['predictions_head']}")
        rows = summary["activity"].get("layers", [])
        if rows:
            from snncc.ir import shown as ir_shown

            # rate: unit events per neuron and slice (a graded neuron's output may carry several)
            print(f"{'layer':<48} {'events/sample':>14} {'rate':>8}")
            for row in rows:
                name = ir_shown(row["name"], 10 ** 9)   # (its control characters escaped)
                name = name if len(name) <= 48 else "…" + name[-47:]
                print(f"{name:<48} {row['events_per_sample']:>14.1f} {row['rate']:>8.4f}")
    if out is not None:   # last, under the table (on stderr beside --json's document)
        print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    return 0
