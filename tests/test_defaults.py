"""The plain compile command: default output name, fidelity report, warning and --min-agreement,
the short calibration error, and capability checks that run before calibration.

Accuracy-bearing checks use the bundled *trained* MNIST CNN (random weights have near-tied logits).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from snncc.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = EXAMPLES / "mnist_cnn.onnx"
CALIB = EXAMPLES / "mnist_calib.npz"

pytestmark = pytest.mark.requires_runtime


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(MODEL, tmp_path / "mnist_cnn.onnx")
    shutil.copy(CALIB, tmp_path / "calib.npz")
    return tmp_path


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def test_default_command_writes_beside_the_model_and_reports_fidelity(workdir, capsys):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "if",
               "--calib", str(workdir / "calib.npz"), "--calib-samples", "96",
               "--report", str(workdir / "r.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (workdir / "mnist_cnn.snn.onnx").is_file()
    assert _files(workdir) == {"mnist_cnn.onnx", "calib.npz", "r.json", "mnist_cnn.snn.onnx",
                               "mnist_cnn.snn.onnx.json"}
    fid = json.loads((workdir / "r.json").read_text())["fidelity"]
    assert fid["samples"] == 64
    for key in ("qann_vs_ann", "snn_vs_qann", "snn_vs_ann"):
        assert 0.0 <= fid[key]["top1_agreement"] <= 1.0
        assert fid[key]["rel_logit_error"] >= 0.0
        lo, hi = fid[key]["top1_agreement_95"]
        assert 0.0 <= lo <= fid[key]["top1_agreement"] <= hi <= 1.0 and hi - lo > 0.05
    assert len(fid["per_layer"]) == 4
    assert all(r["rel_error"] >= 0 and r["rel_error_vs_ann"] >= 0 for r in fid["per_layer"])
    # the SNN-aware default keeps a trained CNN close to its ANN at T = 4
    assert fid["snn_vs_ann"]["top1_agreement"] >= 0.9
    assert "SNN agrees with the ANN on" in out and "95 % interval" in out and "warning" not in err
    assert out.count("95 % interval") == 2   # the SNN's and the QANN's


def test_low_fidelity_warns_with_ranked_hints(workdir, capsys):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "if",
               "--calib", str(workdir / "calib.npz"), "--calib-method", "max", "--per-layer",
               "-o", str(workdir / "o.onnx"), "-q"])
    _, err = capsys.readouterr()
    assert rc == 0 and (workdir / "o.onnx").is_file()
    assert "warning: the compiled network agrees with the ANN on only" in err
    assert "1. --calib-method snn" in err and "2. --per-channel" in err


def test_the_finetune_hint_names_the_users_model():
    from snncc.driver import make_options
    from snncc.fidelity import hints

    fid = {"qann_vs_ann": {"top1_agreement": 0.5}}
    ranked = hints(make_options(timesteps=2, neuron="if"), fid, "nets/my\\ resnet.onnx")
    assert ranked[-1].startswith("snncc finetune nets/my\\ resnet.onnx --data TRAIN.npz")
    # a net with no Relu or Clip(0, c) activation: finetune refuses it (E805), so no such hint
    assert not any("finetune" in h for h in hints(make_options(timesteps=2, neuron="if"), fid,
                                                  "m.onnx", finetune=False))


def test_the_finetune_hint_for_a_relu6_net(tmp_path):
    """A net whose activations are all Clip(0, 6) gets the snncc finetune hint like a ReLU net
    (finetune trains ReLU6 sites; it had refused them, E805, and the hint had been dropped)."""
    import onnx

    from snncc.driver import compile_model, make_options

    m = onnx.load(str(EXAMPLES / "mnist_cnn.onnx"))
    six = onnx.helper.make_tensor("six", onnx.TensorProto.FLOAT, [1], [6.0])   # one-element bounds
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])
    m.graph.initializer.extend([six, zero])
    for n in m.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Clip"
            n.input.extend(["zero", "six"])
    onnx.save(m, str(tmp_path / "relu6.onnx"))
    options = make_options(timesteps=2, neuron="if", fidelity_samples=32, calib_method="max",
                           calib_per_channel=False, calib_path=str(EXAMPLES / "mnist_calib.npz"))
    for model in EXAMPLES / "mnist_cnn.onnx", tmp_path / "relu6.onnx":
        res = compile_model(model, tmp_path / "o.onnx", options)
        assert res.warnings and any("snncc finetune" in w for w in res.warnings)


def test_the_finetune_hint_follows_compile_s_own_sites():
    """finetune takes what compile converted from Relu / Clip(0, c), and not a QCFS-trained graph
    (its Floor does not load: a hint had led a user of finetune's own output to SNN-E801)."""
    from snncc.driver import _finetune_takes
    from snncc.pipeline import PassRow, PipelineReport

    def rows(relu=0, clip=0, pattern=0):
        counts = {"relu_replaced": relu, "clip_replaced": clip, "pattern_kept": pattern}
        return PipelineReport([PassRow("relu-to-quant-clip", True, counts, [], 0.0)])

    assert _finetune_takes(rows(relu=2)) and _finetune_takes(rows(clip=3))
    assert not _finetune_takes(rows(pattern=2)) and not _finetune_takes(rows(relu=1, pattern=1))


def test_min_agreement_fails_and_writes_nothing(workdir, capsys):
    before = _files(workdir)
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "if",
               "--calib", str(workdir / "calib.npz"), "--calib-method", "max", "--per-layer",
               "--min-agreement", "0.99", "-o", str(workdir / "o.onnx"),
               "--report", str(workdir / "r.json")])
    _, err = capsys.readouterr()
    # exit 3, not a usage error's 2: a pipeline tells a failed gate from a slip by the code
    assert rc == 3 and "[SNN-E370]" in err and "Traceback" not in err
    assert _files(workdir) == before


