"""The Python API refuses values of the wrong type with a coded error (SNN-E349 and the run
codes), instead of a TypeError/AttributeError from deep inside or, worse, compiling something
else than asked (levels=4.5, timesteps=True)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from snncc.driver import compile_model, make_options
from snncc.errors import SnnccError
from snncc.simulate import run_compiled

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "mnist_cnn.onnx")
CALIB = str(EXAMPLES / "mnist_calib.npz")
X = np.zeros((2, 1, 28, 28), np.float32)


def _inspect(model, shapes=None):
    from snncc.inspect import inspect_model
    return inspect_model(model, shapes)


def _load_inputs(path):
    from snncc.run import load_inputs
    return load_inputs(path)


def _session(model):
    from snncc.runtime.layout import session
    return session(model)


def _layout_session(model, **kw):
    from snncc.runtime.layout import session
    return session(model, **kw)


def _register(so):
    from snncc.runtime import register
    return register(so)


def _run_neuron(op, x, attrs):
    from snncc.runtime import run_neuron
    return run_neuron(op, x, attrs)


@pytest.mark.parametrize("call, code", [
    (lambda: make_options(target="qann", levels="8"), "SNN-E349"),
    (lambda: make_options(target="qann", levels=4.5), "SNN-E349"),
    (lambda: make_options(timesteps=True), "SNN-E349"),
    (lambda: make_options(calib_percentile="x"), "SNN-E349"),
    (lambda: make_options(calib_path=123), "SNN-E349"),
    (lambda: make_options(neuron_params=[1, 2]), "SNN-E349"),
    (lambda: make_options(input_shapes="input=1x1x28x28"), "SNN-E349"),
    (lambda: make_options(bias_shift="yes"), "SNN-E349"),
    (lambda: make_options(no_such_option=1), "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", {"timesteps": 2}), "SNN-E349"),
    (lambda: compile_model(5, "o.onnx", make_options()), "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", make_options(calib_path=CALIB), verify="bogus"),
     "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", make_options(calib_path=CALIB), min_agreement="x"),
     "SNN-E349"),
    (lambda: run_compiled("no/such/model.onnx", X), "SNN-E101"),
    (lambda: run_compiled(CALIB, X), "SNN-E102"),
    (lambda: run_compiled(MODEL, X, batch_size=2.5), "SNN-E349"),
    (lambda: run_compiled(MODEL, X, batch_size="16"), "SNN-E349"),   # a type, not a range
    (lambda: run_compiled(MODEL, X, batch_size=0), "SNN-E684"),
    (lambda: run_compiled(MODEL, None), "SNN-E683"),
    # found by a library-user audit: bare TypeErrors, or an internal E500 later
    (lambda: make_options(opset="17"), "SNN-E349"),
    (lambda: make_options(input_shapes={"input": "abc"}), "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", make_options(calib_path=CALIB), dump_after=5),
     "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", make_options(calib_path=CALIB), force="no"),
     "SNN-E349"),
    (lambda: run_compiled(b"model bytes", X), "SNN-E349"),
    (lambda: run_compiled(MODEL, X.astype(np.int32)), "SNN-E104"),
    (lambda: run_compiled(MODEL, np.full_like(X, np.nan)), "SNN-E681"),
    (lambda: run_compiled(MODEL, {"input": X, "other": X}), "SNN-E683"),
    (lambda: run_compiled(MODEL, X, use_library="no"), "SNN-E349"),
    # a second audit: an internal E500 later, bare TypeErrors, a misleading E118
    (lambda: compile_model(MODEL, "o.onnx", make_options(calib_path=CALIB,
                                                         calib_max_samples=None)), "SNN-E349"),
    (lambda: make_options(calib_path=""), "SNN-E349"),
    (lambda: make_options(opset=18), "SNN-E349"),
    (lambda: make_options(opset=12), "SNN-E349"),
    (lambda: compile_model(None, "o.onnx", make_options()), "SNN-E349"),
    (lambda: _inspect(None), "SNN-E349"),
    (lambda: _inspect(b"model bytes"), "SNN-E349"),
    (lambda: _inspect(MODEL, {"input": "1x1x28x28"}), "SNN-E349"),
    (lambda: _load_inputs(None), "SNN-E349"),
    (lambda: _session(None), "SNN-E349"),
    (lambda: _session(CALIB), "SNN-E102"),
    (lambda: run_compiled(MODEL, X[:, :, :14]), "SNN-E105"),
    (lambda: run_compiled(MODEL, X[None]), "SNN-E105"),
    # an embedding user's audit: ORT's or Python's own errors, one blaming the library
    (lambda: _register(None), "SNN-E349"),
    (lambda: _register("x"), "SNN-E349"),
    (lambda: _layout_session(MODEL, so="x"), "SNN-E349"),
    (lambda: _run_neuron("IFNeuron", X, None), "SNN-E349"),
    (lambda: _run_neuron("Relu", X, {}), "SNN-E349"),
    # a Python-API user's audit: bare TypeErrors, an internal E500, raw ORT errors
    (lambda: make_options(neuron=["if"]), "SNN-E349"),
    (lambda: make_options(neuron="mt", neuron_params={1: 2}), "SNN-E349"),
    (lambda: make_options(derived_from=5), "SNN-E349"),
    (lambda: compile_model(MODEL, "o.onnx", replace(make_options(), derived_from=5)), "SNN-E349"),
    (lambda: _layout_session(MODEL, blocked="no"), "SNN-E349"),
    (lambda: _run_neuron("IFNeuron", np.ones((4, 3), np.float32), {"T": 3, "theta": [1.0]}),
     "SNN-E305"),
    (lambda: _run_neuron("IFNeuron", np.ones((4, 3), np.float32),
                         {"T": 4, "theta": [1.0], "bogus": 1}), "SNN-E302"),
])
def test_wrong_types_are_coded_errors(tmp_path, monkeypatch, call, code):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SnnccError) as err:
        call()
    assert err.value.code == code
    assert not list(tmp_path.iterdir())


def test_numpy_integers_are_taken_as_ints():
    """T read from an npz or a numpy-typed config."""
    opts = make_options(timesteps=np.int64(4), levels=np.int32(4), neuron="mt")
    assert (opts.timesteps, opts.levels) == (4, 4) and type(opts.timesteps) is int


def test_run_compiled_takes_float64_like_snncc_run():
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    a = next(iter(run_compiled(MODEL, x).outputs.values()))
    b = next(iter(run_compiled(MODEL, x.astype(np.float32)).outputs.values()))
    np.testing.assert_array_equal(a, b)


def test_options_changed_after_make_options_are_derived_again(tmp_path):
    """dataclasses.replace(make_options(timesteps=4), timesteps=8) compiled at T = 8 with the
    L = 4 of T = 4; options built without make_options were not checked at all."""

    from snncc.context import CompileOptions

    res = compile_model(MODEL, tmp_path / "a.onnx", replace(make_options(
        calib_path=CALIB, fidelity_samples=0), timesteps=8))
    assert res.report["options"]["levels"] == 8 and "derived_from" not in res.report["options"]
    with pytest.raises(SnnccError) as err:
        compile_model(MODEL, tmp_path / "b.onnx", CompileOptions(timesteps=0, calib_path=CALIB))
    assert err.value.code == "SNN-E354" and not (tmp_path / "b.onnx").exists()


def test_revalidation_keeps_what_was_given_and_checks_everything():
    """A review: levels given together with a T change were derived over, and an unchanged key
    skipped every check (levels=0 compiled with 8 in the quant table)."""

    from snncc.driver import _revalidated

    base = make_options(timesteps=4, calib_path=CALIB)
    assert _revalidated(replace(base, timesteps=8, levels=3)).levels == 3
    assert _revalidated(replace(base, timesteps=8)).levels == 8
    assert _revalidated(replace(make_options(neuron="mt"), neuron="if")).levels == 4
    for bad, code in (({"levels": 0}, "SNN-E355"), ({"calib_method": "bogus"}, "SNN-E351")):
        with pytest.raises(SnnccError) as err:
            _revalidated(replace(base, **bad))
        assert err.value.code == code


def test_loihi_warnings_reach_the_compile_result(tmp_path):
    """They went through logging only: a library user's CompileResult.warnings was empty."""
    res = compile_model(str(EXAMPLES / "mnist_resnet.onnx"), tmp_path / "l", make_options(
        target="loihi", calib_path=str(EXAMPLES / "mnist_resnet_calib.npz"), fidelity_samples=0))
    assert any("network.net holds the first" in w for w in res.warnings)   # a residual net


