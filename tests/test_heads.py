"""Output heads: Softmax / LogSoftmax / Flatten / Reshape / GlobalAveragePool after the last
spiking layer run once on the decoded SNN output, and ``inspect`` agrees with ``compile``.

The exactness claim: the SNN with a head outputs head(decoded logits) of the same SNN without the
head, bit for bit (the same decode feeds the same ONNX Runtime op).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import op_types, run_ort
from onnx import TensorProto, helper, numpy_helper

from snncc import ir
from snncc.context import CompileContext
from snncc.driver import make_options
from snncc.errors import SnnccError
from snncc.inspect import inspect_model
from snncc.pipeline import default_pipeline

F = TensorProto.FLOAT
CLASSES = 5


def _net(head: str, *, seed: int = 3) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GAP-Flatten-Gemm, then ``head`` ("" = the logits are the output)."""
    rng = np.random.default_rng(seed)

    def w(name, *shape, scale=0.5):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("w1", 6, 3, 3, 3), w("b1", 6, scale=0.1), w("w2", 8, 6, 3, 3), w("b2", 8, scale=0.1),
             w("wf", CLASSES, 8), w("bf", CLASSES, scale=0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc")]
    out = "logits"
    if head == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
        out = "probs"
    elif head == "logsoftmax":
        nodes.append(helper.make_node("LogSoftmax", ["logits"], ["probs"], axis=1, name="lsm"))
        out = "probs"
    elif head == "reshape_softmax":  # [N,5] -> [N,5,1,1] -> Softmax(axis 1) -> [N,5]
        inits += [numpy_helper.from_array(np.array([-1, CLASSES, 1, 1], np.int64), "s4"),
                  numpy_helper.from_array(np.array([-1, CLASSES], np.int64), "s2")]
        nodes += [helper.make_node("Reshape", ["logits", "s4"], ["r4"], name="reshape4"),
                  helper.make_node("Softmax", ["r4"], ["p4"], axis=1, name="softmax"),
                  helper.make_node("Reshape", ["p4", "s2"], ["probs"], name="reshape2")]
        out = "probs"
    graph = helper.make_graph(nodes, "head_" + (head or "none"),
                              [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info(out, F, ["N", CLASSES])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _head_op(logits: np.ndarray, head: str) -> np.ndarray:
    """The head alone, run by ONNX Runtime (the same kernel the compiled SNN uses)."""
    op = "LogSoftmax" if head == "logsoftmax" else "Softmax"
    graph = helper.make_graph([helper.make_node(op, ["l"], ["p"], axis=1)], "head",
                              [helper.make_tensor_value_info("l", F, ["N", CLASSES])],
                              [helper.make_tensor_value_info("p", F, ["N", CLASSES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return run_ort(model, {"l": logits})[0]


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, np.random.default_rng(0).normal(0, 1, (32, 3, 6, 6)).astype(np.float32))
    return str(path)


def _compile(model: onnx.ModelProto, calib: str, **kw):
    opts = make_options(calib_path=calib, **{"timesteps": 4, "neuron": "if",
                                             "calib_method": "max", **kw})
    m, ctx = ir.load(model), CompileContext(opts)
    default_pipeline(opts, verify="ends").run(m, ctx)
    return ir.to_proto(m), ctx


@pytest.mark.parametrize("head", ["softmax", "logsoftmax", "reshape_softmax"])
@pytest.mark.parametrize("neuron, T", [("if", 4), ("bitserial", 2)])
def test_head_runs_once_on_the_decoded_logits(calib, head, neuron, T):
    x = np.random.default_rng(5).normal(0, 1, (7, 3, 6, 6)).astype(np.float32)
    plain, _ = _compile(_net(""), calib, neuron=neuron, timesteps=T)
    headed, ctx = _compile(_net(head), calib, neuron=neuron, timesteps=T)
    assert ctx.notes["analog_islands"] == []
    assert [h.split("::")[1].rstrip(")") for h in ctx.notes["output_head"]] == [
        "LogSoftmax" if head == "logsoftmax" else "Softmax"]
    ops = op_types(headed)
    # folded: a ReduceMean decodes the logits; window (bit-serial): each neuron writes its mean
    decode = "ReduceMean" if ctx.notes["schedule"]["schedule"] == "folded" else "BitSerialNeuron"
    assert ops.index(decode) < ops.index("LogSoftmax" if head == "logsoftmax" else "Softmax")
    logits = run_ort(plain, {"x": x})[0]
    got = run_ort(headed, {"x": x})[0]
    assert got.shape == logits.shape == (7, CLASSES)
    np.testing.assert_array_equal(got, _head_op(logits, head))


def test_head_streaming_drops_softmax_before_reshape(calib):
    """Streaming leaves the decode to the caller: a head Softmax with only reshapes after it is
    dropped, the SNN's per-step output is then the logits'."""
    out, ctx = _compile(_net("reshape_softmax"), calib, schedule="streaming")
    assert "Softmax" not in op_types(out)
    assert ctx.notes["streaming_dropped_softmax"]


@pytest.mark.requires_runtime
@pytest.mark.parametrize("head", ["softmax", "logsoftmax"])
def test_streaming_run_applies_the_dropped_head(calib, head):
    """The metadata names the dropped head; run_compiled (snncc run) applies it to the averaged
    streaming output, which then equals the folded model's head output."""
    import json

    from snncc.simulate import run_compiled

    x = np.random.default_rng(5).normal(0, 1, (7, 3, 6, 6)).astype(np.float32)
    folded, _ = _compile(_net(head), calib)
    streamed, _ = _compile(_net(head), calib, schedule="streaming")
    meta = {p.key: p.value for p in streamed.metadata_props}
    op = "LogSoftmax" if head == "logsoftmax" else "Softmax"
    assert json.loads(meta["snncc.output_head"]) == {"probs": {"op": op, "axis": 1}}
    got = run_compiled(streamed, x).outputs["probs"]
    np.testing.assert_allclose(got, run_compiled(folded, x).outputs["probs"], atol=1e-5)


def test_streaming_refuses_a_head_it_cannot_drop(calib):
    """Softmax then a scale: the scale would run on a per-step Softmax, which is not the head."""
    model = _net("softmax")
    model.graph.node[-1].output[0] = "p"
    model.graph.node.append(helper.make_node("Mul", ["p", "k"], ["probs"], name="scale"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "k"))
    with pytest.raises(SnnccError) as err:
        _compile(model, calib, schedule="streaming")
    assert {(d.code, d.node) for d in err.value.diagnostics} == {
        ("SNN-E322", "'softmax' (ai.onnx::Softmax)")}
    _compile(model, calib)  # folded: decode, then Softmax and the scale once


def _between_relus(*nodes: onnx.NodeProto, inits=()) -> onnx.ModelProto:
    """The plain net with ``nodes`` (a1 -> ... -> 'mid') inserted before conv2."""
    model = _net("")
    graph = model.graph
    kept = list(graph.node)
    next(n for n in kept if n.name == "conv2").input[0] = "mid"
    del graph.node[:]
    graph.node.extend(kept[:2] + list(nodes) + kept[2:])
    graph.initializer.extend(inits)
    return model


AGREEMENT = {
    "island": (_between_relus(helper.make_node("Mul", ["a1", "a1"], ["mid"], name="square")),
               {("SNN-E244", "'square' (ai.onnx::Mul)")}),
    "batch_axis": (_between_relus(
        helper.make_node("Transpose", ["a1"], ["t"], perm=[1, 0, 2, 3], name="t1"),
        helper.make_node("Transpose", ["t"], ["mid"], perm=[1, 0, 2, 3], name="t2")),
        {("SNN-E242", "'t1' (ai.onnx::Transpose)"), ("SNN-E242", "'t2' (ai.onnx::Transpose)")}),
    "softmax_inside": (_between_relus(
        helper.make_node("Softmax", ["a1"], ["mid"], axis=1, name="sm")),
        {("SNN-E203", "'sm' (ai.onnx::Softmax)")}),
    "head": (_net("reshape_softmax"), set()),
}


@pytest.mark.parametrize("name", sorted(AGREEMENT))
def test_inspect_and_compile_agree(calib, name):
    """What inspect lists as not convertible is exactly what compile rejects (codes and nodes)."""
    model, expected = AGREEMENT[name]
    listed = {(u["code"], u["node"]) for u in inspect_model(model)["unsupported"]}
    assert listed == expected
    if not expected:
        _compile(model, calib)
        return
    with pytest.raises(SnnccError) as err:
        _compile(model, calib)
    raised = {(d.code, d.node) for d in err.value.diagnostics}
    assert raised == expected


@pytest.mark.parametrize("head", ["softmax", "logsoftmax", "reshape_softmax"])
def test_inspect_lists_the_head(head):
    report = inspect_model(_net(head))
    assert report["unsupported"] == []
    assert [h["op"] for h in report["output_head"]] == [
        "LogSoftmax" if head == "logsoftmax" else "Softmax"]


def _squeezenet() -> str | None:
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_squeezenet.onnx")
    return path if os.path.isfile(path) else None


@pytest.mark.skipif(_squeezenet() is None, reason="onnx ships no light_squeezenet.onnx")
def test_model_zoo_squeezenet_compiles_and_inspect_agrees(tmp_path):
    """conv10 -> Relu -> GlobalAveragePool -> Softmax (opset 9: Flatten/Softmax/Reshape(Shape))."""
    model = _squeezenet()
    report = inspect_model(model)
    assert report["unsupported"] == []
    assert [h["op"] for h in report["output_head"]] == ["Softmax"]
    calib = tmp_path / "calib.npy"
    x = np.random.default_rng(0).random((2, 3, 224, 224)).astype(np.float32)
    np.save(calib, x)
    out = tmp_path / "squeezenet.snn.onnx"
    proc = subprocess.run([sys.executable, "-m", "snncc", "compile", model, "-T", "4", "--neuron",
                           "if", "--calib", str(calib), "--calib-method", "max", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    snn = onnx.load(out)
    probs = run_ort(snn, {"data_0": x[:1]}, library=True)[0]
    assert probs.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["act_gelu_op", "act_swish_op", "act_many", "act_softmax_inside",
                                  "opset9", "softmax_output"])
def test_inspect_and_compile_agree_on_the_zoo(tmp_path, name):
    """Ops decomposed by canonicalize (Gelu, Swish) are named as compile names them; a model
    with no ReLU gets SNN-E204 from both. (All 45 zoo models agreed when this was written.)"""
    import zoo

    model = zoo.ZOO[name]()
    listed = {(u["code"], u["node"]) for u in inspect_model(model)["unsupported"]}
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((8, *dims[1:])).astype(np.float32))
    try:
        _compile(model, str(calib))
        raised = set()
    except SnnccError as exc:
        raised = {(d.code, d.node) for d in exc.diagnostics}
    assert listed == raised


def test_an_argmax_head_is_read_as_classes(tmp_path, capsys):
    """An ArgMax head outputs class indices [N, 1]: snncc run took them for one logit (every
    prediction 0, labels refused with E680 'store y as class indices 0..0') and the fidelity
    check had no arg-max to compare."""
    import json

    from snncc.cli import main

    examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    model = onnx.load(os.path.join(examples, "digits_cnn.onnx"))
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [logits], ["cls"], axis=1, keepdims=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.INT64, ["N", 1]))
    onnx.save(model, tmp_path / "am.onnx")
    calib = os.path.join(examples, "digits_cnn_calib.npz")
    test = os.path.join(examples, "digits_cnn_test.npz")
    accuracy = {}
    for name, src in (("plain", os.path.join(examples, "digits_cnn.onnx")),
                      ("argmax", str(tmp_path / "am.onnx"))):
        out = tmp_path / f"{name}.snn.onnx"
        assert main(["compile", src, "-T", "4", "--neuron", "mt", "--calib", calib, "-o",
                     str(out), "-q", "--report", str(tmp_path / f"{name}.json")]) == 0
        fid = json.loads((tmp_path / f"{name}.json").read_text())["fidelity"]
        assert fid["snn_vs_ann"]["top1_agreement"] is not None
        # class indices have no logit error (it was the relative error of the indices)
        assert (fid["snn_vs_ann"]["rel_logit_error"] is None) == (name == "argmax")
        capsys.readouterr()
        assert main(["compile", src, "-T", "4", "--neuron", "mt", "--calib", calib, "-o",
                     str(out), "--force"]) == 0
        assert ("relative logit error" in capsys.readouterr().out) == (name == "plain")
        capsys.readouterr()
        assert main(["run", str(out), "--input", test, "--json"]) == 0
        accuracy[name] = json.loads(capsys.readouterr().out)["accuracy"]
    assert accuracy["argmax"] == accuracy["plain"] > 0.9


@pytest.mark.parametrize("schedule, head", [("streaming", {"probs": {"op": "Softmax", "axis": 1}}),
                                            ("folded", {})])
def test_the_manifest_names_the_head_and_fill_a_streaming_caller_needs(calib, tmp_path,
                                                                       schedule, head):
    """MODEL.onnx.json had steps and decode_from but not the dropped head nor the pipeline
    fill, which only the model's metadata held."""
    import json

    from snncc.driver import compile_model

    src = tmp_path / "net.onnx"
    onnx.save(_net("softmax"), src)
    res = compile_model(src, tmp_path / "o.onnx", make_options(
        calib_path=calib, timesteps=4, neuron="bitserial", schedule=schedule,
        calib_method="max", fidelity_samples=0))
    manifest = json.loads((tmp_path / "o.onnx.json").read_text())
    meta = {p.key: p.value for p in onnx.load(res.output).metadata_props}
    assert manifest["output_head"] == head == json.loads(meta.get("snncc.output_head", "{}"))
    assert manifest["pipeline_fill"] == int(meta["snncc.pipeline_fill"])
    assert (manifest["pipeline_fill"] > 0) == (schedule == "streaming")