def test_no_fidelity_uses_every_sample(workdir, capsys):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--target", "qann", "-L", "8",
               "--calib", str(workdir / "calib.npz"), "--calib-method", "mse", "--no-fidelity",
               "--report", str(workdir / "r.json"), "-q"])
    assert rc == 0
    assert (workdir / "mnist_cnn.qann.onnx").is_file()
    report = json.loads((workdir / "r.json").read_text())
    assert report["fidelity"] is None
    assert report["notes"]["calibration_samples"] == 256


def test_calib_samples_bounds_calibration_and_holdout(workdir, capsys):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--target", "qann",
               "--calib", str(workdir / "calib.npz"), "--calib-method", "max",
               "--calib-samples", "10", "--report", str(workdir / "r.json"), "-q"])
    assert rc == 0
    report = json.loads((workdir / "r.json").read_text())
    assert report["notes"]["calibration_samples"] == 10
    assert report["fidelity"]["samples"] == 64


@pytest.mark.parametrize("extra, held_out, calibrated", [
    ([], 32, 224),                              # auto: nothing beyond 256, so the minimum 32
    (["--fidelity-samples", "64"], 64, 192),   # an explicit N is held out as asked
    (["--calib-samples", "200"], 56, 200),     # auto: the 56 beyond --calib-samples
])
def test_auto_holdout_keeps_calibration_samples(workdir, capsys, extra, held_out, calibrated):
    """A 256-sample file: the default holds out only what lies beyond --calib-samples, at least
    32 and at most 64 (calibrating on 224 rather than 192 samples gained 0.1-0.5 pt at T = 4)."""
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--target", "qann", "-L", "8",
               "--calib", str(workdir / "calib.npz"), "--calib-method", "max", *extra,
               "--report", str(workdir / "r.json"), "-q"])
    assert rc == 0
    report = json.loads((workdir / "r.json").read_text())
    assert report["fidelity"]["samples"] == held_out
    assert report["notes"]["calibration_samples"] == calibrated


