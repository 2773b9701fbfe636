"""Probe (issue 8, SRP at T = 4): how close do (T + 1)-level activation quantizers with a
per-channel lambda and bias, calibrated two ways, bring a trained net to its ANN; which layer
costs the most?

    python examples/quantization_bound.py [--out examples/results/quantization_bound.md]
                                          [--seeds 5] [--levels 4] [--steps 300]
                                          [--nets mnist_cnn digits_cnn mnist_resnet digits_resnet]

A binary IF-type neuron (IF, SRP) decodes to one of T + 1 values per window: at T = 4 it is a
5-level quantizer (L = 4) at best, and on the first layer, whose input is the same analog image at
every step, it *is* that quantizer (QCFS Theorem 2, neurons.md 1.3). So an L-level quantized ANN
with the walk's freedom (a per-channel lambda and bias) is the reference for what a post-training
calibration of those neurons can reach: the two calibrations below are references, not proven
optima. This probe computes those QANNs in torch, independently of snncc's pipeline: each ReLU of
the trained net (its torch class from ``examples/models.py``, weights from the ONNX file, checked
against onnxruntime) becomes
``lam / L * clip(floor((z + b) * L / lam + 1/2), 0, L)`` with a per-channel ``lam`` and ``b``,
calibrated on the 256 images of a calibration set in two ways:

- *mse*: ``lam`` per channel from 17 fractions (0.2 .. 1.0) of the channel's maximum, minimising
  the squared error against the ReLU, sites in forward order on the quantized upstream, ``b = 0``;
- *e2e*: from there, ``log lam`` and ``b`` of every site trained end to end (Adam, lr 5e-3,
  ``--steps`` full-batch steps, straight-through floor) to match the ANN's logits (KL at
  temperature 4): the walk's freedom, fitted to the network's output instead of layer by layer.

Then ``lam`` is chosen by MSE on the ANN's own activations instead (*mse on ANN*: every site
quantized with it, as ``--calib-method mse`` chooses lambda), and each site is quantized *alone*
with it (every other site a plain ReLU), which shows where the accuracy goes (the *e2e* parameters
would not do for that: they are trained jointly, each site's compensating the others'). Test
accuracy on the net's test split, for the bundled calibration file and ``--seeds`` sets of 256
training images drawn as ``examples/calibration_spread.py`` draws them.
The SRP column beside it is the default compile's measured accuracy on the same sets, read from
``examples/results/calibration_spread.json`` (not recomputed). The only files written are the table
(``--out``) and its JSON beside it.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from examples.calibration_spread import drawn_calibration_sets  # noqa: E402
from examples.default_table import (declare_table_outputs, git_commit, select_nets,  # noqa: E402
                                    table_parser)
from snncc import __version__  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

DEFAULT_OUT = HERE / "results" / "quantization_bound.md"
SPREAD = HERE / "results" / "calibration_spread.json"
FRACTIONS = np.linspace(0.2, 1.0, 17)


def torch_net(net: dict):
    """The trained net as its torch class with the ONNX file's weights, in eval mode."""
    import onnx
    import torch
    from onnx import numpy_helper

    from examples import models
    arch = net["arch"]
    name = arch.split("(", 1)[0]
    if not hasattr(models, name):
        raise SystemExit(f"{arch}: no such class in examples/models.py")
    # the manifest's own constructor call, with that class (and no builtins) in scope
    module = eval(arch, {"__builtins__": {}, name: getattr(models, name)})
    proto = onnx.load(net["onnx_path"])
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in proto.graph.initializer}
    # an exporter may keep one initializer for equal tensors and name the others through
    # Identity nodes (a shortcut BatchNorm's bias)
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            weights.setdefault(node.output[0], weights[node.input[0]])
    state = module.state_dict()
    loaded = {k: weights[k] for k in state if k in weights}
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{net['onnx']}: no ONNX initializer for {', '.join(missing[:4])}")
    module.load_state_dict(loaded, strict=False)
    return module.eval()


class Quant:
    """Turns every ``nn.ReLU`` of a module into a per-channel L-level quantizer (or leaves some
    as ReLU); the parameters are plain tensors kept here, one ``(log_lam, bias)`` per site."""

    def __init__(self, module, levels: int):
        import torch.nn as nn
        self.levels = levels
        self.sites = [m for m in module.modules() if isinstance(m, nn.ReLU)]
        self.params: list[tuple] = [None] * len(self.sites)
        self.active: set[int] = set()
        self.ste = False
        for k, relu in enumerate(self.sites):
            relu.forward = self._forward(k)

    def _forward(self, k: int):
        import torch

        def forward(z):
            if k not in self.active or self.params[k] is None:
                return torch.relu(z)
            log_lam, bias = self.params[k]
            shape = (1, -1) + (1,) * (z.dim() - 2)
            lam = log_lam.exp().view(shape)
            u = (z + bias.view(shape)) * self.levels / lam + 0.5
            q = torch.floor(u)
            if self.ste:
                q = u + (q - u).detach()
            return torch.clamp(q, 0, self.levels) * lam / self.levels
        return forward


