"""The CLI end to end on the bundled MNIST CNN: outputs, reports, and user errors.

User errors exit with code 2, print one message with a code and no traceback, and leave no output.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MNIST = str(EXAMPLES / "mnist_cnn.onnx")
CALIB = str(EXAMPLES / "mnist_calib.npz")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("inspect", "compile", "run", "report", "finetune"):
        assert cmd in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_and_verbose_work_before_or_after_the_command(capsys, tmp_path, where):
    """The hints say 'rerun with --debug'; users put it after the command."""
    argv = ["inspect", str(tmp_path / "missing.onnx")]
    flags = ["--debug", "-v"]
    argv = flags + argv if where == "before" else argv + flags
    # --debug: the traceback, and still exit 2 (it had raised: exit 1, as an internal error)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "snncc inspect: error: [SNN-E101]" in err
    assert main([a for a in argv if a != "--debug"]) == 2
    err = capsys.readouterr().err
    assert "snncc inspect: error: [SNN-E101]" in err and "Traceback" not in err


def test_library_warnings_read_like_the_cli_own(capsys):
    import logging

    from snncc.cli import _LogFormat

    record = logging.LogRecord("snncc.backends.loihi.simulator", logging.WARNING, __file__, 1,
                               "%d saturated", (3,), None)
    assert _LogFormat("run").format(record) == "snncc run: warning: 3 saturated"
    other = logging.LogRecord("PIL.Image", logging.ERROR, __file__, 1, "odd file", (), None)
    assert _LogFormat("run").format(other) == "PIL.Image: odd file"   # not snncc's own error
    try:
        raise ValueError("inner")
    except ValueError:
        import sys
        failed = logging.LogRecord("snncc.x", logging.ERROR, __file__, 1, "boom", (),
                                   sys.exc_info())
    text = _LogFormat("run").format(failed)
    assert text.startswith("snncc run: error: boom\n") and "ValueError: inner" in text


def test_inspect_prints_macs(capsys):
    assert main(["inspect", MNIST]) == 0
    out = capsys.readouterr().out
    assert "total MACs per sample: 2,321,920" in out
    assert "cannot convert: none" in out


def test_compile_qann_writes_model_and_report(tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    assert main(["compile", MNIST, "--target", "qann", "-L", "8", "--calib", CALIB,
                 "-o", str(out), "--report", str(report), "-q"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    rows = json.loads(report.read_text())["passes"]
    assert [r["pass"] for r in rows] == ["canonicalize", "pool-first", "calibrate",
                                         "fold-batchnorm", "relu-to-quant-clip"]
    assert all({"changed", "counts", "declined", "ms"} <= set(r) for r in rows)


def test_compile_ort_then_run_reports_accuracy_and_spikes(tmp_path, capsys):
    out, report = tmp_path / "snn.onnx", tmp_path / "r.json"
    assert main(["compile", MNIST, "-T", "4", "--neuron", "bitserial", "--calib", CALIB,
                 "-o", str(out), "--report", str(report), "-q"]) == 0
    # the report names the manifest where it ended up, not the temporary staging copy
    backend = json.loads(report.read_text())["backend"]
    assert backend["manifest"] == f"{out}.json" and backend["steps_per_call"] == 1
    data = np.load(EXAMPLES / "mnist_test.npz")
    x = tmp_path / "x.npz"
    np.savez(x, x=data["x"][:50], y=data["y"][:50])
    assert main(["run", str(out), "--input", str(x), "--json", "--no-library"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 50 and summary["accuracy"] > 0.9
    assert len(summary["activity"]["layers"]) == 4
    assert summary["warnings"] == []
    # what stderr warns about is in the document too: inputs on another scale (pixels x 255)
    np.savez(x, x=data["x"][:50] * 255, y=data["y"][:50])
    assert main(["run", str(out), "--input", str(x), "--json", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    said = json.loads(captured.out)["warnings"]
    assert len(said) == 1 and "wider than the calibration samples" in said[0]
    assert said[0] in captured.err


def test_the_report_keeps_the_warnings_stderr_gave(tmp_path, capsys):
    """A T = 1 compile warned of a 0.41 relative logit error on stderr and its --report JSON
    had no trace of it, for a script that reads the report."""
    report = tmp_path / "r.json"
    assert main(["compile", str(EXAMPLES / "digits_cnn.onnx"), "-T", "1", "--calib",
                 str(EXAMPLES / "digits_cnn_calib.npz"), "-o", str(tmp_path / "a.onnx"),
                 "--report", str(report), "-q"]) == 0
    err = capsys.readouterr().err
    said = json.loads(report.read_text())["warnings"]
    assert said and all(w in err for w in said) and "relative logit error" in said[0]
    # a clean compile says so with an empty list
    assert main(["compile", MNIST, "--target", "qann", "--calib", CALIB, "-o",
                 str(tmp_path / "q.onnx"), "--report", str(report), "-q"]) == 0
    assert json.loads(report.read_text())["warnings"] == []


def test_dump_after_writes_the_intermediate_graph(tmp_path):
    out = tmp_path / "q.onnx"
    assert main(["compile", MNIST, "--target", "qann", "--calib", CALIB, "-o", str(out), "-q",
                 "--dump-after", "fold-batchnorm"]) == 0
    dumped = list(tmp_path.glob("*.dump/after-fold-batchnorm.onnx"))
    assert dumped and "BatchNormalization" not in {n.op_type for n in onnx.load(str(dumped[0])).graph.node}


@pytest.mark.parametrize("argv, code", [
    (["compile", MNIST, "-T", "0"], "SNN-E354"),
    (["compile", MNIST, "-T", "100000"], "SNN-E354"),
    (["compile", MNIST, "--neuron", "gn", "--tau", "0", "--calib", CALIB], "SNN-E309"),
    (["compile", MNIST, "--calib-method", "percentile", "--percentile", "20", "--calib", CALIB],
     "SNN-E356"),
    (["compile", MNIST, "-T", "4", "--neuron", "if"], "SNN-E401"),   # no calibration data
    (["compile", "/no/such/model.onnx"], "SNN-E101"),
])
def test_user_errors_exit_2_without_output_or_traceback(tmp_path, capsys, argv, code):
    out = tmp_path / "out.onnx"
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert code in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_corrupt_model_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(Path(MNIST).read_bytes()[:5000])
    assert main(["compile", str(bad), "--calib", CALIB, "-o", str(tmp_path / "o.onnx")]) == 2
    assert "SNN-E102" in capsys.readouterr().err


def test_run_rejects_wrong_input_shape(tmp_path, capsys):
    out = tmp_path / "snn.onnx"
    assert main(["compile", MNIST, "-T", "2", "--neuron", "bitserial", "--calib", CALIB,
                 "-o", str(out), "-q"]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 20, 20), np.float32))
    assert main(["run", str(out), "--input", str(x)]) == 2
    assert "SNN-E105" in capsys.readouterr().err


def test_failed_loihi_compile_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "loihi"
    assert main(["compile", MNIST, "--target", "loihi", "-T", "4", "-o", str(out)]) == 2
    assert "SNN-E401" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_compile_defaults_T_to_what_finetune_trained_for(tmp_path, capsys):
    """A model from snncc finetune that was trained at some T (an SNN stage, or QCFS with the IF
    SNN in the loop) compiles at that T unless -T says otherwise; a different -T is warned about
    (a finetune --iir output used to compile silently at T = 4 from the stage trained at T = 1)."""
    proto = onnx.load(EXAMPLES / "mnist_cnn.onnx")
    onnx.helper.set_model_props(proto, {"snncc.train": json.dumps(
        {"kind": "qcfs", "levels": 4, "trained_for": "if T=2"})})
    onnx.save(proto, tmp_path / "q.onnx")
    calib = str(EXAMPLES / "mnist_calib.npz")

    def compile_(*extra: str) -> tuple[int, str]:
        out = tmp_path / f"r{len(extra)}.json"
        assert main(["compile", str(tmp_path / "q.onnx"), "--calib", calib, "--calib-method", "max",
                     "--no-fidelity", "-o", str(tmp_path / f"o{len(extra)}.onnx"),
                     "--report", str(out), *extra]) == 0
        return json.loads(out.read_text())["options"]["timesteps"], capsys.readouterr().err

    T, err = compile_()
    assert T == 2 and "note: -T 2" in err and "trained at T = 2" in err
    T, err = compile_("-T", "4")
    assert T == 4 and "warning" in err and "trained at T = 2; -T 4" in err
    T, err = compile_("-T", "2")
    assert T == 2 and "trained" not in err
    T, err = compile_("--neuron", "gn", "-T", "1")   # gn at T = 1: the IF's T does not apply
    assert T == 1 and "trained" not in err
    T, err = compile_("--neuron", "bitserial")
    assert T == 4 and "trained" not in err


@pytest.mark.parametrize("shape, hint", [((1, 28, 28), "this is one sample"),
                                         ((8, 28, 28), "x[:, None]"),
                                         ((8, 3, 32, 32), "each sample must be 1x28x28")])
def test_calibration_shape_error_says_what_is_wrong(tmp_path, capsys, shape, hint):
    """SNN-E406's hint depends on the mistake: one sample, a missing channel axis, or data
    for another model."""
    np.save(tmp_path / "c.npy", np.zeros(shape, np.float32))
    assert main(["compile", str(EXAMPLES / "mnist_cnn.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "SNN-E406" in err and hint in err and not (tmp_path / "x.onnx").exists()


def test_the_pass_table_lists_a_few_declines_per_code():
    """A DenseNet-style net listed 12 'declined ... NO_LINEAR_PRODUCER' lines (a sweep): the
    table shows three per code and counts the rest, which the --report JSON keeps."""
    from snncc.pipeline import PassRow, PipelineReport

    declines = [{"node": f"'bn{i}'", "code": "NO_LINEAR_PRODUCER", "reason": "after a Concat"}
                for i in range(12)] + [{"node": "'b'", "code": "SHARED_WEIGHT", "reason": "x"}]
    text = PipelineReport([PassRow("fold-batchnorm", True, {"bn_to_affine": 12}, declines,
                                   1.0)]).format()
    assert text.count("declined") == 4 and "... and 9 more [NO_LINEAR_PRODUCER]" in text


@pytest.mark.parametrize("target, name, hint", [("loihi", "m.onnx", "m.loihi"),
                                                 ("ort", "m.npz", "m.onnx"),
                                                 ("qann", "m.loihi", "m.onnx"),
                                                 ("nir", "m.onnx", "m.nir")])
def test_an_output_named_as_another_kind_of_file_is_refused(tmp_path, capsys, target, name,
                                                             hint):
    """A new user's `--target loihi -o out/z2.onnx` made a folder called z2.onnx, and
    `-o out/z.npz` an ONNX model called z.npz. Refused before any work, nothing written."""
    rc = main(["compile", MNIST, "-T", "4", "--calib", CALIB, "--target", target,
               "-o", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert rc == 2 and "[SNN-E372]" in err and f"name it {hint}" in err
    assert list(tmp_path.iterdir()) == []


def test_run_notes_a_model_that_snncc_did_not_compile(tmp_path, capsys):
    """`snncc run ann.onnx` ran the ANN and printed an accuracy with no hint that it was no SNN."""
    test = EXAMPLES / "mnist_test.npz"
    assert main(["run", MNIST, "--input", str(test)]) == 0
    assert "holds no spiking neurons and is no snncc compile output" in capsys.readouterr().err
    out = tmp_path / "q.onnx"
    assert main(["compile", MNIST, "--target", "qann", "-L", "4", "--calib", CALIB, "-o",
                 str(out), "-q", "--no-fidelity"]) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--input", str(test)]) == 0
    assert "no snncc compile output" not in capsys.readouterr().err


@pytest.mark.parametrize("pair", [["--per-channel", "--per-layer"],
                                  ["--bias-shift", "--no-bias-shift"],
                                  ["--no-fidelity", "--fidelity-samples", "10"],
                                  ["-q", "-v"]])
def test_contradicting_flags_are_a_usage_error(capsys, tmp_path, pair):
    """The later flag had silently won (--no-fidelity then --fidelity-samples 10 estimated; -q
    -v logged some decisions and printed no pass table)."""
    with pytest.raises(SystemExit) as exc:
        main(["compile", MNIST, "--calib", CALIB, "-o", str(tmp_path / "o.onnx"), *pair])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "[SNN-E374] argument" in err and "not allowed with argument" in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["compile", "m.onnx", "--neuron", "foo"], ["bogus"],
                                  ["compile", "m.onnx", "--no-such-flag"], ["run"],
                                  ["compile", "m.onnx", "-T", "four"]])
def test_usage_slips_are_one_coded_line(capsys, argv):
    """argparse's errors had no code and came under a 20-line usage block."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error: [SNN-E374] " in err and "--help` lists the options" in err