@pytest.mark.parametrize("argv, code", [
    (["--min-agreement", "1.5"], "SNN-E367"),
    (["--min-agreement", "0.9", "--no-fidelity"], "SNN-E368"),
])
def test_min_agreement_needs_a_fidelity_estimate(workdir, capsys, argv, code):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--calib", str(workdir / "calib.npz"),
               "-o", str(workdir / "o.onnx"), *argv])
    _, err = capsys.readouterr()
    assert rc == 2 and f"[{code}]" in err and not (workdir / "o.onnx").exists()


def test_window_schedule_reports_per_layer_fidelity(workdir):
    """Bit-serial runs window-collapsed by default: its per-layer rows are still there, and its
    time-mean outputs equal the QANN's (rel_error 0 up to float summation order)."""
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--neuron", "bitserial", "-T", "3",
               "--calib", str(workdir / "calib.npz"), "--calib-samples", "64",
               "--report", str(workdir / "r.json"), "-q"])
    assert rc == 0
    fid = json.loads((workdir / "r.json").read_text())["fidelity"]
    assert len(fid["per_layer"]) == 4
    assert all(r["rel_error"] < 1e-5 for r in fid["per_layer"])


def test_missing_calibration_is_one_short_error(workdir, capsys):
    rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "mt"])
    _, err = capsys.readouterr()
    assert rc == 2 and "[SNN-E401]" in err
    assert len(err.strip().splitlines()) <= 8
    assert "4 activation(s)" in err and "--calib" in err
    assert not (workdir / "mnist_cnn.snn.onnx").exists()


