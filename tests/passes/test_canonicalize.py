"""canonicalize over the zoo: outputs preserved, canonical invariants, batch-agnostic reshapes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo
from helpers import assert_pass_equivalent, op_types, run_ort, run_passes, tiny_model

from snncc import ir
from snncc.context import CompileOptions
from snncc.errors import ModelInputError, UnsupportedNodeError
from snncc.passes.canonicalize import CanonicalizePass
from snncc.passes.support import unsupported_nodes


def _options(name: str, **kw) -> CompileOptions:
    kw.setdefault("allow_analog", True)
    return CompileOptions(target="qann", input_shapes=zoo.INPUT_SHAPES.get(name, {}), **kw)


def _feeds(name: str, model: onnx.ModelProto, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs of the given batch; other dims from the model or its --input-shape."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = zoo.INPUT_SHAPES.get(name, {}).get(inp.name) or [
            d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.normal(0, 1, size=(batch, *dims[1:])).astype(np.float32)
    return feeds


def _pass(name: str = "") -> CanonicalizePass:
    """act_many has no ReLU at all (SNN-E204, tested on its own): check its rewrites anyway."""
    return CanonicalizePass(require_activation=name != "act_many")


def _canonical(name: str) -> onnx.ModelProto:
    out, _, _ = run_passes(zoo.ZOO[name](), [_pass(name)], options=_options(name))
    return out


def assert_canonical(model: onnx.ModelProto) -> None:
    """The invariants every canonical graph satisfies."""
    assert not {"Dropout", "Identity", "Sum", "Constant"} & set(op_types(model))
    assert {(i.domain, i.version) for i in model.opset_import} >= {("", 17)}
    inits = {i.name: i for i in model.graph.initializer}
    assert not inits.keys() & {i.name for i in model.graph.input}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), inp
    typed = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
    for node in model.graph.node:
        for out in node.output:
            assert typed[out].type.tensor_type.HasField("shape"), out
        if node.op_type == "Reshape" and node.input[1] in inits:
            assert onnx.numpy_helper.to_array(inits[node.input[1]])[0] in (-1, 0), node.name


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_preserves_outputs_and_is_canonical(name):
    model = zoo.ZOO[name]()
    out, report, _ = assert_pass_equivalent(model, [_pass(name)], options=_options(name),
                                            feeds=_feeds(name, model, batch=1), rtol=1e-5)
    assert report.rows[0].modified
    assert_canonical(out)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_batch_agnostic(name):
    """Batch 3 through the canonical model equals three batch-1 runs of the original."""
    model = zoo.ZOO[name]()
    feeds = _feeds(name, model, batch=3)
    got = run_ort(_canonical(name), feeds)
    for i in range(3):
        want = run_ort(model, {k: v[i:i + 1] for k, v in feeds.items()})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[i:i + 1], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, counts, ops", [
    ("ir3_opset7_inits_as_inputs", {"opset_converted_from": 7, "dropout_removed": 1},
     ["Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"]),
    ("opset21", {"opset_converted_from": 21}, None),
    ("dropout_identity", {"dropout_removed": 1, "identity_removed": 2, "constants_folded": 1},
     ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]),
    ("sum3", {"sum_rewritten": 1},
     ["Conv", "Conv", "Conv", "Add", "Add", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]),
    ("bn_node", {}, ["Conv", "BatchNormalization", "Relu", "GlobalAveragePool", "Flatten",
                     "Gemm"]),
    ("bn_mul_add", {}, ["Conv", "Mul", "Add", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]),
    ("sub_div_const", {"sub_div_by_constant_rewritten": 2},
     ["Conv", "Add", "Mul", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]),
    ("constant_weights", {}, ["Conv", "Relu", "Reshape", "Gemm"]),
    ("reshape_batch1", {"reshape_batch_fixed": 1}, None),
    ("reshape_batch1_minus1", {"reshape_batch_fixed": 1}, None),
    ("channel_shuffle", {"reshape_batch_fixed": 2}, None),
    ("flatten_axis0", {"flatten_batch_fixed": 1}, None),
    ("act_gelu_op", {"ops_decomposed": 1, "opset_converted_from": 20}, None),
    ("act_mish_op", {"ops_decomposed": 1, "opset_converted_from": 18}, None),
])
def test_counts_and_ops(name, counts, ops):
    out, report, _ = run_passes(zoo.ZOO[name](), [CanonicalizePass()], options=_options(name))
    row = report.rows[0]
    assert {k: row.counts.get(k) for k in counts} == counts
    if ops is not None:
        assert op_types(out) == ops
    if name == "constant_weights":
        assert row.counts["constants_folded"] > 0


def test_initializers_listed_as_inputs_are_dropped():
    model = zoo.ir3_opset7_inits_as_inputs()
    assert len(model.graph.input) > 1
    out = _canonical("ir3_opset7_inits_as_inputs")
    assert [i.name for i in out.graph.input] == ["x"]


def test_input_shape_fixes_dynamic_dims():
    out = _canonical("dynamic_hw")
    dims = out.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 8, 8]


def test_batch_taken_from_shape_stays_dynamic():
    """x.view(x.size(0), -1): the batch must not be baked into a constant; the target becomes
    [0, -1] (copy the batch), so no Shape op is left for backends that have none (Loihi, NIR).
    test_batch_agnostic runs it at other batch sizes."""
    out = _canonical("view_batch_from_shape")
    assert not {"Shape", "Gather", "Concat", "Unsqueeze"} & set(op_types(out))
    (reshape,) = [n for n in out.graph.node if n.op_type == "Reshape"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    assert inits[reshape.input[1]].tolist() == [0, -1]


@pytest.mark.parametrize("name", sorted(zoo.UNSUPPORTED))
def test_unsupported_activation_rejected(name):
    with pytest.raises(UnsupportedNodeError) as info:
        run_passes(zoo.ZOO[name](), [CanonicalizePass()], options=_options(name,
                                                                           allow_analog=False))
    (diag,) = info.value.diagnostics
    assert info.value.code == "SNN-E201"
    assert diag.code in {"SNN-E201", "SNN-E202", "SNN-E203"}
    assert zoo.UNSUPPORTED[name] in diag.message and diag.hint


def test_all_unsupported_reported_at_once():
    with pytest.raises(UnsupportedNodeError) as info:
        run_passes(zoo.act_many(), [CanonicalizePass()], options=_options("act_many",
                                                                          allow_analog=False))
    ops = sorted(d.node.split("::")[1].rstrip(")") for d in info.value.diagnostics if d.node)
    assert ops == ["LeakyRelu", "Sigmoid", "Tanh"]
    # no ReLU either: said in the same error, so fixing the three ops is known not to suffice
    assert [d.code for d in info.value.diagnostics if not d.node] == ["SNN-E204"]


@pytest.mark.parametrize("name, code", [("act_silu_pattern", "SNN-E202"),
                                        ("act_gelu_erf", "SNN-E202"),
                                        ("act_mish_pattern", "SNN-E202"),
                                        ("act_softmax_inside", "SNN-E203")])
def test_pattern_codes(name, code):
    diags = unsupported_nodes(ir.load(zoo.ZOO[name]()).graph, CompileOptions())
    assert [d.code for d in diags] == [code]
    assert diags[0].severity == "error"


def test_analog_allowed_turns_findings_into_warnings():
    diags = unsupported_nodes(ir.load(zoo.act_many()).graph, CompileOptions(allow_analog=True))
    assert {d.severity for d in diags} == {"warning"}


@pytest.mark.parametrize("name", ["softmax_output", "logsoftmax_output", "opset13"])
def test_final_softmax_is_fine(name):
    run_passes(zoo.ZOO[name](), [CanonicalizePass()], options=_options(name, allow_analog=False))


RESHAPE_MIXING_BATCH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,8,8] x) => (float[4,64] y) <int64[2] s = {4, 64}> { y = Reshape(x, s) }
"""