def test_options_another_target_reads_are_said_to_be_ignored(capsys, tmp_path):
    """--allow-lossy (NIR only), an ONNX Runtime schedule for Loihi, -L a binary neuron cannot
    reproduce at -T, and a --min-agreement that passed on too few samples: each warned."""
    out = str(tmp_path / "o.onnx")
    assert main(["compile", MNIST, "--calib", CALIB, "-o", out, "-q", "--allow-lossy", "-T", "1",
                 "-L", "8", "--fidelity-samples", "4", "--min-agreement", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "ignored with --target ort: --allow-lossy" in err
    assert "-L 8 with --neuron if at -T 1" in err and "drop -L" in err
    assert "--min-agreement 0.5 passed on 4 held-out samples only" in err
    assert main(["compile", MNIST, "--calib", CALIB, "-o", str(tmp_path / "l"), "-q",
                 "--target", "loihi", "--schedule", "folded", "--no-fidelity"]) == 0
    assert "ignored with --target loihi: --schedule folded" in capsys.readouterr().err
    # --steps-per-call as well, as -T is for qann (it had been SNN-E375, after the Loihi
    # warning that the streaming schedule it asked for was ignored)
    assert main(["compile", MNIST, "--calib", CALIB, "-o", str(tmp_path / "l2"), "-q",
                 "--target", "loihi", "--schedule", "streaming", "--steps-per-call", "2",
                 "--no-fidelity"]) == 0
    assert "ignored with --target loihi: --steps-per-call 2" in capsys.readouterr().err
    assert main(["compile", MNIST, "--calib", CALIB, "-o", str(tmp_path / "q.onnx"), "-q",
                 "--target", "qann", "--steps-per-call", "2"]) == 0
    assert "ignored with --target qann: --steps-per-call" in capsys.readouterr().err
    assert main(["compile", MNIST, "--calib", CALIB, "-o", out, "-q", "-T", "4", "-L", "4",
                 "--no-fidelity"]) == 0
    assert "drop -L" not in capsys.readouterr().err


def _qcfs_graph(path: Path) -> None:
    """Conv -> a QCFS clip (L = 4, trained lambda 2) -> Flatten -> Gemm, as finetune writes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = {"w": rng.normal(0, 0.5, (4, 1, 3, 3)), "b": np.zeros(4), "lam": 2.0, "L": 4.0,
              "half": 0.5, "zero": 0.0, "one": 1.0, "fw": rng.normal(0, 0.5, (3, 4 * 6 * 6)),
              "fb": np.zeros(3)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"]),
             helper.make_node("Div", ["t", "lam"], ["a"]),
             helper.make_node("Mul", ["a", "L"], ["m"]),
             helper.make_node("Add", ["m", "half"], ["c"]),
             helper.make_node("Floor", ["c"], ["d"]),
             helper.make_node("Div", ["d", "L"], ["e"]),
             helper.make_node("Clip", ["e", "zero", "one"], ["f"]),
             helper.make_node("Mul", ["f", "lam"], ["r"]),
             helper.make_node("Flatten", ["r"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "qcfs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_inspect_target_lists_any_refusal_and_keeps_the_report(tmp_path, capsys):
    """A QCFS-trained L = 4 graph at mt -T 3 is E307 in compile: inspect --target had exited 2
    with that line alone; a compiled model is said to be compiled."""
    _qcfs_graph(tmp_path / "q.onnx")
    assert main(["inspect", str(tmp_path / "q.onnx"), "--target", "ort", "--neuron", "mt",
                 "-T", "3"]) == 0
    out = capsys.readouterr().out
    assert "cannot express (1; the hints name compile's options)" in out and "SNN-E307" in out
    assert "total MACs" in out
    assert main(["compile", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "s.onnx"), "-q"]) == 0
    assert main(["inspect", str(tmp_path / "s.onnx"), "--target", "loihi"]) == 0
    assert "not checked (the model is compiled already)" in capsys.readouterr().out


def test_options_a_qcfs_graph_does_not_use_are_said_to_be_ignored(tmp_path, capsys):
    """-L 16 on a QCFS-trained graph warned about a 16-level QANN the output did not have (its
    clips kept L = 4, byte for byte the same model), and --calib-method / --percentile passed
    without a word (a CLI audit)."""
    _qcfs_graph(tmp_path / "q.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(1).random((80, 1, 8, 8), np.float32))
    base = ["compile", tmp_path / "q.onnx", "--calib", tmp_path / "c.npy", "-q"]
    assert main([str(a) for a in base + ["-L", "16", "-o", tmp_path / "a.onnx"]]) == 0
    err = capsys.readouterr().err
    assert "-L 16 is ignored at the graph's QCFS-trained clips, which keep their trained L = 4" \
        in err and "level QANN only" not in err
    assert main([str(a) for a in base + ["--calib-method", "max", "-o", tmp_path / "b.onnx"]]) == 0
    assert "--calib-method ignored: every activation of this QCFS-trained graph" in \
        capsys.readouterr().err
    for more in ([], ["-T", "2"], ["--target", "qann"]):   # no -L given: nothing to say (a
        # review: make_options' own L = T, or 8 for qann, had been said to be ignored)
        assert main([str(a) for a in base + more + ["-o", tmp_path / "c.onnx"]]) == 0
        assert "ignored" not in capsys.readouterr().err
    assert main([str(a) for a in base + ["--percentile", "99", "-o", tmp_path / "d.onnx"]]) == 0
    err = capsys.readouterr().err
    assert "--percentile 99 is ignored: it sets --calib-method percentile's" in err


def test_a_neuron_parameter_error_names_the_flag_given(tmp_path, capsys):
    """--mt-preset with the default neuron said "neuron 'if' has no parameter(s) preset"."""
    model = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.onnx"
    assert main(["compile", str(model), "--mt-preset", "pow2", "-o",
                 str(tmp_path / "m.onnx")]) == 2
    assert "has no parameter(s) preset (--mt-preset)" in capsys.readouterr().err


def test_a_lossy_nir_file_without_an_estimate_says_its_loss_was_not_measured(tmp_path, capsys):
    """A NIR export without --calib printed only the generic lossy note: an --iir net's file
    scored 42.5 % against its ORT SNN's 81.0 % (a helper's run in Norse)."""
    _qcfs_graph(tmp_path / "q.onnx")
    assert main(["compile", str(tmp_path / "q.onnx"), "--target", "nir", "--allow-lossy", "-o",
                 str(tmp_path / "q.nir"), "-q"]) == 0
    assert "no fidelity estimate measured what it loses" in capsys.readouterr().err


def test_an_interrupted_finetune_says_how_to_go_on_from_its_checkpoint(tmp_path, capsys):
    """Ctrl-C during finetune named the checkpoint it had written but not --resume."""
    import argparse

    from snncc.cli import _interrupted
    from snncc.outputs import atomic_file, installed

    before = len(installed())
    with atomic_file(tmp_path / "ck.pt") as tmp:
        tmp.write_bytes(b"state")
    args = argparse.Namespace(command="finetune", checkpoint=str(tmp_path / "ck.pt"))
    assert _interrupted(KeyboardInterrupt(), before, args) == 130
    err = capsys.readouterr().err
    assert "already written: " in err and f"--resume {tmp_path / 'ck.pt'}" in err


def test_a_spiking_finetune_output_keeps_its_neurons_and_t(tmp_path, capsys, monkeypatch):
    """On an --iir output, --neuron if was ignored without a word and its trained T dropped for 4
    (79.2 % against 96.4 %); --target qann wrote its LIF ops as a 'QANN' (34.4 %); under
    torchrun every rank printed the same error (a fine-tuning user's second trial)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    proto = onnx.load(str(examples / "digits_cnn.onnx"))
    proto.metadata_props.add(key="snncc.train",
                             value=json.dumps({"kind": "snn", "neuron": "lif", "timesteps": 1}))
    onnx.save(proto, str(tmp_path / "iir.onnx"))
    calib = str(examples / "digits_cnn_calib.npz")
    assert main(["compile", str(tmp_path / "iir.onnx"), "--neuron", "if", "--calib", calib,
                 "--no-fidelity", "-o", str(tmp_path / "a.onnx")]) == 0
    err = capsys.readouterr().err
    assert "--neuron if is ignored: the model's neurons are in the graph (lif neurons" in err
    assert "note: -T 1: the model is a lif SNN of snncc finetune" in err
    # its trained parameters stay too: --tau had been checked against the default neuron (E302 'if')
    assert main(["compile", str(tmp_path / "iir.onnx"), "--tau", "2", "--neuron-param",
                 "tau=2", "--calib", calib, "--no-fidelity", "-o", str(tmp_path / "b.onnx")]) == 0
    assert "--tau, --neuron-param ignored: the model's neurons are in the graph (lif neurons" \
        in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "iir.onnx"), "--target", "qann", "--calib", calib,
                 "-o", str(tmp_path / "q.onnx")]) == 2
    assert "SNN-E124" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()
    monkeypatch.setenv("RANK", "1")   # another launcher's RANK hides nothing
    assert main(["compile", str(tmp_path / "iir.onnx"), "--target", "qann", "-o",
                 str(tmp_path / "q.onnx")]) == 2
    assert "SNN-E124" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")   # finetune under torchrun: the rank is said
    assert main(["finetune", str(tmp_path / "iir.onnx"), "--data", calib, "--epochs", "0",
                 "-o", str(tmp_path / "f.onnx")]) == 2
    assert "snncc finetune [rank 1]: error: [SNN-E804]" in capsys.readouterr().err


