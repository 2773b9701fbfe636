"""Unusable model inputs fail with typed errors and stable codes (ir.load and canonicalize)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import zoo
from helpers import dense_net, run_passes
from onnx import TensorProto, helper, numpy_helper

from snncc import ir
from snncc.context import CompileOptions
from snncc.errors import ModelInputError, UnsupportedNodeError
from snncc.inspect import format_inspect, inspect_model
from snncc.passes.canonicalize import CanonicalizePass

F = TensorProto.FLOAT


def _graph_model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    """An unchecked model: some of these are deliberately invalid ONNX."""
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _canonicalize(model: onnx.ModelProto, **options):
    # verify="off": these inputs are ill-formed on purpose; canonicalize's checks must name them
    return run_passes(model, [CanonicalizePass()], verify="off",
                      options=CompileOptions(target="qann", **options))


def _codes(excinfo) -> set[str]:
    return excinfo.value.codes


# ----------------------------------------------------------------------- files (snncc/ir.py)

def test_missing_file(tmp_path):
    with pytest.raises(ModelInputError) as info:
        ir.load(tmp_path / "nope.onnx")
    assert info.value.code == "SNN-E101"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file(tmp_path, damage):
    data = zoo.bn_node().SerializeToString()
    content = {"truncated": data[: len(data) // 2], "garbage": b"\x08\xff\xff\xff not onnx",
               "empty": b""}[damage]
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelInputError) as info:
        ir.load(path)
    assert info.value.code == "SNN-E102"


def test_duplicate_tensor_names():
    x = helper.make_tensor_value_info("x", F, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelInputError) as info:
        ir.load(_graph_model(nodes, [x], [helper.make_tensor_value_info("y", F, [1, 4])]))
    assert info.value.code == "SNN-E103"


# ----------------------------------------------------------------------- graphs (canonicalize)

def _relu_model(input_type=F, shape=(1, 4)) -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=F), helper.make_node("Relu", ["xf"], ["y"])]
    return _graph_model(nodes, [helper.make_tensor_value_info("x", input_type, list(shape))],
                        [helper.make_tensor_value_info("y", F, list(shape))])


@pytest.mark.parametrize("dtype", [TensorProto.INT64, TensorProto.UINT8, TensorProto.FLOAT16])
def test_non_float_input(dtype):
    with pytest.raises(ModelInputError) as info:
        _canonicalize(_relu_model(dtype))
    assert info.value.code == "SNN-E111"
    assert "'x'" in info.value.diagnostics[0].message and info.value.diagnostics[0].hint


def test_missing_initializer():
    nodes = [helper.make_node("Conv", ["x", "W_missing"], ["y"], kernel_shape=[3, 3])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                         [helper.make_tensor_value_info("y", F, None)])
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E112"
    assert "W_missing" in info.value.diagnostics[0].message


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4])],
                         [helper.make_tensor_value_info("b", F, [1, 4])])
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E113"
    assert "'add'" in info.value.diagnostics[0].message


def test_dynamic_dims_need_input_shape():
    with pytest.raises(ModelInputError) as info:
        _canonicalize(zoo.dynamic_hw())
    (diag,) = info.value.diagnostics
    assert diag.code == "SNN-E114"
    assert "input_shapes={'x': (1, 3, height, width)}" in diag.hint   # worded for the API


def test_dynamic_batch_alone_is_fine():
    _canonicalize(zoo.dynamic_batch())


@pytest.mark.parametrize("shapes, code", [({"image": (1, 3, 8, 8)}, "SNN-E115"),
                                          ({"x": (1, 3, 8)}, "SNN-E116"),
                                          ({"x": (1, 4, 8, 8)}, "SNN-E116"),
                                          ({"x": (1, 3, 0, 8)}, "SNN-E116")])
def test_bad_input_shape_option(shapes, code):
    with pytest.raises(ModelInputError) as info:
        _canonicalize(zoo.dynamic_hw(), input_shapes=shapes)
    assert code in _codes(info)


def test_several_problems_reported_at_once():
    nodes = [helper.make_node("Add", ["x", "missing"], ["y"])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
                         [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])])
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E110"
    assert _codes(info) >= {"SNN-E111", "SNN-E112"}


def test_opset_too_old():
    with pytest.raises(ModelInputError) as info:
        _canonicalize(_graph_model([helper.make_node("Relu", ["x"], ["y"])],
                                   [helper.make_tensor_value_info("x", F, [1, 4])],
                                   [helper.make_tensor_value_info("y", F, [1, 4])], opset=6))
    assert info.value.code == "SNN-E117"


def test_opset_conversion_failure():
    """GroupNormalization (opset 21) has no form at opset 17 and no decomposition."""
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    nodes = [helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2)]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4, 8, 8])],
                         [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])], [scale, bias],
                         opset=21)
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E118"


def test_shape_inference_failure():
    """A MatMul weight whose rows do not match the input features."""
    w = numpy_helper.from_array(np.ones((5, 3), np.float32), "W")
    model = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                         [helper.make_tensor_value_info("x", F, [1, 4])],
                         [helper.make_tensor_value_info("y", F, None)], [w])
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E119"


# ----------------------------------------------------------------------- issue 9: front end

def test_directory_is_not_called_missing(tmp_path):
    with pytest.raises(ModelInputError) as info:
        ir.load(tmp_path)
    assert info.value.code == "SNN-E101"
    assert "is a directory" in str(info.value) and "does not exist" not in str(info.value)


def _lstm_model(x_shape=(5, 1, 10)) -> onnx.ModelProto:
    """One LSTM layer and nothing else: X [seq, batch, 10] -> Y [seq, 1, batch, 8]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (1, 32, 10)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.1, (1, 32, 8)).astype(np.float32), "R")
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=8, name="lstm")]
    return _graph_model(nodes, [helper.make_tensor_value_info("x", F, list(x_shape))],
                        [helper.make_tensor_value_info("y", F, None)], [w, r])


