"""ONNX in -> trainable module -> ONNX out: loader, QCFS / LIF / MT export, the CLI command, errors."""
import argparse
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from helpers import run_ort, tiny_model  # noqa: E402
from snncc.errors import CalibrationError, OptionError, SnnccError, UnsupportedNodeError  # noqa: E402
from snncc.train.cli import add_finetune_arguments, run_finetune  # noqa: E402
from snncc.train.export import export_onnx  # noqa: E402
from snncc.train.iir import LIF, MTNeuron, convert_to_snn, run_snn  # noqa: E402
from snncc.train.onnx_to_torch import load_onnx_module  # noqa: E402
from snncc.train.qcfs import replace_relu_with_qcfs  # noqa: E402

QCFS_CHAIN = ["Div", "Mul", "Add", "Floor", "Div", "Clip", "Mul"]

INITS = {"w1": (4, 1, 3, 3), "b1": (4,), "bn_scale": (4,), "bn_bias": (4,), "bn_mean": (4,), "bn_var": (4,),
         "w2": (8, 36), "b2": (8,), "w3": (3, 8), "b3": (3,)}
CNN_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 1, 6, 6] input) => (float[N, 3] logits)
<%s, int64[2] shape = {-1, 36}>
{
    c = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
    bn = BatchNormalization (c, bn_scale, bn_bias, bn_mean, bn_var)
    r1 = Relu (bn)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    f = Reshape (p, shape)
    g = Gemm <transB = 1> (f, w2, b2)
    r2 = Relu (g)
    logits = Gemm <transB = 1> (r2, w3, b3)
}
""" % ", ".join(f"float[{','.join(map(str, s))}] {n} = {{{','.join(['0'] * int(np.prod(s)))}}}"
                for n, s in INITS.items())


def _cnn_model(dyadic=True):
    return tiny_model(CNN_TEXT, dyadic=dyadic)


def _dyadic_net():
    """A torch CNN whose weights and inputs are multiples of 1/64: float32 sums are exact in any order."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.round(p * 64) / 64)
    return net


def _dyadic_input(n=16, seed=0):
    return np.round(np.random.default_rng(seed).normal(0, 1, (n, 1, 6, 6)) * 8).astype(np.float32) / 8


def test_loader_matches_ort_and_exposes_swappable_layers():
    model = _cnn_model()
    net = load_onnx_module(model).eval()
    x = _dyadic_input()
    # BatchNormalization divides by sqrt(var + eps): not exact, and torch/ORT order its ops differently
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), run_ort(model, {"input": x})[0],
                               rtol=1e-5, atol=1e-5)
    kinds = sorted(type(m).__name__ for m in net.layers.values())
    assert kinds == ["BatchNorm", "MaxPool2d", "ReLU", "ReLU"]
    assert net.input_dims == ["N", 1, 6, 6]
    assert sum(p.numel() for p in net.parameters()) == 4 * 9 + 4 + 4 + 4 + 8 * 36 + 8 + 3 * 8 + 3