def test_torch_files_and_shapeless_models_are_said_as_such(tmp_path, capsys):
    """A finetune checkpoint given to compile was 'not a readable ONNX model ... re-export it',
    an ONNX model given to --resume 'a foreign or truncated file', and inspect of a model with
    no known shapes printed 'total MACs per sample: 0' (a fine-tuning user; an architectures
    trial)."""
    torch = pytest.importorskip("torch")
    from onnx import TensorProto, helper, numpy_helper

    torch.save({"model": {}}, str(tmp_path / "ck.pt"))
    assert main(["compile", str(tmp_path / "ck.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "it is a torch file, e.g. a finetune --checkpoint" in capsys.readouterr().err
    examples = Path(__file__).resolve().parents[1] / "examples"
    with np.load(examples / "digits_cnn_test.npz") as t:
        np.savez(tmp_path / "d.npz", x=t["x"][:20], y=t["y"][:20])
    assert main(["finetune", str(examples / "digits_cnn.onnx"), "--data", str(tmp_path / "d.npz"),
                 "--resume", str(examples / "digits_cnn.onnx"), "-o",
                 str(tmp_path / "r.onnx")]) == 2
    assert "is an ONNX model, not a checkpoint: --resume takes the .pt" in \
        capsys.readouterr().err
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "noshape.onnx"))
    assert main(["inspect", str(tmp_path / "noshape.onnx")]) == 0
    assert "total MACs per sample: unknown" in capsys.readouterr().out


def test_argparse_never_colours_through_the_escaping_wrapper():
    """Python 3.14's argparse colours help and errors on a terminal; the CLI's stream wrapper
    escapes control characters, so the colour codes would print as text: colour is off."""
    import argparse

    from snncc.cli import build_parser

    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert parser.color is False and all(p.color is False for s in subs
                                         for p in s.choices.values())