def test_lstm_is_not_convertible():
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(_lstm_model())
    lstm, nothing = info.value.diagnostics  # both at once: without the LSTM nothing is left
    assert (lstm.code, lstm.node) == ("SNN-E201", "'lstm' (ai.onnx::LSTM)") and lstm.hint
    assert nothing.code == "SNN-E204"


def test_model_without_activation_is_an_error():
    """With --allow-analog the LSTM passes the op check, and nothing is left to spike."""
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(_lstm_model(), allow_analog=True)
    (diag,) = info.value.diagnostics
    assert info.value.code == diag.code == "SNN-E204"
    assert "'y'" in diag.message and "LSTM" in diag.message and diag.hint


def test_inspect_lists_lstm_and_no_activation():
    report = inspect_model(_lstm_model())
    assert [(u["code"], u["node"]) for u in report["unsupported"]] == [
        ("SNN-E201", "'lstm' (ai.onnx::LSTM)"), ("SNN-E204", "")]
    assert "cannot convert (2)" in format_inspect(report)


def test_lstm_dynamic_hint_names_the_sequence_axis():
    with pytest.raises(ModelInputError) as info:
        _canonicalize(_lstm_model(("seq", "batch", 10)))
    (diag,) = info.value.diagnostics
    assert diag.code == "SNN-E114"
    assert "sequence axis" in diag.hint and "'lstm'" in diag.hint
    assert "=1x<size>x10" not in diag.hint  # the sequence axis is not taken for the batch


@pytest.mark.parametrize("target", ["qann", "ort"])
def test_cli_refuses_lstm_only_model(tmp_path, target):
    path, out = tmp_path / "lstm.onnx", tmp_path / "out.onnx"
    onnx.save(_lstm_model(), path)
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "snncc", "compile", str(path), "--target", target,
                           "--allow-analog", "-L", "4", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "[SNN-E204]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["lstm.onnx"]


