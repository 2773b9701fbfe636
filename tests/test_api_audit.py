"""What a library user of the Python API met (an audit): errors that name the API's keywords, not
the CLI's flags; the stepper and the runtime helpers taking what the README shows them with;
inspect's JSON on a compiled model; a flat image folder as calibration data; a streaming compile
on a machine without the kernel library."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.cli import main
from snncc.driver import compile_model, make_options
from snncc.errors import SnnccError, api_wording
from snncc.simulate import StreamStepper, run_compiled

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "mnist_cnn.onnx")
CALIB = str(EXAMPLES / "mnist_calib.npz")


@pytest.mark.parametrize("cli, api", [
    ("-T must be at most 8; try -T 4", "timesteps must be at most 8; try timesteps=4"),
    ("drop --per-channel for --neuron lif", "drop calib_per_channel=True for neuron='lif'"),
    ("use --input-shape input=1x3x224x224", "use input_shapes={'input': (1, 3, 224, 224)}"),
    ("drop --no-fidelity / pass --calib, or drop --min-agreement",
     "drop fidelity_samples=0 / pass calib_path, or drop min_agreement"),
    ("-L 12 with --neuron-param", "levels=12 with neuron_params"),
    ("rerun with --debug for the traceback", "see the chained exception (__cause__) for the "
     "traceback"),
    ("pass --force to write into it; --calib-samples 256", "pass force=True to write into it; "
     "calib_max_samples=256"),
    ("pass --calib-method max|mse; e.g. -o out/m.loihi, when -o names a file",
     "pass calib_method='max'|'mse'; e.g. out='out/m.loihi', when out (the output path) names "
     "a file"),
    ("compile with --neuron if or lif; --maxpool avg or keep it; --target loihi / ort",
     "compile with neuron='if' or 'lif'; maxpool='avg' or keep it; target='loihi' / 'ort'"),
    ("use --input-shape input=1x1x<H>x<W>; e.g. --std 0.229,0.224; --neuron-param n=4",
     "use input_shapes={'input': (1, 1, H, W)}; e.g. calib_std=(0.229, 0.224); "
     "neuron_params={'n': 4}"),
    ("written by snncc compile --target loihi; or -T 8", "written by snncc compile --target "
     "loihi; or timesteps=8"),   # a shell command keeps its flags
    ("SNN-E349 a-T b--force", "SNN-E349 a-T b--force"),   # not flags: unchanged
])
def test_api_wording_names_keywords(cli, api):
    assert api_wording(cli) == api


def test_api_errors_name_keywords_and_the_cli_names_flags(capsys):
    with pytest.raises(SnnccError) as err:
        make_options(timesteps=0)
    assert "-T" not in str(err.value) and "timesteps=4" in str(err.value)
    assert main(["compile", MODEL, "-T", "0"]) == 2
    assert "-T 4" in capsys.readouterr().err


def test_the_wording_is_per_thread():
    """An snncc command running in one thread does not make another thread's API errors name
    flags (the review found one process-wide switch)."""
    import threading

    from snncc.errors import cli_wording

    inside, release = threading.Event(), threading.Event()

    def command():
        with cli_wording():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=command)
    worker.start()
    inside.wait(10)
    try:
        with pytest.raises(SnnccError) as err:
            make_options(timesteps=0)
        assert "timesteps=4" in str(err.value) and "timesteps=4" in err.value.hint
    finally:
        release.set()
        worker.join()


def test_min_agreement_without_estimate_says_the_api_default(tmp_path):
    with pytest.raises(SnnccError) as err:
        compile_model(MODEL, tmp_path / "o.onnx", make_options(calib_path=CALIB,
                                                               fidelity_samples=0),
                      min_agreement=0.9)
    assert err.value.code == "SNN-E368" and "fidelity_samples=None" in str(err.value)


def test_the_api_defaults_are_the_clis(tmp_path):
    """make_options defaulted to fidelity_samples=0: a user's API compile calibrated on other
    samples than the same CLI command and never warned (71.9 % agreement, no warning)."""
    assert make_options().fidelity_samples is None
    res = compile_model(MODEL, tmp_path / "api.onnx", make_options(calib_path=CALIB,
                                                                  timesteps=4))
    assert res.report["fidelity"]["samples"] == 32
    assert main(["compile", MODEL, "-T", "4", "--calib", CALIB, "-o",
                 str(tmp_path / "cli.onnx"), "-q"]) == 0
    api, cli = (onnx.load(str(tmp_path / f"{k}.onnx")) for k in ("api", "cli"))
    assert [i.raw_data for i in api.graph.initializer] == [i.raw_data for i in cli.graph.initializer]


@pytest.fixture(scope="module")
def streaming_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "s.onnx"
    compile_model(MODEL, out, make_options(calib_path=CALIB, schedule="streaming",
                                           calib_max_samples=64))
    return str(out)


@pytest.mark.requires_runtime
@pytest.mark.parametrize("g", [-1, "a", 1.5, True])
def test_stepper_refuses_a_step_that_is_not_a_step_number(streaming_model, g):
    from snncc.runtime.layout import session

    x = np.zeros((2, 1, 28, 28), np.float32)
    stepper = StreamStepper(session(streaming_model), streaming_model, {"input": x})
    with pytest.raises(SnnccError) as err:
        stepper.step(g)
    assert err.value.code == "SNN-E349"
    stepper.step(0)


@pytest.mark.requires_runtime
def test_stepper_refuses_wrong_samples_and_another_models_session(streaming_model):
    from snncc.runtime.layout import session

    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(SnnccError) as err:
        StreamStepper(session(streaming_model), streaming_model, {"input": x[:, :, :14]})
    assert err.value.code == "SNN-E105"
    with pytest.raises(SnnccError) as err:
        StreamStepper(session(MODEL), streaming_model, {"input": x})
    assert err.value.code == "SNN-E349"


@pytest.mark.requires_runtime
def test_runtime_helpers_take_a_path_like_a_proto(tmp_path):
    import onnx

    from snncc.runtime.gates import fuse_gates
    from snncc.runtime.layout import blocked_model
    from snncc.runtime.pools import fuse_avg_pools

    out = tmp_path / "b.onnx"
    compile_model(MODEL, out, make_options(calib_path=CALIB, neuron="bitserial",
                                           calib_max_samples=64))
    proto = onnx.load(str(out))
    for fn in (fuse_gates, fuse_avg_pools):
        assert fn(str(out))[1] == fn(proto)[1]
    assert blocked_model(out)[1] == blocked_model(proto)[1]


def test_inspect_json_of_a_compiled_mt_model_is_json(tmp_path, capfd):
    out = tmp_path / "mt.onnx"
    compile_model(MODEL, out, make_options(calib_path=CALIB, neuron="mt", calib_max_samples=64))
    capfd.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    json.loads(capfd.readouterr().out)   # onnx-graphsurgeon's warnings went to stdout


def test_a_flat_image_folder_calibrates(tmp_path):
    from PIL import Image

    x = np.load(CALIB)["input"]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        Image.fromarray((x[i, 0] * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    res = compile_model(MODEL, tmp_path / "o.onnx", make_options(calib_path=str(folder)))
    assert res.output.is_file()


def test_streaming_without_the_library_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCC_RUNTIME_LIB", str(tmp_path / "missing.so"))
    res = compile_model(MODEL, tmp_path / "s.onnx",
                        make_options(calib_path=CALIB, schedule="streaming", fidelity_samples=32))
    assert "kernel library" in res.report["fidelity"]["note"]
    assert any("runs only with it" in w for w in res.warnings)
    x = np.zeros((1, 1, 28, 28), np.float32)
    folded = tmp_path / "f.onnx"
    compile_model(MODEL, folded, make_options(calib_path=CALIB, calib_max_samples=64))
    with pytest.raises(SnnccError) as err:
        run_compiled(folded, x)
    assert err.value.code == "SNN-E701" and "use_library=False" in str(err.value)
    run_compiled(folded, x, use_library=False)


def test_a_library_never_built_runs_the_portable_functions_with_a_note(tmp_path, monkeypatch,
                                                                     capsys):
    """A pip-installed snncc builds no C++: snncc run and run_compiled had stopped with E701,
    even for a model with no neuron (a QANN, the ANN itself). Now a folded model runs its
    portable ONNX functions (the same outputs) with a note, a model without neurons silently."""
    import snncc.runtime as rt

    folded = tmp_path / "f.onnx"
    compile_model(MODEL, folded, make_options(calib_path=CALIB, calib_max_samples=64))
    test = np.load(EXAMPLES / "mnist_test.npz")
    x = test["x"][:16]
    want = run_compiled(folded, x, use_library=False)
    monkeypatch.delenv("SNNCC_RUNTIME_LIB", raising=False)
    monkeypatch.setattr(rt, "library_path", lambda: str(tmp_path / "never_built.so"))
    got = run_compiled(folded, x)
    for k, v in want.outputs.items():
        np.testing.assert_array_equal(got.outputs[k], v)
    assert got.spikes_per_layer == want.spikes_per_layer
    assert any("not built here" in w and "python -m snncc.runtime.build" in w
               for w in got.warnings)
    assert not any("not built" in w for w in run_compiled(MODEL, x).warnings)   # the ANN
    np.savez(tmp_path / "t.npz", x=x, y=test["y"][:16])
    import snncc.simulate as sim
    monkeypatch.setattr(sim, "_FALLBACK_SAID", [False])    # logged once per process
    assert main(["run", str(folded), "--input", str(tmp_path / "t.npz")]) == 0
    assert "portable ONNX functions" in capsys.readouterr().err


def test_run_says_why_there_is_no_accuracy(tmp_path, capsys):
    """Labels saved under another name than 'y' gave no accuracy and no word about it."""
    test = np.load(EXAMPLES / "mnist_test.npz")
    np.savez(tmp_path / "t.npz", x=test["x"][:8], labels=test["y"][:8])
    assert main(["run", MODEL, "--input", str(tmp_path / "t.npz")]) == 0
    out, err = capsys.readouterr()
    assert "no labels under 'y' (its other arrays: labels)" in err and "accuracy" not in out


def test_an_image_folder_calibrates_on_every_class_and_every_image(tmp_path):
    """Class folders were read in path order, so the first samples (calibration) and the last
    (held out) were one or two classes each (MNIST ResNet, IF T = 4, 1000 training images in
    class folders: 95.5 % before, 96.7 % after); images beside class folders were ignored."""
    from PIL import Image

    from snncc.calibration import load_samples, model_inputs
    import onnx

    for k in range(4):
        (tmp_path / f"class{k}").mkdir()
        for i in range(30):
            Image.fromarray(np.full((28, 28), 60 * k, np.uint8)).save(
                tmp_path / f"class{k}" / f"{i}.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "loose.png")
    x = load_samples(tmp_path, model_inputs(onnx.load(MODEL)), max_samples=40)["input"]
    assert len(x) == 40 and len(np.unique(x[:20])) >= 3 and len(np.unique(x[20:])) >= 3
    x = load_samples(tmp_path, model_inputs(onnx.load(MODEL)), max_samples=None)["input"]
    assert len(x) == 121 and x.max() == 1.0


def test_report_without_labels_scores_agreement_with_the_ann(tmp_path):
    """A helper's unlabelled --data compiled and ran T = 2 and showed nothing for it."""
    x = np.load(CALIB)["input"][:8]
    np.savez(tmp_path / "d.npz", x=x)
    assert main(["report", MODEL, "--data", str(tmp_path / "d.npz"), "--calib", CALIB, "-T",
                 "1,2", "--target", "ort", "-o", str(tmp_path / "r.md")]) == 0
    page = (tmp_path / "r.md").read_text()
    assert "## Agreement with the ANN vs T" in page and "| ANN | 1 |" in page
    # the energy ratio on both ANN counts, and how the input layer's MACs were counted
    assert "zero padding left out" in page and "without the taps on the zero padding" in page
    assert "counted once: the schedule computes the input layer's current once" in page


