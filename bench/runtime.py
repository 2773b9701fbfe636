"""Time per image of compiled SNNs in ONNX Runtime, as ratios within one run (issue 3 benchmark).

For each model (the bundled MNIST CNN and MNIST ResNet, and the exported ResNet-18/34):
  * ANN in ORT (the source model), SNN at T with our C++ kernels -> ratio SNN / (T x ANN)
    (target <= 1.15);
  * the portable function-body fallback (no library) against our kernels;
  * the streaming one-step model: T steps against T x the ANN, and one step against the folded
    model's time / T; a step as ``snncc run`` takes it (``snncc.simulate.StreamStepper``: IO
    binding, every state written in place) and, in its own column, as a plain ``sess.run`` with
    NumPy states (the protocol as written); and a step of a model of T steps per call
    (``--steps-per-call T``: one call runs T steps on T frames, the state carried), i.e. the
    call / T, against the folded model's time / T. Folding time into the batch multiplies
    the working set by T; on small models whose ANN is cache-bound this costs more than the
    extra arithmetic, and the streaming schedule (working set N) is the faster choice.
All sessions use the same ORT settings (default graph optimisations, intra-op threads = cores).
The SNN sessions run the neurons inside ORT's blocked layout (``snncc.runtime.layout``, as
``snncc run`` does); the last two columns repeat the ratios with ORT's plain handling of the
custom ops (a reorder out of and back into the blocked layout around every neuron).

    python bench/runtime.py [--models mnist,mnist_resnet,resnet18] [-T 4] [--neuron if]
        [--batch 1,4,16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import interleaved_medians, session, step_feeds  # noqa: E402
from snncc.simulate import StreamStepper  # noqa: E402


def prepare(name: str, tmp: Path) -> tuple[Path, tuple[int, ...]]:
    if name == "mnist":
        return ROOT / "examples" / "mnist_cnn.onnx", (1, 28, 28)
    if name == "mnist_resnet":   # the bundled trained MNIST ResNet
        return ROOT / "examples" / "mnist_resnet.onnx", (1, 28, 28)
    from examples.export_models import export, random_model

    path = tmp / f"{name}.onnx"
    export(random_model(name, (1, 3, 32, 32)), path, (1, 3, 32, 32), dynamic_batch=True)
    return path, (3, 32, 32)


def bench_model(name: str, T: int, neuron: str, batch: int, repeat: int, tmp: Path,
                threads: int) -> dict:
    from snncc.driver import compile_model, make_options

    src, shape = prepare(name, tmp)
    rng = np.random.default_rng(0)
    calib = tmp / f"{name}_calib.npy"
    np.save(calib, rng.random((64, *shape), dtype=np.float32))
    x = rng.random((batch, *shape), dtype=np.float32)
    out = {}
    for schedule, per_call in (("folded", 1), ("streaming", 1), ("streaming", T)):
        key = schedule if per_call == 1 else f"{schedule}_{per_call}"
        path = tmp / f"{name}_{key}.onnx"
        compile_model(src, path, make_options(target="ort", timesteps=T, neuron=neuron,
                                              calib_path=str(calib), schedule=schedule,
                                              steps_per_call=per_call, fidelity_samples=0))
        out[key] = path
    ann = session(src, False, threads)
    in_name = ann.get_inputs()[0].name
    snn = session(out["folded"], True, threads)
    snn_plain = session(out["folded"], True, threads, blocked=False)
    fallback = session(out["folded"], False, threads)
    stream = session(out["streaming"], True, threads)
    stream_plain = session(out["streaming"], True, threads, blocked=False)
    chunk = session(out[f"streaming_{T}"], True, threads)
    feeds = step_feeds(stream, x)
    # one mid-window step as snncc run takes it (states in place), and as a plain sess.run
    proto = onnx.load(str(out["streaming"]))
    stepper, stepper_plain = (
        StreamStepper(s, proto, {in_name: x}, [o.name for o in s.get_outputs()])
        for s in (stream, stream_plain))
    # T steps per call (--steps-per-call T): one call runs the window, the state carried
    chunk_stepper = StreamStepper(chunk, onnx.load(str(out[f"streaming_{T}"])), {in_name: x},
                                  [o.name for o in chunk.get_outputs()])
    t = interleaved_medians({
        "ann": lambda: ann.run(None, {in_name: x}),
        "snn": lambda: snn.run(None, {in_name: x}),
        "snn_plain": lambda: snn_plain.run(None, {in_name: x}),
        "step": lambda: stepper.step(1),
        "step_run": lambda: stream.run(None, feeds),
        "step_plain": lambda: stepper_plain.step(1),
        "call_of_T": lambda: chunk_stepper.step(T)}, repeat)
    # the fallback sweeps far more memory than the rest and leaves the caches cold for whatever
    # runs next (it used to precede the streaming step): timed in rounds of its own
    fb = interleaved_medians({"snn": lambda: snn.run(None, {in_name: x}),
                              "fallback": lambda: fallback.run(None, {in_name: x})}, repeat)
    t_ann, t_snn, t_step = t["ann"], t["snn"], t["step"]
    t_fb = fb["fallback"] * t_snn / fb["snn"]
    t_snn_plain, t_step_plain = t["snn_plain"], t["step_plain"]
    return {"model": name, "T": T, "neuron": neuron, "batch": batch,
            "ann_ms_per_img": 1e3 * t_ann / batch, "snn_ms_per_img": 1e3 * t_snn / batch,
            "snn_over_T_ann": t_snn / (T * t_ann), "fallback_over_kernels": t_fb / t_snn,
            "stream_step_over_folded_per_step": t_step / (t_snn / T),
            "run_step_over_folded_per_step": t["step_run"] / (t_snn / T),
            "call_of_T_step_over_folded_per_step": t["call_of_T"] / t_snn,
            "stream_T_steps_over_T_ann": t_step / t_ann,
            "plain_snn_over_T_ann": t_snn_plain / (T * t_ann),
            "plain_stream_step_over_folded_per_step": t_step_plain / (t_snn_plain / T)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist,resnet18,resnet34")
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--neuron", default="if")
    ap.add_argument("--batch", default="16", help="batch size(s), comma-separated")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0,
                    help="ORT intra-op threads for every session (default: one per core); use 1 "
                    "when other work shares the machine, as spinning workers then distort timings")
    args = ap.parse_args()
    print(f"threads={args.threads or 'default'} T={args.T} neuron={args.neuron} batch={args.batch} cores={len(os.sched_getaffinity(0))}"
          f" onnxruntime={ort.__version__}\n")
    print("| model | batch | ANN ms/img | SNN ms/img | SNN/(T*ANN) | streaming T steps/(T*ANN) "
          "| fallback/kernels | stream step/(folded/T) | same, sess.run step | "
          "T steps per call: step/(folded/T) | "
          "plain layout: SNN/(T*ANN) | plain layout: stream step/(folded/T) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            for batch in (int(b) for b in str(args.batch).split(",")):
                r = bench_model(name, args.T, args.neuron, batch, args.repeat, Path(d), args.threads)
                print(f"| {name} | {batch} | {r['ann_ms_per_img']:.3f} | {r['snn_ms_per_img']:.3f}"
                      f" | {r['snn_over_T_ann']:.2f} | {r['stream_T_steps_over_T_ann']:.2f} | "
                      f"{r['fallback_over_kernels']:.2f} | "
                      f"{r['stream_step_over_folded_per_step']:.2f} | "
                      f"{r['run_step_over_folded_per_step']:.2f} | "
                      f"{r['call_of_T_step_over_folded_per_step']:.2f} | "
                      f"{r['plain_snn_over_T_ann']:.2f} | "
                      f"{r['plain_stream_step_over_folded_per_step']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
