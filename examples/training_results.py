"""Training-side results: the fine-tuning recipe (issue 11) and the issue-5 tables, on digits and MNIST.

    python examples/training_results.py                       # the recipe tables (default: --part recipe)
    python examples/training_results.py --part issue5         # the issue-5 tables (slow: ~12 min idle)
          [--datasets ...] [--out-dir examples/results/training] [--work-dir DIR] [--seed 0] [--threads 1]

``--part recipe`` (issue 11), per bundled trained network (``examples/trained_models.json``:
``mnist_cnn``, ``mnist_resnet``, ``digits_cnn``, ``digits_resnet``; the data splits of
``examples/data.py``, seed 0, on which they were trained): ``snncc finetune`` with several recipes,
3 epochs each, on the training split (validation split for the logs), and the post-training
baseline; every QCFS graph compiled with ``--neuron if -T 4``, ``--neuron gn -T 1`` (τ = 4) and
``--neuron if -T 8`` (no calibration) and scored on the test split in ONNX Runtime. For the MNIST
CNN it also counts, per layer of the IF SNN at T = 4, the neurons whose QANN output is 0 but which
fire (the unevenness error behind the IF collapse). Writes ``recipe_<net>.md``, ``recipe.md`` (all
nets) and ``results_recipe.json``.

``--part issue5`` (the original issue-5 proof, unchanged in what it runs):
Per data set (``examples/data.py`` splits, seed 0; the test split is only used for the tables):

1. train ``MnistCNN`` as a ReLU ANN (``examples/train_mnist.train``) and export it;
2. post-training QANN: ``snncc compile --target qann -L T --calib-method mse`` on training images;
3. ``snncc finetune`` QCFS models (L = 4; L = 2^T - 1 for the bit-serial neuron; L = 3 with
   ``--sparsity`` for the regulariser) and compile each with every neuron, no calibration;
4. ``snncc finetune --iir`` (T = 5..1) and compile every stage with ``--neuron lif``;
5. write ``accuracy_<ds>.md``, ``sparsity_<ds>.md``, ``iir_<ds>.md``, ``accuracy_vs_T_<ds>.png``
   and the raw numbers ``results_<ds>.json`` into ``--out-dir``.

Fine-tuning and IIR training go through ``snncc.train.cli.run_finetune`` with the arguments the
command line would get (printed and stored). Not run in CI. The issue-5 fine-tunes pin the recipe
they were measured with where the options still exist (``--lambda-init p99.9 --distill 0``, 10 epochs);
the tables in the folder were written by the code before issue 11 (see the README there).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.data import load_digits_split, load_mnist_subset  # noqa: E402
from examples.export_models import export  # noqa: E402
from examples.models import MnistCNN  # noqa: E402
from examples.train_mnist import train  # noqa: E402
from snncc.analysis.synops import count_synops, ort_events  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.simulate import run_compiled  # noqa: E402
from snncc.train.cli import add_finetune_arguments, run_finetune  # noqa: E402

TIMESTEPS = (1, 2, 4, 8)
NEURONS = ("if", "bitserial", "mt", "gn", "srp")
BASE_LEVELS = 4
IIR_TIMESTEPS = (5, 4, 3, 2, 1)
SPARSE_T = 2                       # the sparsity study: bit-serial at T = 2 from L = 3 QCFS models
BATCH = 250

# Epochs and settings per data set, chosen to fit the whole run into ~25 min on 2 busy CPU cores.
CONFIGS = {
    "digits": dict(load=load_digits_split, ann_epochs=30, qcfs_epochs=10, bitserial_epochs=10,
                   bitserial_levels={1: 1, 2: 3, 4: 15, 8: 255}, kappas=(3e-6, 1e-5), iir_epochs=10, iir_lr=1e-3),
    "mnist": dict(load=load_mnist_subset, ann_epochs=15, qcfs_epochs=10, bitserial_epochs=10,
                  bitserial_levels={1: 1, 2: 3, 4: 15, 8: 255}, kappas=(2e-6, 1e-5), iir_epochs=5, iir_lr=1e-3),
}


def plan(neuron: str, T: int, bitserial_levels: dict[int, int]) -> int | None:
    """QCFS levels L of the fine-tuned graph that ``neuron`` is compiled from at T (None: n/a).

    if / srp take any L; gn and mt (equidistant) need tau = L / T to be an integer, so from L = 4 they
    run at T = 1, 2, 4 only; bit-serial needs L = 2^T - 1, its own fine-tuned model."""
    if neuron == "bitserial":
        return bitserial_levels.get(T)
    if neuron in ("gn", "mt"):
        return BASE_LEVELS if BASE_LEVELS % T == 0 else None
    return BASE_LEVELS


class Timer:
    """Wall seconds per named stage."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()
                print(f"[{name}] ...", flush=True)

            def __exit__(self, *exc):
                timer.stages[name] = round(time.perf_counter() - self.start, 1)
                print(f"[{name}] {timer.stages[name]} s", flush=True)

        return _Stage()


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Class predictions of an ONNX model (plain or compiled) in ONNX Runtime."""
    res = run_compiled(path, x, use_library=True, spike_counts=False, batch_size=BATCH)
    return next(iter(res.outputs.values())).argmax(1)


def finetune(argv: list[str], commands: list[str]) -> None:
    """``snncc finetune ARGV`` through the CLI's own argument parser."""
    commands.append("snncc finetune " + shlex.join(argv))
    print(commands[-1], flush=True)
    parser = argparse.ArgumentParser()
    add_finetune_arguments(parser)
    run_finetune(parser.parse_args(argv))


