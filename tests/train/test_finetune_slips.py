"""What a fine-tuning user's trial (helper) ran into: --bn train on an export without BatchNorm did
nothing silently, integer images that are no 8-bit pixels were divided by 255 silently, --resume
with another model's checkpoint ended in an internal KeyError, and (found writing these tests) a
plain nn.Sequential export, whose output is named '14', failed after training ("Invalid name")."""
import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.cli import main  # noqa: E402
from snncc.train.data import check_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
TEST = ROOT / "examples" / "digits_cnn_test.npz"


@pytest.fixture()
def data(tmp_path):
    with np.load(TEST) as t:
        np.savez(tmp_path / "tr.npz", x=t["x"][:32].astype(np.float32), y=t["y"][:32])
    return tmp_path / "tr.npz"


def _plain_export(path: Path) -> Path:
    """A small CNN exported the plain way: no BatchNormalization node survives torch's folding."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    torch.onnx.export(net, torch.rand(1, 1, 8, 8), str(path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "N"}})
    return path


def _finetune(*argv) -> int:
    return main(["finetune", *map(str, argv), "--epochs", "1", "--no-progress", "--device", "cpu"])


def test_bn_train_without_batchnorm_in_the_model_says_it_does_nothing(tmp_path, data, capsys):
    model = _plain_export(tmp_path / "plain.onnx")
    assert _finetune(model, "--data", data, "--bn", "train", "-o", tmp_path / "o.onnx") == 0
    assert "--bn train does nothing here: the model has no BatchNormalization" in \
        capsys.readouterr().err
    # the plain export names its output '14', which torch's exporter refuses: finetune had died
    # with "Invalid name" after training; the output keeps the source model's names
    import onnx
    names = [[v.name for v in onnx.load(str(p)).graph.output] for p in (model, tmp_path / "o.onnx")]
    assert names[0][0].isdigit() and names[1] == names[0]
    assert _finetune(DIGITS, "--data", data, "--bn", "train", "-o", tmp_path / "d.onnx") == 0
    assert "does nothing here" not in capsys.readouterr().err   # the bundled export keeps BN


def test_integer_images_that_are_no_8_bit_pixels_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="snncc.train.data"):
        check_images(np.arange(17, dtype=np.uint8).reshape(1, 1, 1, 17), "data 'u8.npz'")
    assert any("span 0..16" in r.getMessage() and "save them as float32" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snncc.train.data"):
        check_images(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16), "data 'img.npz'")
        check_images(np.random.default_rng(0).random((2, 1, 4, 4), np.float32), "floats")
    assert not caplog.records


def test_resume_with_another_models_checkpoint_is_a_coded_error(tmp_path, data, capsys):
    assert _finetune(DIGITS, "--data", data, "-o", tmp_path / "a.onnx",
                     "--checkpoint", tmp_path / "a.pt") == 0
    capsys.readouterr()
    other = _plain_export(tmp_path / "plain.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _finetune(other, "--data", data, "-o", tmp_path / "b.onnx",
                     "--resume", tmp_path / "a.pt") == 2
    err = capsys.readouterr().err
    assert "[SNN-E811]" in err and "written for another model" in err and "internal" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_run_that_ends_below_where_it_started_warns(tmp_path, data, capsys):
    """--lr 0.5 took a user's QCFS net from 91.5 % before training to 65.5 % after; the last
    epoch was written with no word (the --iir stages had such a warning)."""
    assert _finetune(DIGITS, "--data", data, "--val", data, "--lr", "0.5", "--snn-timesteps", "0",
                     "-o", tmp_path / "o.onnx") == 0
    err = capsys.readouterr().err
    assert "warning: the written model (the last epoch) reaches" in err and "--lr" in err


def test_data_and_val_on_other_scales_warn(tmp_path, data, capsys):
    """Float images x 255 for --data and 0..1 for --val: a user's QCFS net went from 92.5 % to
    12.5 % on --val with no word (integer images have their own check)."""
    with np.load(data) as d:
        np.savez(tmp_path / "x255.npz", x=d["x"] * 255, y=d["y"])
    assert _finetune(DIGITS, "--data", tmp_path / "x255.npz", "--val", data, "--snn-timesteps",
                     "0", "-o", tmp_path / "o.onnx") == 0
    assert "warning: --data reaches 255 and --val 1" in capsys.readouterr().err


def test_quiet_prints_nothing_on_success(tmp_path, capsys):
    """compile had -q; finetune refused it ('unrecognized arguments')."""
    with np.load(TEST) as t:     # 10 per class: no warning about a tiny training set
        np.savez(tmp_path / "tr.npz", x=t["x"][:100].astype(np.float32), y=t["y"][:100])
    assert _finetune(DIGITS, "--data", tmp_path / "tr.npz", "-q", "-o", tmp_path / "o.onnx") == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "" and (tmp_path / "o.onnx").exists()


def test_a_tiny_training_set_is_warned_about(tmp_path, data, capsys):
    """32 samples for 10 classes fine-tuned without a word."""
    assert _finetune(DIGITS, "--data", data, "-q", "-o", tmp_path / "o.onnx") == 0
    err = capsys.readouterr().err
    assert "holds 32 samples for 10 classes (fewer than 10 per class)" in err, err


def test_a_training_mode_export_is_refused_as_compile_refuses_it(tmp_path, data, capsys):
    """finetune trained a model exported in train() mode (BatchNorm on batch statistics, live
    Dropout), and its output then compiled past compile's own E208."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).train()
    torch.onnx.export(net, torch.rand(2, 1, 8, 8), str(tmp_path / "t.onnx"), dynamo=False,
                      opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False)
    assert _finetune(tmp_path / "t.onnx", "--data", data, "-o", tmp_path / "o.onnx") == 2
    err = capsys.readouterr().err
    assert "[SNN-E208]" in err and "model.eval()" in err and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("after", [[], ["Flatten"]])