DROPOUT_TRAINING = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) <float r = {0.5}, float z = {0.0}> {
  m = ReduceMax <keepdims = 0> (x)
  t = Greater(m, z)
  y = Dropout(x, r, t)
}
"""


@pytest.mark.parametrize("text, code", [(RESHAPE_MIXING_BATCH, "RESHAPE_MIXES_BATCH"),
                                        (DROPOUT_TRAINING, "DROPOUT_TRAINING_MODE")])
def test_declines(text, code):
    out, report, _ = run_passes(tiny_model(text), [CanonicalizePass(require_activation=False)])
    assert code in {d["code"] for d in report.rows[0].declines}
    assert op_types(out) == op_types(tiny_model(text))


TRAINING_EXPORT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4,6,6] x) => (float[2,10] y)
  <float[4,4,3,3] w = {...}, float[4] g = {1,1,1,1}, float[4] b = {0,0,0,0},
   float[4] m = {0,0,0,0}, float[4] v = {1,1,1,1}, float r = {0.5}, bool t = {1},
   float[144,10] f = {...}> {
  c = Conv <pads = [1,1,1,1]> (x, w)
  n, rm, rv = BatchNormalization <training_mode = 1> (c, g, b, m, v)
  a = Relu(n)
  s = Flatten(a)
  d = Dropout(s, r, t)
  y = MatMul(d, f)
}
"""


