"""NIR export (--target nir): what is refused and why, the file nir.read gives back, and the
network a real NIR consumer (Norse) runs compared with snncc's own simulators.

No ``__init__.py`` here on purpose: ``tests/`` is on sys.path, and a package named ``nir`` would
shadow the real ``nir`` module.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

nir = pytest.importorskip("nir")

from loihi import Graph, dyadic_input, ort_reference, residual_pool_model  # noqa: E402
from snncc.backends.loihi.lowering import lower  # noqa: E402
from snncc.backends.loihi.quantize import quantize  # noqa: E402
from snncc.backends.loihi.simulator import simulate  # noqa: E402
from snncc.backends.nir.backend import NirBackend  # noqa: E402
from snncc.backends.nir.export import RESET_NOTE, build_graph  # noqa: E402
from snncc.backends.nir.simulate import run_graph  # noqa: E402
from snncc.cli import main  # noqa: E402
from snncc.context import CompileContext, CompileOptions  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.errors import SnnccError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGITS = str(EXAMPLES / "digits_cnn.onnx")
DIGITS_CALIB = str(EXAMPLES / "digits_cnn_calib.npz")


# ----------------------------------------------------------------------------- references

def _chain(graph) -> list[str]:
    nxt = dict(graph.edges)
    cur = next(k for k, v in graph.nodes.items() if isinstance(v, nir.Input))
    order = []
    while cur in nxt:
        cur = nxt[cur]
        order.append(cur)
    return order


def _conv(x, w, b, stride, pad, groups):
    from snncc.backends.loihi.netlist import conv2d
    kh, kw = w.shape[2:]
    out_hw = ((x.shape[2] + 2 * pad[0] - kh) // stride[0] + 1,
              (x.shape[3] + 2 * pad[1] - kw) // stride[1] + 1)
    return conv2d(x, w, tuple(stride), tuple(pad), groups, out_hw) + b.reshape(1, -1, 1, 1)


def nir_reference(graph, x: np.ndarray, T: int, *, soft: bool = False, v_init: float = 0.0):
    """NumPy float64 run of a sequential NIR graph in discrete time (dt = 1), the analog input
    fed every step, the output averaged over the steps. Default: NIR's own IF (v starts at 0,
    fire on v > v_threshold, reset to v_reset). ``soft=True``: snncc's IF rule instead (v starts
    at v_init * v_threshold, fire on >=, subtract the threshold)."""
    order = _chain(graph)
    state: dict[str, np.ndarray] = {}
    acc = 0.0
    for _ in range(T):
        h = x.astype(np.float64)
        for name in order:
            n = graph.nodes[name]
            if isinstance(n, nir.Conv2d):
                h = _conv(h, n.weight.astype(np.float64), n.bias.astype(np.float64), n.stride,
                          n.padding, n.groups)
            elif isinstance(n, nir.SumPool2d):
                c = h.shape[1]
                w = np.ones((c, 1, *n.kernel_size))
                h = _conv(h, w, np.zeros(c), n.stride, n.padding, c)
            elif isinstance(n, nir.Flatten):
                h = h.reshape(h.shape[0], -1)
            elif isinstance(n, (nir.Affine, nir.Linear)):
                h = h @ n.weight.T.astype(np.float64) + \
                    (n.bias if isinstance(n, nir.Affine) else 0.0)
            elif isinstance(n, nir.Scale):
                h = h * n.scale
            elif isinstance(n, nir.IF):
                vth = n.v_threshold.astype(np.float64)
                v = state.get(name, v_init * vth if soft else 0.0) + n.r * h
                z = (v >= vth) if soft else (v > vth)
                state[name] = np.where(z, v - vth, v) if soft else np.where(z, n.v_reset, v)
                h = z.astype(np.float64)
            elif not isinstance(n, nir.Output):
                raise AssertionError(f"reference has no rule for {type(n).__name__}")
        acc = acc + h
    return acc / T


def pooled_model(v_init: float = 0.5):
    """conv -> IF -> avgpool -> Mul -> conv -> IF -> GAP -> flatten -> gemm (no residuals)."""
    g = Graph((2, 8, 8), seed=5)
    s1 = g.neuron(g.conv("x", 2, 4), theta=[0.5, 0.25, 1.0, 0.5], v_init=v_init)
    p = g.op("AveragePool", [s1], kernel_shape=[2, 2], strides=[2, 2])
    m = g.op("Mul", [p, g.const(np.array([[[0.5]], [[2.0]], [[1.0]], [[0.25]]], np.float32))])
    s2 = g.neuron(g.conv(m, 4, 6, stride=1), theta=[0.75], v_init=v_init)
    gap = g.op("GlobalAveragePool", [s2])
    return g.model(g.gemm(g.op("Flatten", [gap], axis=1), 6, 5))


def sequential_model(v_init: float = 0.0):
    """conv -> IF -> conv/2 -> IF -> flatten -> gemm with dyadic values (exact on Loihi)."""
    g = Graph((2, 8, 8), seed=3)
    s1 = g.neuron(g.conv("x", 2, 4), v_init=v_init, theta=[0.5])
    s2 = g.neuron(g.conv(s1, 4, 6, stride=2), v_init=v_init, theta=[1.0])
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 4 * 4, 5))


def emit(model, tmp_path, *, allow_lossy=True, name="net.nir"):
    backend = NirBackend()
    ctx = CompileContext(CompileOptions(target="nir", timesteps=4, allow_lossy=allow_lossy))
    diags = backend.check(model, ctx)
    if diags:
        return None, diags
    art = backend.emit(model, ctx, tmp_path / name)
    return art, []


# ----------------------------------------------------------------------------- structure

def test_round_trip_with_nir_read(tmp_path):
    art, diags = emit(pooled_model(), tmp_path)
    assert not diags and art.files == [tmp_path / "net.nir"]
    g = nir.read(tmp_path / "net.nir")                  # type-checks the shapes again
    kinds = [type(g.nodes[n]).__name__ for n in _chain(g)]
    assert kinds == ["Conv2d", "IF", "SumPool2d", "Conv2d", "IF", "SumPool2d", "Flatten",
                     "Affine", "Output"]
    assert art.report["node_types"]["IF"] == 2 and art.report["lossy"] is True
    ifs = [g.nodes[n] for n in _chain(g) if isinstance(g.nodes[n], nir.IF)]
    # theta per channel; spike amplitudes, the 1/4 of the pool and the Mul fold into weights
    np.testing.assert_array_equal(ifs[0].v_threshold[:, 0, 0], [0.5, 0.25, 1.0, 0.5])
    assert np.all(ifs[0].r == 1) and np.all(ifs[0].v_reset == 0)
    assert g.metadata["producer"] == "snncc" and "v_reset" in g.metadata["lossy"]


def test_export_is_the_compiled_network_up_to_the_neuron_rule(tmp_path):
    """Run with snncc's own IF rule, the exported graph equals the ORT SNN: the export changes
    nothing but the neuron rule that NIR cannot express."""
    model = pooled_model(v_init=0.0)
    emit(model, tmp_path)
    g = nir.read(tmp_path / "net.nir")
    x = dyadic_input((12, 2, 8, 8))
    ref = next(iter(ort_reference(model, x, 4).outputs.values()))
    out = nir_reference(g, x, 4, soft=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    hard = nir_reference(g, x, 4)                       # NIR's own rule differs
    assert not np.allclose(hard, ref, atol=1e-5)


def test_fidelity_run_is_nir_semantics(tmp_path):
    """predict (the compile-time fidelity estimate) runs the graph as NIR defines it: equal to
    the independent reference here, and to the hardware-semantics simulator on exact values."""
    model = sequential_model(v_init=0.5)
    backend = NirBackend()
    ctx = CompileContext(CompileOptions(target="nir", timesteps=4, allow_lossy=True))
    x = dyadic_input((10, 2, 8, 8)) * np.float32(0.5)
    [(rows, out, layers)] = list(backend.predict(model, ctx, {"x": x}))
    assert rows == slice(0, 10)
    art = backend.emit(model, ctx, tmp_path / "net.nir")
    np.testing.assert_allclose(out, nir_reference(nir.read(art.path), x, 4), atol=1e-6)
    net = lower(model, 4)
    quantize(net)
    hw = next(iter(simulate(net, x, semantics="hardware").outputs.values()))
    np.testing.assert_allclose(out, hw, atol=1e-6)
    refused = NirBackend().predict(model, CompileContext(CompileOptions(target="nir")),
                                   {"x": x})
    assert refused is None and layers is None


def test_initial_charge_becomes_a_bias_current(tmp_path):
    """NIR neurons start at v = 0: IF's v_init*theta is added to the feeding layer's bias as
    v_init*theta/T per step (the NetX export's rule), and the report says so."""
    art, _ = emit(pooled_model(v_init=0.5), tmp_path, name="half.nir")
    emit(pooled_model(v_init=0.0), tmp_path, name="zero.nir")
    half, zero = nir.read(tmp_path / "half.nir"), nir.read(tmp_path / "zero.nir")
    convs = [n for n in _chain(half) if isinstance(half.nodes[n], nir.Conv2d)]
    np.testing.assert_allclose(half.nodes[convs[0]].bias - zero.nodes[convs[0]].bias,
                               0.5 * np.array([0.5, 0.25, 1.0, 0.5]) / 4, atol=1e-7)
    np.testing.assert_allclose(half.nodes[convs[1]].bias - zero.nodes[convs[1]].bias,
                               0.5 * 0.75 / 4, atol=1e-7)
    assert any("bias current" in n for n in art.report["lossy_notes"])


# ----------------------------------------------------------------------------- refusals

def test_soft_reset_is_refused_by_default_and_names_the_reset():
    diags = NirBackend().check(pooled_model(), CompileContext(CompileOptions(target="nir")))
    assert {d.code for d in diags} == {"SNN-E690"}
    assert "reset" in diags[0].message and "v_reset" in diags[0].message
    assert "--allow-lossy" in diags[0].hint


def test_residuals_are_refused_with_every_node_listed():
    diags = NirBackend().check(residual_pool_model(), CompileContext(
        CompileOptions(target="nir", allow_lossy=True)))
    codes = [d.code for d in diags]
    assert codes.count("SNN-E692") >= 2                # the residual Add and the Concat
    assert any("Add" in d.node for d in diags) and any("Concat" in d.node for d in diags)


@pytest.mark.parametrize("op", ["GroupNeuron", "MTNeuron", "BitSerialNeuron", "SRPNeuron"])
def test_graded_neurons_are_refused(op):
    g = Graph((2, 4, 4))
    model = g.model(g.gemm(g.op("Flatten", [g.op(op, [g.conv("x", 2, 2)],
                                                 domain="snncc.ops")], axis=1), 32, 3))
    diags = NirBackend().check(model, CompileContext(CompileOptions(target="nir",
                                                                    allow_lossy=True)))
    assert [d.code for d in diags] == ["SNN-E691"]
    assert "NIR" in diags[0].message


def test_compile_refuses_lossy_and_writes_nothing(tmp_path):
    out = tmp_path / "d.nir"
    with pytest.raises(SnnccError) as err:
        compile_model(DIGITS, out, make_options(target="nir", timesteps=4,
                                                calib_path=DIGITS_CALIB))
    assert "SNN-E690" in err.value.codes and RESET_NOTE.split(";")[0][:20] in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_compile_allow_lossy_writes_file_and_report(tmp_path):
    out, report = tmp_path / "d.nir", tmp_path / "r.json"
    assert main(["compile", DIGITS, "--target", "nir", "-T", "4", "--calib", DIGITS_CALIB,
                 "--allow-lossy", "-o", str(out), "--report", str(report), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nir", "r.json"]
    g = nir.read(out)
    assert sum(isinstance(n, nir.IF) for n in g.nodes.values()) == 4
    rep = json.loads(report.read_text())
    assert rep["options"]["allow_lossy"] is True
    assert rep["backend"]["lossy"] is True
    assert any("v_reset" in n for n in rep["backend"]["lossy_notes"])
    # the estimate is of the reset-to-zero network NIR defines, and says so
    assert rep["fidelity"]["snn_is"] == "NIR network (reset to 0)"
    from snncc.fidelity import summary
    assert summary(rep["fidelity"]).startswith("fidelity: NIR network (reset to 0) agrees")
    # no SynOp count (a NIR simulator's spikes are its own), said rather than null; the input
    # scale the network was calibrated on travels in the file
    assert rep["synops"]["available"] is False and "SNN-E695" in rep["synops"]["reason"]
    scale = json.loads(g.metadata["calibration_inputs"])
    assert set(scale["input"]) >= {"mean", "std", "max_abs"} and scale["input"]["max_abs"] <= 1


def test_cli_lossy_refusal_exit_code(tmp_path, capsys):
    out = tmp_path / "d.nir"
    assert main(["compile", DIGITS, "--target", "nir", "--calib", DIGITS_CALIB,
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "SNN-E690" in err and "Traceback" not in err and not out.exists()


def test_graded_neuron_compile_is_refused(tmp_path):
    with pytest.raises(SnnccError) as err:
        compile_model(DIGITS, tmp_path / "m.nir", make_options(
            target="nir", timesteps=4, neuron="mt", calib_path=DIGITS_CALIB, allow_lossy=True))
    assert "SNN-E691" in err.value.codes and not (tmp_path / "m.nir").exists()


# ----------------------------------------------------------------------------- real consumer

def _norse_run(path: Path, x: np.ndarray, T: int) -> np.ndarray:
    """Norse's NIR import runs the file; one sample at a time (unbatched C x H x W input, as
    Norse's Flatten(start_dim=0) then flattens the sample only), with the file's time step
    (metadata dt = 1; Norse's own default is 0.001 and it does not read the metadata)."""
    torch = pytest.importorskip("torch")
    norse = pytest.importorskip("norse.torch")
    graph = nir.read(path)
    net = norse.from_nir(graph, ignore_warnings=True, dt=float(graph.metadata.get("dt", 1.0)))
    outs = []
    with torch.no_grad():
        for sample in x:
            state, acc = None, 0.0
            for _ in range(T):
                y, state = net(torch.from_numpy(np.ascontiguousarray(sample)), state)
                acc = acc + y.double().numpy()
            outs.append(acc / T)
    return np.stack(outs)


def test_norse_runs_the_file_like_loihi_hardware_semantics(tmp_path):
    """Reset-to-zero IF starting at v = 0 is the same rule in NIR and in stock Loihi: Norse's
    run of the file equals the bit-accurate simulator in hardware semantics (dyadic values, so
    the fixed point is exact) and the NumPy NIR reference."""
    pytest.importorskip("norse.torch")
    model = sequential_model(v_init=0.0)
    emit(model, tmp_path)
    x = dyadic_input((24, 2, 8, 8)) * np.float32(0.5)
    T = 4
    ours = _norse_run(tmp_path / "net.nir", x, T)
    np.testing.assert_allclose(ours, nir_reference(nir.read(tmp_path / "net.nir"), x, T),
                               atol=1e-6)
    net = lower(model, T)
    quantize(net)
    assert net.meta["quantization"]["all_exact"]
    hw = next(iter(simulate(net, x, semantics="hardware").outputs.values()))
    np.testing.assert_allclose(ours, hw, atol=1e-6)


def test_norse_runs_the_initial_charge_export_like_loihi_hardware(tmp_path):
    """With v_init = 0.5 both targets give the initial charge as a bias current v_init*theta/T:
    Norse on the file and the hardware-semantics simulator agree again."""
    pytest.importorskip("norse.torch")
    model = sequential_model(v_init=0.5)
    emit(model, tmp_path)
    x = dyadic_input((24, 2, 8, 8)) * np.float32(0.5)
    ours = _norse_run(tmp_path / "net.nir", x, 4)
    net = lower(model, 4)
    quantize(net)
    hw = next(iter(simulate(net, x, semantics="hardware").outputs.values()))
    np.testing.assert_allclose(ours, hw, atol=1e-6)


def test_norse_runs_the_pooled_export(tmp_path):
    """SumPool2d, per-channel thresholds and folded scales: Norse equals the NumPy reference."""
    pytest.importorskip("norse.torch")
    emit(pooled_model(), tmp_path)
    x = dyadic_input((8, 2, 8, 8))
    ours = _norse_run(tmp_path / "net.nir", x, 4)
    np.testing.assert_allclose(ours, nir_reference(nir.read(tmp_path / "net.nir"), x, 4),
                               atol=1e-5)
    # the compile-time fidelity run (snncc.backends.nir.simulate) computes the same
    np.testing.assert_allclose(ours, next(iter(run_graph(nir.read(tmp_path / "net.nir"), x,
                                                         4).values())), atol=1e-5)


def test_lif_maps_to_lif_or_if(tmp_path):
    """leak < 1: NIR LIF with tau = 1/(1-leak), r = 1 and the threshold over tau (forward Euler,
    dt = 1: v = leak*v + I/tau, the membrane in units of 1/tau); leak == 1 is an IF. The spike
    amplitude folds into the next layer's weights."""
    g = Graph((2, 4, 4), seed=2)
    s1 = g.neuron(g.conv("x", 2, 3), "LIFNeuron", theta=[0.5], leak=0.75, amplitude=0.5)
    s2 = g.neuron(g.conv(s1, 3, 3), "LIFNeuron", theta=[1.0], leak=1.0, amplitude=1.0)
    model = g.model(g.gemm(g.op("Flatten", [s2], axis=1), 48, 2))
    res, diags = build_graph(model)
    assert diags == []
    nodes = [res.graph.nodes[n] for n in res.nodes]
    lif = next(n for n in nodes if isinstance(n, nir.LIF))
    assert np.allclose(lif.tau, 4.0) and np.allclose(lif.r, 1.0) and np.allclose(lif.v_leak, 0)
    assert np.allclose(lif.v_threshold, 0.5 / 4.0)
    assert sum(isinstance(n, nir.IF) for n in nodes) == 1
    convs = [n for n in nodes if isinstance(n, nir.Conv2d)]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(convs[1].weight, inits[model.graph.node[2].input[1]] * 0.5)


def test_norse_runs_a_leaky_lif_export(tmp_path):
    """A LIF with leak < 1 ran differently in Norse (which ignores r: it differed from the NIR
    reference by 0.58 with dt = 1 when r = tau carried the input gain); with r = 1 and the
    threshold over tau it equals snncc's NIR simulator (the compile-time fidelity run)."""
    pytest.importorskip("norse.torch")
    g = Graph((2, 4, 4), seed=2)
    s1 = g.neuron(g.conv("x", 2, 3), "LIFNeuron", theta=[0.5], leak=0.75, amplitude=0.5)
    s2 = g.neuron(g.conv(s1, 3, 3), "LIFNeuron", theta=[1.0], leak=1.0, amplitude=1.0)
    model = g.model(g.gemm(g.op("Flatten", [s2], axis=1), 48, 2))
    emit(model, tmp_path)
    x = dyadic_input((16, 2, 4, 4))
    ours = _norse_run(tmp_path / "net.nir", x, 4)
    assert np.any(ours != 0)
    graph = nir.read(tmp_path / "net.nir")
    np.testing.assert_allclose(ours, next(iter(run_graph(graph, x, 4).values())), atol=1e-5)


def test_norse_runs_a_padded_pool(tmp_path):
    """Norse's reader drops a SumPool2d's padding (it failed with a shape mismatch); a padded
    pool is exported as a Conv2d with a 0/1 kernel, the same sum, which Norse runs."""
    pytest.importorskip("norse.torch")
    g = Graph((2, 8, 8), seed=5)
    s1 = g.neuron(g.conv("x", 2, 4), theta=[0.5])
    p = g.op("AveragePool", [s1], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=1)
    s2 = g.neuron(g.conv(p, 4, 6), theta=[0.75])
    model = g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 5 * 5, 5))
    emit(model, tmp_path)
    graph = nir.read(tmp_path / "net.nir")
    assert not any(isinstance(n, nir.SumPool2d) for n in graph.nodes.values())
    x = dyadic_input((8, 2, 8, 8))
    ours = _norse_run(tmp_path / "net.nir", x, 4)
    assert np.any(ours != 0)
    np.testing.assert_allclose(ours, next(iter(run_graph(graph, x, 4).values())), atol=1e-5)


def test_maxpool_refused_unless_maxpool_avg():
    """MaxPool of spikes has no NIR form; --maxpool avg exports it as the average pool counting
    the padding (the Loihi lowering's rule): the same graph as an explicit AveragePool."""
    def model(op, **attrs):
        g = Graph((2, 8, 8), seed=4)
        s1 = g.neuron(g.conv("x", 2, 4))
        p = g.op(op, [s1], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], **attrs)
        return g.model(g.gemm(g.op("Flatten", [p], axis=1), 64, 3))

    diags = build_graph(model("MaxPool"))[1]
    assert [d.code for d in diags] == ["SNN-E692"] and "--maxpool avg" in diags[0].hint
    as_avg, diags = build_graph(model("MaxPool"), maxpool="avg")
    ref, _ = build_graph(model("AveragePool", count_include_pad=1))
    assert diags == []
    x = dyadic_input((4, 2, 8, 8))
    np.testing.assert_array_equal(next(iter(run_graph(as_avg.graph, x, 4).values())),
                                  next(iter(run_graph(ref.graph, x, 4).values())))


def grouped_dilated_model():
    """conv -> IF -> grouped conv (group 2) -> IF -> dilated conv (dilation 2) -> IF -> gemm."""
    g = Graph((2, 8, 8), seed=7)
    s1 = g.neuron(g.conv("x", 2, 4), theta=[0.5])
    s2 = g.neuron(g.conv(s1, 4, 4, group=2), theta=[0.75])
    w = g.const(g.dyadic((6, 4, 3, 3)), "w")
    d = g.op("Conv", [s2, w, g.const(g.dyadic((6,), 0.25), "b")], kernel_shape=[3, 3],
             pads=[2] * 4, dilations=[2, 2])
    s3 = g.neuron(d, theta=[0.5])
    return g.model(g.gemm(g.op("Flatten", [s3], axis=1), 6 * 8 * 8, 5))


def test_norse_runs_grouped_and_dilated_convs(tmp_path):
    """nir's Conv2d types its input as weight.shape[1] channels, so a grouped conv is exported
    dense (block-diagonal weights). Norse runs the file, and equals the compile-time fidelity
    simulator (dilation included) and the ONNX graph's NIR rule."""
    pytest.importorskip("norse.torch")
    art, diags = emit(grouped_dilated_model(), tmp_path)
    assert not diags
    graph = nir.read(tmp_path / "net.nir")
    convs = [graph.nodes[k] for k in _chain(graph) if isinstance(graph.nodes[k], nir.Conv2d)]
    assert [int(c.groups) for c in convs] == [1, 1, 1]
    assert [tuple(int(d) for d in c.dilation) for c in convs] == [(1, 1), (1, 1), (2, 2)]
    x = dyadic_input((6, 2, 8, 8))
    ours = _norse_run(tmp_path / "net.nir", x, 4)
    np.testing.assert_allclose(ours, next(iter(run_graph(graph, x, 4).values())), atol=1e-5)


def test_matmul_plus_add_exports_like_gemm(tmp_path):
    """The Keras Dense / tf2onnx form (MatMul, then Add of the bias) was refused with E693 (the
    bias could not fold into a bias-less nir.Linear) while its Gemm form exported."""
    import onnx
    from onnx import helper

    model = onnx.load(DIGITS)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        w = next(t for t in model.graph.initializer if t.name == node.input[1])
        model.graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(w).T.copy(), w.name + "_T"))  # transB=1 in the export
        nodes += [helper.make_node("MatMul", [node.input[0], w.name + "_T"], [node.output[0] + "_mm"]),
                  helper.make_node("Add", [node.output[0] + "_mm", node.input[2]], [node.output[0]])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, tmp_path / "mm.onnx")
    graphs = {}
    for name, src in (("gemm", DIGITS), ("mm", str(tmp_path / "mm.onnx"))):
        compile_model(src, tmp_path / f"{name}.nir", make_options(
            target="nir", allow_lossy=True, timesteps=4, neuron="if", calib_path=DIGITS_CALIB,
            fidelity_samples=0))
        graphs[name] = nir.read(tmp_path / f"{name}.nir")
    chains = {k: [g.nodes[n] for n in _chain(g)] for k, g in graphs.items()}
    assert [type(n).__name__ for n in chains["mm"]] == [type(n).__name__ for n in chains["gemm"]]
    for a, b in zip(chains["mm"], chains["gemm"]):
        if isinstance(a, nir.Affine):
            np.testing.assert_allclose(a.weight, b.weight, rtol=1e-6)
            np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-6)