def test_loaded_graph_exports_with_its_ops_and_a_free_batch():
    """Flatten / GlobalAveragePool come back as themselves, and the batch size is not baked in."""
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 2, 4, 4] input) => (float[N, 3] logits)
        <float[3, 2, 1, 1] w = {1, 0.5, -1, 0.25, 0.5, 2}, float[3, 3] w2 = {1, 0, 0, 0, 1, 0, 0, 0, 1}> {
            c = Conv (input, w)
            r = Relu (c)
            p = GlobalAveragePool (r)
            f = Flatten (p)
            logits = MatMul (f, w2)
        }""", dyadic=True)
    net = load_onnx_module(model)
    replace_relu_with_qcfs(net, 4, 2.0)
    net.eval()
    x = np.round(np.random.default_rng(0).normal(0, 1, (5, 2, 4, 4)) * 8).astype(np.float32) / 8
    proto = export_onnx(net, torch.from_numpy(x[:1]), input_dims=net.input_dims)
    assert [n.op_type for n in proto.graph.node] == ["Conv", *QCFS_CHAIN, "GlobalAveragePool", "Flatten", "MatMul"]
    np.testing.assert_array_equal(run_ort(proto, {"input": x})[0], net(torch.from_numpy(x)).detach().numpy())


@pytest.mark.parametrize("opset, mean", [
    (17, "p = ReduceMean <axes = [2, 3], keepdims = 0> (r)"),
    (18, "p = ReduceMean <keepdims = 0> (r, axes)")])
def test_reduce_mean_global_pool_loads(opset, mean):
    """torch's x.mean((2, 3)) exports as ReduceMean; finetune refused it (E801) while compile
    takes it (a helper's Inception, MobileNet and bottleneck nets)."""
    model = tiny_model(f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        net (float[N, 2, 4, 4] input) => (float[N, 3] logits)
        <float[3, 2, 1, 1] w = {{1, 0.5, -1, 0.25, 0.5, 2}}, float[3, 3] w2 = {{1, 0, 0, 0, 1, 0, 0, 0, 1}},
         int64[2] axes = {{2, 3}}> {{
            c = Conv (input, w)
            r = Relu (c)
            {mean}
            logits = MatMul (p, w2)
        }}""", dyadic=True)
    net = load_onnx_module(model).eval()
    x = np.round(np.random.default_rng(0).normal(0, 1, (5, 2, 4, 4)) * 8).astype(np.float32) / 8
    np.testing.assert_array_equal(net(torch.from_numpy(x)).detach().numpy(),
                                  run_ort(model, {"input": x})[0])


@pytest.mark.parametrize("opset, clip, kind", [
    (17, "r = Clip (c, zero, six)", "BoundedReLU"),        # ReLU6 as torch exports it
    (6, "r = Clip <min = 0.0, max = 6.0> (c)", "BoundedReLU"),   # bounds as attributes (opset < 11)
    (17, "r = Clip (c, zero)", "ReLU"),                   # no upper bound: a ReLU
    (17, "r = Clip (c, zero1, six1)", "BoundedReLU"),      # one-element bounds
    (17, "r = Clip (c, neg, six)", None)])                # not an activation site: stays a clamp
def test_relu6_clips_load_as_activation_sites(opset, clip, kind):
    """A Clip(0, c) is an activation site for finetune as for compile (it had refused ReLU6 nets,
    E805); the loaded module equals ORT."""
    model = tiny_model(f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        net (float[N, 2, 4, 4] input) => (float[N, 3] logits)
        <float[3, 2, 1, 1] w = {{1, 1, 1, 1, 1, 1}}, float zero = {{0}}, float six = {{6}}, float neg = {{-1}},
         float[3, 3] w2 = {{1, 0, 0, 0, 1, 0, 0, 0, 1}}, float[1] zero1 = {{0}}, float[1] six1 = {{6}}> {{
            c = Conv (input, w)
            {clip}
            p = GlobalAveragePool (r)
            f = Flatten (p)
            logits = MatMul (f, w2)
        }}""", dyadic=True, params={"zero": np.float32(0), "six": np.float32(6), "neg": np.float32(-1),
                                        "zero1": np.zeros(1, np.float32), "six1": np.full(1, 6, np.float32),
                                        "w": np.ones((3, 2, 1, 1), np.float32), "w2": np.eye(3, dtype=np.float32)})
    net = load_onnx_module(model).eval()
    assert [type(m).__name__ for m in net.layers.values()] == ([kind] if kind else [])
    if kind == "BoundedReLU":
        assert next(iter(net.layers.values())).max_val == 6.0
    x = np.round(np.random.default_rng(0).normal(0, 10, (5, 2, 4, 4)) * 8).astype(np.float32) / 8
    assert (x.sum(1) > 6).any() and (x.sum(1) < -1).any()   # the convolution's output passes both bounds
    np.testing.assert_array_equal(net(torch.from_numpy(x)).detach().numpy(),
                                  run_ort(model, {"input": x})[0])


def test_a_computed_clip_bound_is_folded_as_compile_folds_it():
    """A Clip bound that a node computes from constants had been SNN-E802 (and before that an
    internal KeyError); the loader now folds it as compile's canonicalize does, and the Clip is an
    activation site with that bound."""
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 2, 4, 4] input) => (float[N, 3] logits)
        <float[3, 2, 1, 1] w = {1, 1, 1, 1, 1, 1}, float zero = {0}, float three = {3},
         float[3, 3] w2 = {1, 0, 0, 0, 1, 0, 0, 0, 1}> {
            six = Add (three, three)
            c = Conv (input, w)
            r = Clip (c, zero, six)
            p = GlobalAveragePool (r)
            f = Flatten (p)
            logits = MatMul (f, w2)
        }""", params={"zero": np.float32(0), "three": np.float32(3)})
    net = load_onnx_module(model).eval()
    assert [(type(m).__name__, m.max_val) for m in net.layers.values()] == [("BoundedReLU", 6.0)]
    x = np.round(np.random.default_rng(0).normal(0, 10, (5, 2, 4, 4)) * 8).astype(np.float32) / 8
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(),
                               run_ort(model, {"input": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flatten", ["view", "reshape", "view_hw"])
def test_a_dynamic_batch_view_loads(tmp_path, flatten):
    """``x.view(x.size(0), -1)`` exported with a dynamic batch is a Shape -> Gather -> Concat ->
    Reshape chain: compile folds it, finetune had refused it (E801 Shape, Gather; E802 Reshape).
    The loader now folds it as compile does; the module equals ORT on the exported file and at
    another batch size."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, stride=2)
            self.fc = nn.Linear(4 * 3 * 3, 3)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.size(0), -1) if flatten != "reshape"
                           else x.reshape(x.shape[0], -1))

    torch.manual_seed(0)
    path = tmp_path / "view.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.zeros(2, 1, 6, 6), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=13,
                          dynamic_axes={"x": {0: "N", **({2: "h", 3: "w"} if flatten == "view_hw"
                                                          else {})}, "y": {0: "N"}})
    assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}
    shapes = None
    if flatten == "view_hw":   # dynamic H and W: the fold needs them (finetune --input-shape)
        with pytest.raises(SnnccError) as err:
            load_onnx_module(str(path))
        assert err.value.code in ("SNN-E114", "SNN-E110") and "input_shape" in str(err.value)
        with pytest.raises(SnnccError) as err:   # shapes that do not fit: said as such
            load_onnx_module(str(path), {"x": (1, 1, 8, 8)})
        assert not err.value.codes & {"SNN-E801", "SNN-E802"}
        shapes = {"x": (1, 1, 6, 6)}
    net = load_onnx_module(str(path), shapes).eval()
    for batch in (2, 5):
        x = np.random.default_rng(batch).normal(0, 1, (batch, 1, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(),
                                   run_ort(onnx.load(str(path)), {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_qcfs_export_runs_in_ort_and_equals_torch_exactly():
    """Exact: the conv/linear sums are exact (dyadic data), every QCFS op is one correctly rounded
    float32 operation in the same order in torch and ORT, and λ is stored as the same float32."""
    net = _dyadic_net()
    replace_relu_with_qcfs(net, 4, {"1": 1.37, "5": 2.9})
    net.eval()
    x = _dyadic_input(64)
    proto = export_onnx(net, torch.from_numpy(x[:1]))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Conv", *QCFS_CHAIN, "AveragePool", "Flatten", "Gemm", *QCFS_CHAIN, "Gemm"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert inits["/1.lambda"].shape == () and inits["/1.lambda"] == np.float32(1.37)
    assert inits["/5.L"] == np.float32(4) and inits["/5.half"] == np.float32(0.5)
    assert [o.domain for o in proto.opset_import] == [""] and proto.opset_import[0].version == 17
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(run_ort(proto, {"input": x})[0], want)


@pytest.mark.parametrize("kind", ["lif", "mt"])
def test_snn_export_has_the_documented_nodes(kind):
    net = _dyadic_net()
    convert_to_snn(net, LIF if kind == "lif" else (lambda: MTNeuron("cascade", 3)))
    with torch.no_grad():
        net[1].threshold.fill_(0.75)
        net[5].threshold.fill_(1.5)
        if kind == "lif":
            net[1].leak.fill_(0.875)
    run_snn(net, torch.ones(2, 1, 6, 6), 2).sum().backward()  # membranes now hold an autograd graph
    proto = export_onnx(net, torch.zeros(1, 1, 6, 6), metadata={"kind": "snn", "timesteps": 2})
    onnx.checker.check_model(proto)
    ops = [(n.op_type, n.domain) for n in proto.graph.node]
    op = "LIFNeuron" if kind == "lif" else "MTNeuron"
    assert ops == [("Conv", ""), (op, "snncc.ops"), ("AveragePool", ""), ("Flatten", ""), ("Gemm", ""),
                   (op, "snncc.ops"), ("Gemm", "")]
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 17), ("snncc.ops", 1)}
    neurons = [n for n in proto.graph.node if n.domain == "snncc.ops"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in neurons]
    if kind == "lif":
        assert attrs[0] == {"theta": [0.75], "leak": 0.875, "amplitude": 1.0, "v_init": 0.0}
        assert attrs[1]["theta"] == [1.5] and attrs[1]["leak"] == 1.0
    else:
        assert attrs[0] == {"theta": [0.75], "fractions": [1.0, 0.5, 0.25], "mode": b"cascade",
                            "reset": b"soft", "v_init": 0.0}
    assert neurons[0].input[0] == proto.graph.node[0].output[0]
    assert {p.key for p in proto.metadata_props} == {"snncc.train"}


def _run_cli(tmp_path, *extra):
    model_path = tmp_path / "cnn.onnx"
    onnx.save(_cnn_model(dyadic=False), model_path)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].mean(axis=(1, 2)) > 0).astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=x[:16], y=y[:16])
    parser = argparse.ArgumentParser()
    add_finetune_arguments(parser)
    args = parser.parse_args([str(model_path), "--data", str(tmp_path / "train.npz"), "--val",
                              str(tmp_path / "val.npz"), "-o", str(tmp_path / "out.onnx"), "--epochs", "1",
                              "--batch-size", "16", "--no-progress", *extra])
    assert run_finetune(args) == 0
    return onnx.load(tmp_path / "out.onnx"), x