def test_a_model_exported_in_training_mode_is_refused_with_every_such_node_named():
    """torch.onnx.export of a model left in train() mode: the BatchNormalization used each
    batch's statistics and the Dropout its random mask inside the SNN (a user's net gave 97.6 /
    98.4 / 98.6 % at batch 1 / 16 / 500). Now one SNN-E208 names both, and inspect agrees."""
    from snncc.inspect import inspect_model
    text = TRAINING_EXPORT.replace("{...}", "{" + ",".join(["0.1"] * 144) + "}", 1) \
        .replace("{...}", "{" + ",".join(["0.01"] * 1440) + "}", 1)
    model = tiny_model(text)
    with pytest.raises(UnsupportedNodeError) as info:
        run_passes(model, [CanonicalizePass()], options=_options("train_export",
                                                                  allow_analog=True))
    err = info.value
    assert err.code == "SNN-E208" and "training mode" in str(err) and "model.eval()" in err.hint
    assert sorted(d.node.split("::")[1].rstrip(")") for d in err.diagnostics) == \
        ["BatchNormalization", "Dropout"]
    assert {d.code for d in err.diagnostics} == {"SNN-E208"}
    from snncc.inspect import format_inspect
    assert "SNN-E208" in format_inspect(inspect_model(model))


def test_the_summary_counts_what_its_list_holds():
    """Three unsupported activations and no ReLU: the summary said "3 node(s)" over four items."""
    with pytest.raises(UnsupportedNodeError) as info:
        run_passes(zoo.act_many(), [CanonicalizePass()], options=_options("act_many",
                                                                          allow_analog=False))
    assert str(info.value).split(". Hint")[0].endswith(
        "3 node(s) have no spiking equivalent, and nothing would become a neuron")
    # --allow-analog would leave no neuron either: neither the header nor a node offers it
    assert "would leave no neuron" in info.value.hint
    assert not any("allow-analog" in d.hint or "allow_analog" in d.hint
                   for d in info.value.diagnostics)



def _opset9(nodes, out_shape, **weights) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
             for name, shape in weights.items()]
    graph = helper.make_graph(
        [helper.make_node(*n[:3], **(n[3] if len(n) > 3 else {})) for n in nodes], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_opset9_relu6_clip_then_softmax_is_a_head():
    """Clip(min=0, max=6) in the attribute form (opset < 11) spikes, so the Softmax after it is
    the output head, before and after conversion."""
    model = _opset9([("Conv", ["x", "w"], ["c"]), ("Clip", ["c"], ["a"], {"min": 0.0, "max": 6.0}),
                     ("GlobalAveragePool", ["a"], ["g"]), ("Flatten", ["g"], ["f"]),
                     ("Gemm", ["f", "wf", "bf"], ["l"], {"transB": 1}), ("Softmax", ["l"], ["p"])],
                    [1, 5], w=(4, 3, 3, 3), wf=(5, 4), bf=(5,))
    assert unsupported_nodes(ir.load(model).graph, CompileOptions()) == []
    out, _, _ = run_passes(model, [CanonicalizePass()], options=_options("", allow_analog=False))
    assert op_types(out)[-1] == "Softmax"


def test_reshape_to_shape_of_batch_major_tensor_becomes_constant():
    """The opset-9 Softmax conversion writes Reshape(Softmax(Flatten(y)), Shape(y))."""
    model = _opset9([("Conv", ["x", "w"], ["c"]), ("Relu", ["c"], ["a"]),
                     ("GlobalAveragePool", ["a"], ["y"]), ("Softmax", ["y"], ["p"])],
                    [1, 4, 1, 1], w=(4, 3, 3, 3))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()],
                                            options=_options("", allow_analog=False))
    assert report.rows[0].counts.get("reshape_shape_fixed") == 1
    assert "Shape" not in op_types(out)