def _site_inputs(module, quant: Quant, k: int, x):
    import torch
    seen = {}
    handle = quant.sites[k].register_forward_pre_hook(lambda m, inp: seen.setdefault("z", inp[0]))
    with torch.no_grad():
        module(x)
    handle.remove()
    return seen["z"]


def mse_init(module, quant: Quant, x, upstream: bool = True) -> None:
    """``lam`` per channel by MSE against the ReLU (17 fractions of the channel maximum), sites in
    forward order on the quantized upstream (``upstream=False``: on the ANN's own); ``b = 0``."""
    import torch
    for k in range(len(quant.sites)):
        quant.active = set(range(k)) if upstream else set()
        z = _site_inputs(module, quant, k, x)
        channels = z.shape[1]
        flat = z.transpose(0, 1).reshape(channels, -1)
        top = flat.max(1).values.clamp(min=1e-6)
        relu = torch.relu(flat)
        best_err, best_lam = None, None
        for frac in FRACTIONS:
            lam = top * float(frac)
            q = torch.clamp(torch.floor(flat * quant.levels / lam[:, None] + 0.5), 0,
                            quant.levels) * lam[:, None] / quant.levels
            err = ((q - relu) ** 2).mean(1)
            if best_err is None:
                best_err, best_lam = err, lam.clone()
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lam = torch.where(better, lam, best_lam)
        quant.params[k] = (best_lam.log(), torch.zeros(channels))
    quant.active = set(range(len(quant.sites)))