def test_cli_qcfs_finetune_writes_a_runnable_qcfs_model(tmp_path):
    out, x = _run_cli(tmp_path, "-L", "8", "--sparsity", "1e-6", "--maxpool", "avg", "--lambda-init", "p99")
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Floor") == 2 and "MaxPool" not in ops and "AveragePool" in ops and "Relu" not in ops
    assert "BatchNormalization" not in ops   # folded into the Conv by default (--bn fold)
    assert out.graph.input[0].name == "input" and out.graph.output[0].name == "logits"
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert sorted(float(v) for k, v in inits.items() if k.endswith(".L")) == [8.0, 8.0]
    assert run_ort(out, {"input": x[:5]})[0].shape == (5, 3)


def test_a_relu6_net_finetunes_with_lambda_within_the_clip(tmp_path):
    """A ReLU6 net (Clip(0, 6)) fine-tunes like a ReLU net: each Clip becomes a QCFS site whose λ
    starts at most 6, and compile reads the trained graph without calibration."""
    from snncc.driver import compile_model, make_options
    from snncc.train.finetune import finetune_module
    from snncc.train.qcfs import QCFS

    model = _cnn_model(dyadic=False)
    six = onnx.helper.make_tensor("six", onnx.TensorProto.FLOAT, [], [6.0])
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0])
    model.graph.initializer.extend([six, zero])
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.input.extend(["zero", "six"])
    with torch.no_grad():   # large weights: the pre-activations reach far above 6
        net = load_onnx_module(model)
        for p in net.parameters():
            p.mul_(40.0)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].mean(axis=(1, 2)) > 0).astype(np.int64)
    res = finetune_module(net, (x, y), epochs=0, lambda_init="max", progress=False)
    lams = [m.lam.detach().numpy() for m in res.module.modules() if isinstance(m, QCFS)]
    assert len(lams) == 2 and all(lam.max() <= 6.0 for lam in lams) and any(lam.max() == 6.0 for lam in lams)
    out = export_onnx(res.module, torch.from_numpy(x[:1]))
    assert [n.op_type for n in out.graph.node].count("Floor") == 2
    onnx.save(out, tmp_path / "qcfs.onnx")
    result = compile_model(tmp_path / "qcfs.onnx", tmp_path / "snn.onnx", make_options(timesteps=4, neuron="if"))
    calibrate = next(p for p in result.report["passes"] if p["pass"] == "calibrate")
    assert calibrate["counts"] == {"from_pattern": 2, "calibrated": 0}
    # SNN training (--iir, --mt) makes the same two sites spiking
    from snncc.train.iir import spiking_neurons, train_snn

    snn = train_snn(net, (x, y), timesteps=(1,), epochs=0, threshold_steps=1, progress=False)
    assert len(spiking_neurons(snn.module)) == 2


