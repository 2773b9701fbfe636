"""A corpus of bad inputs for ``tests/test_badinput.py``, built on the fly (nothing committed).

:func:`build_corpus` writes, into one directory: a tiny CNN (``tests/zoo.py``: Conv-ReLU-GAP-Gemm
with a dynamic batch, 3x8x8 inputs, 5 classes), a two-input model, models the front end must
reject, broken model files, good and bad calibration files, good and bad ``run`` inputs, and the
tiny CNN compiled for the ORT (folded and streaming), QANN and Loihi targets.
:func:`snapshot` hashes every file under a directory so that a test can assert that a failed
command left everything byte-for-byte as it was and added nothing (no temporary files).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import zoo

__all__ = ["Corpus", "build_corpus", "snapshot", "two_input_model", "lstm_only_model",
           "nan_weight_model", "no_output_model", "cycle_model", "channel_mismatch_model",
           "free_shape_model"]

F = TensorProto.FLOAT


def snapshot(root: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 of every file (``<dir>`` for directories, the target for links)."""
    root = Path(root)
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "<link>" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _model(nodes, inputs, outputs, inits, opset: int = 17, check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "badinput", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="snncc-badinput")
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _w(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def two_input_model() -> onnx.ModelProto:
    """Conv(a) + Conv(b) -> ReLU -> GAP -> Gemm: one activation, two data inputs."""
    rng = np.random.default_rng(7)
    inits = [_w("wa", rng.normal(0, .5, (4, 3, 3, 3))), _w("wb", rng.normal(0, .5, (4, 3, 3, 3))),
             _w("fw", rng.normal(0, .5, (5, 4))), _w("fb", rng.normal(0, .5, (5,)))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["a", "wa"], ["ca"], **conv),
             helper.make_node("Conv", ["b", "wb"], ["cb"], **conv),
             helper.make_node("Add", ["ca", "cb"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["out"], transB=1)]
    return _model(nodes, [helper.make_tensor_value_info(n, F, ["N", 3, 8, 8]) for n in "ab"],
                  [helper.make_tensor_value_info("out", F, ["N", 5])], inits)


def lstm_only_model() -> onnx.ModelProto:
    """An LSTM and nothing else: no activation snncc could turn into neurons."""
    rng = np.random.default_rng(8)
    inits = [_w("W", rng.normal(0, .5, (1, 16, 6))), _w("R", rng.normal(0, .5, (1, 16, 4)))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [5, 1, 6])],
                  [helper.make_tensor_value_info("y", F, [5, 1, 1, 4])], inits)


def nan_weight_model() -> onnx.ModelProto:
    """The tiny CNN with one NaN in the first convolution's weights."""
    model = zoo.dynamic_batch()
    w = next(i for i in model.graph.initializer if len(i.dims) == 4)
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] = np.nan
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    return model


def no_output_model() -> onnx.ModelProto:
    """Conv -> ReLU with the graph outputs removed."""
    model = zoo.dynamic_batch()
    model.graph.ClearField("output")
    return model


def cycle_model() -> onnx.ModelProto:
    """x -> Add(x, b) -> Relu -> b: a cycle (written without the checker, which rejects it)."""
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("b", F, ["N", 3, 8, 8])], [], check=False)