REDUNDANT_RELUS = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,4,8,8] y, float[N,4,8,8] y6)
<float[4,3,3,3] w = {{{','.join(['0'] * 108)}}}, float[4,3,3,3] w2 = {{{','.join(['0'] * 108)}}},
 float lo = {{0.0}}, float hi = {{6.0}}> {{
  c = Conv <pads = [1,1,1,1]> (x, w)
  a = Relu(c)
  b = Relu(a)
  y = Relu(b)
  c2 = Conv <pads = [1,1,1,1]> (x, w2)
  r = Relu(c2)
  y6 = Clip(r, lo, hi)
}}
"""


def test_redundant_relus_are_removed():
    """Relu(Relu(x)) and Relu before a Clip(0, 6) would each become an extra neuron layer."""
    model = tiny_model(REDUNDANT_RELUS, params={"lo": np.float32(0), "hi": np.float32(6)})
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()],
                                            options=_options("", allow_analog=False))
    assert report.rows[0].counts.get("redundant_relu_removed") == 3
    assert sorted(op_types(out)) == ["Clip", "Conv", "Conv", "Relu"]
    assert [o.name for o in out.graph.output] == ["y", "y6"]



SPATIAL_MEANS = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,5] y, float[N,4,1,1] k)
<float[4,3,3,3] w = {{{','.join(['0'] * 108)}}}, float[5,4] wf = {{{','.join(['0'] * 20)}}}> {{
  c = Conv <pads = [1,1,1,1]> (x, w)
  a = Relu(c)
  m = ReduceMean <axes = [-2, -1], keepdims = 0> (a)
  y = Gemm <transB = 1> (m, wf)
  k = ReduceMean <axes = [2, 3]> (a)
}}
"""


def test_a_spatial_mean_becomes_global_average_pooling():
    """x.mean((2, 3)) (PyTorch's global average pool idiom) exports as ReduceMean, which the
    Loihi and NIR backends refuse (E270/E692) although they map GlobalAveragePool."""
    out, report, _ = assert_pass_equivalent(tiny_model(SPATIAL_MEANS), [CanonicalizePass()],
                                            options=_options("", allow_analog=False))
    assert report.rows[0].counts.get("spatial_mean_to_global_pool") == 2
    assert "ReduceMean" not in op_types(out) and op_types(out).count("GlobalAveragePool") == 2


def test_an_activation_in_the_analog_prefix_converts_but_not_elsewhere():
    """Before the first spiking layer an activation runs once on the input, exactly, as a Clip
    there always did (the coverage sweep found LeakyReLU/PReLU refused where Clip(-1, 6) was
    not); between spiking layers, or in a net with no ReLU at all, it is still refused."""
    def model(first: str, second: str) -> onnx.ModelProto:
        b = zoo._Builder(40)
        h = b.op(first, [b.conv("x", 3, 4)], alpha=0.1)
        h = b.op(second, [b.conv(h, 4, 4)], **({"alpha": 0.1} if second != "Relu" else {}))
        return b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 4, 5))

    options = CompileOptions(target="ort")
    prefix = ir.load(model("LeakyRelu", "Relu"))
    assert unsupported_nodes(prefix.graph, options) == []
    everywhere = ir.load(model("LeakyRelu", "LeakyRelu"))
    assert [d.code for d in unsupported_nodes(everywhere.graph, options)] == ["SNN-E201"] * 2