def test_cli_iir_writes_every_stage(tmp_path):
    out, x = _run_cli(tmp_path, "--iir", "--timesteps", "2,1", "--threshold-steps", "2")
    assert (tmp_path / "out.T2.onnx").exists() and (tmp_path / "out.T1.onnx").exists()
    last = onnx.load(tmp_path / "out.T1.onnx")
    assert out.graph == last.graph   # the last stage, marked as the final output
    meta = {p.key: json.loads(p.value) for p in out.metadata_props if p.key == "snncc.train"}
    assert meta["snncc.train"]["file"] == "final"
    import torch   # what a rerun needs for the same bytes (a helper's reproducibility check)
    assert {k: meta["snncc.train"][k] for k in ("seed", "torch_threads", "torch")} == \
        {"seed": 0, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    assert json.loads(last.metadata_props[0].value)["file"] == "stage"
    assert [n.op_type for n in out.graph.node].count("LIFNeuron") == 2
    assert "MaxPool" in [n.op_type for n in out.graph.node]  # kept without --maxpool avg



def test_a_spiking_source_compiles_with_calib_and_has_no_ann_to_compare(tmp_path, capsys):
    """Compiling an --iir output with --calib ended in an internal error (the fidelity check ran
    the source graph, LIF ops and all, in plain ORT); report failed with a misleading E102.
    There is no ANN to compare with: compile says so and writes the SNN, --min-agreement is
    SNN-E368, report SNN-E662 (nothing written)."""
    from snncc.cli import main

    _run_cli(tmp_path, "--iir", "--timesteps", "2", "--threshold-steps", "2")
    capsys.readouterr()
    base = ["compile", str(tmp_path / "out.onnx"), "--calib", str(tmp_path / "train.npz"),
            "--fidelity-samples", "8", "-q"]
    assert main([*base, "-o", str(tmp_path / "s.onnx")]) == 0
    assert "no fidelity estimate: the model spikes already" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "m.onnx"), "--min-agreement", "0.9"]) == 2
    assert "SNN-E368" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
    assert main(["report", str(tmp_path / "out.onnx"), "--data", str(tmp_path / "val.npz"),
                 "-o", str(tmp_path / "r.md")]) == 2
    assert "SNN-E662" in capsys.readouterr().err and not (tmp_path / "r.md").exists()
    # a compiled output is no trained spiking source: canonicalize's E123 (compile the ANN)
    assert main(["report", str(tmp_path / "s.onnx"), "--data", str(tmp_path / "val.npz"),
                 "-o", str(tmp_path / "r.md")]) == 2
    assert "SNN-E123" in capsys.readouterr().err