def synops_report(src: Path, work: Path, T: int, neuron: str, x: np.ndarray) -> dict:
    """Compile ``src`` for ``neuron`` at T and count spike rates and SynOps per test image."""
    snn, dump = work / f"{src.stem}_{neuron}_T{T}_syn.onnx", work / f"{src.stem}_{neuron}_T{T}_dump"
    compile_model(src, snn, make_options(target="ort", timesteps=T, neuron=neuron),
                  dump_after=["insert-neurons"], dump_dir=dump)
    compiled = onnx.load(str(snn))
    name = next(i.name for i in compiled.graph.input
                if i.name not in {t.name for t in compiled.graph.initializer})
    chunks = [ort_events(compiled, {name: x[i:i + BATCH]}) for i in range(0, len(x), BATCH)]
    events = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    syn = count_synops(onnx.load(str(dump / "after-insert-neurons.onnx")), events, timesteps=T)
    layers = {name: {"neurons": row["neurons"], "events": row["events"], "spike_rate": row["spike_rate"],
                     "synops_out": sum(b["per_inference"] for b in syn["blocks"] if b["src"] == name)}
              for name, row in syn["layers"].items() if "events" in row}
    return {"layers": layers, **{k: syn[k] for k in ("total_synops", "total_macs", "ann_macs")}}