def test_sub_div_rewrite_keeps_shape_arithmetic_exact_and_shares_one_constant():
    """A review found the Div -> Mul rewrite running on shape arithmetic: floor(82 * (1/41)) is
    1, not 2, and the Reshape target came out wrong (E412 at calibration); and a constant read by
    two Sub nodes gave two tensors of one name (graph-surgeon warnings on every compile)."""
    from onnx import TensorProto

    b = zoo._Builder(3)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    f = b.op("Cast", [b.op("Gather", [b.op("Shape", [h]), b.const(2, "i", np.int64)])],
             to=TensorProto.FLOAT)
    k = b.op("Cast", [b.op("Floor", [b.op("Div", [f, b.const(41.0, "d")])])],
             to=TensorProto.INT64)
    rows = b.op("Mul", [b.op("Unsqueeze", [k, b.const([0], "ax", np.int64)]),
                        b.const([41], "h41", np.int64)])
    target = b.op("Concat", [b.const([0], "z", np.int64), b.const([-1], "m1", np.int64), rows,
                             b.const([41], "w", np.int64)], axis=0)
    h = b.op("Relu", [b.conv(b.op("Reshape", [h, target]), 4, 4)])
    mean = b.rand((1, 4, 1, 1), "mean")
    h = b.op("Add", [b.op("Sub", [h, mean]), b.op("Sub", [h, mean])])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 4, 5),
                    input_shape=(1, 3, 82, 41))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["sub_div_by_constant_rewritten"] == 2
    adds = [n for n in out.graph.node if n.op_type == "Add" and n.input[1].endswith("_neg")]
    assert len(adds) == 2 and adds[0].input[1] == adds[1].input[1]
    # renamed after what they became (a NIR refusal named '/Sub_3' an Add), names still unique
    assert all(n.name.endswith("/as_Add") for n in adds)
    assert len({n.name for n in out.graph.node}) == len(out.graph.node)


@pytest.mark.parametrize("opset", [18, 19, 21])
def test_pad_and_split_of_opset_18_and_newer_come_down_to_17(opset):
    """torch's default (dynamo) exporter writes opset 18+; the version converter has no adapter
    below 18 for Pad (axes input) or Split (num_outputs), so such models failed with SNN-E118."""
    b = zoo._Builder(5)
    h = b.op("Relu", [b.conv("x", 3, 5)])
    # pad only H and W (the axes input), reflect; then an uneven 3-way split of 5 channels (2/2/1)
    h = b.op("Pad", [h, b.const([1, 2, 0, 1], "pads", np.int64), "",
                     b.const([2, 3], "axes", np.int64)], mode="reflect")
    a, c, d = b.op("Split", [h], n_out=3, axis=1, num_outputs=3)
    h = b.op("Concat", [b.op("Relu", [b.conv(a, 2, 2)]), c, d], axis=1)
    h = b.op("Pad", [h, b.const([0, 0, 1, 1, 0, 0, 1, 1], "pads4", np.int64)])  # no axes
    model = b.model(zoo._head(b, b.op("Relu", [b.conv(h, 5, 4)]), 4), opset=opset)
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["opset_converted_from"] == opset
    assert out.opset_import[0].version == 17 and len(out.opset_import) == 1
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert not [a for a in split.attribute if a.name == "num_outputs"]
    assert all(len(n.input) <= 3 for n in out.graph.node if n.op_type == "Pad")


def test_pad_wrap_has_no_opset_17_form():
    b = zoo._Builder(5)
    h = b.op("Pad", [b.op("Relu", [b.conv("x", 3, 4)]), b.const([0, 0, 1, 1, 0, 0, 1, 1], "p",
                                                                  np.int64)], mode="wrap")
    model = b.model(zoo._head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4), opset=19)
    with pytest.raises(ModelInputError) as err:
        run_passes(model, [CanonicalizePass()])
    assert err.value.code == "SNN-E118" and "wrap" in str(err.value)