def test_runtime_helpers_give_coded_errors(tmp_path):
    """layout.session on a missing path raised ORT's NoSuchFile; StreamStepper took a folded
    model, a wrong input name or float64 samples with bare RuntimeError/TypeError."""
    import onnxruntime as ort

    from snncc.runtime import layout, session_options
    from snncc.simulate import StreamStepper

    with pytest.raises(SnnccError) as err:
        layout.session(tmp_path / "missing.onnx")
    assert err.value.code == "SNN-E101"
    folded = tmp_path / "f.onnx"
    compile_model(MODEL, folded, make_options(calib_path=CALIB, fidelity_samples=0))
    sess = ort.InferenceSession(str(folded), session_options())
    with pytest.raises(SnnccError) as err:
        StreamStepper(sess, str(folded), {"input": X})
    assert err.value.code == "SNN-E349"
    stream = tmp_path / "s.onnx"
    compile_model(MODEL, stream, make_options(calib_path=CALIB, fidelity_samples=0,
                                              schedule="streaming"))
    sess = ort.InferenceSession(str(stream), session_options())
    with pytest.raises(SnnccError) as err:
        StreamStepper(sess, str(stream), {"x": X})
    assert err.value.code == "SNN-E683"
    stepper = StreamStepper(sess, str(stream), {"input": X.astype(np.float64)})   # a path, f64
    assert next(iter(stepper.step(0).values())).shape == (2, 10)
    # SessionOptions without the library: ORT's "Type parameter (Tin0) ... bound to different
    # types" for a streaming model; now said to need the kernel library
    with pytest.raises(SnnccError) as err:
        layout.session(stream, ort.SessionOptions())
    assert err.value.code == "SNN-E703" and "register" in err.value.hint