def e2e(module, quant: Quant, x, steps: int, lr: float = 5e-3) -> None:
    """Every site's ``log lam`` and ``b`` trained to match the ANN's logits (KL, temperature 4)."""
    import torch
    import torch.nn.functional as F
    quant.active = set()
    with torch.no_grad():
        target = F.softmax(module(x) / 4, 1)
    params = [p.clone().requires_grad_(True) for pair in quant.params for p in pair]
    quant.params = [tuple(params[i:i + 2]) for i in range(0, len(params), 2)]
    quant.active, quant.ste = set(range(len(quant.sites))), True
    trained = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in trained:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = F.kl_div(F.log_softmax(module(x) / 4, 1), target, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, flag in trained:
        p.requires_grad_(flag)
    quant.ste = False
    quant.params = [tuple(p.detach() for p in pair) for pair in quant.params]


def accuracy(module, quant: Quant, active, x, y) -> float:
    import torch
    quant.active = set(active)
    with torch.no_grad():
        return float((module(x).argmax(1).numpy() == y).mean())


def one_set(module, x_calib, x_test, y_test, levels: int, steps: int) -> dict:
    import torch
    quant = Quant(module, levels)
    xc = torch.from_numpy(x_calib)
    all_sites = range(len(quant.sites))
    mse_init(module, quant, xc)
    row = {"mse": accuracy(module, quant, all_sites, x_test, y_test)}
    e2e(module, quant, xc, steps)
    row["e2e"] = accuracy(module, quant, all_sites, x_test, y_test)
    mse_init(module, quant, xc, upstream=False)
    row["mse_ann"] = accuracy(module, quant, all_sites, x_test, y_test)
    row["alone"] = [accuracy(module, quant, [k], x_test, y_test) for k in all_sites]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--seeds", type=int, default=5,
                        help="drawn calibration sets besides the bundled one (default: "
                        "%(default)s)")
    parser.add_argument("--levels", type=int, default=4,
                        help="quantization levels L (T for IF and SRP; default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300,
                        help="end-to-end training steps per set (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.seeds < 0 or args.levels < 1 or args.steps < 0:
        parser.error("--seeds and --steps must be >= 0, --levels >= 1")
    nets = select_nets(parser, args.nets)
    out_json = declare_table_outputs(args.out, nets, parser)
    import onnxruntime as ort
    import torch
    torch.manual_seed(0)
    start = time.perf_counter()
    spread = json.loads(SPREAD.read_text())["nets"] if SPREAD.exists() else {}
    data = {"command": "python examples/quantization_bound.py" + " ".join(
                ["", *(argv if argv is not None else sys.argv[1:])]).rstrip(),
            "snncc_version": __version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "levels": args.levels, "steps": args.steps, "nets": {}}
    for name, net in nets.items():
        test = np.load(net["test_path"])
        x_test, y_test = test["x"].astype(np.float32), test["y"]
        module = torch_net(net)
        session = ort.InferenceSession(str(net["onnx_path"]))
        ann_logits = session.run(None, {session.get_inputs()[0].name: x_test})[0]
        with torch.no_grad():
            diff = float(np.abs(module(torch.from_numpy(x_test)).numpy() - ann_logits).max())
        if diff > 1e-3:
            raise SystemExit(f"{name}: the torch net differs from onnxruntime by {diff:.3g}")
        xt = torch.from_numpy(x_test)
        sets = [("bundled", np.load(net["calib_path"])["input"].astype(np.float32))]
        sets += [(f"drawn {seed}", images.astype(np.float32))
                 for seed, images in enumerate(drawn_calibration_sets(net, args.seeds))]
        rows = []
        for label, x_calib in sets:
            row = {"set": label} | one_set(module, x_calib, xt, y_test, args.levels, args.steps)
            print(f"{name} {label}: mse {row['mse']:.3f}, e2e {row['e2e']:.3f}, alone "
                  f"{[round(a, 3) for a in row['alone']]}", file=sys.stderr, flush=True)
            rows.append(row)
        srp = next((r for r in spread.get(name, {}).get("rows", [])
                    if r["neuron"] == "srp" and r["T"] == args.levels), None)
        data["nets"][name] = {"ann_accuracy": float(np.mean(ann_logits.argmax(1) == y_test)),
                              "test_samples": int(len(y_test)), "rows": rows,
                              "srp": ([srp["bundled"], *srp["drawn"]][:len(rows)]
                                      if srp else None)}
    data["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=1) + "\n")
    with atomic_file(args.out) as tmp_md:
        tmp_md.write_text(markdown(data))
    print(f"wrote {args.out} and {out_json}")
    return 0


def markdown(data: dict) -> str:
    L = data["levels"]
    lines = [f"# {L + 1}-level quantized ANNs, the reference for post-training IF / SRP at "
             f"T = {L}: two calibrations, and each layer alone", "", "Regenerate with:", "",
             "```sh", data["command"], "```", "",
             f"snncc {data['snncc_version']} at commit {data['git_commit']}, {data['date']}; "
             f"{data['seconds']:.0f} s. Method: the module doc of "
             "`examples/quantization_bound.py`. Test accuracy (%) of the trained net with every "
             f"ReLU an L = {L} quantizer (per-channel lambda and bias): *mse* (lambda by MSE per "
             f"channel), *e2e* (lambda and bias of all sites trained to the ANN's logits, "
             f"{data['steps']} steps); *mse on ANN*: every site quantized with lambda chosen by "
             "MSE on the ANN's own activations (as `--calib-method mse` chooses it) instead of on "
             "the quantized upstream; *site k alone*: only site k quantized (those lambdas), the "
             "others ReLU. *SRP*: the default `snncc compile -T "
             f"{L} --neuron srp` on the same set (`calibration_spread.json`). *mean*: over all "
             "the sets, the bundled one included (`calibration_spread.md` averages the drawn sets "
             "only); *gap*: that mean minus the ANN, in points.", ""]
    for name, net in data["nets"].items():
        rows = net["rows"]
        sites = len(rows[0]["alone"])
        ann = 100 * net["ann_accuracy"]
        lines += [f"## {name} (ANN {ann:.1f} %, {net['test_samples']} test images)", "",
                  "| calibration set | SRP | mse | e2e | mse on ANN | "
                  + " | ".join(f"site {k} alone" for k in range(sites)) + " |",
                  "|---|" + "---:|" * (4 + sites)]
        srp = [*(net["srp"] or []), *[None] * len(rows)][:len(rows)]   # more sets than the spread
        for r, s in zip(rows, srp):
            lines.append(f"| {r['set']} | {'-' if s is None else f'{100 * s:.1f}'} "
                         f"| {100 * r['mse']:.1f} | {100 * r['e2e']:.1f} "
                         f"| {100 * r['mse_ann']:.1f} | "
                         + " | ".join(f"{100 * a:.1f}" for a in r["alone"]) + " |")

        def mean(values):
            values = [v for v in values if v is not None]
            return 100 * float(np.mean(values)) if values else None

        cells = [mean(srp), *(mean([r[k] for r in rows]) for k in ("mse", "e2e", "mse_ann")),
                 *(mean([r["alone"][k] for r in rows]) for k in range(sites))]
        lines.append("| **mean** | " + " | ".join("-" if c is None else f"**{c:.2f}**"
                                                  for c in cells) + " |")
        lines.append("| **gap** | " + " | ".join("-" if c is None else f"{c - ann:+.2f}"
                                                 for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