def test_dequantized_weights_become_float_constants():
    """int8 weights behind DequantizeLinear (weight-only quantized exports): gs's folding leaves
    Q/DQ alone, so fold-batchnorm met a computed weight and failed with an internal E500."""
    from onnx import TensorProto

    b = zoo._Builder(9)
    q = b.const(b.rng.integers(-127, 128, (4, 3, 3, 3)), "wq", np.int8)
    w = b.op("DequantizeLinear", [q, b.const(np.full(4, 0.01) + b.rng.random(4) * 0.01, "ws")],
             axis=0)  # per output channel
    h = b.op("Relu", [b.bn(b.op("Conv", ["x", w], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 4)])
    q2 = b.const(b.rng.integers(0, 256, (4, 4, 3, 3)), "wq2", np.uint8)
    w2 = b.op("DequantizeLinear", [q2, b.const(0.004, "s2"), b.const(128, "z2", np.uint8)])
    h = b.op("Relu", [b.op("Conv", [h, w2, b.rand((4,), "b2")], kernel_shape=[3, 3],
                           pads=[1, 1, 1, 1])])
    model = b.model(zoo._head(b, h, 4))
    assert TensorProto.INT8 in [t.data_type for t in model.graph.initializer]
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["weights_dequantized"] == 2
    assert "DequantizeLinear" not in op_types(out)
    # and the whole front end takes it (fold-batchnorm folds into the dequantized weight)
    from snncc.passes.fold_batchnorm import FoldBatchNormPass
    assert_pass_equivalent(model, [CanonicalizePass(), FoldBatchNormPass()], rtol=1e-4,
                           atol=1e-5)


@pytest.mark.parametrize("channels, parts, split", [(5, 4, None), (4, 2, [2, 2])])
def test_invalid_opset_18_splits_are_named(channels, parts, split):
    """num_outputs that cannot be met (5 into 4 parts of 2), or given with a split input: ORT
    refuses both; canonicalize said nothing and ORT's raw message surfaced later."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(split, np.int64), "sp")] if split else []
    outs = [f"o{i}" for i in range(parts)]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Split", ["r"] + (["sp"] if split else []), outs, axis=1,
                              num_outputs=parts),
             helper.make_node("Concat", outs, ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, channels, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ModelInputError) as err:
        run_passes(model, [CanonicalizePass()], verify="off")
    assert err.value.code == "SNN-E118" and "Split" in str(err.value)


@pytest.mark.parametrize("target", [[1, 256], [1, -1]])
def test_allowzero_without_a_zero_still_gets_the_batch_fixed(target):
    """torch's default (dynamo) exporter writes Reshape(x, [1, 512], allowzero=1) for every
    flatten of a static-batch export; canonicalize skipped it (allowzero) and every classifier
    failed later with SNN-E243 'run canonicalize'. With no 0 in the target the flag changes
    nothing."""
    b = zoo._Builder(11)
    h = b.op("Reshape", [b.op("Relu", [b.conv("x", 3, 4)]), b.const(target, "shape", np.int64)],
             allowzero=1)
    model = b.model(b.gemm(h, 256, 5))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["reshape_batch_fixed"] == 1
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert all(a.i == 0 for a in reshape.attribute if a.name == "allowzero")


@pytest.mark.parametrize("reader, after_relu, folded", [
    ("Conv", False, True), ("AveragePool", False, True), ("MaxPool", True, True),
    ("MaxPool", False, False)])
def test_a_zero_pad_folds_into_the_layer_after_it(reader, after_relu, folded):
    """torch's F.pad / ZeroPad2d export a Pad node, which neither Loihi nor NIR (nor the SynOp
    count) takes; before a Conv, an AveragePool (then counting the padding) or a MaxPool of a
    ReLU's output it is that layer's own padding. Before a MaxPool of signed values a zero can
    be the maximum: left."""
    b = zoo._Builder(14)
    h = b.conv("x", 3, 4)
    if after_relu:
        h = b.op("Relu", [h])
    pads = [0, 0, 1, 2, 0, 0, 2, 1] if reader == "Conv" else [0, 0, 1, 0, 0, 0, 0, 1]
    h = b.op("Pad", [h, b.const(pads, "pads", np.int64)])
    if reader == "Conv":
        h = b.op("Conv", [h, b.rand((4, 4, 3, 3), "w")], kernel_shape=[3, 3], pads=[1, 0, 0, 1])
    else:
        h = b.op(reader, [h], kernel_shape=[2, 2], strides=[2, 2])
    model = b.model(zoo._head(b, b.op("Relu", [h]), 4))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts.get("pad_folded", 0) == int(folded)
    assert ("Pad" in op_types(out)) != folded


@pytest.mark.parametrize("case", ["indices_output", "dilated"])
def test_a_zero_pad_stays_where_folding_would_change_the_pool(case):
    """A review: a MaxPool whose indices are a graph output would index another tensor, and a
    dilated window can hold only padding (its max 0 would become -FLT_MAX)."""
    from onnx import TensorProto, helper, numpy_helper

    F = TensorProto.FLOAT
    pool = dict(kernel_shape=[2, 2], dilations=[3, 3]) if case == "dilated" else \
        dict(kernel_shape=[2, 2], strides=[2, 2])
    outs = ["y", "idx"] if case == "indices_output" else ["y"]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["p"]),
             helper.make_node("MaxPool", ["p"], outs, **pool)]
    outputs = [helper.make_tensor_value_info("y", F, None)] + (
        [helper.make_tensor_value_info("idx", TensorProto.INT64, None)] if len(outs) > 1 else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 2, 2, 2])],
                              outputs, [numpy_helper.from_array(
                                  np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report, _ = run_passes(model, [CanonicalizePass(require_activation=False)], verify="off")
    assert "Pad" in op_types(out) and not report.rows[0].counts.get("pad_folded")


def test_a_reshape_target_made_constant_by_shape_folding_gets_its_batch_fixed():
    """A target that canonicalize's shape reader cannot follow ([1] ++ (Shape[1:] + 0) here; in
    the sweep a legacy LRN export) became the constant [1, C, H, W] only in the last fold, kept
    its batch of 1, and calibration failed (E412) on 8 samples."""
    import onnxruntime as ort

    b = zoo._Builder(16)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    dims = b.op("Slice", [b.op("Shape", [h]), b.const([1], "s", np.int64),
                          b.const([4], "e", np.int64)])
    target = b.op("Concat", [b.const([1], "one", np.int64),
                             b.op("Add", [dims, b.const(np.zeros(3), "z", np.int64)])], axis=0)
    h = b.op("Relu", [b.conv(b.op("Reshape", [h, target]), 4, 4)])
    model = b.model(zoo._head(b, h, 4))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["reshape_batch_fixed"] >= 1
    x = np.random.default_rng(0).random((3, 3, 8, 8), np.float32)
    (y,) = ort.InferenceSession(out.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape[0] == 3


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("size,to,rewrite", [(4, 8, "resize_sizes_to_scales"),
                                             (4, 6, "resize_sizes_to_scales"),
                                             (5, 7, "resize_sizes_batch_read")])
def test_a_resize_to_constant_sizes_keeps_its_result_for_any_batch(mode, size, to, rewrite):
    """Resize(x, sizes=[1, C, H', W']) names the export batch, which the folded T*N rows then
    contradict. It becomes scales where float32 (ONNX Runtime) and double (shape inference)
    both give exactly H' (5 -> 7 would be 7 in one and 6 in the other: there the batch is read
    from the input instead). ORT outputs equal at batch 1 and 3; shapes inferred right."""
    b = zoo._Builder(6)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    h = b.op("Resize", [h, "", "", b.const([1, 4, to, to], "sizes", np.int64)], mode=mode)
    model = b.model(zoo._head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4),
                    input_shape=(1, 3, size, size))
    x = np.random.default_rng(1).normal(size=(3, 3, size, size)).astype(np.float32)
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], feeds={"x": x[:1]})
    assert report.rows[0].counts[rewrite] == 1
    each = np.concatenate([run_ort(model, {"x": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], each, rtol=1e-5, atol=1e-6)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    shape = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
             for v in out.graph.value_info}[resize.output[0]]
    assert shape[1:] == [4, to, to] and isinstance(shape[0], str)


def test_an_opset_10_linear_resize_keeps_its_asymmetric_coordinates():
    """Opset 10 samples a linear resize at x_out / scale; the version converter left the
    opset-11 default (half_pixel), another result in ONNX Runtime."""
    b = zoo._Builder(7)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    h = b.op("Resize", [h, b.const([1, 1, 2, 2], "scales")], mode="linear")
    model = b.model(zoo._head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4), opset=10,
                    input_shape=(1, 3, 4, 4))
    out, _, _ = assert_pass_equivalent(model, [CanonicalizePass()])
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert ir.node_attrs(resize)["coordinate_transformation_mode"] == "asymmetric"


@pytest.mark.requires_torch
def test_a_zero_pad_exported_at_torchs_default_opset_converts(tmp_path):
    """nn.ZeroPad2d at torch's default opset exports its pads through ConstantOfShape, which the
    version converter has no 20 -> 19 adapter for (SNN-E118 before): constant subgraphs are now
    folded before the conversion, and the result equals the opset-17 export's."""
    import onnxruntime as ort
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)),
                        nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    path = tmp_path / "pad.onnx"
    torch.onnx.export(net, x, str(path), dynamo=False, input_names=["x"])
    model = onnx.load(str(path))
    assert model.opset_import[0].version > 17
    out, _, _ = run_passes(model, [CanonicalizePass()])
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.requires_torch
@pytest.mark.parametrize("opset", [9, 13, 15])
def test_a_training_mode_batchnorm_is_refused_at_every_opset(tmp_path, opset):
    """Before opset 14 a BatchNormalization's extra outputs themselves mean training mode (torch
    leaves them unread): those exports had failed in the version converter (E118) and inspect had
    found nothing."""
    import torch
    from torch import nn

    from snncc.inspect import format_inspect, inspect_model

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(144, 10)).train()
    path = tmp_path / f"bn{opset}.onnx"
    torch.onnx.export(net, torch.randn(2, 1, 8, 8), str(path), opset_version=opset, dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["input"])
    model = onnx.load(str(path))
    with pytest.raises(UnsupportedNodeError) as info:
        run_passes(model, [CanonicalizePass()], options=_options(f"bn{opset}"))
    assert info.value.code == "SNN-E208"
    assert "SNN-E208" in format_inspect(inspect_model(model))