def test_run_takes_a_nir_file(tmp_path, capsys):
    """A helper wrote its own Norse loop (one sample at a time) to learn the NIR file's accuracy;
    `snncc run FILE.nir` runs it with the NIR simulator (what Norse runs, above): outputs,
    accuracy, spikes per IF node; a wrong input shape is E105, a file that is no NIR graph E102."""
    out = tmp_path / "d.nir"
    compile_model(DIGITS, out, make_options(target="nir", timesteps=4, calib_path=DIGITS_CALIB,
                                            allow_lossy=True, fidelity_samples=0))
    test = EXAMPLES / "digits_cnn_test.npz"
    assert main(["run", str(out), "--input", str(test), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    data = np.load(test)
    x = data[[k for k in data.files if k != "y"][0]].astype(np.float32)
    spikes: dict = {}
    ref = next(iter(run_graph(nir.read(out), x, 4, spikes).values()))
    assert got["accuracy"] == pytest.approx(float((ref.argmax(1) == data["y"]).mean()))
    assert {r["name"]: r["events_per_sample"] for r in got["activity"]["layers"]} == \
        pytest.approx({k: float(v.sum()) / len(x) for k, v in spikes.items()})
    assert len(spikes) == 4
    assert list(got["outputs"]) == ["logits"]   # the ONNX output's name, as `run` of the SNN
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 1, 4, 4), np.float32))
    assert main(["run", str(out), "--input", str(tmp_path / "bad.npz")]) == 2
    assert "[SNN-E105]" in capsys.readouterr().err
    (tmp_path / "junk.nir").write_text("not hdf5")
    assert main(["run", str(tmp_path / "junk.nir"), "--input", str(test)]) == 2
    assert "[SNN-E102]" in capsys.readouterr().err