def test_capability_check_runs_before_calibration(tmp_path, capsys, monkeypatch):
    """A MaxPool the Loihi lowering cannot express fails before any calibration statistics."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import snncc.calibration as calibration

    rng = np.random.default_rng(0)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b")]),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((40, 2, 8, 8), np.float32))

    def boom(*a, **k):
        raise AssertionError("calibration ran before the capability check")

    monkeypatch.setattr(calibration, "collect_statistics", boom)
    rc = main(["compile", str(tmp_path / "m.onnx"), "--target", "loihi", "--calib",
               str(tmp_path / "c.npy"), "-o", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert rc == 2 and "[SNN-E270]" in err and "before calibration" in err
    assert "changes the network" in err     # the hint no longer sends users to avg unwarned
    assert not (tmp_path / "out").exists()


@pytest.mark.requires_torch
def test_calibration_reads_the_folder_forms_finetune_reads(workdir, capsys):
    """--calib accepts an image folder (PNG, one subfolder per class) and an x.npy folder."""
    from PIL import Image

    x = np.load(workdir / "calib.npz")["input"][:40]
    for i, img in enumerate(x):
        (workdir / "imgs" / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(
            workdir / "imgs" / str(i % 10) / f"{i}.png")
    (workdir / "npy").mkdir()
    np.save(workdir / "npy" / "x.npy", x)
    for src in ("imgs", "npy"):
        rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--target", "qann",
                   "--calib", str(workdir / src), "--calib-method", "max", "--no-fidelity",
                   "-o", str(workdir / f"{src}.onnx"), "--report", str(workdir / f"{src}.json"),
                   "-q"])
        assert rc == 0, capsys.readouterr().err
        assert json.loads((workdir / f"{src}.json").read_text())["notes"][
            "calibration_samples"] == 40


@pytest.mark.requires_torch
def test_mean_and_std_normalise_a_calibration_folder_like_the_saved_arrays(workdir, capsys):
    """--mean/--std (ImageNet-style models): a folder of PNGs calibrates exactly like the same
    images saved normalised; with an array file they are refused (E371), nothing written."""
    from PIL import Image

    pixels = (np.load(workdir / "calib.npz")["input"][:40] * 255).round().astype(np.uint8)
    for i, img in enumerate(pixels):
        (workdir / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(workdir / "imgs" / "a" / f"{i:02d}.png")
    np.savez(workdir / "norm.npz", input=(pixels / np.float32(255) - np.float32(0.1))
             / np.float32(0.3))
    lams = []
    for src, extra in (("imgs", ["--mean", "0.1", "--std", "0.3"]), ("norm.npz", [])):
        rc = main(["compile", str(workdir / "mnist_cnn.onnx"), "--target", "qann",
                   "--calib", str(workdir / src), *extra, "--calib-method", "max",
                   "--no-fidelity", "-o", str(workdir / "q.onnx"), "--force",
                   "--report", str(workdir / "q.json"), "-q"])
        assert rc == 0, capsys.readouterr().err
        quant = json.loads((workdir / "q.json").read_text())["quant"]
        lams.append({k: r["lam"] for k, r in quant.items()})
    assert lams[0] == lams[1]
    before = _files(workdir)
    assert main(["compile", str(workdir / "mnist_cnn.onnx"), "--calib", str(workdir / "norm.npz"),
                 "--mean", "0.1", "-o", str(workdir / "n.onnx")]) == 2
    assert "[SNN-E371]" in capsys.readouterr().err and _files(workdir) == before


def test_wilson_interval():
    """The 95 % interval printed with the estimate (Wilson score; checked against the formula's
    textbook values)."""
    from snncc.fidelity import wilson_interval

    assert wilson_interval(1.0, 32) == pytest.approx((0.8928, 1.0), abs=1e-4)
    assert wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0.9, 0) == (0.0, 1.0)


@pytest.mark.requires_runtime
def test_streaming_models_get_the_snn_estimate(workdir):
    """A --schedule streaming compile runs its step protocol for the estimate: the same SNN
    agreement and logit error as the folded compile (it used to fall back to the QANN's, and
    warn about it)."""
    from snncc import runtime

    if not runtime.is_built():
        pytest.skip("the kernel library is not built")

    def fid(schedule: str) -> dict:
        out = workdir / f"{schedule}.json"
        assert main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "if",
                     "--calib", str(workdir / "calib.npz"), "--calib-samples", "64", "-q",
                     "--calib-method", "max", "--schedule", schedule,
                     "-o", str(workdir / f"{schedule}.onnx"), "--report", str(out)]) == 0
        return json.loads(out.read_text())["fidelity"]

    streaming, folded = fid("streaming"), fid("folded")
    assert "note" not in streaming and streaming["per_layer"] == []
    assert streaming["snn_vs_ann"] == folded["snn_vs_ann"]
    assert streaming["qann_vs_ann"] == folded["qann_vs_ann"]


def test_loihi_reports_and_warns_about_stock_neuron_semantics(workdir, capsys):
    """The Loihi netlist keeps soft-reset neurons (a Loihi 2 microcoded neuron); real Lava runs
    network.net on stock neurons (reset to 0, fire on >). The estimate reports both, and warns
    when the stock semantics fall far behind (MNIST CNN, IF, T = 3: real Lava measured 35 % on
    20 test images, bit-equal to this simulation, while the netlist's own semantics give 98 %)."""
    out = workdir / "r.json"
    assert main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "3", "--neuron", "if",
                 "--calib", str(workdir / "calib.npz"), "--target", "loihi", "-q",
                 "-o", str(workdir / "l3"), "--report", str(out)]) == 0
    fid = json.loads(out.read_text())["fidelity"]
    stock = fid["variants"]["stock_loihi"]
    assert fid["snn_vs_ann"]["top1_agreement"] >= 0.95
    assert stock["top1_agreement"] < 0.95 and "real Lava" in stock["what"]
    assert set(stock) >= {"top1_agreement", "top1_agreement_95", "rel_logit_error"}
    err = capsys.readouterr().err
    assert "warning: on stock Loihi neurons" in err and "--semantics hardware" in err
    # every bias of network.net fits the chip's 13-bit bias mantissa (Lava's CPU model would
    # hold up to 16 bits: the first layer needed ~18,000 NetX units at the netlist's input
    # scale); the input goes 2**s coarser instead of rounding the first layer's weights
    import h5py
    with h5py.File(workdir / "l3" / "network.net", "r") as f:
        biases = [f[f"layer/{i}/bias"][()] for i in range(len(f["layer"]))
                  if "bias" in f[f"layer/{i}"]]
        frac = int(f.attrs["snncc_input_frac_bits"])
    assert biases and max(int(abs(b).max()) for b in biases) <= 4095
    notes = json.loads((workdir / "l3" / "netlist.json").read_text())["meta"]["netx"]["notes"]
    assert frac < 8 and any("fraction bits fewer" in n for n in notes)
    assert not any("weights rounded" in n for n in notes)
    assert "13-bit" not in err
    from snncc.fidelity import summary
    line = summary(fid)
    assert "stock Loihi neurons" in line and line.count("95 % interval") == 3