def _conv_relu(w: np.ndarray, *, bias: np.ndarray | None = None, x_shape=(1, 3, 8, 8),
               op: str = "Conv", **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    ins = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
        ins.append("B")
    nodes = [helper.make_node(op, ins, ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _graph_model(nodes, [helper.make_tensor_value_info("x", F, list(x_shape))],
                        [helper.make_tensor_value_info("y", F, None)], inits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected(bad):
    w = np.ones((4, 3, 3, 3), np.float32)
    w[1, 2, 0, 0] = bad
    with pytest.raises(ModelInputError) as info:
        _canonicalize(_conv_relu(w))
    (diag,) = info.value.diagnostics
    assert diag.code == "SNN-E120" and "'W'" in diag.message and "'conv'" in diag.node
    assert ("NaN" if np.isnan(bad) else "Inf") in diag.message and diag.hint


def test_non_finite_constant_node_is_rejected():
    nodes = [helper.make_node("Constant", [], ["k"], name="k",
                              value=numpy_helper.from_array(np.array([np.nan], np.float32))),
             helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4])],
                         [helper.make_tensor_value_info("y", F, [1, 4])])
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E120" and "'k'" in str(info.value)


def test_model_without_outputs():
    model = _conv_relu(np.ones((4, 3, 3, 3)))
    del model.graph.output[:]
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert info.value.code == "SNN-E121" and info.value.diagnostics[0].hint


@pytest.mark.parametrize("w_shape, bias, op, attrs, expect", [
    ((4, 5, 3, 3), None, "Conv", {}, "expects 5 x group 1 = 5 input channels"),
    ((6, 3, 3, 3), None, "Conv", {"group": 3}, "expects 3 x group 3 = 9 input channels"),
    ((4, 3, 3, 3), 5, "Conv", {}, "bias 'B' has 5 values for 4 output channels"),
    ((5, 4, 3, 3), None, "ConvTranspose", {}, "expects 5 input channels"),
])
def test_channel_mismatch_is_a_front_end_error(w_shape, bias, op, attrs, expect):
    model = _conv_relu(np.ones(w_shape), bias=None if bias is None else np.zeros(bias), op=op,
                       x_shape=(1, 3, 8, 8), **attrs)
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    (diag,) = info.value.diagnostics
    assert info.value.code == diag.code == "SNN-E122" and diag.node == f"'conv' (ai.onnx::{op})"
    assert expect in diag.message and diag.hint


def test_grouped_conv_that_fits_is_fine():
    _canonicalize(_conv_relu(np.ones((6, 1, 3, 3)), x_shape=(1, 3, 8, 8), group=3))


def test_inspect_raises_what_compile_raises_on_a_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4])],
                         [helper.make_tensor_value_info("b", F, [1, 4])])
    with pytest.raises(ModelInputError) as info:
        inspect_model(model)
    assert info.value.code == "SNN-E113"


