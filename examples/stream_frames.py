"""Stream frames through a compiled SNN one timestep at a time (the streaming protocol).

    python examples/stream_frames.py [--neuron mt] [-T 4] [--frames 3] [--steps-per-call K]

Compiles the bundled MNIST CNN with ``--schedule streaming`` into out/stream/, then feeds it
``--frames`` test digits in turn, each held for one window of ``snncc.steps`` steps, the way a
sensor app would: a new window starts at step 0 (every state zero), its outputs are averaged
from ``snncc.decode_from`` on, and the result is one prediction per window. It prints each
window's prediction against the label, and checks that a window equals ``run_compiled`` on the
same held frame (the folded-equivalent answer). A frame that changes inside a window is what the
README's streaming notes measure; the SNN's output then mixes the frames. With
``--steps-per-call K`` each call runs K steps of the window (the frame held over them) and returns
their K outputs, time-major; the windows are the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neuron", default="mt", help="the neuron (default mt)")
    parser.add_argument("-T", "--timesteps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3, help="test digits to stream")
    parser.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                        help="steps one call runs (default 1; K must divide the window's steps)")
    parser.add_argument("--out", default=str(HERE.parent / "out" / "stream"),
                        help="folder for the compiled model (default out/stream)")
    args = parser.parse_args(argv)

    from snncc.driver import compile_model, make_options
    from snncc.ir import read_proto
    from snncc.runtime import layout
    from snncc.simulate import StreamStepper, run_compiled, split_steps

    K = args.steps_per_call
    out = Path(args.out) / f"mnist_{args.neuron}_T{args.timesteps}_K{K}_stream.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_model(HERE / "mnist_cnn.onnx", out, make_options(
        neuron=args.neuron, timesteps=args.timesteps, schedule="streaming", steps_per_call=K,
        calib_path=str(HERE / "mnist_calib.npz")))
    proto = read_proto(out)
    meta = {p.key: p.value for p in proto.metadata_props}
    steps, first = int(meta["snncc.steps"]), int(meta["snncc.decode_from"])
    test = np.load(HERE / "mnist_test.npz")
    frames, labels = test["x"][:args.frames].astype(np.float32), test["y"][:args.frames]

    sess = layout.session(out)   # the kernel library registered, ORT's blocked layout
    stepper = StreamStepper(sess, proto, {"input": frames[:1]})
    agree = True
    for frame, label in zip(frames, labels):
        stepper.set_inputs({"input": frame[None]})   # the sensor's new frame
        outs = []
        for call in range(0, steps, K):               # step 0 starts the window: states zero
            # one call runs steps call .. call+K-1; its output holds their K outputs
            for g, values in enumerate(split_steps(stepper.step(call), K), call):
                (logits,) = values.values()
                if g >= first:
                    outs.append(logits)
        mean = np.mean(outs, axis=0)
        held = next(iter(run_compiled(out, frame[None]).outputs.values()))
        agree &= bool(np.allclose(mean, held, rtol=1e-5, atol=1e-5))
        calls = f"{steps // K} call" + ("s" if steps // K > 1 else "")
        print(f"window of {steps} steps ({calls}): predicted {int(mean.argmax())}, label {int(label)}")
    print("each window equals run_compiled on its frame:", agree)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