def test_a_dense_output_agrees_per_position():
    """A segmentation-like output [N, C, H, W]: one arg-max over the flattened C*H*W said 75 %
    (and warned) where every pixel's class agreed."""
    from snncc.fidelity import measure, pair, summary

    ann = np.random.default_rng(0).normal(size=(8, 2, 16, 16)).astype(np.float32)
    snn = ann - ann.max(axis=1, keepdims=True)   # each position's class kept, the global max moved
    assert np.mean(snn.reshape(8, -1).argmax(1) == ann.reshape(8, -1).argmax(1)) < 0.5
    assert pair(snn, ann).top1_agreement == 1.0
    fid = measure(ann, ann, snn)
    assert fid["per_position"] and "of the output positions of 8 held-out samples" in summary(fid)
    logits = ann[:, :, :1, :1]   # [N, C, 1, 1]: one class per sample, as a classifier
    assert "per_position" not in measure(logits, logits, logits)


def test_nir_hints_name_the_reset_not_what_nir_refuses():
    from snncc.driver import make_options
    from snncc.fidelity import hints

    ranked = hints(make_options(target="nir", neuron="if", timesteps=4, allow_lossy=True),
                   {"qann_vs_ann": {"top1_agreement": 1.0}})
    assert len(ranked) == 1 and "reset to zero" in ranked[0] and "bitserial" not in ranked[0]


def test_a_lif_attribute_given_as_a_parameter_says_where_it_comes_from():
    from snncc.driver import make_options
    from snncc.errors import OptionError

    with pytest.raises(OptionError, match="SNN-E302") as exc:
        make_options(neuron="lif", neuron_params={"leak": 0.75})
    assert "snncc finetune --iir" in exc.value.hint


def test_layer_errors_over_parts_equal_the_whole():
    """The per-layer errors of the fidelity estimate are kept as running sums over parts of the
    held-out samples; they equal the relative errors of the whole arrays."""
    from snncc.fidelity import LayerErrors, _rel

    rng = np.random.default_rng(0)
    snn, qann, ann = (rng.normal(size=(10, 3, 4, 4)).astype(np.float32) for _ in range(3))
    zero = np.zeros((10, 2), np.float32)
    errors = LayerErrors()
    for rows in (slice(0, 1), slice(1, 7), slice(7, 10)):
        errors.add({"a": snn[rows], "z": snn[rows, 0, 0, :2]},
                   {"a": qann[rows], "z": zero[rows]}, {"a": ann[rows]})
    assert errors.rows() == [
        {"layer": "a", "rel_error": round(_rel(snn, qann), 5),
         "rel_error_vs_ann": round(_rel(snn, ann), 5)},
        {"layer": "z", "rel_error": round(_rel(snn[:, 0, 0, :2], zero), 5)}]