def test_a_1d_net_with_maxpool_avg_compiles_to_nir(tmp_path, capsys):
    """A 1-D net with --maxpool avg (it had been refused: E693 on its Conv1d) compiles from the
    command line; the file reads back and says how to feed it."""
    from helpers import conv1d_relu_net

    conv1d_relu_net(tmp_path / "m.onnx", maxpool=True)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.random((40, 1, 16), dtype=np.float32))
    assert main(["compile", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--target", "nir", "--allow-lossy", "--maxpool", "avg", "-q",
                 "-o", str(tmp_path / "m.nir")]) == 0
    back = nir.read(tmp_path / "m.nir")
    assert "x[..., None]" in back.metadata["input_view"]
    inp = next(n for n in back.nodes.values() if isinstance(n, nir.Input))
    assert list(np.asarray(inp.input_type["input"])) == [1, 16, 1]


# ----------------------------------------------------------------------------- kernel shapes

def conv1d_model(L: int = 16):
    """1-D: conv k3 -> IF -> conv k2 (even) -> IF -> padded avg-pool k3/2 -> strided conv k4 ->
    IF -> GAP -> flatten -> gemm, on [N, 2, L] maps."""
    g = Graph((2, L), seed=11)

    def conv(x, cin, cout, k, pad, stride=1):
        return g.op("Conv", [x, g.const(g.dyadic((cout, cin, k)), "w"),
                             g.const(g.dyadic((cout,), 0.25), "b")],
                    kernel_shape=[k], pads=[pad, pad], strides=[stride])

    s1 = g.neuron(conv("x", 2, 4, 3, 1), theta=[0.5], v_init=0.0)
    s2 = g.neuron(conv(s1, 4, 4, 2, 0), theta=[0.75], v_init=0.0)                           # L - 1
    p = g.op("AveragePool", [s2], kernel_shape=[3], strides=[2], pads=[1, 1],
             count_include_pad=1)                                                # L / 2
    s3 = g.neuron(conv(p, 4, 6, 4, 1, stride=2), theta=[0.5], v_init=0.0)                    # L / 4
    gap = g.op("GlobalAveragePool", [s3])
    return g.model(g.gemm(g.op("Flatten", [gap], axis=1), 6, 5))