def run_dataset(ds: str, work: Path, seed: int, smoke: bool = False) -> dict:
    cfg = dict(CONFIGS[ds])
    if smoke:
        cfg.update({k: 1 for k in cfg if k.endswith("epochs")})
    timer, commands = Timer(), []
    torch.manual_seed(seed)
    data = cfg["load"](seed)
    x_test, y_test = data.test
    side = x_test.shape[-1]
    np.savez(work / "train.npz", x=data.train[0], y=data.train[1])
    np.savez(work / "val.npz", x=data.val[0], y=data.val[1])
    np.savez(work / "calib.npz", input=data.train[0])
    common = ["--data", str(work / "train.npz"), "--val", str(work / "val.npz"), "--seed", str(seed),
              "--no-progress"]

    def acc(pred: np.ndarray) -> float:
        return float((pred == y_test).mean())

    res: dict = {"dataset": ds, "seed": seed, "config": {k: v for k, v in cfg.items() if k != "load"},
                 "split": {k: len(getattr(data, k)[0]) for k in ("train", "val", "test")}}

    with timer("ANN training"):
        ann = MnistCNN(image_size=side)
        train(ann, *data.train, epochs=cfg["ann_epochs"], batch_size=64, lr=3e-3, seed=seed)
        ann_path = work / "ann.onnx"
        export(ann, str(ann_path), (1, 1, side, side), dynamic_batch=True)
    res["ann"] = acc(predict(ann_path, x_test))

    with timer("post-training QANN"):
        res["ptq"] = {}
        for T in TIMESTEPS:
            out = work / f"ptq_L{T}.onnx"
            compile_model(ann_path, out, make_options(target="qann", levels=T, calib_method="mse",
                                                      calib_path=str(work / "calib.npz"),
                                                      fidelity_samples=0))
            res["ptq"][T] = acc(predict(out, x_test))

    levels = sorted({BASE_LEVELS, *cfg["bitserial_levels"].values()})
    qcfs: dict[int, Path] = {}
    res["qcfs"] = {}
    for L in levels:
        with timer(f"QCFS fine-tune L={L}"):
            qcfs[L] = work / f"qcfs_L{L}.onnx"
            epochs = cfg["qcfs_epochs"] if L == BASE_LEVELS else cfg["bitserial_epochs"]
            finetune([str(ann_path), *common, "-L", str(L), "--epochs", str(epochs), "--lambda-init", "p99.9",
                      "--distill", "0", "--snn-timesteps", "0", "-o", str(qcfs[L])], commands)
        res["qcfs"][L] = acc(predict(qcfs[L], x_test))

    with timer("compile + run neurons"):
        res["snn"] = {}
        for neuron in NEURONS:
            for T in TIMESTEPS:
                L = plan(neuron, T, cfg["bitserial_levels"])
                if L is None:
                    continue
                out = work / f"qcfs_L{L}_{neuron}_T{T}.onnx"
                compile_model(qcfs[L], out, make_options(target="ort", timesteps=T, neuron=neuron))
                pred = predict(out, x_test)
                res["snn"].setdefault(neuron, {})[T] = {
                    "L": L, "acc": acc(pred), "agree": float((pred == predict(qcfs[L], x_test)).mean())}

    sources = {"0": qcfs[3]}
    for kappa in cfg["kappas"]:
        with timer(f"sparsity: QCFS fine-tune L=3 kappa={kappa:g}"):
            sources[f"{kappa:g}"] = work / f"qcfs_L3_kappa{kappa:g}.onnx"
            finetune([str(ann_path), *common, "-L", "3", "--epochs", str(cfg["bitserial_epochs"]), "--lambda-init",
                      "p99.9", "--distill", "0", "--snn-timesteps", "0", "--sparsity", str(kappa), "-o", str(sources[f"{kappa:g}"])], commands)
    with timer("sparsity: spike counts and SynOps"):
        res["sparsity"] = {"neuron": "bitserial", "T": SPARSE_T, "L": 3, "runs": {}}
        for label, src in sources.items():
            syn = synops_report(src, work, SPARSE_T, "bitserial", x_test)
            compiled = work / f"{src.stem}_bitserial_T{SPARSE_T}_syn.onnx"
            res["sparsity"]["runs"][label] = {"qann_acc": acc(predict(src, x_test)),
                                              "snn_acc": acc(predict(compiled, x_test)), **syn}

    with timer("IIR training"):
        iir = work / "iir.onnx"
        finetune([str(ann_path), *common, "--iir", "--timesteps", ",".join(map(str, IIR_TIMESTEPS)),
                  "--epochs", str(cfg["iir_epochs"]), "--lr", str(cfg["iir_lr"]), "--threshold-steps", "100",
                  "-o", str(iir)], commands)
    with timer("IIR compile + run"):
        res["iir"] = {}
        for T in IIR_TIMESTEPS:
            out = work / f"iir_lif_T{T}.onnx"
            compile_model(work / f"iir.T{T}.onnx", out, make_options(target="ort", timesteps=T, neuron="lif"))
            res["iir"][T] = acc(predict(out, x_test))

    res["commands"], res["wall_s"] = commands, timer.stages
    res["wall_total_s"] = round(sum(timer.stages.values()), 1)
    return res


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def accuracy_md(r: dict) -> str:
    n = r["split"]["test"]
    head = "| method | " + " | ".join(f"T={T}" for T in TIMESTEPS) + " |\n|---|" + "---:|" * len(TIMESTEPS)
    rows = ["| ReLU ANN | " + " | ".join(pct(r["ann"]) for _ in TIMESTEPS) + " |",
            "| post-training QANN (mse calibration, L = T) | " + " | ".join(pct(r["ptq"][T]) for T in TIMESTEPS) + " |",
            f"| fine-tuned QCFS QANN, L = {BASE_LEVELS} | "
            + " | ".join(pct(r["qcfs"][BASE_LEVELS]) for _ in TIMESTEPS) + " |",
            "| fine-tuned QCFS QANN, L = 2^T - 1 (bit-serial's source) | "
            + " | ".join(pct(r["qcfs"].get(r["snn"]["bitserial"].get(T, {}).get("L"))) for T in TIMESTEPS) + " |"]
    agree = []
    for neuron in NEURONS:
        cells = [r["snn"].get(neuron, {}).get(T) for T in TIMESTEPS]
        rows.append(f"| SNN `{neuron}` | " + " | ".join(pct(c and c["acc"]) for c in cells) + " |")
        agree.append(f"| `{neuron}` | " + " | ".join(
            "n/a" if c is None else f"{pct(c['agree'])} (L={c['L']})" for c in cells) + " |")
    levels = ", ".join(f"L={L}: {pct(a)} %" for L, a in sorted(r["qcfs"].items()))
    return "\n".join([
        f"# Test accuracy (%) vs timesteps T: {r['dataset']} ({n} test images, seed {r['seed']})", "",
        "Every SNN is compiled (target `ort`, folded schedule, no calibration) from a fine-tuned QCFS graph "
        f"(λ and L read from the graph): `if`, `srp`, `mt`, `gn` from the L = {BASE_LEVELS} model at every T "
        "(`mt`/`gn` need τ = L/T to be an integer: n/a at T = 8); `bitserial` from its own model with "
        "L = 2^T - 1. The post-training QANN is the ANN compiled with `--target qann -L T --calib-method mse` "
        "(256 training images).", "", head, *rows, "",
        f"Fine-tuned QCFS QANN test accuracy: {levels}.", "",
        "## Agreement of the SNN's predictions with the QCFS QANN it was compiled from (%)", "",
        "| neuron | " + " | ".join(f"T={T}" for T in TIMESTEPS) + " |\n|---|" + "---:|" * len(TIMESTEPS),
        *agree, ""])