def test_unsupported_ops_are_listed_together():
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1, 4] x) => (float[1, 4] y) <float[4, 4] w = {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}> {
            a = MatMul (x, w)
            b = Sigmoid (a)
            y = Tanh (b)
        }""")
    with pytest.raises(UnsupportedNodeError) as err:
        load_onnx_module(model)
    assert err.value.code == "SNN-E801" and len(err.value.diagnostics) == 2
    # activations with no spiking equivalent say so, with compile's hint (it had listed the
    # builder's supported ops, as for any op)
    assert all("has no spiking equivalent" in d.message and "retrain" in d.hint
               for d in err.value.diagnostics)


def test_bad_data_and_options(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 1, 6, 6)))
    with pytest.raises(CalibrationError) as err:
        _run_cli(tmp_path, "--data", str(tmp_path / "bad.npz"))
    assert err.value.code == "SNN-E803"
    with pytest.raises(OptionError) as err:
        _run_cli(tmp_path, "--iir", "--sparsity", "1e-8")
    assert err.value.code == "SNN-E804"


def test_importing_the_cli_module_does_not_import_torch():
    code = "import sys, snncc.train, snncc.train.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_many_nodes_of_one_unsupported_op_are_listed_once():
    """An LSTM export brought a dozen Shape/Gather/Expand nodes: twelve lines of the same
    complaint. Counted per op in the header, one node of each listed."""
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1, 4] x) => (float[1, 4] y) {
            a = Sigmoid (x)
            b = Sigmoid (a)
            c = Sigmoid (b)
            y = Tanh (c)
        }""")
    with pytest.raises(UnsupportedNodeError) as err:
        load_onnx_module(model)
    assert [d.node.split("::")[-1] for d in err.value.diagnostics] == ["Sigmoid)", "Tanh)"]
    assert "4 node(s) cannot be loaded for training (Sigmoid x3, Tanh; one node of each " \
        "listed)" in err.value.message


