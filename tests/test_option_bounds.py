"""Upper bounds on -T and the neuron parameters, checked before any work (no calibration, nothing
written): srp tau <= 64 (like -T), gn tau <= 2^23 (the kernel's attribute range), mt n <= 64,
every derived L' = levels_for(T) <= 2^24 (like -L), bitserial T <= 16 (the bits attribute).

Before these checks, srp --tau 100000 ran out of memory, gn --tau 2^24 wrote a model ONNX Runtime
refused to load, mt --mt-n 10000 ran for minutes, mt pow2 --mt-n 30 and bitserial -T 25 failed
after calibration on a float32-rounded L, and bitserial -T 17 failed inside insert-neurons.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from snncc.cli import main
from snncc.context import MAX_LEVELS, MAX_TIMESTEPS, QuantClipParams
from snncc.driver import make_options
from snncc.errors import OptionError, cli_wording
from snncc.neurons import get_neuron
from snncc.neurons.registry import validate_attrs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    x = np.load(EXAMPLES / "digits_cnn_calib.npz")["input"]
    path = tmp_path_factory.mktemp("calib") / "c64.npz"
    np.savez(path, input=x[:64])
    return str(path)


def _compile_fails(tmp_path, capsys, calib, args, code, monkeypatch) -> str:
    """Run ``snncc compile`` with ``args``; it must exit 2 with ``code`` up front (before the
    calibrate pass, which is made to fail the test if it runs)."""
    from snncc.passes.calibrate import CalibratePass

    def no_calibration(self, model, ctx):
        raise AssertionError("calibration ran before the option check")

    monkeypatch.setattr(CalibratePass, "run", no_calibration)
    out = tmp_path / "out" / "o.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no numpy overflow RuntimeWarning on the way
        try:
            rc = main(["compile", MODEL, "--calib", calib, "-q", "--no-fidelity", *args,
                       "-o", str(out)])
        except SystemExit as exc:
            rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"[{code}]" in err and "Traceback" not in err, err
    assert err.count("[SNN-E") == 1, err             # one error, not a list of follow-ups
    assert not out.parent.exists() or not list(out.parent.iterdir())
    return err


# ----------------------------------------------------------------------------- the CLI, up front

@pytest.mark.parametrize("args, code, words", [
    # 1. srp's pre-run: tau + T slices of activations, so tau is bounded like -T
    (["-T", "2", "--neuron", "srp", "--tau", "100000"], "SNN-E309", "[0, 64]"),
    (["-T", "2", "--neuron", "srp", "--tau", "65"], "SNN-E309", "[0, 64]"),
    # 2. gn: the kernel's tau range, and L' = tau*T <= 2^24
    (["-T", "2", "--neuron", "gn", "--tau", "16777216"], "SNN-E309", "[1, 8388608]"),
    (["-T", "2", "--neuron", "gn", "--tau", "100000000"], "SNN-E309", "[1, 8388608]"),
    (["-T", "4", "--neuron", "gn", "--tau", "8388608"], "SNN-E309", "tau <= 4194304"),
    (["-T", "1", "--neuron", "gn", "-L", "16777216"], "SNN-E309", "2^23"),
    # 3. mt: n <= 64, given or derived as L / T
    (["-T", "2", "--neuron", "mt", "--mt-n", "10000"], "SNN-E309", "[1, 64]"),
    (["-T", "2", "--neuron", "mt", "--mt-n", "10000000"], "SNN-E309", "[1, 64]"),
    (["-T", "2", "--neuron", "mt", "--mt-n", "65"], "SNN-E309", "--neuron gn"),
    (["-T", "1", "--neuron", "mt", "-L", "1000"], "SNN-E309", "-T 20"),
    # 4. mt pow2: L' = (2^n - 1)*T <= 2^24, not a float32-rounded L after calibration
    (["-T", "2", "--neuron", "mt", "--mt-preset", "pow2", "--mt-n", "30"], "SNN-E309",
     "n <= 23 at T=2"),
    (["-T", "2", "--neuron", "mt", "--mt-preset", "pow2", "--mt-n", "1000"], "SNN-E309",
     "[1, 64]"),
    (["-T", "1", "--neuron", "mt", "--mt-mode", "cascade", "--mt-n", "25"], "SNN-E309",
     "n <= 24 at T=1"),
    # 5. bitserial: T <= 16, the range of its bits attribute
    (["-T", "25", "--neuron", "bitserial"], "SNN-E354", "T <= 16"),
    (["-T", "17", "--neuron", "bitserial"], "SNN-E354", "T <= 16"),
])
def test_out_of_range_neuron_options_fail_up_front(tmp_path, capsys, calib, args, code, words,
                                                   monkeypatch):
    err = _compile_fails(tmp_path, capsys, calib, args, code, monkeypatch)
    assert words in err


def test_pow2_error_names_the_levels_and_the_limit(tmp_path, capsys, calib, monkeypatch):
    err = _compile_fails(tmp_path, capsys, calib,
                         ["-T", "2", "--neuron", "mt", "--mt-preset", "pow2", "--mt-n", "30"],
                         "SNN-E309", monkeypatch)
    assert "n=30 too large" in err and "L' = 2147483646" in err and "2^24" in err
    assert "use -T 2" not in err  # the old hint suggested the T already given


def test_help_states_the_bounds(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "1..64, default 4 (each slice compares" in out      # --mt-n
    assert "0..64" in out and "1..2^23" in out      # --tau (srp, gn)


# ----------------------------------------------------------------------------- the bounds themselves

@pytest.mark.parametrize("kw", [
    dict(neuron="srp", timesteps=2, neuron_params={"tau": MAX_TIMESTEPS}),
    dict(neuron="srp", timesteps=2, neuron_params={"tau": 0}),
    dict(neuron="gn", timesteps=2, neuron_params={"tau": 2 ** 23}),       # L' = 2^24
    dict(neuron="gn", timesteps=1, levels=2 ** 23),                       # tau = 2^23
    dict(neuron="mt", timesteps=2, neuron_params={"n": 64}),
    dict(neuron="mt", timesteps=1, levels=64),                            # n = 64 derived
    dict(neuron="mt", timesteps=2, neuron_params={"n": 23, "preset": "pow2"}),
    dict(neuron="mt", timesteps=1, neuron_params={"n": 24, "preset": "pow2"}),
    dict(neuron="bitserial", timesteps=16),
    dict(neuron="bitserial", timesteps=25, target="qann"),                # qann runs no neuron
    dict(neuron="if", timesteps=MAX_TIMESTEPS),
])
def test_values_at_the_bounds_are_accepted(kw):
    opts = make_options(**kw)
    assert opts.levels <= MAX_LEVELS


@pytest.mark.parametrize("neuron, T, L, code", [
    ("mt", 1, 1000, "SNN-E309"),           # a QCFS graph's own L: n = L/T = 1000
    ("gn", 1, 2 ** 24, "SNN-E309"),        # tau = 2^24, beyond the kernel's 2^23
])
def test_per_slice_counts_derived_from_a_graphs_levels_are_bounded(neuron, T, L, code):
    options = make_options(neuron=neuron, timesteps=T)
    with pytest.raises(OptionError) as err:
        get_neuron(neuron).from_quant_clip(QuantClipParams(lam=np.float32(1.0), levels=L),
                                           options)
    assert err.value.code == code


def test_gn_tau_attribute_matches_the_kernel_range():
    gn = get_neuron("gn")
    assert validate_attrs(gn, {"tau": 2 ** 23})["tau"] == 2 ** 23
    with pytest.raises(OptionError) as err:
        validate_attrs(gn, {"tau": 2 ** 23 + 1})
    assert err.value.code == "SNN-E303"


def test_lif_per_channel_hint_names_the_real_flag():
    options = make_options(neuron="lif", timesteps=4)
    with pytest.raises(OptionError) as err:
        get_neuron("lif").from_quant_clip(
            QuantClipParams(lam=np.array([1.0, 2.0], np.float32), levels=4), options)
    assert "calib_per_channel=True" in err.value.hint   # the API's name (the CLI: --per-channel)
    assert "calib-per-channel" not in err.value.hint
    with cli_wording():
        with pytest.raises(OptionError) as err:
            get_neuron("lif").from_quant_clip(
                QuantClipParams(lam=np.array([1.0, 2.0], np.float32), levels=4), options)
    assert "--per-channel" in err.value.hint