def sparsity_md(r: dict) -> str:
    s = r["sparsity"]
    runs = s["runs"]
    base = runs["0"]
    kappas = list(runs)
    lines = [f"# Spike-count regulariser: {r['dataset']} (bit-serial SNN, T = {s['T']}, L = {s['L']})", "",
             f"QCFS L = {s['L']} fine-tunes from the same ANN, seed and epochs, with κ = "
             + ", ".join(kappas) + " (`snncc finetune --sparsity κ`), each compiled with "
             f"`--neuron bitserial -T {s['T']}` (its spikes are exactly the set bits the regulariser counts). "
             "Spikes and SynOps per test image are counted on the compiled ONNX model "
             "(`snncc.analysis.synops.ort_events` + `count_synops`: exact structural fan-out, one SynOp "
             "per spike per outgoing synapse; the first layer's analog input counts as MACs). "
             "Changes are relative to κ = 0.", "",
             "| | " + " | ".join(f"κ = {k}" for k in kappas) + " |", "|---|" + "---:|" * len(kappas)]

    def rel(a: float, b: float) -> str:
        return f" ({100 * (b - a) / a:+.1f} %)" if a and b != a else ""

    def acc_row(name: str, key: str) -> None:
        lines.append(f"| {name} | " + " | ".join(
            pct(v[key]) + (f" ({100 * (v[key] - base[key]):+.2f} pt)" if k != "0" else "")
            for k, v in runs.items()) + " |")

    acc_row("QANN test accuracy (%)", "qann_acc")
    acc_row("SNN test accuracy (%)", "snn_acc")
    events = {k: sum(layer["events"] for layer in v["layers"].values()) for k, v in runs.items()}
    lines.append("| spikes per image (all layers) | " + " | ".join(
        f"{events[k]:,.0f}{rel(events['0'], events[k])}" for k in kappas) + " |")
    lines.append("| SynOps per image | " + " | ".join(
        f"{v['total_synops']:,.0f}{rel(base['total_synops'], v['total_synops'])}" for v in runs.values()) + " |")
    lines.append("| first-layer MACs per image (analog input) | " + " | ".join(
        f"{v['total_macs']:,.0f}" for v in runs.values()) + " |")
    lines += ["", f"ANN MACs per image for reference: {base['ann_macs']:,.0f}.", "",
              "Per spiking layer: spike rate (spikes per neuron and timestep) and the SynOps per image its "
              "spikes cause in the next layer.", "",
              "| layer | neurons | " + " | ".join(f"rate κ={k}" for k in kappas) + " | "
              + " | ".join(f"SynOps out κ={k}" for k in kappas) + " |",
              "|---|---:|" + "---:|" * (2 * len(kappas))]
    for name, layer in base["layers"].items():
        rows = [runs[k]["layers"][name] for k in kappas]
        lines.append(f"| `{name.split('/')[1]}` | {layer['neurons']:,} | "
                     + " | ".join(f"{x['spike_rate']:.4f}" for x in rows) + " | "
                     + " | ".join(f"{x['synops_out']:,.0f}" for x in rows) + " |")
    return "\n".join(lines + [""])