def test_fidelity_batches_by_memory_without_changing_the_estimate(workdir, monkeypatch):
    """The SNN run of the fidelity check takes fewer samples per batch when its fetched tensors
    would pass PREDICT_BYTES (big maps); the report is the same either way."""
    import snncc.backends.ort.backend as ort_backend

    def report(limit: int) -> dict:
        monkeypatch.setattr(ort_backend, "PREDICT_BYTES", limit)
        out = workdir / f"r{limit}.json"
        assert main(["compile", str(workdir / "mnist_cnn.onnx"), "-T", "4", "--neuron", "mt",
                     "--calib", str(workdir / "calib.npz"), "--calib-samples", "64", "-q",
                     "--calib-method", "max", "-o", str(workdir / f"m{limit}.onnx"),
                     "--report", str(out)]) == 0
        rep = json.loads(out.read_text())
        return {"fidelity": rep["fidelity"], "synops": rep.get("synops", {}).get("measured")}

    assert report(1) == report(1 << 30)


def test_one_ann_class_for_every_held_out_sample_is_warned_about():
    """Calibration images not normalised as the model expects (a helper's MobileNet: the ANN
    said 8 for all 256) passed with 100 % agreement and a 9 % SNN; now a warning says so."""
    from snncc.driver import make_options
    from snncc.fidelity import check, measure

    rng = np.random.default_rng(0)
    one = rng.normal(size=(32, 10)).astype(np.float32)
    one[:, 8] += 100.0
    fid = measure(one, one, one)
    assert fid["ann_one_class"] == 8
    warned = check(fid, make_options(neuron="mt"), None)
    assert len(warned) == 1 and "class 8 to all 32" in warned[0]
    mixed = rng.normal(size=(32, 10)).astype(np.float32)
    assert "ann_one_class" not in measure(mixed, mixed, mixed)
    assert not check(measure(mixed, mixed, mixed), make_options(neuron="mt"), None)


@pytest.mark.parametrize("error, warned", [(0.2, False), (0.35, True)])
def test_a_high_logit_error_is_warned_about_even_at_full_agreement(error, warned):
    """32 held-out samples all agreeing said nothing of a MobileNet whose SRP SNN lost 13.7 pt
    on test data; its relative logit error (0.55) did (examples/results/other_nets.md)."""
    from snncc.driver import make_options
    from snncc.fidelity import check

    fid = {"samples": 32, "snn_vs_ann": {"top1_agreement": 1.0, "rel_logit_error": error}}
    out = check(fid, make_options(neuron="srp"), None)
    assert bool(out) == warned
    if warned:
        assert "relative logit error is 0.35" in out[0] and "1. --neuron bitserial" in out[0]


def test_qann_target_hints_name_levels_not_neurons():
    """--target qann got SNN hints (--neuron bitserial, -T 8), which that target ignores, and the
    logit-error warning, whose figures are SNN cells."""
    from snncc.driver import make_options
    from snncc.fidelity import check, hints

    options = make_options(target="qann", levels=2)
    ranked = hints(options, {"qann_vs_ann": {"top1_agreement": 0.5}}, "m.onnx")
    assert ranked[0].startswith("-L 4") and not any("--neuron" in h or "-T " in h for h in ranked)
    fid = {"samples": 32, "qann_vs_ann": {"top1_agreement": 1.0, "rel_logit_error": 0.4}}
    assert not check(fid, options, None)
    fid["qann_vs_ann"]["top1_agreement"] = 0.5
    assert check(fid, options, None)[0].startswith("warning: the compiled QANN agrees")


def test_maxpool_avg_on_a_max_pool_net_is_the_first_hint():
    """A helper's Inception net for Loihi with --maxpool avg: the QANN itself agreed 50 %, and
    the hints offered bit-serial, -T 8 and finetune, none of them the cause."""
    from snncc.driver import make_options
    from snncc.fidelity import hints

    fid = {"qann_vs_ann": {"top1_agreement": 0.5}}
    ranked = hints(make_options(maxpool="avg"), fid, "m.onnx", max_pools=True)
    assert ranked[0].startswith("drop --maxpool avg") and "50.0 %" in ranked[0]
    assert not hints(make_options(maxpool="avg"), fid, "m.onnx")[0].startswith("drop")
    # Loihi cannot pool by max (E270 had sent the user to avg): training is the way, not "drop"
    ranked = hints(make_options(maxpool="avg", target="loihi"), fid, "m.onnx", max_pools=True)
    assert ranked[0].startswith("this net pools by max, which loihi cannot") and \
        "train it with average pooling" in ranked[0]