def nonsquare_model(kernels=((3, 1), (1, 3), (5, 3))):
    g = Graph((2, 8, 8), seed=12)
    x, cin = "x", 2
    for kh, kw in kernels:
        w = g.const(g.dyadic((4, cin, kh, kw)), "w")
        x = g.neuron(g.op("Conv", [x, w, g.const(g.dyadic((4,), 0.25), "b")],
                          kernel_shape=[kh, kw], pads=[kh // 2, kw // 2] * 2), theta=[0.5], v_init=0.0)
        cin = 4
    return g.model(g.gemm(g.op("Flatten", [x], axis=1), 4 * 8 * 8, 5))


@pytest.mark.parametrize("kind", ["1-D", "non-square"])
def test_1d_and_nonsquare_kernels_export_and_norse_runs_them(tmp_path, kind):
    """nir 1.0 types a Conv2d's output from the kernel's height on both axes: a (3, 1) kernel
    was an internal error at compile, and 1-D nets were refused. Kernels are exported square
    (zero taps, padding widened; a 1-D net on its (C, L, 1) view, an even 1-D kernel with width
    stride 2). nir.read type-checks the file, Norse runs it equal to snncc's NIR simulator, and
    under snncc's own neuron rule the file computes the compiled network (ORT)."""
    pytest.importorskip("norse.torch")
    model = conv1d_model() if kind == "1-D" else nonsquare_model()
    art, diags = emit(model, tmp_path)
    assert diags == []
    graph = nir.read(tmp_path / "net.nir")
    x = dyadic_input((8, 2, 16) if kind == "1-D" else (8, 2, 8, 8))
    view = x[..., None] if kind == "1-D" else x
    assert ("input_view" in graph.metadata) == (kind == "1-D")
    assert all(np.asarray(n.weight).shape[2] == np.asarray(n.weight).shape[3]
               for n in graph.nodes.values() if isinstance(n, nir.Conv2d))
    ours = _norse_run(tmp_path / "net.nir", view, 4)
    assert np.any(ours != 0)
    np.testing.assert_allclose(ours, next(iter(run_graph(graph, view, 4).values())), atol=1e-5)
    ref = next(iter(ort_reference(model, x, 4).outputs.values()))
    np.testing.assert_allclose(nir_reference(graph, view, 4, soft=True), ref, atol=1e-5)


def test_kernels_of_mixed_parity_are_refused_with_the_reason():
    diags = build_graph(nonsquare_model(((2, 1), (3, 3))))[1]
    assert [d.code for d in diags] == ["SNN-E693"] and "parity" in diags[0].message


def test_run_feeds_a_1d_nir_file_the_samples_the_onnx_model_took(tmp_path, capsys):
    emit(conv1d_model(), tmp_path)
    x = dyadic_input((6, 2, 16))
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["run", str(tmp_path / "net.nir"), "--input", str(tmp_path / "x.npz"), "-o",
                 str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")
    got = out[out.files[0]]
    graph = nir.read(tmp_path / "net.nir")
    np.testing.assert_allclose(got, next(iter(run_graph(graph, x[..., None], 4).values())),
                               atol=1e-6)


def test_an_offset_on_the_input_names_the_fix():
    """(x - mean) / std inside the model: refused (NIR has no input offset), but with the
    reason and the fix (it had blamed a BatchNormalization after the activation)."""
    g = Graph((2, 8, 8))
    shifted = g.op("Add", ["x", g.const(np.full((1, 2, 1, 1), -0.5, np.float32), "mean")])
    model = g.model(g.neuron(g.conv(shifted, 2, 4)))
    diags = build_graph(model)[1]
    assert [d.code for d in diags] == ["SNN-E693"] and "model input" in diags[0].message \
        and "normalise the inputs" in diags[0].hint