def test_cli_inspect_cycle_exits_2(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    path = tmp_path / "cycle.onnx"
    onnx.save(_graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4])],
                           [helper.make_tensor_value_info("b", F, [1, 4])]), path)
    proc = subprocess.run([sys.executable, "-m", "snncc", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "[SNN-E113]" in proc.stderr and "Traceback" not in proc.stderr


def _loop_model(loop_after_relu: bool = True, name: str = "myloop") -> onnx.ModelProto:
    """x -> Relu -> Loop (two iterations of Add 1 on the carried tensor) -> y."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, None)],
        initializer=[numpy_helper.from_array(np.ones((), np.float32), "one")])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Loop", ["n", "", "r"], ["y"], name=name, body=body)]
    return _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 4])],
                        [helper.make_tensor_value_info("y", F, [1, 4])],
                        [numpy_helper.from_array(np.array(2, np.int64), "n")])


def test_control_flow_is_named_at_once_by_canonicalize_and_inspect():
    """A Loop or If ran through calibration and failed late in ONNX Runtime or the checker; inspect
    said 'cannot convert: none' and listed the Loop as the output head."""
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(_loop_model())
    (diag,) = info.value.diagnostics
    assert info.value.code == diag.code == "SNN-E206" and diag.node == "'myloop' (ai.onnx::Loop)"
    assert "control flow" in diag.message and diag.hint
    with pytest.raises(UnsupportedNodeError):  # not an analog island either
        _canonicalize(_loop_model(), allow_analog=True)
    report = inspect_model(_loop_model())
    assert [u["code"] for u in report["unsupported"]] == ["SNN-E206"]
    assert report["output_head"] == []


def test_an_unnamed_node_is_named_by_what_it_writes():
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(_loop_model(name=""))
    assert info.value.diagnostics[0].node == "writing 'y' (ai.onnx::Loop)"


def test_a_1d_network_compiles_for_ort_loihi_and_its_synop_count(tmp_path):
    """Two Conv1d layers: the ORT target's SynOp count went through the Loihi lowering, which
    assumed 2-D maps (IndexError, exit 1); Loihi itself crashed the same way; then both were
    refused (E271). A [N, C, L] map now lowers as its (C, L, 1) view."""
    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("w1", (4, 2, 3)), ("w2", (4, 4, 3)), ("wf", (32, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]), helper.make_node("MatMul", ["f", "wf"], ["y"])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 12])],
                         [helper.make_tensor_value_info("y", F, [1, 3])], inits)
    onnx.save(model, tmp_path / "c1d.onnx")
    np.save(tmp_path / "calib.npy", rng.random((40, 2, 12), dtype=np.float32))
    opts = dict(calib_path=str(tmp_path / "calib.npy"), timesteps=2)
    res = compile_model(tmp_path / "c1d.onnx", tmp_path / "o.onnx", make_options(**opts))
    assert res.output.is_file() and res.report["synops"]["available"]
    assert res.report["synops"]["ann_macs"] == 4 * 10 * 2 * 3 + 4 * 8 * 4 * 3 + 32 * 3
    res = compile_model(tmp_path / "c1d.onnx", tmp_path / "o.loihi",
                        make_options(target="loihi", **opts))
    assert (tmp_path / "o.loihi" / "network.net").is_file()


# ------------------------------------------------------- forms other exporters write (a sweep)

def test_attribute_given_twice_is_refused():
    """onnx.checker and ORT refuse such a model; snncc picked one value silently."""
    node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)
    node.attribute.extend([helper.make_attribute("alpha", 0.2)])
    with pytest.raises(ModelInputError) as info:
        ir.load(_graph_model([node], [helper.make_tensor_value_info("x", F, [1, 4])],
                             [helper.make_tensor_value_info("y", F, [1, 4])]))
    assert info.value.code == "SNN-E103" and "alpha" in str(info.value)


def test_missing_external_data_is_named(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = zoo.bn_node()
    convert_model_to_external_data(model, location="weights.data", size_threshold=0)
    onnx.save(model, tmp_path / "m.onnx")
    ir.load(tmp_path / "m.onnx")  # with its data file: fine
    (tmp_path / "weights.data").unlink()
    with pytest.raises(ModelInputError) as info:
        ir.load(tmp_path / "m.onnx")
    assert info.value.code == "SNN-E102" and "weights.data" in str(info.value)
    assert "next to the .onnx" in info.value.hint


def test_local_functions_are_inlined():
    """torch's export_modules_as_functions: each call was an unknown op (E205), though ORT runs
    the model."""
    body = helper.make_function("my.blocks", "ConvRelu", ["x", "w"], ["y"],
                                [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                                 helper.make_node("Relu", ["c"], ["y"])],
                                [helper.make_opsetid("", 17)])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (3, 3, 3, 3))
                                .astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("ConvRelu", ["x", "w"], ["y"], domain="my.blocks")],
                              "f", [helper.make_tensor_value_info("x", F, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", F, [1, 3, 6, 6])], [w])
    model = helper.make_model(graph, functions=[body], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("my.blocks", 1)])
    loaded = ir.load(model)
    assert [n.op for n in loaded.graph.nodes] == ["Conv", "Relu"] and not loaded.functions


@pytest.mark.parametrize("spelling", ["leaky0", "max0"])
def test_other_spellings_of_relu_convert(spelling):
    """LeakyRelu(alpha=0) and Max(x, 0) (Keras/TF exports) were refused as having no spiking
    equivalent / no activation."""
    b = zoo._Builder(2)
    h = b.conv("x", 3, 4)
    h = b.op("LeakyRelu", [h], alpha=0.0) if spelling == "leaky0" else \
        b.op("Max", [b.const(0.0, "zero"), h])
    model = b.model(zoo._head(b, h, 4))
    out, report, _ = run_passes(model, [CanonicalizePass()],
                                options=CompileOptions(target="qann"))
    assert report.rows[0].counts["relu_forms_rewritten"] == 1
    assert "Relu" in [n.op_type for n in out.graph.node]


def test_max_with_zeros_like_is_a_relu_and_the_folded_model_runs(tmp_path):
    """torch.maximum(x, torch.zeros_like(x)) exported with a dynamic batch is Max(x,
    ConstantOfShape(Shape(x))): refused mid-network (E244), and in the head an internal error at
    compile (the zeros kept the batch N while x had T*N rows) or, with --no-fidelity, a model
    that ONNX Runtime refused to run (a fuzzer's net)."""
    from snncc.cli import main

    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Linear(4 * 8 * 8, 16), torch.nn.Linear(16, 3)

        def forward(self, x):
            h = self.fc1(torch.relu(self.c(x)).flatten(1))
            return self.fc2(torch.maximum(h, torch.zeros_like(h)))

    torch.manual_seed(0)
    torch.onnx.export(Net().eval(), torch.rand(1, 1, 8, 8), str(tmp_path / "m.onnx"),
                      dynamo=False, input_names=["input"], dynamic_axes={"input": {0: "N"}},
                      opset_version=17)
    assert "ConstantOfShape" in [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", input=rng.random((64, 1, 8, 8), dtype=np.float32))
    assert main(["compile", str(tmp_path / "m.onnx"), "-T", "2", "--calib", str(tmp_path / "c.npz"),
                 "-o", str(tmp_path / "s.onnx"), "-q"]) == 0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node]
    assert ops.count("IFNeuron") == 2 and "Max" not in ops
    assert main(["run", str(tmp_path / "s.onnx"), "--input", str(tmp_path / "c.npz"), "-o",
                 str(tmp_path / "o.npz")]) == 0


def test_a_float16_model_behind_float32_io_compiles_as_float32():
    """onnxconverter's keep_io_types: calibration declared its float16 taps as float32 (E412)."""
    b = zoo._Builder(3)
    h = b.op("Cast", ["x"], to=TensorProto.FLOAT16)
    w = b.const(b.rng.normal(0, 0.5, (4, 3, 3, 3)), "w16", np.float16)
    h = b.op("Relu", [b.op("Conv", [h, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    h = b.op("Cast", [h], to=TensorProto.FLOAT)
    model = b.model(zoo._head(b, h, 4))
    out, report, _ = run_passes(model, [CanonicalizePass()], options=CompileOptions(target="qann"))
    assert report.rows[0].counts["float16_promoted"] >= 2
    assert TensorProto.FLOAT16 not in [t.data_type for t in out.graph.initializer]
    assert "Cast" not in [n.op_type for n in out.graph.node]


def test_quantized_models_are_named_in_one_line():
    b = zoo._Builder(4)
    s, z = b.const(0.02, "s"), b.const(0, "z", np.uint8)
    h = b.op("DequantizeLinear", [b.op("QuantizeLinear", ["x", s, z]), s, z])
    h = b.op("Relu", [b.conv(h, 3, 4)])
    h = b.op("DequantizeLinear", [b.op("QuantizeLinear", [h, s, z]), s, z])
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(b.model(zoo._head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4)))
    assert info.value.code == "SNN-E207" and "QuantizeLinear x2, DequantizeLinear x2" in str(
        info.value) and "float model" in info.value.hint
    assert "\n" not in str(info.value)  # one line, not one per Q/DQ node


def test_every_unsupported_activation_of_a_chain_is_listed_and_a_shared_hint_once():
    """Sigmoid -> Tanh -> Softplus after a ReLU: only the Sigmoid was listed (the ones after it
    were taken for the analog prefix), and every line repeated the same long hint."""
    b = zoo._Builder(5)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    for op in ("Sigmoid", "Tanh", "Softplus"):
        h = b.op(op, [h])
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(b.model(zoo._head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4)))
    text = str(info.value)
    assert [d.node.split("'")[1].split("_")[0] for d in info.value.diagnostics] == [
        "/Sigmoid", "/Tanh", "/Softplus"]
    assert text.count("retrain the model") == 1 and text.count("Hint: as for '/Sigmoid") == 2


def test_review_findings_on_the_export_fixes():
    """A DequantizeLinear of a Constant node's int8 weight is folded (was E207); a Max(x, 0)
    whose zero has rank 5 is no ReLU (it broadcasts x to rank 5); a model both quantized and
    ORT-fused says both; inspect takes LeakyRelu(alpha=0) for ReLU as compile does."""
    b = zoo._Builder(6)
    q = b.op("Constant", [], value=numpy_helper.from_array(
        b.rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "wq"))
    w = b.op("DequantizeLinear", [q, b.const(0.01, "s")])
    h = b.op("Relu", [b.op("Conv", ["x", w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    _, report, _ = _canonicalize(b.model(zoo._head(b, h, 4)))
    assert report.rows[0].counts["weights_dequantized"] == 1

    from snncc.passes.support import relu_spellings

    max5 = _graph_model([helper.make_node("Max", ["x", "z5"], ["y"])],
                        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
                        [helper.make_tensor_value_info("y", F, [1, 1, 3, 4, 4])],
                        [numpy_helper.from_array(np.zeros((1, 1, 1, 1, 1), np.float32), "z5")])
    assert relu_spellings(ir.load(max5).graph) == 0

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    s = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    model = _graph_model(
        [helper.make_node("FusedConv", ["x", "w"], ["c"], domain="com.microsoft",
                          activation="Relu", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("QuantizeLinear", ["c", "s"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])], [w, s])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedNodeError) as info:
        _canonicalize(model)
    assert "quantized and ONNX Runtime-optimized" in str(info.value)
    assert "float model" in info.value.hint and "extended optimizations" in info.value.hint

    b = zoo._Builder(6)
    h = b.op("LeakyRelu", [b.conv("x", 3, 4)], alpha=0.0)
    report = inspect_model(b.model(zoo._head(b, h, 4)))
    assert report["unsupported"] == []


def test_an_if_on_static_shapes_takes_its_branch_and_one_on_data_stays():
    """torch's legacy export of nn.LocalResponseNorm tests the input's rank with an If: refused
    as control flow (E206, whose hint does not apply). An If whose condition reads only shapes
    is now the branch it takes; one that reads data stays E206."""
    from snncc.passes.canonicalize import flatten_static_ifs

    def model(static: bool) -> onnx.ModelProto:
        then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", F, [1, 3, 4, 4])])
        other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", F, [1, 3, 4, 4])])
        if static:
            cond = [helper.make_node("Shape", ["x"], ["s"]),
                    helper.make_node("Size", ["s"], ["rank"]),
                    helper.make_node("Equal", ["rank", "four"], ["c"])]
        else:
            cond = [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
                    helper.make_node("Greater", ["sum", "zero"], ["c"])]
        nodes = cond + [helper.make_node("If", ["c"], ["y"], then_branch=then,
                                         else_branch=other)]
        inits = [numpy_helper.from_array(np.array(4, np.int64), "four"),
                 numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
        return _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
                            [helper.make_tensor_value_info("y", F, [1, 3, 4, 4])], inits)

    m = ir.load(model(True))
    assert flatten_static_ifs(m, 1) == 1 and [n.op for n in m.graph.nodes] == ["Relu"]
    m = ir.load(model(False))
    assert flatten_static_ifs(m, 1) == 0 and "If" in [n.op for n in m.graph.nodes]


def _tanh_and_layernorm() -> onnx.ModelProto:
    """Gemm-ReLU-LayerNormalization-Gemm-ReLU-Tanh-Gemm: an activation with no spiking form
    (E201) and, once that is fixed, an op that would receive spikes (E244)."""
    return dense_net(["LayerNormalization"], ["Tanh"])


@pytest.mark.parametrize("calib", [False, True])
def test_compile_lists_the_layout_problems_with_the_activations(tmp_path, calib):
    """A helper removed a Tanh (E201) only to meet E244 on a LayerNormalization fed by spikes
    in the next run; inspect had listed both. Compile lists both at once, with or without
    calibration data, before calibrating; the qann target keeps the LayerNormalization."""
    from snncc.driver import compile_model, make_options

    onnx.save(_tanh_and_layernorm(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(1).random((40, 8), dtype=np.float32))
    calib_path = str(tmp_path / "c.npy") if calib else None
    with pytest.raises(UnsupportedNodeError) as info:
        compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                      make_options(target="ort", calib_path=calib_path))
    assert info.value.code == "SNN-E201"
    assert [(d.code, d.node.split("'")[1]) for d in info.value.diagnostics] == \
        [("SNN-E201", "tanh"), ("SNN-E244", "ln")]
    assert "1 more would receive spikes they cannot take" in info.value.message
    with pytest.raises(UnsupportedNodeError) as info:
        compile_model(tmp_path / "m.onnx", tmp_path / "q.onnx",
                      make_options(target="qann", calib_path=calib_path))
    assert [d.code for d in info.value.diagnostics] == ["SNN-E201"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx"]


def test_an_analog_island_names_the_ops_after_its_first(tmp_path):
    """--allow-analog kept an LSTM and a Sigmoid behind a LayerNormalization and the summary
    named only the island's first node."""
    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(0)
    onnx.save(dense_net(["LayerNormalization", "Sigmoid"]), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.random((40, 8), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), allow_analog=True,
                                     fidelity_samples=0))
    islands = res.report["notes"]["analog_islands"]
    assert len(islands) == 1 and "'ln'" in islands[0]
    assert islands[0].endswith("+ 2 more: Sigmoid, Gemm")


def test_a_model_invalid_for_its_own_opset_is_said_by_compile_and_inspect(tmp_path):
    """MaxPool's ceil_mode at opset 9 (it came at opset 10): ONNX Runtime refuses the model,
    and compile had written an SNN from it without a word. Both commands now say what
    onnx.checker says; a valid model gets no such line."""
    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                              ceil_mode=1)]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 1, 5, 5])],
                         [helper.make_tensor_value_info("y", F, [1, 2, 3, 3])], [w], opset=9)
    model.ir_version = 7
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.random((40, 1, 5, 5), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), fidelity_samples=0))
    said = [w for w in res.warnings if "onnx.checker" in w]
    assert len(said) == 1 and "ceil_mode" in said[0], res.warnings
    text = format_inspect(inspect_model(tmp_path / "m.onnx"))
    assert "invalid ONNX: onnx.checker says: Unrecognized attribute: ceil_mode" in text
    valid = format_inspect(inspect_model(zoo.bn_node()))
    assert "onnx.checker" not in valid


def test_a_negative_batchnorm_variance_is_refused():
    """A running_var of -1 folded into NaN weights, and compile wrote them (exit 0; every
    sample then got the same answer)."""
    model = zoo.bn_node()
    var = next(t for t in model.graph.initializer if "bn_var" in t.name)
    arr = numpy_helper.to_array(var).copy()
    arr[1] = -1.0
    var.CopyFrom(numpy_helper.from_array(arr, var.name))
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert "SNN-E120" in _codes(info) and "at or below -epsilon" in info.value.render()
    # the same variance from a Constant node (it had passed, to fail later as E414)
    graph = model.graph
    graph.initializer.remove(var)
    graph.node.insert(0, helper.make_node("Constant", [], [var.name],
                                          value=numpy_helper.from_array(arr, var.name)))
    with pytest.raises(ModelInputError) as info:
        _canonicalize(model)
    assert "SNN-E120" in _codes(info) and "at or below -epsilon" in info.value.render()


def test_dynamo_unoptimised_castlike_forms_compile(tmp_path):
    """torch's dynamo exporter with optimize=False writes ReLU6 as Clip(x, CastLike(0, x),
    CastLike(6, x)) with value_float Constants, and a bias-free conv's bias as
    Expand(CastLike(0, x), Shape(W)): the ReLU6 net was E204 ('a Clip is a clipped ReLU only
    with min 0'), the bias-free one E244 (a CastLike reading spikes). Both compile now, and
    the compiled QANN equals the ANN's clip where the levels allow."""
    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "w2")
    wf = numpy_helper.from_array(rng.normal(0, 0.5, (64, 3)).astype(np.float32), "wf")
    c = helper.make_node
    nodes = [c("Constant", [], ["lo"], value_float=0.0), c("Constant", [], ["hi"], value_float=6.0),
             c("Conv", ["x", "w1"], ["c1"]),
             c("CastLike", ["lo", "c1"], ["lo_c"]), c("CastLike", ["hi", "c1"], ["hi_c"]),
             c("Clip", ["c1", "lo_c", "hi_c"], ["r1"]),
             c("Shape", ["w2"], ["ws"], start=0, end=1), c("Constant", [], ["z"], value_int=0),
             c("CastLike", ["z", "r1"], ["z_c"]), c("Expand", ["z_c", "ws"], ["b2"]),
             c("Conv", ["r1", "w2", "b2"], ["c2"]), c("Relu", ["c2"], ["r2"]),
             c("Flatten", ["r2"], ["f"]), c("MatMul", ["f", "wf"], ["y"])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 1, 8, 8])],
                         [helper.make_tensor_value_info("y", F, [1, 3])], [w1, w2, wf], opset=18)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.random((48, 1, 8, 8), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), fidelity_samples=16))
    assert res.output.is_file()
    canon = next(r for r in res.report["passes"] if r["pass"] == "canonicalize")
    assert canon["counts"]["castlike_folded"] == 3
    text = format_inspect(inspect_model(tmp_path / "m.onnx"))
    assert "cannot convert: none" in text and "CastLike" not in text


