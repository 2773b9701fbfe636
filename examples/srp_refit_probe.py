"""Probe (issue 8, SRP at T = 4): does a least-squares refit of the weights after each neuron
layer bring the default SRP SNN closer to its ANN than the calibration walk alone?

    python examples/srp_refit_probe.py [--out examples/results/srp_refit.md] [--seeds 5]
                                       [--alpha 0.1] [--nets mnist_cnn digits_cnn]

The walk (``snncc/snn_calibration.py``) chooses each neuron layer's lambda and bias. This probe
goes one step further, as the weight calibration of Li et al. 2021 does layer by layer, here in
closed form: after the default compile (``snncc compile NET.onnx -T 4 --neuron srp --calib C``),
every Conv/Gemm fed by spikes gets new weights and bias ``W'`` minimising, on the calibration
samples the walk used,

    || u_snn W' - (z_ann + d) ||^2 + alpha * sum_k G_kk (W'_k - W_k)^2

where ``u_snn`` is the layer's input decoded from the compiled SNN (the mean over the counted
slices, with the layers before already refitted), ``z_ann`` the ANN's output of that layer on the
same images, ``d`` the bias the walk added, ``G = u_snn^T u_snn`` (a ridge toward the trained
weights, scaled per input; the bias is outside it). Layers are refitted in graph order, so each one
sees the refitted SNN upstream. Accuracy, top-1 agreement with the ANN and the relative logit error
are then measured through the real runtime (``snncc.simulate.run_compiled``) on the test split, for
the bundled calibration file and ``--seeds`` sets of 256 training images drawn as
``examples/calibration_spread.py`` draws them.

Only plain chains (Conv / Gemm / neuron / AveragePool / Flatten, one group) are refitted; the
ResNets' shortcuts are out of its scope. The only files written are the table (``--out``) and its
JSON beside it.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from examples.calibration_spread import drawn_calibration_sets  # noqa: E402
from examples.default_table import (declare_table_outputs, git_commit, select_nets,  # noqa: E402
                                    snncc, table_parser)
from snncc import __version__  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

DEFAULT_OUT = HERE / "results" / "srp_refit.md"
CHAIN_OPS = {"Conv", "Gemm", "AveragePool", "Flatten"}


def _session(proto, outputs):
    import onnxruntime as ort

    from snncc import ir, runtime
    model = ir.with_outputs(proto, outputs, free_batch=True)
    return ort.InferenceSession(model.SerializeToString(), runtime.session_options())


def linear_nodes(proto):
    """The compiled model's Conv/Gemm nodes of its chain, in order; an error for other graphs."""
    nodes = []
    for node in proto.graph.node:
        if node.domain == "snncc.ops" or node.op_type in CHAIN_OPS:
            if node.op_type in ("Conv", "Gemm"):
                nodes.append(node)
            continue
        break   # the decode after the last layer
    later = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm") and n not in nodes]
    if later:
        raise SystemExit(f"not a plain chain: {node.op_type} node '{node.name}' comes before "
                         f"{len(later)} more Conv/Gemm (out of this probe's scope)")
    return nodes


