"""Unusable model inputs fail with typed errors and stable codes (ir.load and canonicalize)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo
from helpers import run_passes
from onnx import TensorProto, helper, numpy_helper

from snncc import ir
from snncc.context import CompileOptions
from snncc.errors import ModelInputError
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
    assert "--input-shape x=" in diag.hint


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
