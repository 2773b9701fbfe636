"""calibrate: lambda per method on synthetic data, per-channel shape, patterns, file errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_passes, tiny_model

from snncc.calibration import SiteStats, choose_lambda
from snncc.context import CompileContext, CompileOptions, QuantClipParams
from snncc.errors import CalibrationError
from snncc.passes.calibrate import CalibratePass
from snncc.passes.quant_clip import numpy_quant_clip

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
C = 3


def relu_model(batch: str = "N", act: str = "Relu(x)"):
    return tiny_model(f"""{HEAD}
        g (float[{batch},{C},4,4] x) => (float[{batch},{C},4,4] y)
        <float zero = {{0.0}}, float six = {{6.0}}>
        {{ y = {act} }}""", params={"zero": np.float32(0), "six": np.float32(6)})


def calibrate(model, tmp_path, data, **options):
    path = tmp_path / "calib.npy"
    np.save(path, data)
    options.setdefault("calib_method", "max")      # these tests pin the statistics methods
    options.setdefault("calib_per_channel", False)
    ctx = CompileContext(CompileOptions(target="qann", calib_path=str(path), **options))
    out, report, ctx = run_passes(model, [CalibratePass(progress=False, batch_size=5)], ctx=ctx)
    return ctx, report.rows[0]


def heavy_tailed(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(2, size=(n, C, 4, 4)) * 0.5).astype(np.float32)


def test_max_is_the_max(tmp_path):
    data = heavy_tailed()
    ctx, row = calibrate(relu_model(), tmp_path, data, calib_method="max", levels=4)
    params = ctx.quant["y"]
    assert params.lam.shape == () and params.lam == data.max()
    assert (params.levels, params.phi, params.source) == (4, 0.5, "calibration")
    assert not row.modified and row.counts == {"from_pattern": 0, "calibrated": 1}
    rec = ctx.calibration["y"]
    assert rec["max"] == data.max() and rec["min"] == data.min() and rec["method"] == "max"
    assert rec["samples"] == data.size and not rec["subsampled"]


@pytest.mark.parametrize("p", [99.9, 99.0, 50.0])
def test_percentile_is_numpy_percentile(tmp_path, p):
    data = heavy_tailed()
    ctx, _ = calibrate(relu_model(), tmp_path, data, calib_method="percentile",
                       calib_percentile=p)
    assert ctx.quant["y"].lam == np.float32(np.percentile(data[data > 0], p))


def test_mse_lies_below_max_and_beats_it(tmp_path):
    data = heavy_tailed()
    ctx, _ = calibrate(relu_model(), tmp_path, data, calib_method="mse", levels=8)
    lam = ctx.quant["y"].lam
    assert 0 < lam < data.max()

    def err(lam):
        q = numpy_quant_clip(data, QuantClipParams(lam=np.float32(lam), levels=8))
        return float(np.sum((np.maximum(data, 0) - q) ** 2))

    assert err(lam) < err(data.max())


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_per_channel_shape(tmp_path, method):
    data = heavy_tailed() * np.array([1, 3, 0.2], np.float32)[None, :, None, None]
    ctx, _ = calibrate(relu_model(), tmp_path, data, calib_method=method, calib_per_channel=True)
    lam = ctx.quant["y"].lam
    assert lam.shape == (C,) and lam.dtype == np.float32
    if method == "max":
        assert np.array_equal(lam, data.max(axis=(0, 2, 3)))
    assert np.all(lam > 0) and np.all(lam <= data.max(axis=(0, 2, 3)))


def test_relu6_caps_lambda_and_fixed_batch(tmp_path):
    data = heavy_tailed(7) * 20  # batch 2 fixed in the model: the last sample is padded
    ctx, _ = calibrate(relu_model(batch="2", act="Clip(x, zero, six)"), tmp_path, data)
    assert ctx.quant["y"].lam == np.float32(6)
    assert ctx.calibration["y"]["samples"] == data.size


def test_max_samples_limits_the_run(tmp_path):
    data = heavy_tailed()
    data[20:] = 100
    ctx, _ = calibrate(relu_model(), tmp_path, data, calib_max_samples=20)
    assert ctx.quant["y"].lam == data[:20].max()


def test_subsampling_bounds_memory():
    stats = SiteStats(per_channel=False, max_values=1000)
    rng = np.random.default_rng(0)
    for _ in range(10):
        stats.update(rng.normal(size=(8, 3, 16, 16)).astype(np.float32), 80, rng)
    assert stats.subsampled and stats.positives().size < 1000
    lam = choose_lambda(stats, "percentile", levels=8, percentile=50)
    assert abs(lam - 0.674) < 0.1  # median of |N(0,1)|


def _pattern_model():
    return tiny_model(f"""{HEAD}
        g (float[2,3] x) => (float[2,3] y)
        <float k = {{1.0}}, float zero = {{0.0}}, float L = {{1.0}}, float s = {{1.0}}>
        {{ a = Mul(x, k) \n b = Floor(a) \n c = Clip(b, zero, L) \n y = Mul(c, s) }}""",
                      params={"k": np.float32(2.0), "zero": np.float32(0), "L": np.float32(4),
                              "s": np.float32(0.5)})


def test_patterns_need_no_data():
    out, report, ctx = run_passes(_pattern_model(), [CalibratePass()])
    params = ctx.quant["y"]
    assert (params.lam, params.levels, params.phi, params.source) == (2.0, 4, 0.0, "pattern")
    assert report.rows[0].counts == {"from_pattern": 1, "calibrated": 0}


@pytest.mark.parametrize("fidelity", [0, None])
def test_a_qcfs_graph_given_samples_records_the_input_range(tmp_path, fidelity):
    """A QCFS graph needs no calibration, but samples given with --calib still record the input
    range (a fine-tuned net's Loihi relay on the input had been bounded by the whole payload,
    E634, with --calib given), with or without the fidelity check."""
    import json

    from snncc import input_range

    np.save(tmp_path / "c.npy", np.full((40, 3), 2.5, np.float32))
    ctx = CompileContext(CompileOptions(target="qann", calib_path=str(tmp_path / "c.npy"),
                                        fidelity_samples=fidelity))
    out, _, ctx = run_passes(_pattern_model(), [CalibratePass()], ctx=ctx)
    meta = {p.key: p.value for p in out.metadata_props}
    ranges = json.loads(meta[input_range.METADATA_KEY])
    assert next(iter(ranges.values()))["max_abs"] == 2.5
    assert bool(ctx.holdout) == (fidelity is None)


def test_no_data_names_the_sites_briefly():
    model = tiny_model(f"{HEAD}\ng (float[2,3] x) => (float[2,3] y) "
                       "{ r = Relu(x) \n y = Relu(r) }")
    with pytest.raises(CalibrationError) as err:
        run_passes(model, [CalibratePass()])
    assert err.value.code == "SNN-E401" and "2 activation(s)" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


GOOD = np.zeros((4, C, 4, 4), np.float32)


@pytest.mark.parametrize("code, name, write", [
    ("SNN-E402", "missing.npy", None),
    ("SNN-E404", "calib.txt", lambda p: p.write_text("1 2 3")),
    ("SNN-E403", "calib.npy", lambda p: p.write_bytes(b"not numpy")),
    ("SNN-E405", "calib.npy", lambda p: np.save(p, GOOD.astype(np.uint8))),
    ("SNN-E406", "calib.npy", lambda p: np.save(p, GOOD[:, :, :3])),
    ("SNN-E406", "calib.npy", lambda p: np.save(p, GOOD[0])),
    ("SNN-E407", "calib.npz", lambda p: np.savez(p, a=GOOD, b=GOOD)),
    ("SNN-E408", "calib.npy", lambda p: np.save(p, GOOD[:0])),
    ("SNN-E409", "calib.npy", lambda p: np.save(p, np.full_like(GOOD, np.nan))),
    # finite as float64, Inf as the model's float32 (it had passed into lambda = inf: E303)
    ("SNN-E409", "calib.npy", lambda p: np.save(p, np.full(GOOD.shape, 1e300))),
])
def test_bad_calibration_files(tmp_path, code, name, write):
    path = tmp_path / name
    if write:
        write(path)
    ctx = CompileContext(CompileOptions(target="qann", calib_path=str(path)))
    with pytest.raises(CalibrationError) as err:
        run_passes(relu_model(), [CalibratePass(progress=False)], ctx=ctx)
    assert err.value.code == code


def test_npz_keyed_by_input_and_unknown_method(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=heavy_tailed())
    ok = CompileContext(CompileOptions(target="qann", calib_path=str(path), calib_method="max",
                                       calib_per_channel=False))
    run_passes(relu_model(), [CalibratePass(progress=False)], ctx=ok)
    assert ok.quant["y"].lam > 0
    bad = CompileContext(CompileOptions(target="qann", calib_path=str(path), calib_method="kl"))
    with pytest.raises(CalibrationError) as err:
        run_passes(relu_model(), [CalibratePass(progress=False)], ctx=bad)
    assert err.value.code == "SNN-E411"


def test_activations_beyond_float32_are_a_calibration_error(tmp_path):
    """Samples x 1e37 had compiled (exit 0) to a model with a -inf bias; it is SNN-E414."""
    from snncc.driver import compile_model, make_options

    examples = Path(__file__).resolve().parents[2] / "examples"
    x = np.load(examples / "mnist_calib.npz")["input"]
    for scale, method in ((1e37, "snn"), (1e38, "max")):
        np.save(tmp_path / "c.npy", x * np.float32(scale))
        with pytest.raises(CalibrationError) as err:
            compile_model(examples / "mnist_cnn.onnx", tmp_path / "o.onnx", make_options(
                calib_path=str(tmp_path / "c.npy"), calib_method=method, neuron="mt",
                fidelity_samples=0))
        assert err.value.code == "SNN-E414" and "beyond float32" in err.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy"]