def test_free_height_and_width_are_taken_from_the_calibration_samples(tmp_path):
    """A dynamic-H/W export with --calib had been E114 ('pass --input-shape') although the
    samples fix the shape; without samples of a fitting shape it still is."""
    from snncc.driver import compile_model, make_options
    from snncc.errors import SnnccError

    onnx.save(zoo.dynamic_hw(), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.random((40, 3, 10, 12), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), fidelity_samples=0))
    assert any("compiled for 3x10x12 samples, the calibration samples' shape" in w
               for w in res.warnings), res.warnings
    shape = onnx.load(tmp_path / "o.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in shape[1:]] == [3, 10, 12]
    from snncc.driver import rehearse   # what report runs first (it had stopped with E114)
    rehearse(tmp_path / "m.onnx", make_options(calib_path=str(tmp_path / "c.npy")))
    np.save(tmp_path / "bad.npy", rng.random((40, 3, 10), dtype=np.float32))   # another rank
    with pytest.raises(SnnccError) as info:
        compile_model(tmp_path / "m.onnx", tmp_path / "p.onnx",
                      make_options(calib_path=str(tmp_path / "bad.npy"), fidelity_samples=0))
    assert info.value.codes & {"SNN-E114", "SNN-E406"}


def test_a_float_constant_cast_like_an_integer_of_unknown_type_stays_an_integer(tmp_path):
    """CastLike(-1.0, n) with n an int64 Gather of a Shape and no value_info: the untyped fold
    had made -1 a float, and the Concat of a Reshape target failed (E412; a review). Folded
    once types are known, it compiles as before the fold existed."""
    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.2, (10, 64)).astype(np.float32), "w2")]
    c = helper.make_node
    nodes = [c("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), c("Relu", ["c"], ["r"]),
             c("Shape", ["r"], ["s"]), c("Constant", [], ["i0"], value_ints=[0]),
             c("Gather", ["s", "i0"], ["n"]), c("Constant", [], ["m1"], value_float=-1.0),
             c("CastLike", ["m1", "n"], ["m1i"]), c("Unsqueeze", ["m1i", "i0"], ["m1u"]),
             c("Concat", ["n", "m1u"], ["shp"], axis=0), c("Reshape", ["r", "shp"], ["f"]),
             c("Gemm", ["f", "w2"], ["y"], transB=1)]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])],
                         [helper.make_tensor_value_info("y", F, [1, 10])], inits)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.random((40, 1, 4, 4), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), fidelity_samples=0))
    assert res.output.is_file()


def test_odd_name_scope_metadata_is_no_internal_error():
    """literal_eval raises TypeError on '{[]: 1}' (a review): it is read as text."""
    assert ir._module_path({"pkg.torch.onnx.name_scopes": "{[]: 1}"}) == "{[]: 1}"
    assert ir._module_path({"pkg.torch.onnx.name_scopes": "['', 'layer1', 'layer1.0', 'relu']"}) \
        == "layer1.0"
    assert ir._module_path({"namespace": ": M/stem: torch.nn.Sequential/stem.2: ReLU/relu"}) \
        == "stem.2"
