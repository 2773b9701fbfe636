"""snncc against SpikingJelly's ann2snn and sinabs' ``from_model`` on the bundled trained networks
(issue 12): accuracy at T = 4, 8, 32 and ms per image, all in one process.

Networks: ``examples/mnist_cnn.onnx`` (calibration ``mnist_calib.npz``, test ``mnist_test.npz``) and
``examples/mnist_resnet.onnx`` (``mnist_resnet_calib.npz``, ``mnist_resnet_test.npz``). The peers
need torch modules: the architecture is rebuilt from ``examples/models.py`` (``MnistCNN``,
``SmallResNet(widths=(16, 32, 64))``, the classes the networks were trained with) and loaded with
the ONNX initializers (their names are the torch state-dict keys); the script checks that the
torch module reproduces the ONNX ANN's logits before using it.

Contenders, each with its own default-style recipe and the same 256 calibration images:

* ``snncc if`` / ``snncc bitserial``: ``compile_model(..., neuron=..., timesteps=T)`` with
  default options (bit-serial: the window-collapsed schedule, T <= 16), run in ONNX Runtime with
  the kernel library;
* ``SpikingJelly``: ``ann2snn.Converter(RateCodingRecipe(calib, mode="99.9%"))`` (Conv-BN fusion,
  99.9th-percentile voltage scaling, IF neurons with soft reset), T forward steps, summed outputs;
* ``sinabs``: ``from_model(ann, add_spiking_output=False)`` (IAFSqueeze, MultiSpike,
  subtractive reset, threshold 1; no weight normalisation: see :func:`sinabs_runner`), the input
  repeated T times, outputs averaged.

A peer that is not installed (``pip install --no-deps spikingjelly sinabs loguru pbr`` beside
torch 2.13 CPU) is skipped and said so. Timing: one batch of ``--batch`` images, every contender
of one (net, T) timed round-robin (``--rounds`` rounds, medians), torch and ORT with ``--threads``
threads; the ANN in ORT and in torch are timed in the same rounds as references.

    python bench/peers.py [--nets cnn,resnet] [-T 4,8,32] [--samples 1000] [--batch 100]
        [--rounds 5] [--threads 2] [-o bench/results/peers.md]
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

# torch's OpenMP workers busy-wait after each call by default; in interleaved rounds that spin
# steals the cores from whatever runs next (the ORT ANN measured 2.5x slower than alone). Passive
# waiting keeps every contender's timing its own. Must be set before torch (or numpy's BLAS) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import NETS, bundled, bundled_inputs, interleaved_medians, session  # noqa: E402


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def torch_ann(net: str, ann_path: Path, x: np.ndarray):
    """The trained architecture in torch with the ONNX weights, checked against ORT."""
    import torch

    from examples.models import MnistCNN, SmallResNet

    model = MnistCNN() if net == "cnn" else SmallResNet(widths=(16, 32, 64))
    proto = onnx.load(str(ann_path))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:  # the exporter shares equal initializers through Identity
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    state = model.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{net}: the ONNX file lacks {missing[:3]}...")
    model.load_state_dict({k: torch.from_numpy(np.array(weights[k])) if k in weights else v
                           for k, v in state.items()})
    model.eval()
    sess = ort.InferenceSession(str(ann_path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x[:64]})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x[:64])).numpy()
    if not np.allclose(got, want, atol=1e-3 * np.abs(want).max()):
        raise SystemExit(f"{net}: the torch rebuild does not reproduce the ONNX ANN")
    return model


def snncc_runner(ann_path: Path, calib: Path, neuron: str, T: int, tmp: Path, threads: int):
    from snncc.driver import compile_model, make_options

    out = tmp / f"{ann_path.stem}_{neuron}_T{T}.onnx"
    compile_model(str(ann_path), out, make_options(target="ort", timesteps=T, neuron=neuron,
                                                   calib_path=str(calib), fidelity_samples=0))
    sess = session(out, True, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def spikingjelly_runner(model, calib: np.ndarray, T: int):
    import torch
    from spikingjelly.activation_based import ann2snn, functional

    loader = [(torch.from_numpy(calib[i:i + 64]), torch.zeros(len(calib[i:i + 64])))
              for i in range(0, len(calib), 64)]
    snn = ann2snn.Converter(ann2snn.RateCodingRecipe(loader, mode="99.9%")).convert(
        copy.deepcopy(model)).eval()

    def run(x: np.ndarray) -> np.ndarray:
        functional.reset_net(snn)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            out = snn(xt)
            for _ in range(T - 1):
                out = out + snn(xt)
        return (out / T).numpy()
    return run


def sinabs_runner(model, calib: np.ndarray, T: int, batch: int):
    """sinabs' default conversion: ``from_model`` on the ANN as it is (IAFSqueeze, MultiSpike,
    subtractive reset, threshold 1). A data-based weight normalisation (Rueckauer et al., tried
    with the rule W *= lambda_prev / lambda, b /= lambda, since sinabs.utils.normalize_weights
    assumes bias-free layers) lowered the accuracy here (MNIST CNN: 10.5 % at T = 4, 52 % at
    T = 32, against 42.5 % and 100 % without it): MultiSpike already lets a neuron emit several
    spikes per step, which normalising to one spike per step throws away."""
    import torch
    from sinabs.from_torch import from_model

    ann = copy.deepcopy(model).eval()
    nets: dict[int, object] = {}

    def run(x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n not in nets:
            nets[n] = from_model(copy.deepcopy(ann), input_shape=x.shape[1:], batch_size=n,
                                 add_spiking_output=False)
        net = nets[n]
        net.reset_states()
        xs = torch.from_numpy(x).unsqueeze(1).expand(n, T, *x.shape[1:]).reshape(n * T,
                                                                                 *x.shape[1:])
        with torch.no_grad():
            out = net(xs)
        return out.reshape(n, T, -1).mean(1).numpy()
    return run


def accuracy(run, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    preds = [run(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]
    return float((np.concatenate(preds) == y).mean())


def bench_net(net: str, Ts: list[int], samples: int, batch: int, rounds: int, threads: int,
              tmp: Path) -> tuple[list[dict], dict]:
    import torch

    ann_path, calib_path, test_path = bundled(net)
    data = np.load(test_path)
    x, y = data["x"][:samples].astype(np.float32), data["y"][:samples]
    calib = np.load(calib_path)["input"].astype(np.float32)
    model = torch_ann(net, ann_path, x)
    ann_sess = session(ann_path, False, threads)
    in_name = ann_sess.get_inputs()[0].name
    with torch.no_grad():
        ann_acc = float((model(torch.from_numpy(x)).numpy().argmax(1) == y).mean())
    xb = x[:batch]
    rows = []
    refs: dict = {"ann_acc": ann_acc}
    for T in Ts:
        runners = {"snncc if": snncc_runner(ann_path, calib_path, "if", T, tmp, threads)}
        if T <= 16:
            runners["snncc bitserial"] = snncc_runner(ann_path, calib_path, "bitserial", T, tmp,
                                                      threads)
        if have("spikingjelly"):
            runners["SpikingJelly ann2snn"] = spikingjelly_runner(model, calib, T)
        if have("sinabs"):
            runners["sinabs from_model"] = sinabs_runner(model, calib, T, batch)
        fns = {"ann (ORT)": lambda: ann_sess.run(None, {in_name: xb}),
               "ann (torch)": lambda: model(torch.from_numpy(xb)),
               **{k: (lambda r=r: r(xb)) for k, r in runners.items()}}
        with torch.no_grad():
            t = interleaved_medians(fns, rounds)
        refs.setdefault("ann_ort_ms", []).append(1e3 * t["ann (ORT)"] / batch)
        refs.setdefault("ann_torch_ms", []).append(1e3 * t["ann (torch)"] / batch)
        for k, run in runners.items():
            rows.append({"net": net, "T": T, "who": k, "acc": accuracy(run, x, y, batch),
                         "ms": 1e3 * t[k] / batch, "over_ort": t[k] / t["ann (ORT)"],
                         "over_torch": t[k] / t["ann (torch)"]})
            print(f"  {net} T={T} {k}: acc {rows[-1]['acc']:.1%}, {rows[-1]['ms']:.3f} ms/img",
                  flush=True)
    return rows, refs


def render(rows: list[dict], refs: dict, args, skipped: list[str]) -> str:
    lines = [f"# bench/peers.py --nets {args.nets} -T {args.T} --samples {args.samples} "
             f"--batch {args.batch} --rounds {args.rounds} --threads {args.threads}", "",
             f"onnxruntime {ort.__version__}; torch {__import__('torch').__version__}; "
             f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the "
             "end (shared machine: timings are medians of interleaved rounds, ratios within one "
             "process)."]
    if skipped:
        lines += ["", "Skipped (not installed): " + ", ".join(skipped) + "."]
    for net in args.nets.split(","):
        r = refs[net]
        lines += ["", f"## {net} ({NETS[net][0]}, first {args.samples} test images; ANN accuracy "
                  f"{r['ann_acc']:.1%}; ANN ms/img: ORT {statistics.median(r['ann_ort_ms']):.3f}, "
                  f"torch {statistics.median(r['ann_torch_ms']):.3f})", "",
                  "| contender | T | accuracy | ms/img | t / ANN (ORT) | t / ANN (torch) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            if row["net"] == net:
                lines.append(f"| {row['who']} | {row['T']} | {row['acc']:.1%} | {row['ms']:.3f} | "
                             f"{row['over_ort']:.2f} | {row['over_torch']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="cnn,resnet")
    ap.add_argument("-T", default="4,8,32")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "peers.md"))
    args = ap.parse_args()
    from snncc.outputs import Output, atomic_file, check_outputs

    check_outputs([Output(args.out, "file", "-o")], bundled_inputs(), command="bench")
    import torch
    torch.set_num_threads(args.threads)
    skipped = [m for m in ("spikingjelly", "sinabs") if not have(m)]
    rows: list[dict] = []
    refs: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for net in args.nets.split(","):
            net_rows, refs[net] = bench_net(net, [int(t) for t in args.T.split(",")],
                                            args.samples, args.batch, args.rounds, args.threads,
                                            Path(d))
            rows += net_rows
    text = render(rows, refs, args, skipped)
    with atomic_file(args.out) as tmp:
        Path(tmp).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