def iir_md(r: dict) -> str:
    lines = [f"# IIR-SNN (LIF) test accuracy: {r['dataset']}", "",
             f"`snncc finetune --iir --timesteps {','.join(map(str, IIR_TIMESTEPS))}` "
             f"({r['config']['iir_epochs']} epochs per stage, Adam lr {r['config']['iir_lr']:g}, threshold search "
             "100 steps), each stage compiled with `snncc compile --neuron lif -T T` and run in ONNX Runtime.", "",
             "| T | " + " | ".join(str(T) for T in IIR_TIMESTEPS) + " |",
             "|---|" + "---:|" * len(IIR_TIMESTEPS),
             "| test accuracy (%) | " + " | ".join(pct(r["iir"][T]) for T in IIR_TIMESTEPS) + " |", "",
             f"ReLU ANN: {pct(r['ann'])} %.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.axhline(100 * r["ann"], color="k", ls="--", lw=1, label="ReLU ANN")
    ax.axhline(100 * r["qcfs"][BASE_LEVELS], color="gray", ls=":", lw=1.5, label=f"QCFS QANN L={BASE_LEVELS}")
    series = {"post-training QANN (L=T)": r["ptq"]}
    series.update({f"SNN {n}" + (" (L=2^T-1)" if n == "bitserial" else f" (L={BASE_LEVELS})"):
                   {T: c["acc"] for T, c in r["snn"][n].items()} for n in NEURONS})
    series["IIR LIF SNN"] = r["iir"]
    markers = "osD^v<>P"
    for (name, values), m in zip(series.items(), markers):
        ts = sorted(values)
        dashed = name.startswith("SNN gn")    # gn == mt (equidistant preset): dashed so both stay visible
        ax.plot(ts, [100 * values[T] for T in ts], marker=m, ls="--" if dashed else "-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 3, 4, 5, 8], labels=["1", "2", "3", "4", "5", "8"])
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{r['dataset']}: test accuracy vs T ({r['split']['test']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



# ------------------------------------------------------------------------------------------ recipe (issue 11)

NETS = {  # bundled trained networks (examples/trained_models.json) and the split they were trained on
    "mnist_cnn": ("mnist", "mnist_cnn.onnx"),
    "mnist_resnet": ("mnist", "mnist_resnet.onnx"),
    "digits_cnn": ("digits", "digits_cnn.onnx"),
    "digits_resnet": ("digits", "digits_resnet.onnx"),
}
RECIPE_EPOCHS = 3
RECIPES = [  # (key, label, extra snncc finetune arguments); 3 epochs each
    ("old", "old defaults: λ = 8.0 per layer, cross-entropy only, lr 0.01, batch 128, no IF loop",
     ["--lambda-init", "8.0", "--distill", "0", "--lr", "0.01", "--batch-size", "128", "--snn-timesteps", "0"]),
    ("ce", "QANN only: per-channel MSE λ, cross-entropy only", ["--distill", "0", "--snn-timesteps", "0"]),
    ("qann", "QANN only: per-channel MSE λ + distillation, BN folded, lr 0.003", ["--snn-timesteps", "0"]),
    ("lr01", "QANN only, peak `--lr 0.01` (the design note's value)", ["--snn-timesteps", "0", "--lr", "0.01"]),
    ("bn_freeze", "QANN only, BatchNorm kept with frozen statistics (`--bn freeze`)",
     ["--snn-timesteps", "0", "--bn", "freeze"]),
    ("bn_freeze01", "QANN only, `--bn freeze` at `--lr 0.01`", ["--snn-timesteps", "0", "--bn", "freeze", "--lr", "0.01"]),
    ("bn_train", "QANN only, BatchNorm statistics trained (`--bn train`)", ["--snn-timesteps", "0", "--bn", "train"]),
    ("default", "**defaults** = QANN recipe + IF SNN at T = L = 4 in the loop", []),
]
EVALS = [("qann", None, None), ("if4", "if", 4), ("gn1", "gn", 1), ("if8", "if", 8)]


def _load_split(ds: str, seed: int):
    return (load_mnist_subset if ds == "mnist" else load_digits_split)(seed)


def _quant_sites(proto: onnx.ModelProto) -> list[tuple[str, np.ndarray, int]]:
    """(output name, λ, L) of every quantized clip (exported QCFS or compile-emitted), in graph order."""
    import onnx_graphsurgeon as gs

    from passes.quant_clip import find_quant_clips

    return [(site.y.name, np.asarray(site.params.lam, np.float32), int(site.params.levels))
            for site in find_quant_clips(gs.import_onnx(proto))]


def unevenness(qcfs_path: Path, snn_path: Path, x: np.ndarray) -> list[dict]:
    """Per site: share of neurons whose QANN level is 0, the share of those that fire in the IF SNN,
    and the SNN's total spike count against the QANN's total level (both in units of λ/L)."""
    import onnxruntime as ort

    proto = onnx.load(str(qcfs_path))
    sites = _quant_sites(proto)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name, _, _ in sites:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    qann = [np.concatenate(v) for v in zip(*[sess.run([n for n, _, _ in sites], {feed: x[i:i + BATCH]})
                                              for i in range(0, len(x), BATCH)])]
    compiled = onnx.load(str(snn_path))
    name = next(i.name for i in compiled.graph.input if i.name not in {t.name for t in compiled.graph.initializer})
    chunks = [ort_events(compiled, {name: x[i:i + BATCH]}) for i in range(0, len(x), BATCH)]
    events = [np.concatenate([c[k] for c in chunks]) for k in chunks[0]]
    rows = []
    for (site, lam, L), q, ev in zip(sites, qann, events):
        lam = lam.reshape((1, -1) + (1,) * (q.ndim - 2)) if lam.size > 1 else lam
        level = np.rint(q * L / lam)
        zero = level == 0
        rows.append({"site": site, "zero_share": float(zero.mean()),
                     "false_fire": float((ev[zero] > 0).mean()) if zero.any() else 0.0,
                     "count_over_level": float(ev.sum() / max(level.sum(), 1))})
    return rows


def run_recipe(net: str, work: Path, seed: int) -> dict:
    ds, file = NETS[net]
    ann_path = ROOT / "examples" / file
    data = _load_split(ds, seed)
    x_test, y_test = data.test
    np.savez(work / "train.npz", x=data.train[0], y=data.train[1])
    np.savez(work / "val.npz", x=data.val[0], y=data.val[1])
    np.savez(work / "calib.npz", input=data.train[0][:256])
    commands: list[str] = []
    timer = Timer()

    def acc(path: Path) -> float:
        return float((predict(path, x_test) == y_test).mean())

    res: dict = {"net": net, "dataset": ds, "seed": seed, "ann": acc(ann_path), "epochs": RECIPE_EPOCHS,
                 "split": {k: len(getattr(data, k)[0]) for k in ("train", "val", "test")}, "runs": {}}
    # post-training baseline: the same per-channel MSE λ, no training (what compile does with --calib)
    with timer(f"{net}: post-training"):
        row = {}
        base = dict(calib_method="mse", calib_per_channel=True, calib_path=str(work / "calib.npz"), levels=4,
                    fidelity_samples=0)
        compile_model(ann_path, work / "ptq.onnx", make_options(target="qann", **base))
        row["qann"] = acc(work / "ptq.onnx")
        for key, neuron, T in EVALS[1:]:
            out = work / f"ptq_{key}.onnx"
            params = {"tau": 4} if neuron == "gn" else {}
            compile_model(ann_path, out, make_options(target="ort", timesteps=T, neuron=neuron,
                                                      neuron_params=params, **base))
            row[key] = acc(out)
        res["post_training"] = row
    common = ["--data", str(work / "train.npz"), "--val", str(work / "val.npz"), "--seed", str(seed),
              "--epochs", str(RECIPE_EPOCHS), "--no-progress"]
    for key, label, extra in RECIPES:
        src = work / f"{key}.onnx"
        start = time.perf_counter()
        with timer(f"{net}: {key}"):
            finetune([str(ann_path), *common, *extra, "-o", str(src)], commands)
        row = {"label": label, "args": extra, "train_s": round(time.perf_counter() - start, 1), "qann": acc(src)}
        for k, neuron, T in EVALS[1:]:
            out = work / f"{key}_{k}.onnx"
            compile_model(src, out, make_options(target="ort", timesteps=T, neuron=neuron))
            row[k] = acc(out)
        res["runs"][key] = row
    if net == "mnist_cnn":
        with timer(f"{net}: unevenness"):
            x = x_test[:500]
            res["unevenness"] = {"post_training": unevenness(work / "ptq.onnx", work / "ptq_if4.onnx", x)}
            for key in ("old", "qann", "lr01", "default"):
                res["unevenness"][key] = unevenness(work / f"{key}.onnx", work / f"{key}_if4.onnx", x)
    res["commands"], res["wall_s"] = commands, timer.stages
    return res


def recipe_table(r: dict) -> list[str]:
    ann = r["ann"]

    def cell(v: float) -> str:
        return f"{pct(v)} ({100 * (v - ann):+.1f})"

    lines = [f"ReLU ANN: **{pct(ann)} %** ({r['split']['test']} test images). Cells: test accuracy % "
             "(points against the ANN).", "",
             "| recipe | QANN L = 4 | IF T = 4 | GN T = 1 (τ = 4) | IF T = 8 | train s |",
             "|---|---:|---:|---:|---:|---:|"]
    pt = r["post_training"]
    lines.append("| post-training: per-channel MSE λ, no training | "
                 + " | ".join(cell(pt[k]) for k, _, _ in EVALS) + " | 0 |")
    for key, row in r["runs"].items():
        lines.append(f"| {row['label']} | " + " | ".join(cell(row[k]) for k, _, _ in EVALS)
                     + f" | {row['train_s']:.0f} |")
    return lines


def unevenness_md(r: dict) -> list[str]:
    u = r["unevenness"]
    names = {"post_training": "post-training", "old": "old defaults", "qann": "QANN only",
             "lr01": "QANN only, lr 0.01", "default": "defaults (IF in the loop)"}
    lines = ["Per spiking layer of the IF SNN at T = 4 (500 test images): the share of neurons whose QANN "
             "output is 0, the share **of those** that fire anyway, and the SNN's spike count over the QANN's "
             "level sum (1.00 = same mean output).", "",
             "| layer | " + " | ".join(f"{names[k]}: zero / fire / count÷level" for k in u) + " |",
             "|---|" + "---:|" * len(u)]
    for i, site in enumerate(u["default"]):
        cells = []
        for k in u:
            row = u[k][i]
            cells.append(f"{100 * row['zero_share']:.0f} % / {100 * row['false_fire']:.1f} % / "
                         f"{row['count_over_level']:.2f}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def recipe_md(results: list[dict]) -> str:
    lines = ["# Fine-tuning recipe (issue 11): QANN, IF and GN against the ANN", "",
             f"Every row is `snncc finetune NET.onnx --data train.npz --val val.npz --epochs {RECIPE_EPOCHS} "
             "--seed 0` plus the arguments named, then `snncc compile` of the exported graph (no calibration) "
             "with `--neuron if -T 4`, `--neuron gn -T 1` and `--neuron if -T 8`, run in ONNX Runtime on the test "
             "split. The post-training row compiles the ANN with `--calib-method mse --per-channel -L 4` "
             "(256 training images): the λ the recipe starts from. Regenerate: "
             "`python examples/training_results.py`.", ""]
    for r in results:
        lines += [f"## {r['net']} ({r['dataset']}, {r['split']['train']} training images)", ""]
        lines += recipe_table(r) + [""]
        if "unevenness" in r:
            lines += ["### Why IF at T = L = 4 collapses (or not)", ""] + unevenness_md(r) + [""]
    return "\n".join(lines)


def main_recipe(args, out: Path) -> None:
    nets = [n for n in args.nets.split(",") if n]
    results = []
    for net in nets:
        if not (ROOT / "examples" / NETS[net][1]).exists():
            print(f"{net}: {NETS[net][1]} not found, skipped", flush=True)
            continue
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="snncc_recipe_")) / net
        work.mkdir(parents=True, exist_ok=True)
        r = run_recipe(net, work, args.seed)
        results.append(r)
        (out / f"results_recipe_{net}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
        print(f"{net}: done in {sum(r['wall_s'].values()):.0f} s (models in {work})", flush=True)
    done = {r["net"] for r in results}
    for net in NETS:   # with --nets SUBSET, keep the other nets' last results in recipe.md
        if net not in done and (out / f"results_recipe_{net}.json").exists():
            results.append(json.loads((out / f"results_recipe_{net}.json").read_text()))
    results.sort(key=lambda r: list(NETS).index(r["net"]))
    (out / "recipe.md").write_text(recipe_md(results))

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("recipe", "issue5"), default="recipe")
    parser.add_argument("--nets", default="mnist_cnn,digits_cnn,mnist_resnet,digits_resnet",
                        help="--part recipe: bundled networks to fine-tune")
    parser.add_argument("--datasets", default="digits,mnist", help="--part issue5: data sets")
    parser.add_argument("--out-dir", default=str(ROOT / "examples" / "results" / "training"))
    parser.add_argument("--work-dir", help="where models go (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 busy cores, 2 threads ran 17x slower)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch everywhere: checks the script, numbers meaningless")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "recipe":
        main_recipe(args, out)
        return
    for ds in args.datasets.split(","):
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="snncc_training_")) / ds
        work.mkdir(parents=True, exist_ok=True)
        r = run_dataset(ds, work, args.seed, args.smoke)
        (out / f"results_{ds}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
        (out / f"accuracy_{ds}.md").write_text(accuracy_md(r))
        (out / f"sparsity_{ds}.md").write_text(sparsity_md(r))
        (out / f"iir_{ds}.md").write_text(iir_md(r))
        plot(r, out / f"accuracy_vs_T_{ds}.png")
        print(f"{ds}: wrote {out} in {r['wall_total_s']} s (models in {work})", flush=True)


if __name__ == "__main__":
    main()