def channel_mismatch_model() -> onnx.ModelProto:
    """A Conv whose weight expects 2 input channels, fed 3 (written without the checker)."""
    rng = np.random.default_rng(9)
    inits = [_w("w", rng.normal(0, .5, (4, 2, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", F, None)], inits, check=False)


def free_shape_model() -> onnx.ModelProto:
    """Flatten -> Gemm(192 -> 5) with every input dimension symbolic: only 3x8x8 samples fit."""
    rng = np.random.default_rng(10)
    inits = [_w("fw", rng.normal(0, .5, (5, 192))), _w("fb", rng.normal(0, .5, (5,)))]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", "C", "H", "W"])],
                  [helper.make_tensor_value_info("y", F, ["N", 5])], inits)


@dataclass
class Corpus:
    """Paths of the corpus files (all under ``root``)."""

    root: Path

    def __getattr__(self, name: str) -> str:  # corpus.model -> str(root / FILES[name])
        if name in FILES:
            return str(self.root / FILES[name])
        raise AttributeError(name)


FILES = {
    # models
    "model": "tiny.onnx", "two": "two.onnx", "lstm": "lstm.onnx", "nan_w": "nan_w.onnx",
    "no_out": "no_out.onnx", "cycle": "cycle.onnx", "chan": "chan.onnx", "sigmoid": "sigmoid.onnx",
    "act_many": "act_many.onnx", "truncated": "truncated.onnx", "not_onnx": "not_onnx.onnx",
    "empty_model": "empty.onnx", "model_dir": "model_dir.onnx", "free": "free.onnx",
    "batch1": "batch1.onnx",
    # calibration
    "calib": "calib.npz", "two_calib": "two_calib.npz", "two_calib_counts": "two_calib_counts.npz", "calib_shape": "calib_shape.npz",
    "calib_nan": "calib_nan.npz", "calib_empty": "calib_empty.npz", "calib_int": "calib_int.npz",
    "calib_text": "calib_text.npz", "calib_txt": "calib.txt",
    # run inputs
    "data": "data.npz", "data_npy": "data.npy", "two_data": "two_data.npz",
    "labels_short": "labels_short.npz", "labels_2d": "labels_2d.npz", "x_nan": "x_nan.npz",
    "x_inf": "x_inf.npy", "x_empty": "x_empty.npy", "x_shape": "x_shape.npy",
    "x_int": "x_int.npy", "x_scalar": "x_scalar.npy", "x_ambiguous": "x_ambiguous.npz",
    "two_missing": "two_missing.npz", "two_counts": "two_counts.npz",
    # compiled
    "snn": "tiny.snn.onnx", "stream": "tiny.stream.onnx", "qann": "tiny.qann.onnx",
    "loihi": "tiny.loihi", "two_snn": "two.snn.onnx",
}


def build_corpus(root: str | os.PathLike) -> Corpus:
    """Write every corpus file under ``root`` and compile the good models (in-process)."""
    from snncc.cli import main

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32)

    onnx.save(zoo.dynamic_batch(), c.model)
    onnx.save(two_input_model(), c.two)
    onnx.save(zoo.ZOO["act_sigmoid"](), c.sigmoid)
    onnx.save(zoo.act_many(), c.act_many)
    onnx.save(free_shape_model(), c.free)
    onnx.save(zoo.reshape_batch1(), c.batch1)
    for name, build in (("lstm", lstm_only_model), ("nan_w", nan_weight_model),
                        ("no_out", no_output_model), ("cycle", cycle_model),
                        ("chan", channel_mismatch_model)):
        onnx.save(build(), getattr(c, name))
    good = Path(c.model).read_bytes()
    Path(c.truncated).write_bytes(good[: len(good) // 3])
    Path(c.not_onnx).write_text("this is not an ONNX model\n")
    Path(c.empty_model).write_bytes(b"")
    Path(c.model_dir).mkdir()
    (Path(c.model_dir) / "user.txt").write_text("a user's file\n")

    np.savez(c.calib, x=f32(16, 3, 8, 8))
    np.savez(c.two_calib, a=f32(16, 3, 8, 8), b=f32(16, 3, 8, 8))
    np.savez(c.two_calib_counts, a=f32(16, 3, 8, 8), b=f32(12, 3, 8, 8))
    np.savez(c.calib_shape, x=f32(16, 3, 5, 5))
    np.savez(c.calib_nan, x=np.full((4, 3, 8, 8), np.nan, np.float32))
    np.savez(c.calib_empty, x=np.zeros((0, 3, 8, 8), np.float32))
    np.savez(c.calib_int, x=np.ones((4, 3, 8, 8), np.int32))
    Path(c.calib_text).write_text("not numpy\n")
    Path(c.calib_txt).write_text("1 2 3\n")

    np.savez(c.data, x=f32(6, 3, 8, 8), y=np.arange(6) % 5)
    np.save(c.data_npy, f32(6, 3, 8, 8))
    np.savez(c.two_data, a=f32(4, 3, 8, 8), b=f32(4, 3, 8, 8), y=np.arange(4))
    np.savez(c.labels_short, x=f32(6, 3, 8, 8), y=np.arange(4))
    np.savez(c.labels_2d, x=f32(6, 3, 8, 8), y=np.eye(5)[np.arange(6) % 5])
    x = f32(4, 3, 8, 8)
    x[1, 0, 0, 0] = np.nan
    np.savez(c.x_nan, x=x)
    x = f32(4, 3, 8, 8)
    x[2, 1, 2, 3] = np.inf
    np.save(c.x_inf, x)
    np.save(c.x_empty, np.zeros((0, 3, 8, 8), np.float32))
    np.save(c.x_shape, f32(4, 3, 5, 5))
    np.save(c.x_int, np.ones((4, 3, 8, 8), np.int64))
    np.save(c.x_scalar, np.float32(1.0))
    np.savez(c.x_ambiguous, p=f32(2, 3, 8, 8), q=f32(2, 3, 8, 8))
    np.savez(c.two_missing, a=f32(4, 3, 8, 8))
    np.savez(c.two_counts, a=f32(4, 3, 8, 8), b=f32(3, 3, 8, 8))

    for argv in (["--calib", c.calib, "-o", c.snn],
                 ["--calib", c.calib, "-o", c.stream, "--schedule", "streaming"],
                 ["--calib", c.calib, "-o", c.qann, "--target", "qann"],
                 ["--calib", c.calib, "-o", c.loihi, "--target", "loihi"]):
        assert main(["compile", c.model, "-q", *argv]) == 0, argv
    assert main(["compile", c.two, "-q", "--calib", c.two_calib, "-o", c.two_snn]) == 0
    return c