def test_options_keep_their_own_copy_of_neuron_params():
    """Options built in a loop over one reused dict all compiled with its last value."""
    params, made = {}, []
    for n in (1, 2, 4):
        params["n"] = n
        made.append(make_options(neuron="mt", timesteps=4, neuron_params=params))
    assert [(o.levels, dict(o.neuron_params)) for o in made] == [
        (4, {"n": 1}), (8, {"n": 2}), (16, {"n": 4})]
    tau = make_options(neuron="srp", neuron_params={"tau": np.int64(2)}).neuron_params["tau"]
    assert type(tau) is int   # the report's JSON


def test_main_leaves_the_root_logger_as_it_was():
    """main(['-v', ...]) in a notebook left the root logger at INFO with its handler attached,
    so the user's own logging.info lines appeared."""
    import logging

    from snncc.cli import main

    root = logging.getLogger()
    before = root.level, list(root.handlers)
    assert main(["-v", "inspect", MODEL]) == 0
    assert (root.level, list(root.handlers)) == before


def test_stream_stepper_names_bad_out_names(tmp_path):
    import onnxruntime as ort

    from snncc.runtime import session_options
    from snncc.simulate import StreamStepper

    stream = tmp_path / "s.onnx"
    compile_model(MODEL, stream, make_options(calib_path=CALIB, fidelity_samples=0,
                                              schedule="streaming"))
    sess = ort.InferenceSession(str(stream), session_options())
    for bad in (["nope"], "logits"):
        with pytest.raises(SnnccError) as err:
            StreamStepper(sess, str(stream), {"input": X}, out_names=bad)
        assert err.value.code == "SNN-E349" and "logits" in err.value.hint
