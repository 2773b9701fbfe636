"""``snncc run``: feed inputs to a compiled model and summarise outputs and spike activity."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from snncc.errors import ModelInputError

__all__ = ["load_inputs", "run_command"]


def load_inputs(path: str | Path, input_name: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read samples (and labels 'y' if present) from .npy or .npz."""
    path = Path(path)
    if not path.is_file():
        raise ModelInputError(f"input file '{path}' does not exist", code="SNN-E104",
                              hint="pass a .npy or .npz file of samples")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelInputError(f"'{path}' is not a readable .npy/.npz file ({exc})",
                              code="SNN-E104", hint="save inputs with numpy.save or savez") from exc
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.files)
        key = input_name if input_name in keys else ("x" if "x" in keys else None)
        if key is None:
            candidates = [k for k in keys if k != "y"]
            if len(candidates) != 1:
                raise ModelInputError(f"'{path}' has arrays {keys}; none is named "
                                      f"'{input_name}' or 'x'", code="SNN-E104",
                                      hint="name the input array after the model input or 'x'")
            key = candidates[0]
        x = data[key]
        labels = data["y"] if "y" in keys else None
    else:
        x = data
    if not np.issubdtype(x.dtype, np.floating):
        raise ModelInputError(f"inputs in '{path}' are {x.dtype}, not floating point",
                              code="SNN-E104", hint="convert the samples to float32")
    return x.astype(np.float32), labels


def _check_shape(proto, name: str, x: np.ndarray) -> None:
    """Samples must match the model input in every non-batch dimension that the model fixes."""
    inp = next(i for i in proto.graph.input if i.name == name)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    want = ["N"] + [d if d else "?" for d in dims[1:]]
    if x.ndim != len(dims) or any(d and d != g for d, g in zip(dims[1:], x.shape[1:])):
        raise ModelInputError(f"samples have shape {list(x.shape)} but the model input '{name}' "
                              f"is {want}", code="SNN-E105",
                              hint="pass samples shaped like the model input (N first)")


def _summary(outputs: np.ndarray, labels: np.ndarray | None, activity: dict[str, Any]) -> dict:
    summary: dict[str, Any] = {"samples": int(outputs.shape[0]),
                               "output_shape": list(outputs.shape)}
    if outputs.ndim == 2:
        pred = outputs.argmax(axis=1)
        summary["predictions_head"] = pred[:10].tolist()
        if labels is not None:
            summary["accuracy"] = float((pred == labels[: len(pred)]).mean())
    summary["activity"] = activity
    return summary


def run_command(args: argparse.Namespace) -> int:
    target = Path(args.model)
    if target.is_dir():
        from snncc.backends.loihi.simulator import run_netlist

        x, labels = load_inputs(args.input)
        outs, events = run_netlist(target, x)
        outputs = next(iter(outs.values()))
        n = max(len(x), 1)
        activity = {"events_per_layer": {k: float(v.sum()) for k, v in events.items()},
                    "layers": [{"name": k, "events_per_sample": float(v.sum()) / n,
                                "spikes_per_sample": float(np.count_nonzero(v)) / n,
                                "rate": float(v.sum()) / (n * v[0].size)}
                               for k, v in events.items()]}
    else:
        from snncc import ir
        from snncc.simulate import run_compiled

        proto = ir.read_proto(target)
        inits = {i.name for i in proto.graph.initializer}
        names = [i.name for i in proto.graph.input if i.name not in inits]
        x, labels = load_inputs(args.input, names[0] if names else None)
        if names:
            _check_shape(proto, names[0], x)
        result = run_compiled(target, x, use_library=not args.no_library,
                              batch_size=args.batch_size)
        outputs = next(iter(result.outputs.values()))
        activity = result.activity()
    summary = _summary(outputs, labels, activity)
    if args.output:
        np.savez_compressed(args.output, outputs=outputs,
                            **{f"events/{k}": np.asarray(v) for k, v in
                               summary["activity"].get("events_per_layer", {}).items()})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"samples: {summary['samples']}  output shape: {summary['output_shape']}")
        if "accuracy" in summary:
            print(f"accuracy: {summary['accuracy']:.4f}")
        if "predictions_head" in summary:
            print(f"predictions (first 10): {summary['predictions_head']}")
        rows = summary["activity"].get("layers", [])
        if rows:
            print(f"{'layer':<48} {'events/sample':>14} {'rate':>8}")
            for row in rows:
                name = row["name"] if len(row["name"]) <= 48 else "…" + row["name"][-47:]
                print(f"{name:<48} {row['events_per_sample']:>14.1f} {row['rate']:>8.4f}")
    return 0
