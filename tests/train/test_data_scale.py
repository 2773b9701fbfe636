"""Training data at scale: image folders, memory-mapped .npy pairs, bad data, finetune outputs and options,
checkpoints and resume, and a 2-process torchrun run."""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from snncc.errors import CalibrationError, OptionError, OutputPathError  # noqa: E402
from snncc.train.cli import add_finetune_arguments, run_finetune  # noqa: E402
from snncc.train.data import NpyPairDataset, open_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _tiny_onnx(path: Path, channels: int = 1, side: int = 6, classes: int = 3) -> Path:
    """A trainable conv-ReLU-pool-FC ONNX classifier (exported from torch)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * (side // 2) ** 2, 8), nn.ReLU(), nn.Linear(8, classes)).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, channels, side, side),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def _blobs(n: int, seed: int = 0, side: int = 6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, side, side)).astype(np.float32)
    for k in range(3):
        x[:, 0, 2 * k:2 * k + 2, :] += (y == k)[:, None, None]
    return x, y.astype(np.int64)


def _finetune(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_finetune_arguments(parser)
    return run_finetune(parser.parse_args([str(a) for a in argv]))


def _image_folder(root: Path, n_per_class: int = 4, side: int = 10, mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(["cat", "dog", "eel"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, (side, side) if mode == "L" else (side, side, 3)).astype(np.uint8)
            Image.fromarray(arr, mode).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


# ------------------------------------------------------------------------------- data forms

def test_image_folder_is_read_resized_and_normalised(tmp_path):
    root = _image_folder(tmp_path / "imgs", mode="RGB")
    ds = open_dataset(root, channels=1, size=(6, 6), mean=[0.5], std=[0.25])
    assert len(ds) == 12 and ds.classes == ["cat", "dog", "eel"] and list(ds.y) == [0] * 4 + [1] * 4 + [2] * 4
    x, y = ds[5]
    assert x.shape == (1, 6, 6) and x.dtype == torch.float32 and y == 1
    raw = ds.load(5).astype(np.float32) / 255
    np.testing.assert_allclose(x.numpy(), (raw - 0.5) / 0.25, rtol=1e-6)
    rgb = open_dataset(root, channels=3, size=(8, 4))
    assert rgb[0][0].shape == (3, 8, 4) and 0 <= float(rgb[0][0].min()) and float(rgb[0][0].max()) <= 1


def test_npy_pair_is_memory_mapped_and_read_lazily(tmp_path):
    x, y = _blobs(20)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for path in (tmp_path, tmp_path / "x.npy"):
        ds = open_dataset(path)
        assert isinstance(ds, NpyPairDataset) and ds._x is None and len(ds) == 20   # nothing read yet
        np.testing.assert_array_equal(ds[7][0].numpy(), x[7])
        assert isinstance(ds._x, np.memmap) and ds[7][1] == y[7]
    np.save(tmp_path / "train_x.npy", (x * 0 + 1).astype(np.uint8))
    np.save(tmp_path / "train_y.npy", y)
    ds = open_dataset(tmp_path / "train_x.npy")
    assert float(ds[0][0].max()) == pytest.approx(1 / 255)   # integer images are scaled to [0, 1]
    import pickle

    assert pickle.loads(pickle.dumps(ds))._x is None   # workers reopen the map, no copy of the data


@pytest.mark.parametrize("case, code", [
    ("no_labels_npz", "SNN-E803"), ("no_labels_npy", "SNN-E803"), ("label_too_big", "SNN-E809"),
    ("negative_label", "SNN-E809"), ("float_labels", "SNN-E809"), ("empty_class", "SNN-E810"),
    ("no_classes", "SNN-E810"), ("bad_image", "SNN-E810"), ("missing", "SNN-E803"),
    ("too_many_classes", "SNN-E809")])
def test_bad_data_gives_a_coded_error_and_writes_nothing(tmp_path, case, code, capsys):
    model = _tiny_onnx(tmp_path / "m.onnx")
    x, y = _blobs(12)
    data = tmp_path / "data"
    if case == "no_labels_npz":
        data = tmp_path / "d.npz"
        np.savez(data, x=x)
    elif case == "no_labels_npy":
        data.mkdir()
        np.save(data / "x.npy", x)
    elif case in ("label_too_big", "negative_label", "float_labels"):
        data = tmp_path / "d.npz"
        bad = {"label_too_big": np.where(y == 2, 12, y), "negative_label": y - 1, "float_labels": y + 0.5}[case]
        np.savez(data, x=x, y=bad)
    elif case in ("empty_class", "bad_image", "too_many_classes"):
        _image_folder(data, side=6)
        if case == "empty_class":
            (data / "fox").mkdir()
        elif case == "bad_image":
            (data / "dog" / "9.png").write_bytes(b"not a png")
        else:
            shutil.copytree(data / "eel", data / "fox")
    elif case == "no_classes":
        data.mkdir()
        (data / "readme.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(CalibrationError) as err:
        _finetune(model, "--data", data, "-o", tmp_path / "out.onnx", "--epochs", "1", "--no-progress",
                  "--workers", "0")
    assert err.value.code == code, str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # nothing written
    if case == "bad_image":   # read in a DataLoader worker process: the same code and message
        with pytest.raises(CalibrationError) as err:
            _finetune(model, "--data", data, "-o", tmp_path / "out.onnx", "--epochs", "1", "--no-progress",
                      "--workers", "1", "--calib-samples", "1")   # λ from image 0: the bad one is read in training
        assert err.value.code == code and "9.png" in err.value.message and "Traceback" not in str(err.value)


def test_image_folder_trains_end_to_end(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    root = _image_folder(tmp_path / "imgs", n_per_class=3, side=12, mode="RGB")  # resized to the model's 6x6
    assert _finetune(model, "--data", root, "--val", root, "-o", tmp_path / "out.onnx", "--epochs", "1",
                     "--batch-size", "4", "--workers", "1", "--no-progress", "--mean", "0.5", "--std", "0.5") == 0
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node].count("Floor") == 2


# ------------------------------------------------------------------------------- options and outputs

@pytest.mark.parametrize("extra, code", [(["--epochs", "0"], "SNN-E804"), (["--batch-size", "0"], "SNN-E804"),
                                         (["--batch-size", "-3"], "SNN-E804"), (["--workers", "-1"], "SNN-E804"),
                                         (["--lambda-init", "p200"], "SNN-E804")])
def test_bad_options_are_refused(tmp_path, extra, code):
    model = _tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=_blobs(8)[0], y=_blobs(8)[1])
    with pytest.raises(OptionError) as err:
        _finetune(model, "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx", "--no-progress", *extra)
    assert err.value.code == code
    assert not (tmp_path / "o.onnx").exists()


def test_outputs_never_overwrite_inputs_or_directories(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    x, y = _blobs(8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.txt").write_text("mine")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for target, code in ((tmp_path / "adir", "SNN-E363"), (model, "SNN-E360"), (tmp_path / "d.npz", "SNN-E360")):
        with pytest.raises(OutputPathError) as err:
            _finetune(model, "--data", tmp_path / "d.npz", "-o", target, "--epochs", "1", "--no-progress")
        assert code in err.value.codes
    with pytest.raises(OutputPathError):
        _finetune(model, "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx", "--checkpoint", model,
                  "--no-progress")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_cli_error_is_exit_2_without_traceback(tmp_path, capsys):
    from snncc.cli import main

    model = _tiny_onnx(tmp_path / "m.onnx")
    x, y = _blobs(8)
    np.savez(tmp_path / "d.npz", x=x, y=y + 5)
    assert main(["finetune", str(model), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert "[SNN-E809]" in err and "Traceback" not in err and not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------------- resume

def test_resume_continues_where_the_checkpoint_stopped(tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "m.onnx")
    x, y = _blobs(64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "v.npz", x=x[:16], y=y[:16])
    common = [model, "--data", tmp_path / "d.npz", "--val", tmp_path / "v.npz", "--batch-size", "16",
              "--no-progress", "--seed", "3"]
    torch.set_num_threads(1)
    assert _finetune(*common, "--epochs", "2", "-o", tmp_path / "full.onnx") == 0
    # the same run, stopped after epoch 1 (a 1-epoch checkpoint of a 2-epoch schedule is what a crash leaves)
    import snncc.train.finetune as ft

    class Stop(Exception):
        pass

    real_fit = ft.fit

    def fit_one_epoch(*a, **k):
        k = dict(k)
        end = k["on_epoch_end"]

        def stop_after(stats):
            end(stats)
            raise Stop

        k["on_epoch_end"] = stop_after
        return real_fit(*a, **k)

    ft.fit = fit_one_epoch
    try:
        with pytest.raises(Stop):
            _finetune(*common, "--epochs", "2", "-o", tmp_path / "part.onnx", "--checkpoint", tmp_path / "c.pt")
    finally:
        ft.fit = real_fit
    assert (tmp_path / "c.pt").exists() and not (tmp_path / "part.onnx").exists()
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 1
    assert _finetune(*common, "--epochs", "2", "-o", tmp_path / "part.onnx", "--checkpoint", tmp_path / "c.pt",
                     "--resume", tmp_path / "c.pt") == 0
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    full, part = onnx.load(tmp_path / "full.onnx"), onnx.load(tmp_path / "part.onnx")
    a = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in part.graph.initializer}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CalibrationError) as err:
        _finetune(*common, "-o", tmp_path / "x.onnx", "--resume", tmp_path / "junk.pt")
    assert err.value.code == "SNN-E811" and "is not a checkpoint torch can read" in str(err.value)
    assert "Error" not in str(err.value)  # torch's own exception text (IndexError: pop from ...)
    with pytest.raises(CalibrationError) as err:
        _finetune(*common, "-L", "3", "-o", tmp_path / "x.onnx", "--resume", tmp_path / "c.pt")
    assert err.value.code == "SNN-E811"
    with pytest.raises(OptionError) as err:   # the schedule's length names the --epochs to give
        _finetune(*common, "--epochs", "3", "-o", tmp_path / "x.onnx", "--resume", tmp_path / "c.pt")
    assert err.value.code == "SNN-E811" and "that is --epochs 2" in str(err.value)
    # options the optimizer state carries (--lr: had been silently ignored) or that would change
    # the remaining epochs (--distill: had silently applied)
    with pytest.raises(CalibrationError) as err:
        _finetune(*common, "--epochs", "2", "--lr", "0.3", "--distill", "0", "-o",
                  tmp_path / "x.onnx", "--resume", tmp_path / "c.pt")
    assert err.value.code == "SNN-E811" and "--lr 0.3 (checkpoint: 0.003)" in str(err.value)
    assert "--distill 0.0 (checkpoint: 0.5)" in str(err.value)
    # another --val: the checkpoint's before-training figure was measured on other data
    capsys.readouterr()
    assert _finetune(model, "--data", tmp_path / "d.npz", "--val", tmp_path / "d.npz",
                     "--batch-size", "16", "--no-progress", "--seed", "3", "--epochs", "2", "-o",
                     tmp_path / "y.onnx", "--resume", tmp_path / "c.pt") == 0
    assert "before training - ->" in capsys.readouterr().out


# ------------------------------------------------------------------------------- two processes

def test_torchrun_two_cpu_processes(tmp_path):
    pytest.importorskip("torch.distributed.run")
    model = _tiny_onnx(tmp_path / "m.onnx")
    x, y = _blobs(64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "v.npz", x=x[:20], y=y[:20])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "snncc", "finetune", str(model), "--data", str(tmp_path), "--val", str(tmp_path / "v.npz"),
         "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu",
         "--checkpoint", str(tmp_path / "c.pt"), "-o", str(tmp_path / "out.onnx")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1   # rank 0 alone prints and writes
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node].count("Floor") == 2
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # 64 samples over 2 ranks with batch 8: 4 steps per rank and epoch, so 8 scheduler steps in all
    assert state["scheduler"]["last_epoch"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "m.onnx", "out.onnx", "v.npz", "x.npy", "y.npy"]


def test_more_class_folders_than_outputs_is_said_as_such(tmp_path):
    """Three class folders for a 2-output model: the error had been 'label 2 is out of range'
    (a label index the user never wrote); the model's fixed input size now tells the classes
    before the folder is read."""
    model = _tiny_onnx(tmp_path / "m.onnx", side=10, classes=2)
    root = _image_folder(tmp_path / "imgs")
    with pytest.raises(CalibrationError) as err:
        _finetune(model, "--data", root, "-o", tmp_path / "o.onnx", "--no-progress")
    assert err.value.code == "SNN-E809" and "has 3 class folders, the model has 2 outputs" in \
        str(err.value)