def _max_pool_net(path, dilations=(1, 1)):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                          dilations=list(dilations)),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "m"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(size=(3 * (16 if dilations[0] == 1 else 9), 4))
                                 .astype(np.float32), "m")]),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return model


def test_maxpool_avg_reaches_the_qann_target_and_the_fidelity_qann(tmp_path, capsys):
    """--target qann --maxpool avg kept both MaxPools (a new user's net); the fidelity estimate's
    QANN pooled by max while the SNN averaged, so its figure meant something else per target."""
    import onnx

    from snncc.driver import _as_pooled, make_options

    model = _max_pool_net(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((40, 2, 8, 8), np.float32))
    for extra, pool in (([], "MaxPool"), (["--maxpool", "avg"], "AveragePool")):
        out = tmp_path / f"q{len(extra)}.onnx"
        assert main(["compile", str(tmp_path / "m.onnx"), "--target", "qann", "--calib",
                     str(tmp_path / "c.npy"), "-o", str(out), "-q", *extra]) == 0
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert pool in ops and ({"MaxPool", "AveragePool"} - {pool}).isdisjoint(ops)
    pooled = _as_pooled(model, make_options(maxpool="avg"))
    avg = [n for n in pooled.graph.node if n.op_type == "AveragePool"]
    assert len(avg) == 1 and {a.name: onnx.helper.get_attribute_value(a) for a in
                              avg[0].attribute}["count_include_pad"] == 0
    assert [n.op_type for n in model.graph.node].count("MaxPool") == 1   # the snapshot: a copy
    assert _as_pooled(model, make_options()) is model


def test_the_fidelity_estimate_gets_the_qann_that_pools_as_the_snn(tmp_path, monkeypatch):
    from snncc import driver

    _max_pool_net(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((80, 2, 8, 8), np.float32))
    seen = {}
    real = driver.fidelity.estimate

    def spy(ann, qann, *args, **kw):
        seen["ann"] = [n.op_type for n in ann.graph.node]
        seen["qann"] = [n.op_type for n in qann.graph.node]
        return real(ann, qann, *args, **kw)

    monkeypatch.setattr(driver.fidelity, "estimate", spy)
    driver.compile_model(tmp_path / "m.onnx", tmp_path / "s.onnx",
                         driver.make_options(calib_path=str(tmp_path / "c.npy"), maxpool="avg"))
    assert "MaxPool" in seen["ann"]                        # the reference stays the user's ANN
    assert "AveragePool" in seen["qann"] and "MaxPool" not in seen["qann"]


def test_an_omitted_optional_input_is_no_read_of_the_maxpool_indices():
    """maxpools_to_average counted the empty name of an omitted input (Clip(y, '', hi)) as a read
    of a MaxPool's unnamed indices output: a false SNN-E248."""
    import onnx
    from onnx import TensorProto, helper

    from snncc.passes.schedule_timesteps import maxpools_to_average

    g = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["p", ""], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Clip", ["p", "", "hi"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert maxpools_to_average(model) == 1
    assert [n.op_type for n in model.graph.node] == ["AveragePool", "Clip"]
    onnx.checker.check_model(model)


def test_a_dilated_maxpool_with_avg_is_refused_for_the_qann_too(tmp_path, capsys):
    _max_pool_net(tmp_path / "m.onnx", dilations=(2, 2))
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((40, 2, 8, 8), np.float32))
    rc = main(["compile", str(tmp_path / "m.onnx"), "--target", "qann", "--calib",
               str(tmp_path / "c.npy"), "-o", str(tmp_path / "q.onnx"), "--maxpool", "avg"])
    assert rc == 2 and "[SNN-E249]" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