@pytest.mark.parametrize("op,mode,stride,dilation", [
    ("Conv", "SAME_UPPER", 1, 1), ("Conv", "SAME_LOWER", 1, 1), ("Conv", "SAME_UPPER", 2, 1),
    ("Conv", "VALID", 2, 1), ("AveragePool", "SAME_UPPER", 2, 1),
    ("MaxPool", "SAME_LOWER", 2, 1)])
def test_auto_pad_becomes_explicit_pads(op, mode, stride, dilation):
    """torch's padding='same' exports auto_pad=SAME_UPPER, which the Loihi lowering, NIR and the
    SynOp count refused (their hint sent users to a step they could not run): the pads ONNX
    defines for it, from the static input size (8 x 7 here: odd and even, an uneven total).
    (ONNX Runtime runs no dilated SAME conv, so no exporter writes one.)"""
    b = zoo._Builder(15)
    h = b.op("Relu", [b.conv("x", 3, 4)])
    if op == "Conv":
        h = b.op("Conv", [h, b.rand((4, 4, 4, 3), "w")], kernel_shape=[4, 3], auto_pad=mode,
                 strides=[stride, stride], dilations=[dilation, dilation])
    else:
        h = b.op(op, [h], kernel_shape=[3, 2], auto_pad=mode, strides=[stride, stride])
    model = b.model(zoo._head(b, b.op("Relu", [h]), 4), input_shape=("N", 3, 8, 7))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass()], rtol=1e-5)
    assert report.rows[0].counts["auto_pad_made_explicit"] == 1
    assert not any(a.name == "auto_pad" for n in out.graph.node for a in n.attribute)