def test_a_softmax_head_trains_on_the_logits_and_stays_in_the_output(tmp_path, data, capsys,
                                                                     after):
    """A Softmax-headed export was trained with cross-entropy on its probabilities (weights moved
    ~10x less, no word); the head stays in the fine-tuned file."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from snncc.train.finetune import logits_for_training
    from snncc.train.onnx_to_torch import load_onnx_module

    proto = onnx.load(str(DIGITS))
    out = proto.graph.output[0]
    proto.graph.node.append(helper.make_node("Softmax", [out.name], ["probs"], axis=1))
    name = "probs"
    for op in after:   # shape ops after the head (a review: Softmax -> Flatten had been missed)
        proto.graph.node.append(helper.make_node(op, [name], [name + op]))
        name += op
    out.name = name
    onnx.save(proto, str(tmp_path / "smx.onnx"))
    x = np.load(data)["x"][:8]
    plain = load_onnx_module(str(DIGITS)).eval()
    headed = load_onnx_module(str(tmp_path / "smx.onnx")).eval()
    logits_for_training(headed, True)
    with torch.no_grad():
        np.testing.assert_allclose(headed(torch.from_numpy(x)).numpy(),
                                   plain(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert _finetune(tmp_path / "smx.onnx", "--data", data, "-q", "-o", tmp_path / "o.onnx") == 0
    probs = ort.InferenceSession(str(tmp_path / "o.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)   # the head is exported


def test_what_a_user_met_after_training(tmp_path, data, capsys):
    """A fine-tuning user's trial: the output did not say what to run next; fed back to
    finetune it was E801 'Floor not supported'; thresholds above every input (--lambda-init 20)
    gave all but silent layers and a model at chance without a word; a finetune output written over a
    compiled model left that model's manifest beside it, unsaid; a data file with other keys did
    not say which it had."""
    from snncc.cli import main as cli

    out = tmp_path / "q.onnx"
    assert _finetune(DIGITS, "--data", data, "-o", out) == 0
    said = capsys.readouterr().out
    assert f"next: snncc compile {out} -T 4 -o SNN.onnx" in said
    assert _finetune(out, "--data", data, "-o", tmp_path / "again.onnx") == 2
    err = capsys.readouterr().err
    assert "SNN-E123" in err and "already an snncc finetune output (QCFS, L = 4: its clips" in err
    assert _finetune(DIGITS, "--data", data, "--val", data, "--lambda-init", "20", "-q", "-o",
                     tmp_path / "mute.onnx") == 0
    err = capsys.readouterr().err
    assert "the written model reaches" in err and "barely spike" in err, err
    calib = ROOT / "examples" / "digits_cnn_calib.npz"
    assert cli(["compile", str(DIGITS), "--calib", str(calib), "-q", "-o",
                str(tmp_path / "c.onnx")]) == 0
    assert _finetune(DIGITS, "--data", data, "-q", "-o", tmp_path / "c.onnx") == 0
    assert "c.onnx.json describes the compiled model this output replaced" in \
        capsys.readouterr().err
    np.savez(tmp_path / "keys.npz", image=np.load(data)["x"], labels=np.load(data)["y"])
    assert _finetune(DIGITS, "--data", tmp_path / "keys.npz", "-o", tmp_path / "k.onnx") == 2
    assert "it holds: image, labels" in capsys.readouterr().err


def test_mean_std_on_arrays_warn_that_compile_takes_them_otherwise(tmp_path, data, capsys):
    """finetune applies --mean/--std to arrays; compile refuses them there (SNN-E371): a user
    could not calibrate with the file and flags they fine-tuned with (a CLI audit)."""
    assert _finetune(DIGITS, "--data", data, "--mean", "0.5", "--std", "0.5", "-q", "-o",
                     tmp_path / "o.onnx") == 0
    assert "--mean/--std normalised the arrays of" in capsys.readouterr().err


def test_other_finetune_outputs_and_hand_edited_metadata(tmp_path, data, capsys):
    """An --iir / --mt output fed to finetune was E801 on its neurons (a review); metadata that
    is not JSON had been an internal error; the 'next:' line named -T 100 for -L 100 (compile
    refuses it) and said 'T = L = 2' for L = 4 trained at T = 2."""
    import json

    import onnx

    proto = onnx.load(str(DIGITS))
    proto.metadata_props.add(key="snncc.train", value=json.dumps({"kind": "snn"}))
    onnx.save(proto, str(tmp_path / "snn.onnx"))
    assert _finetune(tmp_path / "snn.onnx", "--data", data, "-q", "-o", tmp_path / "a.onnx") == 2
    assert "already an snncc finetune output (an SNN trained with --iir / --mt" in \
        capsys.readouterr().err
    proto.metadata_props[-1].value = "not json"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    assert _finetune(tmp_path / "bad.onnx", "--data", data, "-q", "-o", tmp_path / "b.onnx") == 0
    capsys.readouterr()
    assert _finetune(DIGITS, "--data", data, "-L", "100", "-o", tmp_path / "c.onnx") == 0
    assert "--neuron mt -o SNN.onnx with n * T = L = 100" in capsys.readouterr().out
    assert _finetune(DIGITS, "--data", data, "--snn-timesteps", "2", "-o", tmp_path / "d.onnx") == 0
    assert "-T 2 -o SNN.onnx (the IF SNN it trained with" in capsys.readouterr().out


def test_a_compiled_qann_and_torchrun_iir_are_refused_up_front(tmp_path, data, capsys,
                                                              monkeypatch):
    """A compiled QANN given to finetune was E801 on its Floor nodes; --iir under torchrun was
    refused only after the group joined and the data loaded (a second fine-tuning trial)."""
    from snncc.cli import main as cli

    calib = ROOT / "examples" / "digits_cnn_calib.npz"
    assert cli(["compile", str(DIGITS), "--target", "qann", "--calib", str(calib), "-q", "-o",
                str(tmp_path / "q.onnx")]) == 0
    assert _finetune(tmp_path / "q.onnx", "--data", data, "-o", tmp_path / "o.onnx") == 2
    assert "already an snncc output (a quantized-clip ANN" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _finetune(DIGITS, "--data", tmp_path / "missing.npz", "--iir", "-o",
                     tmp_path / "i.onnx") == 2
    assert "SNN-E812" in capsys.readouterr().err   # before the (missing) data is read