def _attr(node, name, default):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def patches(node, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows of the linear map's input: im2col for a Conv, the samples for a Gemm."""
    if node.op_type == "Gemm":
        return u.reshape(len(u), -1)
    import torch
    import torch.nn.functional as F
    if _attr(node, "group", 1) != 1:
        raise SystemExit(f"{node.name}: grouped convolutions are out of this probe's scope")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise SystemExit(f"{node.name}: asymmetric pads are out of this probe's scope")
    cols = F.unfold(torch.from_numpy(u), w.shape[2:],
                    dilation=list(_attr(node, "dilations", [1, 1])), padding=pads[:2],
                    stride=list(_attr(node, "strides", [1, 1])))
    return cols.transpose(1, 2).reshape(-1, int(np.prod(w.shape[1:]))).numpy()


def rows_of(node, z: np.ndarray) -> np.ndarray:
    return z.reshape(len(z), -1) if node.op_type == "Gemm" else \
        np.moveaxis(z, 1, -1).reshape(-1, z.shape[1])


def refit(compiled, ann, x: np.ndarray, alpha: float, slices: int, counted: int):
    """The compiled model with every spike-fed Conv/Gemm refitted (module doc)."""
    from onnx import numpy_helper
    model = type(compiled)()
    model.CopyFrom(compiled)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = linear_nodes(model)
    ann_out = ann.graph.output[0].name
    n = len(x)
    for node in nodes[1:]:
        if len(node.input) < 3 or node.input[2] not in inits or node.input[1] not in inits:
            raise SystemExit(f"{node.name}: a {node.op_type} without constant weights and bias is "
                             "out of this probe's scope")
        u_name, w_name, b_name = node.input[:3]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float64)
        if node.op_type == "Gemm" and (not _attr(node, "transB", 0) or _attr(node, "transA", 0)
                                       or _attr(node, "alpha", 1.0) != 1.0
                                       or _attr(node, "beta", 1.0) != 1.0):
            raise SystemExit(f"{node.name}: only Gemm(x, W^T) + b is in this probe's scope")
        if node.op_type == "Conv" and _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET",
                                                                                 "NOTSET"):
            raise SystemExit(f"{node.name}: auto_pad is out of this probe's scope")
        b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
        u = _session(model, [u_name]).run([u_name], {model.graph.input[0].name: x})[0]
        u = u.reshape((slices, n) + u.shape[1:])[-counted:].mean(axis=0)
        # the ANN's input and output of the same layer (the compiled model keeps the ANN's
        # tensor names; the readout's output is the ANN's graph output)
        z_name = node.output[0] if node is not nodes[-1] else ann_out
        u_ann, z_ann = _session(ann, [m for m in (u_name, z_name) if m != ann_out]).run(
            [u_name, z_name], {ann.graph.input[0].name: x})
        # the ANN's own bias: z_ann minus the map without bias; the walk's shift d = b - that
        plain = rows_of(node, z_ann) - patches(node, u_ann, w) @ w.reshape(len(w), -1).T
        d = b - plain.mean(axis=0)
        target = rows_of(node, z_ann) + d
        p = patches(node, u, w)
        p1 = np.concatenate([p, np.ones((len(p), 1))], axis=1)
        w0 = np.concatenate([w.reshape(len(w), -1), b[:, None]], axis=1).T
        gram = p1.T @ p1
        reg = alpha * np.diag(np.diag(gram)) + 1e-6 * np.mean(np.diag(gram)) * np.eye(len(gram))
        reg[-1, -1] = 0.0
        new = np.linalg.solve(gram + reg, p1.T @ target + reg @ w0)
        inits[w_name].CopyFrom(numpy_helper.from_array(
            new[:-1].T.reshape(w.shape).astype(np.float32), w_name))
        inits[b_name].CopyFrom(numpy_helper.from_array(new[-1].astype(np.float32), b_name))
    return model


def measure(model, x, y, ann_logits) -> dict:
    from snncc.simulate import run_compiled
    out = next(iter(run_compiled(model, x, spike_counts=False).outputs.values()))
    return {"accuracy": float(np.mean(out.argmax(1) == y)),
            "agreement": float(np.mean(out.argmax(1) == ann_logits.argmax(1))),
            "rel_logit_error": float(np.linalg.norm(out - ann_logits) / np.linalg.norm(ann_logits))}