def test_a_transpose_before_gemm_trans_a_is_undone(tmp_path):
    """Gemm(Transpose(x), W, transA=1) is x W^T: every spiking compile had refused it as a
    Transpose across the batch axis (SNN-E242), after calibration (a graph-variety audit)."""
    from pathlib import Path

    from onnx import helper

    from snncc.driver import compile_model, make_options

    examples = Path(__file__).resolve().parents[2] / "examples"
    proto = onnx.load(str(examples / "digits_cnn.onnx"))
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "Gemm":
            t = node.input[0] + "_T"
            nodes.append(helper.make_node("Transpose", [node.input[0]], [t], perm=[1, 0]))
            node.input[0] = t
            node.attribute.append(helper.make_attribute("transA", 1))
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    x = np.load(examples / "digits_cnn_test.npz")["x"][:16]
    out, report, _ = assert_pass_equivalent(proto, [CanonicalizePass()], feeds={"input": x})
    assert "Transpose" not in op_types(out)
    assert report.rows[0].counts["gemm_transpose_folded"] == 2
    onnx.save(proto, str(tmp_path / "t.onnx"))
    compile_model(tmp_path / "t.onnx", tmp_path / "t.snn.onnx", make_options(
        neuron="mt", timesteps=4, calib_path=str(examples / "digits_cnn_calib.npz")))