def test_a_python_callers_diagnostics_name_keywords(tmp_path):
    """str(error) was keyword-worded but error.diagnostics kept the CLI's flags
    ('--input-shape names ...'), which a script reading them met."""
    from snncc.driver import compile_model, make_options
    from snncc.errors import SnnccError

    with pytest.raises(SnnccError) as err:
        compile_model(MODEL, tmp_path / "o.onnx", make_options(input_shapes={"zz": (1, 1, 28, 28)}))
    assert err.value.code == "SNN-E115"
    assert err.value.diagnostics[0].message.startswith("input_shapes names 'zz'")


def test_inputs_that_disagree_on_their_sample_count_are_e105():
    """A two-input model fed 1 and 16 samples: ORT had broadcast the one over the batch (one
    output row, sixteen samples' spikes counted as one), and 16 and 17 had dropped a sample;
    the CLI said E105. Now the API says it too, and the stepper."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = np.ones((16, 2), np.float32)
    for na, nb, batch in ((1, 16, None), (16, 17, 16)):
        with pytest.raises(SnnccError) as err:
            run_compiled(proto, {"a": a[:na], "b": np.ones((nb, 2), np.float32)},
                         batch_size=batch)
        assert err.value.code == "SNN-E105" and f"a: {na}, b: {nb}" in str(err.value)
    assert run_compiled(proto, {"a": a, "b": a}).outputs["y"].shape == (16, 2)


@pytest.mark.requires_runtime
def test_a_pipelined_streaming_run_counts_one_inference(tmp_path):
    """Bit-serial streaming runs (D + 1) x T steps to fill its pipeline; the run had counted the
    spikes of every step (3.5-4.8x compile's SynOps events, rates over 20 slices). It counts
    the steps where every layer works on the input, as compile does: the folded run's events."""
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:8]
    runs = {}
    for schedule in ("folded", "streaming"):
        out = tmp_path / f"{schedule}.onnx"
        compile_model(MODEL, out, make_options(calib_path=CALIB, neuron="bitserial",
                                               schedule=schedule, calib_max_samples=64,
                                               fidelity_samples=0))
        runs[schedule] = run_compiled(out, x)
    assert runs["streaming"].slices == runs["folded"].slices == 4
    assert runs["streaming"].events_per_layer == runs["folded"].events_per_layer
    np.testing.assert_allclose(runs["streaming"].outputs["logits"],
                               runs["folded"].outputs["logits"], rtol=1e-5, atol=1e-5)


