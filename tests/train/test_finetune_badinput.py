"""Bad input to ``snncc finetune``: every case is a coded error (exit 2, no traceback) that writes nothing.

NaN/Inf images, truncated or corrupt data files, --mean/--std that do not fit the model's channels, an
unknown --device, and senseless option values (negative weight decay, -T / -L beyond what compile
accepts, QCFS-only options with --iir/--mt). Runs on the bundled digits CNN (1 x 8 x 8, 10 classes)
with a few samples; no case gets as far as training.
"""
import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.cli import main  # noqa: E402
from snncc.driver import MAX_LEVELS, MAX_TIMESTEPS  # noqa: E402
from snncc.errors import OptionError  # noqa: E402
from snncc.train.cli import _check_args, add_finetune_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "digits_cnn.onnx"
TEST = ROOT / "examples" / "digits_cnn_test.npz"


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture()
def data(tmp_path):
    """A small good training file ``tr.npz`` (16 samples) and its arrays."""
    with np.load(TEST) as t:
        x, y = t["x"][:16].astype(np.float32), t["y"][:16].astype(np.int64)
    np.savez(tmp_path / "tr.npz", x=x, y=y)
    return tmp_path / "tr.npz", x, y


def _expect_error(capsys, tmp_path: Path, code: str, *argv) -> str:
    """``snncc finetune MODEL ARGV -o tmp/out.onnx``: exit 2, ``[code]`` on stderr, nothing written."""
    before = _snapshot(tmp_path)
    argv = [str(a) for a in argv] + ([] if "--device" in argv else ["--device", "cpu"])
    rc = main(["finetune", str(MODEL), *argv, "-o", str(tmp_path / "out.onnx"), "--epochs", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 2, f"exit {rc}: {err}{out}"
    assert f"[{code}]" in err, err
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert _snapshot(tmp_path) == before, "something was written"
    return err


# ------------------------------------------------------------------------------- NaN / Inf data

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("flag", ["--data", "--val"])
def test_nan_or_inf_images_are_refused(tmp_path, data, capsys, flag, value):
    good, x, y = data
    x = x.copy()
    x[5, 0, 3, 3] = value
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    argv = ["--data", tmp_path / "bad.npz"] if flag == "--data" else ["--data", good, "--val", tmp_path / "bad.npz"]
    err = _expect_error(capsys, tmp_path, "SNN-E803", *argv)
    assert "NaN or Inf" in err and "bad.npz" in err and "sample 5" in err


def test_nan_images_in_an_npy_pair_are_refused(tmp_path, data, capsys):
    _, x, y = data
    (tmp_path / "pair").mkdir()
    np.save(tmp_path / "pair" / "x.npy", np.full_like(x, np.nan))
    np.save(tmp_path / "pair" / "y.npy", y)
    err = _expect_error(capsys, tmp_path, "SNN-E803", "--data", tmp_path / "pair")
    assert f"{len(x)} image(s) of {len(x)} hold NaN or Inf" in err


def test_images_that_are_not_numbers_are_refused(tmp_path, data, capsys):
    _, _, y = data
    np.savez(tmp_path / "str.npz", x=np.full((16, 1, 8, 8), "a"), y=y)
    assert "dtype <U1" in _expect_error(capsys, tmp_path, "SNN-E803", "--data", tmp_path / "str.npz")


# ------------------------------------------------------------------------------- corrupt files

@pytest.mark.parametrize("damage", ["truncated", "bad_member"])
@pytest.mark.parametrize("flag", ["--data", "--val"])
def test_truncated_or_corrupt_npz_is_refused(tmp_path, data, capsys, flag, damage):
    good, _, _ = data
    raw = bytearray(good.read_bytes())
    if damage == "truncated":
        raw = raw[:3000]
    else:   # the zip directory is intact, the data of x.npy is not (CRC error when read)
        raw[200:260] = b"\xff" * 60
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    argv = ["--data", tmp_path / "bad.npz"] if flag == "--data" else ["--data", good, "--val", tmp_path / "bad.npz"]
    err = _expect_error(capsys, tmp_path, "SNN-E803", *argv)
    assert "cannot read data file" in err and "bad.npz" in err


def test_a_text_file_named_npz_is_said_to_be_no_numpy_file(tmp_path, data, capsys):
    """numpy calls it 'pickled (object) data'; compile and run already said what it is."""
    (tmp_path / "t.npz").write_text("hello\n")
    err = _expect_error(capsys, tmp_path, "SNN-E803", "--data", tmp_path / "t.npz")
    assert "is not a NumPy .npy/.npz file" in err and "pickled" not in err


def test_truncated_npy_is_refused(tmp_path, data, capsys):
    _, x, y = data
    (tmp_path / "pair").mkdir()
    np.save(tmp_path / "pair" / "x.npy", x)
    np.save(tmp_path / "pair" / "y.npy", y)
    raw = (tmp_path / "pair" / "x.npy").read_bytes()
    (tmp_path / "pair" / "x.npy").write_bytes(raw[:len(raw) // 2])
    assert "x.npy" in _expect_error(capsys, tmp_path, "SNN-E803", "--data", tmp_path / "pair")
    (tmp_path / "pair" / "x.npy").write_bytes(raw)
    (tmp_path / "pair" / "y.npy").write_bytes(b"\x93NUMPY garbage")
    assert "y.npy" in _expect_error(capsys, tmp_path, "SNN-E803", "--data", tmp_path / "pair")


# ------------------------------------------------------------------------------- --mean / --std

@pytest.mark.parametrize("extra, text", [
    (["--mean", "0.5,0.5", "--std", "0.2"], "--mean has 2 values but the model input 'input' has 1 channel"),
    (["--std", "0.2,0.2,0.2"], "--std has 3 values but the model input 'input' has 1 channel"),
    (["--mean", "nan"], "--mean [nan] must be finite"),
    (["--std", "inf"], "--std [inf] must be finite"),
])
def test_mean_std_must_fit_the_model_channels(tmp_path, data, capsys, extra, text):
    assert text in _expect_error(capsys, tmp_path, "SNN-E804", "--data", data[0], *extra)


def test_mean_std_must_fit_the_data_channels_through_the_api(tmp_path, data):
    from snncc.errors import CalibrationError
    from snncc.train.data import open_dataset

    with pytest.raises(CalibrationError) as err:
        open_dataset(data[0], mean=[0.1, 0.2, 0.3])
    assert err.value.code == "SNN-E804" and "1 channel" in err.value.message
    assert open_dataset(data[0], mean=[0.1], std=[0.5]).sample_shape == (1, 8, 8)


# ------------------------------------------------------------------------------- --device

@pytest.mark.parametrize("device, text", [("foo", "is not a torch device"), ("meta", "cannot train"),
                                          ("cuda:99", "")])
def test_bad_device_is_refused(tmp_path, data, capsys, device, text):
    err = _expect_error(capsys, tmp_path, "SNN-E804", "--data", data[0], "--device", device)
    assert text in err and device in err


# ------------------------------------------------------------------------------- option values

@pytest.mark.parametrize("extra, text", [
    (["--weight-decay", "-1"], "--weight-decay -1.0 must be >= 0"),
    (["--weight-decay", "nan"], "--weight-decay nan must be >= 0"),
    (["--snn-timesteps", str(MAX_TIMESTEPS + 1)], f"must lie in 0..{MAX_TIMESTEPS}"),
    (["-L", str(MAX_LEVELS + 1)], f"must lie in 1..{MAX_LEVELS}"),
    (["-L", "0"], f"must lie in 1..{MAX_LEVELS}"),
    (["--lr", "inf"], "--lr inf must be > 0 and finite"),
    (["--sparsity=-1e-8"], "--sparsity -1e-08 must be >= 0"),
    (["--iir", "-L", "8"], "-L applies to QCFS fine-tuning and would be ignored with --iir/--mt"),
    (["--mt", "cascade", "--distill", "0", "--bn", "fold"], "--distill, --bn apply to QCFS fine-tuning"),
    (["--iir", "--timesteps", f"{MAX_TIMESTEPS + 1},1"], f"must lie in 1..{MAX_TIMESTEPS}"),
    # QCFS mode: the stages were ignored without a word (a CLI audit)
    (["--timesteps", "3,2"], "--timesteps 3,2 sets the --iir / --mt training stages"),
    # refused before the data loads (they had failed only after it)
    (["--distill", "2"], "--distill 2.0 must lie in [0, 1]"),
    (["--warmup", "2"], "--warmup 2.0 must lie in (0, 1)"),
    (["--lambda-init", "bogus"], "must be mse, max, pNN or a positive number"),
])
def test_senseless_option_values_are_refused(tmp_path, data, capsys, extra, text):
    assert text in _expect_error(capsys, tmp_path, "SNN-E804", "--data", data[0], *extra)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_finetune_arguments(parser)
    return parser.parse_args(["m.onnx", "--data", "d.npz", "-o", "o.onnx", *argv])


def test_the_limits_themselves_are_accepted_and_qcfs_defaults_filled_in():
    args = _args("--snn-timesteps", str(MAX_TIMESTEPS), "-L", str(MAX_LEVELS), "--weight-decay", "0")
    _check_args(args, snn=False)
    assert (args.levels, args.weight_decay, args.lambda_init, args.distill, args.bn) == (MAX_LEVELS, 0.0, "mse",
                                                                                        0.5, "fold")
    args = _args("--iir", "--timesteps", f"{MAX_TIMESTEPS},1")
    _check_args(args, snn=True)
    assert args.levels == 4 and args.calib_samples == 256


def test_api_refuses_the_same_values():
    from snncc.train.finetune import finetune_module, pick_device
    from snncc.train.iir import train_snn

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    xy = (np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64))
    for kw in ({"weight_decay": -1.0}, {"snn_timesteps": MAX_TIMESTEPS + 1}, {"levels": MAX_LEVELS + 1}):
        with pytest.raises(OptionError) as err:
            finetune_module(net, xy, levels=kw.pop("levels", 4), progress=False, **kw)
        assert err.value.code == "SNN-E804"
    with pytest.raises(OptionError) as err:
        train_snn(net, xy, timesteps=[MAX_TIMESTEPS + 1], progress=False)
    assert err.value.code == "SNN-E804"
    with pytest.raises(OptionError) as err:
        pick_device("foo")
    assert err.value.code == "SNN-E804"
    bad = (np.full((4, 1, 2, 2), np.inf, np.float32), np.zeros(4, np.int64))
    from snncc.errors import CalibrationError

    with pytest.raises(CalibrationError) as err:
        finetune_module(net, bad, progress=False)
    assert err.value.code == "SNN-E803"


def test_a_foreign_file_where_a_stage_goes_is_refused(tmp_path, data, capsys):
    """--iir writes OUT.T<T>.onnx for each stage, named by snncc: a user's file of that name was
    replaced without a word."""
    (tmp_path / "out.T1.onnx").write_text("my own stage file")
    before = _snapshot(tmp_path)
    rc = main(["finetune", str(MODEL), "--data", str(data[0]), "--iir", "--timesteps", "2,1",
               "--device", "cpu", "-o", str(tmp_path / "out.onnx"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "[SNN-E364]" in err and "out.T1.onnx" in err, err
    assert "--force" not in err and "Traceback" not in err  # finetune has no --force
    assert _snapshot(tmp_path) == before


def test_a_stage_file_never_replaces_a_final_output_of_that_name(tmp_path, capsys):
    """A user's earlier 'finetune --iir --timesteps 2 -o a.T2.onnx' (a final output) was replaced
    by a later '--timesteps 4,2 -o a.onnx' stage file: both carry kind 'snn'; finals are marked."""
    import json

    import onnx

    from snncc.outputs import written_by_snncc

    model = onnx.load(str(Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"))
    for which, ours in (("stage", True), ("final", False), (None, True)):   # None: older files
        meta = {"kind": "snn", "timesteps": 2} | ({"file": which} if which else {})
        onnx.helper.set_model_props(model, {"snncc.train": json.dumps(meta)})
        onnx.save(model, tmp_path / "a.T2.onnx")
        assert written_by_snncc(tmp_path / "a.T2.onnx", "stage") is ours


def test_an_output_of_more_than_two_dims_is_refused(tmp_path, data, capsys):
    """A classifier whose last layer is a 1x1 conv ([N, 10, 1, 1]) ended in an internal error
    from the loss ('only batches of spatial targets supported')."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(MODEL)
    g = model.graph
    old = g.output[0].name
    g.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"))
    g.node.append(helper.make_node("Unsqueeze", [old, "axes23"], ["y4"]))
    g.output.pop()
    g.output.append(helper.make_tensor_value_info("y4", onnx.TensorProto.FLOAT, None))
    onnx.save(model, tmp_path / "four.onnx")
    before = _snapshot(tmp_path)
    rc = main(["finetune", str(tmp_path / "four.onnx"), "--data", str(data[0]), "-o",
               str(tmp_path / "out.onnx"), "--epochs", "1", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "[SNN-E808]" in err and "[1, 10, 1, 1]" in err and "Flatten" in err
    assert _snapshot(tmp_path) == before


def test_the_python_apis_wrong_types_are_coded(data):
    """finetune_module(epochs='3') and a path given as the module raised bare TypeError /
    AttributeError, an x array alone a ValueError, and levels=4.5 trained silently."""
    from snncc.errors import SnnccError
    from snncc.train.finetune import finetune_module
    from snncc.train.onnx_to_torch import load_onnx_module

    module = load_onnx_module(str(MODEL))
    _, x, y = data
    for mod, train, kw in ((module, (x, y), {"epochs": "3"}), (module, None, {}),
                           (module, x, {}), (str(MODEL), (x, y), {}),
                           (module, (x, y), {"levels": 4.5})):
        with pytest.raises(SnnccError) as err:
            finetune_module(mod, train, progress=False, **kw)
        assert err.value.code == "SNN-E349"
