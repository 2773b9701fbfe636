"""Shared test helpers: tiny models from ONNX text, ORT with optimisations off, pass assertions."""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.pipeline import Pipeline


def tiny_model(text: str, *, seed: int = 0, params: Mapping[str, np.ndarray] | None = None,
               dyadic: bool = False) -> onnx.ModelProto:
    """Parse ONNX text and fill every declared initializer with seeded random values.

    Initializers whose name contains ``var`` get positive values (BatchNorm variances).
    ``dyadic=True`` rounds values to multiples of 1/64 so that float32 sums stay exact.
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    params = dict(params or {})
    for init in model.graph.initializer:
        if init.name in params:
            arr = np.asarray(params[init.name])
        else:
            shape = tuple(init.dims)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            if np.issubdtype(dtype, np.integer):
                continue
            arr = rng.normal(0, 0.5, size=shape).astype(dtype)
            if "var" in init.name:
                arr = np.abs(arr) + 0.5
            if dyadic:
                arr = np.round(arr * 64) / 64
        init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(
            onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), init.name))
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto, *, library: bool = False,
            opt_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> ort.InferenceSession:
    if library:
        from snncc.runtime import session_options
        so = session_options()
    else:
        so = ort.SessionOptions()
    so.graph_optimization_level = opt_level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, library: bool = False,
            outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    return session(model, library=library).run(list(outputs) if outputs else None, dict(feeds))


def random_feeds(model: onnx.ModelProto, *, seed: int = 1, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.normal(0, 1, size=dims).astype(np.float32)
    return feeds


def run_passes(model: onnx.ModelProto, passes, *, options: CompileOptions | None = None,
               ctx: CompileContext | None = None, verify: str = "each"):
    """Run passes through a Pipeline with verification after each; returns (proto, report, ctx)."""
    m = ir.load(copy.deepcopy(model))
    ctx = ctx or CompileContext(options or CompileOptions(target="qann"))
    report = Pipeline(list(passes), verify=verify).run(m, ctx)
    return ir.to_proto(m), report, ctx


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_pass_equivalent(model: onnx.ModelProto, passes, *, rtol=1e-5, atol=1e-6,
                           expect_ops: Sequence[str] | None = None, feeds=None, **kw: Any):
    """Checker on input, run the passes, ORT before vs after with optimisations off, checker on output."""
    onnx.checker.check_model(model, full_check=True)
    out, report, ctx = run_passes(model, passes, **kw)
    onnx.checker.check_model(out, full_check=True)
    feeds = feeds or random_feeds(model)
    before = run_ort(model, feeds)
    after = run_ort(out, feeds)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    if expect_ops is not None:
        assert op_types(out) == list(expect_ops), op_types(out)
    return out, report, ctx


def assert_pass_declines(model: onnx.ModelProto, pass_, *, code: str, **kw: Any):
    """The pass leaves the graph unchanged and records a decline with ``code``."""
    out, report, ctx = run_passes(model, [pass_], **kw)
    row = report.rows[-1]
    assert not row.modified, row
    assert code in {d["code"] for d in row.declines}, row.declines
    assert op_types(out) == op_types(model)
    before = {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in out.graph.initializer}
    assert before == after
    return report


#: short node names of the ops :func:`dense_net` places
_SHORT = {"LayerNormalization": "ln", "Sigmoid": "sig", "Tanh": "tanh"}


def dense_net(mid: Sequence[str], tail: Sequence[str] = ()) -> onnx.ModelProto:
    """x [N, 8] -> fc1 -> ReLU -> ``mid`` ops -> fc2 -> ReLU -> ``tail`` ops -> fc3 -> y [N, 3]
    (random weights; a LayerNormalization gets a scale and bias). Nodes are named fc1, relu1,
    fc2, relu2, fc3 and ln / sig / tanh: for the checks of what has no spiking form."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             (("w1", (8, 6)), ("w2", (6, 6)), ("w3", (6, 3)), ("g", (6,)), ("b", (6,)))]
    nodes, last = [], "x"

    def add(op, *extra):
        nonlocal last
        name = _SHORT.get(op, op.lower())
        nodes.append(helper.make_node(op, [last, *extra], [name + "_out"], name=name))
        last = name + "_out"

    def layer(i):
        nonlocal last
        nodes.append(helper.make_node("Gemm", [last, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        last = f"h{i}"

    layer(1)
    nodes.append(helper.make_node("Relu", [last], ["r1"], name="relu1"))
    last = "r1"
    for op in mid:
        add(op, *(("g", "b") if op == "LayerNormalization" else ()))
    layer(2)
    nodes.append(helper.make_node("Relu", [last], ["r2"], name="relu2"))
    last = "r2"
    for op in tail:
        add(op)
    nodes.append(helper.make_node("Gemm", [last, "w3"], ["y"], name="fc3"))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv1d_relu_net(path, *, maxpool: bool = False, length: int = 16, seed: int = 0) -> None:
    """Save ``Conv1d(1 -> 4, k 3, pad 1) -> Relu [-> MaxPool 2] -> Flatten -> Gemm(3)`` with
    random weights on ``[N, 1, length]`` inputs (opset 17) at ``path``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    flat = 4 * (length // 2 if maxpool else length)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("w", (4, 1, 3)), ("fc", (3, flat)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"])]
    if maxpool:
        nodes.append(helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2], strides=[2]))
    nodes += [helper.make_node("Flatten", [nodes[-1].output[0]], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, length])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def assert_table_script_refuses_an_input(main, argv: Sequence[str], target, capsys) -> None:
    """A results script given one of its inputs (``target``) as ``--out``: one usage error
    (exit 2, SNN-E360, no traceback) before any work, the input untouched."""
    import pytest
    before = target.stat().st_mtime_ns
    with pytest.raises(SystemExit) as err:
        main(["--out", str(target), *argv])
    assert err.value.code == 2
    assert "SNN-E360" in capsys.readouterr().err
    assert target.stat().st_mtime_ns == before