def test_the_finetune_hint_is_given_only_where_finetune_loads_the_model(tmp_path):
    """compile's low-fidelity hint told the users of a 1-D net (and of a Resize net) to run
    snncc finetune, which refused the model (E802 'use Conv2d', E801)."""
    pytest.importorskip("torch")
    from helpers import conv1d_relu_net
    from snncc.driver import _finetune_loads

    conv1d_relu_net(tmp_path / "c1d.onnx")
    assert not _finetune_loads(tmp_path / "c1d.onnx")
    assert _finetune_loads(Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn.onnx")


def test_hints_follow_what_was_measured_when_followed():
    """A helper followed every hint on trained nets: at T = 1 the graded neuron (MT 97.5 % where
    IF gave 90.6) had not been named; the finetune hint trained for T = 4 (compiled at T = 1 it
    lost: 90.6 -> 86.1; with -L 1 92.8); for LIF it led to E311 (finetune --iir trains LIF); on
    a QCFS graph of L = 4, bit-serial (which needs L = 2^T - 1) was hint 1 and failed E308."""
    from snncc.driver import make_options
    from snncc.fidelity import hints

    fid = {"qann_vs_ann": {"top1_agreement": 0.9}}
    t1 = hints(make_options(timesteps=1, neuron="if"), fid, "m.onnx")
    assert t1[0].startswith("--neuron mt") and "-L 1" in t1[-1]
    t2 = hints(make_options(timesteps=2, neuron="srp"), fid, "m.onnx")
    assert [h.split(" (")[0] for h in t2[:3]] == ["--neuron bitserial", "--neuron mt", "-T 4"]
    assert "--iir" in hints(make_options(timesteps=2, neuron="lif"), fid, "m.onnx")[-1]
    assert not any("mt" in h for h in hints(make_options(timesteps=1, neuron="gn"), fid))
    qcfs = hints(make_options(timesteps=4, neuron="if"), fid, "m.onnx", finetune=False,
                 trained_levels=4)
    assert not any("bitserial" in h for h in qcfs) and qcfs[0].startswith("-T 8")
    assert any("bitserial" in h for h in hints(make_options(timesteps=2, neuron="if"), fid,
                                               trained_levels=3))


def test_min_agreement_fails_when_the_ann_gives_one_class_to_every_sample():
    """A net calibrated on inputs of the wrong scale: its ANN gives one class to all held-out
    samples, the SNN 'agrees' 100 %, and --min-agreement 0.97 had passed (test accuracy 10 %)."""
    from snncc.driver import make_options
    from snncc.errors import FidelityError
    from snncc.fidelity import check, measure

    one = np.zeros((32, 10), np.float32)
    one[:, 3] = 1.0
    fid = measure(one, one, one)
    assert fid["ann_one_class"] == 3
    opts = make_options(timesteps=4, neuron="if")
    assert any("gives class 3" in w for w in check(fid, opts, None))
    with pytest.raises(FidelityError) as err:
        check(fid, opts, 0.97)
    assert err.value.code == "SNN-E370" and "gives class 3" in str(err.value)


@pytest.mark.parametrize("neuron, T, L, params, warned", [
    ("if", 8, 4, {}, True), ("if", 4, None, {}, False), ("srp", 4, None, {"tau": 2}, True),
    ("srp", 4, None, {}, False), ("bitserial", 4, None, {}, False), ("gn", 2, 4, {}, False)])
def test_bias_shift_is_warned_where_it_changes_a_per_step_neuron(neuron, T, L, params, warned):
    """--bias-shift adds lambda/(2L) to every step: the theta/2 start of QCFS theory only over
    T = L steps (SRP's pre-run: tau = L). A spec audit's digits CNN IF at -T 8 -L 4: relative
    logit error 0.210 with it against 0.083 without, and nothing said."""
    from snncc.driver import _bias_shift_warning, make_options

    said = _bias_shift_warning(make_options(neuron=neuron, timesteps=T, levels=L,
                                            bias_shift=True, neuron_params=params))
    assert bool(said) == warned
    if warned:
        assert said[0].startswith("warning: --bias-shift adds") and "drop --bias-shift" in said[0]