def test_log_softmax_head_log_and_slice_load():
    """A log_softmax head, log(softmax) and a channel slice: compile takes them, finetune had
    refused them (E801, with a hint to use --allow-analog, which finetune has not)."""
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 2, 4, 4] input) => (float[N, 2] logits)
        <float[4, 2, 1, 1] w = {1, 0.5, -1, 0.25, 0.5, 2, 1, 1}, float[2, 2] w2 = {1, 0, 0, 1},
         int64[1] s0 = {1}, int64[1] s1 = {3}, int64[1] ax = {1}> {
            c = Conv (input, w)
            r = Relu (c)
            k = Slice (r, s0, s1, ax)
            p = GlobalAveragePool (k)
            f = Flatten (p)
            g = MatMul (f, w2)
            sm = Softmax <axis = 1> (g)
            l = Log (sm)
            logits = LogSoftmax <axis = 1> (l)
        }""", dyadic=True)
    net = load_onnx_module(model).eval()
    x = np.random.default_rng(0).normal(0, 1, (5, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(),
                               run_ort(model, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_a_compiled_model_is_e123_as_in_compile(tmp_path):
    model = tiny_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 2] x) => (float[N, 2] y) <float[2, 2] w = {1, 0, 0, 1}> {
            a = MatMul (x, w)
            y = Relu (a)
        }""")
    onnx.helper.set_model_props(model, {"snncc.schedule": "folded", "snncc.timesteps": "4"})
    with pytest.raises(SnnccError) as err:
        load_onnx_module(model)
    assert err.value.code == "SNN-E123"
