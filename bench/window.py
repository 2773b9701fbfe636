"""Window-collapsed vs folded schedule: time per image in ONNX Runtime, ratios within one process
(issue 12).

For each trained bundled network (``examples/mnist_cnn.onnx``, ``examples/mnist_resnet.onnx``; or
an ImageNet-shaped ``resnet18`` / ``resnet34`` with random weights, timing only) and batch size,
the variants below are timed round-robin in one process (interleaved rounds, thread spinning
off, medians), so that background load on a shared machine hits every variant alike:

* ``ann``: the source ANN in ORT;
* ``<neuron>/<schedule>``: the compiled SNN at T with the C++ kernel library, for each
  ``--variants`` entry (default: bit-serial folded and window, IF folded);
* ``qann`` (a variant name): the L = 2^T - 1 quantized ANN (standard ops), the floor for a
  standard-op window decode;
* ``<variant>@K``: the same model, the batch run as consecutive calls of at most K images
  (tiling the batch keeps the ``[T*K, ...]`` working set in cache); ``ann@K`` tiles the ANN;
* ``<neuron>/<schedule>+<maxpool>``: compiled with ``--maxpool <maxpool>`` (``if/folded+gate``:
  every MaxPool after a neuron spike-gated, the stem's too, as before the pool-first pass);
* ``<variant>:plain``: the same model with ORT's own layout handling, which wraps every neuron
  in a reorder out of and back into its blocked (NCHWc) layout; without ``:plain`` the neurons
  run inside the blocked layout (``snncc.runtime.layout``, the default of ``snncc run``).

Reported: ms per image (median over rounds), ``t / ANN`` (the median over rounds of the ratio
to the ANN run of the same round: paired, so that load changes between rounds cancel) and
``t / (T x ANN)``. The spread column is the interquartile range of those per-round ratios
relative to their median: the noise of the ratio on a loaded machine.

    python bench/window.py [--nets cnn,resnet] [-T 4] [--batch 1,16,100] [--rounds 9]
        [--threads 2] [--variants bitserial/window:plain,bitserial/window,if/folded] [-o FILE.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import bundled, bundled_inputs, interleaved, session  # noqa: E402


#: ImageNet-shaped nets with random weights (timing only: no accuracy is read from them), built
#: in the temporary directory: torchvision stem (``resnet34q``: the QCFS stem, 3x3 stride 1 and
#: no max-pool, the layout of the QCFS/SRP/GN ImageNet ResNet-34), 224x224, 1000 classes;
#: ``vgg11m``: a CIFAR-shaped VGG-11 (width 0.25) with its five pools as MaxPools (the first
#: moved by pool-first, four spike-gated); max calibration on 16 random images (the calibration
#: method does not change the graph that runs)
RANDOM_NETS = ("resnet18", "resnet34", "resnet34q", "vgg11m")


def _net_files(net: str, tmp: Path, batch: int) -> tuple[Path, Path, np.ndarray, str | None]:
    """(model, calibration file, test inputs, calibration method override) of ``net``."""
    if net not in RANDOM_NETS:
        model, calib, test = bundled(net)
        return model, calib, np.load(test)["x"].astype(np.float32), None
    import torch

    from examples.export_models import build, export, model_kwargs

    path = tmp / f"{net}.onnx"
    torch.manual_seed(0)
    if net == "vgg11m":  # CIFAR-shaped VGG-11 with max-pools: four of them read spikes
        shape = (1, 3, 32, 32)
        export(build("vgg11", **model_kwargs("vgg11", shape, 10), pool="max"), path, shape,
               dynamic_batch=True)
    else:
        shape = (1, 3, 224, 224)
        arch, stem = (net[:-1], "qcfs") if net.endswith("q") else (net, "torchvision")
        export(build(arch, **model_kwargs(arch, shape, 1000), stem=stem), path, shape,
               dynamic_batch=True)
    rng = np.random.default_rng(0)
    calib = tmp / f"{net}_calib.npy"
    np.save(calib, rng.random((16, *shape[1:]), dtype=np.float32))
    return path, calib, rng.random((batch, *shape[1:]), dtype=np.float32), "max"


def _base(variant: str) -> str:
    """``if/folded`` of ``if/folded:plain@16`` (or ``if/folded@16:plain``)."""
    return variant.split("@")[0].split(":")[0]


def _key_tile(variant: str) -> tuple[str, int | None]:
    """(session key, tile) of a variant: ``if/folded:plain@16`` -> ("if/folded:plain", 16)."""
    base, plain = _base(variant), ":plain" in variant
    tile = variant.partition("@")[2].split(":")[0]
    return base + (":plain" if plain else ""), int(tile) if tile else None


def compile_variants(net: str, T: int, variants: list[str], tmp: Path, files: tuple
                     ) -> dict[str, Path]:
    """Compile each variant of ``net`` (``files`` from :func:`_net_files`) into ``tmp``."""
    from snncc.driver import compile_model, make_options

    model, calib, _, method = files
    extra = {"calib_method": method} if method else {}
    out = {}
    for v in {_base(v) for v in variants} - {"ann"}:  # ann@K: the source ANN, tiled
        path = tmp / f"{net}_{v.replace('/', '_')}_T{T}.onnx"
        if v == "qann":  # the L = 2^T - 1 quantized ANN bit-serial reproduces (standard ops)
            opts = make_options(target="qann", levels=2 ** T - 1, calib_path=str(calib), **extra)
        else:
            neuron, schedule = v.split("/")
            schedule, _, maxpool = schedule.partition("+")
            opts = make_options(target="ort", timesteps=T, neuron=neuron, schedule=schedule,
                                maxpool=maxpool or "auto", calib_path=str(calib), **extra)
        compile_model(str(model), path, opts)
        out[v] = path
    return out


def bench(net: str, T: int, batches: list[int], rounds: int, threads: int, variants: list[str],
          tmp: Path) -> list[dict]:
    files = _net_files(net, tmp, max(batches))
    model, _, x_all, _ = files
    paths = compile_variants(net, T, variants, tmp, files)
    ann = session(model, False, threads)
    in_name = ann.get_inputs()[0].name
    sessions = {"ann": ann}
    for v in variants:
        key = _key_tile(v)[0]
        if key not in sessions:
            sessions[key] = session(paths[_base(v)], _base(v) != "qann", threads,
                                    blocked=not key.endswith(":plain"))
    rows = []
    for batch in batches:
        x = x_all[:batch]

        def call(sess, tile: int | None, x=x):
            if tile is None or tile >= len(x):
                return sess.run(None, {in_name: x})
            return [sess.run(None, {in_name: x[i:i + tile]}) for i in range(0, len(x), tile)]

        fns = {"ann": lambda: call(ann, None)}
        for v in variants:
            key, tile = _key_tile(v)
            fns[v] = (lambda s=sessions[key], t=tile: call(s, t))
        times = interleaved(fns, rounds)
        t_ann = statistics.median(times["ann"])
        for k in fns:
            ratios = [t / a for t, a in zip(times[k], times["ann"])]
            q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
            med = statistics.median(ratios)
            rows.append({"net": net, "batch": batch, "variant": k, "T": T,
                         "ms_per_img": 1e3 * statistics.median(times[k]) / batch,
                         "ann_ms_per_img": 1e3 * t_ann / batch,
                         "over_ann": med, "over_T_ann": med / T,
                         "spread": (q[2] - q[0]) / med if med else 0.0})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| net | batch | variant | ms/img | t / ANN | t / (T x ANN) | ratio IQR / median |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {r['variant']} | {r['ms_per_img']:.4f} | "
                     f"{r['over_ann']:.2f} | {r['over_T_ann']:.2f} | {r['spread']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="cnn,resnet",
                    help="cnn, resnet (trained, bundled), resnet18, resnet34, resnet34q (224x224, "
                         "random weights: timing only; resnet34q has the QCFS stem), vgg11m "
                         "(32x32 VGG-11 with max-pools, random weights)")
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--batch", default="1,16,100")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="bitserial/window:plain,bitserial/window,"
                    "if/folded:plain,if/folded,mt/folded:plain,mt/folded")
    ap.add_argument("-o", "--out", help="also write the table (markdown) to this file")
    args = ap.parse_args()
    if args.out:
        from snncc.outputs import Output, check_outputs
        check_outputs([Output(args.out, "file", "-o")], bundled_inputs(), command="bench")
    variants = [v for v in args.variants.split(",") if v]
    batches = [int(b) for b in args.batch.split(",")]
    load = os.getloadavg()[0]
    head = (f"# bench/window.py --nets {args.nets} -T {args.T} --batch {args.batch} --rounds {args.rounds} "
            f"--threads {args.threads} --variants {args.variants}\n\n"
            f"onnxruntime {ort.__version__}, {len(os.sched_getaffinity(0))} cores, load average "
            f"{load:.1f} at start (shared machine). Medians of interleaved rounds.\n")
    print(head, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for net in args.nets.split(","):
            rows += bench(net, args.T, batches, args.rounds, args.threads, variants, Path(d))
            print(table([r for r in rows if r["net"] == net]) + "\n", flush=True)
    if args.out:
        from snncc.outputs import atomic_file
        with atomic_file(args.out) as tmp:
            Path(tmp).write_text(head + "\n" + table(rows) + "\n")


if __name__ == "__main__":
    main()