def test_errors_keep_their_text_when_pickled_or_copied():
    """A worker process's error (pickled) or a copy had rendered '[SNN-E300] [SNN-E354] ...'."""
    import copy
    import pickle

    with pytest.raises(SnnccError) as err:
        make_options(timesteps=0)
    e = err.value
    for other in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
        assert type(other) is type(e) and str(other) == str(e) and other.code == e.code \
            and other.hint == e.hint and other.diagnostics == e.diagnostics


def test_energy_estimate_takes_a_reports_synops_section(tmp_path):
    """estimate(report['synops']) had been a bare KeyError: it reads the measured counts and
    gives the report's own energy figures."""
    from snncc.analysis.energy import estimate

    res = compile_model(MODEL, tmp_path / "m.onnx", make_options(calib_path=CALIB,
                                                                 calib_max_samples=64))
    section = res.report["synops"]
    got = estimate(section)["models"]
    for name in ("digital45nm", "loihi"):
        assert got[name]["snn_pj"] == pytest.approx(section["energy"][name]["snn_pj"])
    with pytest.raises(SnnccError) as err:
        estimate({**section, "measured": None})
    assert err.value.code == "SNN-E349"


def test_a_home_relative_path_reads_as_it_writes(tmp_path, monkeypatch):
    """'~/...' had been expanded for the outputs only: CompileResult.output named '~/m.onnx',
    which does not exist, and a '~/' model or calibration file was not found."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(MODEL, tmp_path / "m.onnx")
    shutil.copy(CALIB, tmp_path / "c.npz")
    res = compile_model("~/m.onnx", "~/out/s.onnx", make_options(
        calib_path="~/c.npz", calib_max_samples=64, fidelity_samples=0),
        report_path="~/out/r.json")
    assert res.output == tmp_path / "out" / "s.onnx" and res.output.is_file()
    assert (tmp_path / "out" / "r.json").is_file() and not Path("~").exists()
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:4]
    assert run_compiled("~/out/s.onnx", x).samples == 4