def one_set(net: dict, ann, calib: Path, work: Path, alpha: float, x_test, y_test,
            ann_logits) -> dict:
    """The walk's and the refit's figures for one calibration set (``ann``: the net's proto)."""
    import onnx
    out = work / "srp.onnx"
    rc, _, err = snncc(["compile", str(net["onnx_path"]), "-T", "4", "--neuron", "srp", "--calib",
                        str(calib), "-o", str(out), "-q", "--report", str(work / "r.json")])
    if rc != 0:
        raise SystemExit(f"compile failed: {err.strip()[:400]}")
    report = json.loads((work / "r.json").read_text())
    compiled = onnx.load(out)
    x = np.load(calib)
    x = x[list(x.keys())[0]].astype(np.float32)
    x = x[: report["notes"]["calibration_samples"]]  # the first ones: what the walk calibrated on
    attrs = {a.name: a for a in next(n for n in compiled.graph.node
                                     if n.domain == "snncc.ops").attribute}
    slices, tau = attrs["T"].i, attrs["tau"].i   # T: every slice, the tau pre-run's included
    before = measure(compiled, x_test, y_test, ann_logits)
    refitted = refit(compiled, ann, x, alpha, slices, slices - tau)
    after = measure(refitted, x_test, y_test, ann_logits)
    return {"calib_samples": len(x), "walk": before, "refit": after}


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--seeds", type=int, default=5,
                        help="drawn calibration sets besides the bundled one "
                        "(default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="ridge strength toward the trained weights (default: %(default)s)")
    parser.set_defaults(nets=["mnist_cnn", "digits_cnn"])   # the chain nets
    args = parser.parse_args(argv)
    if args.seeds < 0 or not args.alpha >= 0:
        parser.error("--seeds and --alpha must be >= 0")
    nets = select_nets(parser, args.nets)
    out_json = declare_table_outputs(args.out, nets, parser)
    import onnx
    import onnxruntime as ort
    start = time.perf_counter()
    data = {"command": "python examples/srp_refit_probe.py" + " ".join(
                ["", *(argv if argv is not None else sys.argv[1:])]).rstrip(),
            "snncc_version": __version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "alpha": args.alpha, "nets": {}}
    with tempfile.TemporaryDirectory(prefix="snncc-srp-refit-") as tmp:
        for name, net in nets.items():
            test = np.load(net["test_path"])
            x_test, y_test = test["x"].astype(np.float32), test["y"]
            ann = onnx.load(net["onnx_path"])
            session = ort.InferenceSession(ann.SerializeToString())
            ann_logits = session.run(None, {session.get_inputs()[0].name: x_test})[0]
            sets = [("bundled", net["calib_path"])]
            for seed, images in enumerate(drawn_calibration_sets(net, args.seeds)):
                path = Path(tmp) / f"{name}_calib_{seed}.npz"
                np.savez(path, input=images)
                sets.append((f"drawn {seed}", path))
            rows = []
            for label, path in sets:
                work = Path(tmp) / f"{name}_{label.replace(' ', '_')}"
                work.mkdir()
                row = {"set": label} | one_set(net, ann, path, work, args.alpha, x_test, y_test,
                                               ann_logits)
                print(f"{name} {label}: walk {row['walk']}, refit {row['refit']}", file=sys.stderr,
                      flush=True)
                rows.append(row)
            data["nets"][name] = {"ann_accuracy": float(np.mean(ann_logits.argmax(1) == y_test)),
                                  "rows": rows}
    data["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=1) + "\n")
    with atomic_file(args.out) as tmp_md:
        tmp_md.write_text(markdown(data))
    print(f"wrote {args.out} and {out_json}")
    return 0


def markdown(data: dict) -> str:
    lines = ["# SRP at T = 4: the calibration walk alone, and with a least-squares weight refit",
             "", "Regenerate with:", "", "```sh", data["command"], "```", "",
             f"snncc {data['snncc_version']} at commit {data['git_commit']}, {data['date']}; "
             f"{data['seconds']:.0f} s. Method: the module doc of `examples/srp_refit_probe.py` "
             f"(ridge alpha = {data['alpha']}). Each row compiles the default "
             "`snncc compile NET.onnx -T 4 --neuron srp --calib SET` (*walk*), then refits every "
             "Conv/Gemm fed by spikes on the same calibration samples (*refit*); both run on the "
             "test split through `snncc.simulate.run_compiled`. *agree*: top-1 agreement with the "
             "ANN on the test split; *err*: relative logit error against the ANN.", ""]
    for name, net in data["nets"].items():
        lines += [f"## {name} (ANN {100 * net['ann_accuracy']:.1f} %)", "",
                  "| calibration set | walk acc | refit acc | walk agree | refit agree "
                  "| walk err | refit err |", "|---|---:|---:|---:|---:|---:|---:|"]
        rows = net["rows"]
        for r in rows:
            w, f = r["walk"], r["refit"]
            lines.append(f"| {r['set']} | {100 * w['accuracy']:.1f} | {100 * f['accuracy']:.1f} "
                         f"| {100 * w['agreement']:.1f} | {100 * f['agreement']:.1f} "
                         f"| {w['rel_logit_error']:.4f} | {f['rel_logit_error']:.4f} |")
        mean = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in rows[0][k]}
                for k in ("walk", "refit")}
        w, f = mean["walk"], mean["refit"]
        lines += [f"| **mean** | **{100 * w['accuracy']:.2f}** | **{100 * f['accuracy']:.2f}** "
                  f"| {100 * w['agreement']:.2f} | {100 * f['agreement']:.2f} "
                  f"| {w['rel_logit_error']:.4f} | {f['rel_logit_error']:.4f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
