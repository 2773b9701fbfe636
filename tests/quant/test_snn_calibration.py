"""SNN-aware calibration (snncc.snn_calibration): the walk's model of a layer is the compiled layer,
each site's error does not grow, the bias reaches the graph, and segments cut residual graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from snncc.context import QuantClipParams
from snncc.driver import compile_model, make_options
from snncc.neurons import get_neuron
from snncc.snn_calibration import Site, _Neuron, refine_sites

RNG = np.random.default_rng(0)


def _model(residual: bool = False) -> onnx.ModelProto:
    """x[N,2,6,6] -> Conv -> Relu (r1) -> Conv -> [+ r1] -> Relu (y)."""
    w1 = RNG.normal(0, 0.6, (4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1])]
    if residual:
        nodes.append(helper.make_node("Add", ["c2", "r1"], ["z2"]))
    nodes.append(helper.make_node("Relu", ["c2" if not residual else "z2"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(RNG.normal(0, 0.1, 4).astype(np.float32), "b1"),
         numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(RNG.normal(0, 0.1, 4).astype(np.float32), "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = RNG.random((48, 2, 6, 6), dtype=np.float32)
SITES = [Site("z1", "r1"), Site("c2", "y")]


def _start(levels: int) -> dict:
    return {s.y: QuantClipParams(lam=np.full(4, 1.5, np.float32), levels=levels) for s in SITES}


@pytest.mark.parametrize("neuron, T", [("if", 2), ("if", 4), ("mt", 4), ("gn", 2), ("srp", 2),
                                       ("bitserial", 2)])
def test_walk_never_raises_a_sites_error(neuron, T):
    options = make_options(neuron=neuron, timesteps=T)
    refined, reports = refine_sites(_model(), SITES, _start(options.levels), {"x": X}, options,
                                    neuron_spec=get_neuron(neuron), progress=False)
    assert [r.site for r in reports] == ["r1", "y"]
    for r in reports:
        assert r.rel_error_after <= r.rel_error_before + 1e-12
    for s in SITES:
        lam = refined[s.y].lam
        assert lam.shape == (4,) and np.all(lam > 0)


def test_margin_step_moves_a_shared_current_off_a_spike_count_edge():
    """A channel whose positions mostly share one current (an image's background) and whose bias
    left that current just above a spike-count edge moves away from the edge by one step; a
    channel in the middle of a count's stretch stays where it is."""
    import snncc.snn_calibration as sc

    options = make_options(neuron="if", timesteps=4)          # edges at (k - 0.5) * lam / 4
    lam = np.ones(2, np.float32)
    neuron = _Neuron(get_neuron("if"), options, QuantClipParams(lam=lam, levels=options.levels))
    z = np.zeros((16, 2, 8, 8), np.float32)
    z[:, :, :2] = np.random.default_rng(1).random((16, 2, 2, 8))  # spread: a quarter of the map
    target = np.maximum(z, 0)
    target[:, 0, 2:], target[:, 1, 2:] = 0.42, 0.5                # what the ANN gives there
    z[:, 0, 2:], z[:, 1, 2:] = 0.3, 0.5                           # the shared currents
    bias = np.array([0.375 + 1e-6 - 0.3, 0.0])  # ch 0: 1e-6 above the edge; ch 1: mid-stretch

    def decode(b):
        return neuron.run(z + b.reshape(1, -1, 1, 1), lam, True).mean(axis=0)

    moved = sc._margin_move(decode, target, bias, sc._channel_mse(decode(bias.astype(np.float32)),
                                                                  target), lam, options.levels)
    delta = sc.MARGIN_STEP / options.levels
    assert moved is not None
    assert moved[0] == pytest.approx(bias[0] + delta) and moved[1] == bias[1]
    # the shared positions now keep their count under a current change of half a step
    for shift in (-0.5 * delta, 0.5 * delta):
        before = decode(np.float32(bias + shift))[:, 0, 2:]
        after = decode(np.float32(moved + shift))[:, 0, 2:]
        assert np.all(after == 0.5) and (shift > 0 or np.all(before == 0.25))


@pytest.mark.requires_runtime
@pytest.mark.parametrize("neuron, T", [("if", 4), ("mt", 4), ("gn", 2), ("srp", 2), ("bitserial", 3),
                                       ("lif", 4)])
def test_walk_on_the_kernels_equals_the_walk_on_the_references(monkeypatch, neuron, T):
    """The walk simulates its sites with the C++ kernels when the library is built; it picks
    exactly what the NumPy references make it pick."""
    from snncc import runtime

    if not runtime.is_built():
        pytest.skip("the kernel library is not built")
    options = make_options(neuron=neuron, timesteps=T)
    model = _model(residual=True)
    lam = np.float32(1.5) if neuron == "lif" else np.full(4, 1.5, np.float32)   # lif: per layer
    start = {s.y: QuantClipParams(lam=lam, levels=options.levels) for s in SITES}

    def walk():
        refined, reports = refine_sites(model, SITES, start, {"x": X}, options,
                                        neuron_spec=get_neuron(neuron), progress=False)
        return ({k: (v.lam.tolist(), None if v.bias is None else v.bias.tolist())
                 for k, v in refined.items()}, [r.to_json() for r in reports])

    kernels = walk()
    monkeypatch.setattr(runtime, "is_built", lambda: False)
    assert walk() == kernels


@pytest.mark.requires_runtime
def test_walk_falls_back_to_the_references_when_the_library_does_not_load(monkeypatch, tmp_path):
    """A library file that onnxruntime cannot load (e.g. built for another version) must not
    stop a compile that needs no kernels: the walk simulates with the references instead."""
    import snncc.snn_calibration as sc
    from snncc import runtime

    options = make_options(neuron="if", timesteps=4)
    model = _model()
    start = {s.y: QuantClipParams(lam=np.full(4, 1.5, np.float32), levels=options.levels)
             for s in SITES}

    def walk():
        refined, _ = refine_sites(model, SITES, start, {"x": X}, options,
                                  neuron_spec=get_neuron("if"), progress=False)
        return {k: v.lam.tolist() for k, v in refined.items()}

    monkeypatch.setattr(runtime, "is_built", lambda: False)
    want = walk()
    monkeypatch.undo()
    (tmp_path / "junk.so").write_bytes(b"not a library")
    monkeypatch.setenv(runtime.ENV_VAR, str(tmp_path / "junk.so"))
    monkeypatch.setattr(sc, "_KERNELS_OK", [True])
    assert walk() == want
    assert sc._KERNELS_OK == [False]


def test_residual_segments_take_the_upstream_spike_train():
    model = _model(residual=True)
    options = make_options(neuron="if", timesteps=4)
    sites = [Site("z1", "r1"), Site("z2", "y")]
    _, reports = refine_sites(model, sites, _start(options.levels), {"x": X}, options,
                              neuron_spec=get_neuron("if"), progress=False)
    assert len(reports) == 2 and reports[1].rel_error_after <= reports[1].rel_error_before


@pytest.mark.parametrize("target, kw", [("ort", {"neuron": "if", "timesteps": 4}),
                                        ("ort", {"neuron": "gn", "timesteps": 2}),
                                        ("qann", {"levels": 2})])
def test_walk_simulates_the_compiled_layer(tmp_path, target, kw):
    """One quantized layer, SNN-aware calibration: the compiled model (ORT, kernel library)
    outputs what the walk's own simulation with the chosen (lambda, bias) outputs; for the QANN
    the bias current, when chosen, must have been folded by fold-batchnorm."""
    w = RNG.normal(0, 0.6, (3, 2, 3, 3)).astype(np.float32)
    b = RNG.normal(0, 0.1, 3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["z"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w2"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", X)
    options = make_options(target=target, calib_path=str(tmp_path / "c.npy"), calib_method="snn",
                           fidelity_samples=0, **kw)
    result = compile_model(tmp_path / "m.onnx", tmp_path / "snn.onnx", options)
    assert result.report["notes"]["snn_calibration"]

    # the walk again, outside the pipeline, from the same start (per-channel MSE lambda)
    from snncc.context import CompileContext
    from snncc.pipeline import Pipeline
    from snncc.passes.calibrate import CalibratePass
    from snncc.passes.canonicalize import CanonicalizePass
    from snncc import ir

    m = ir.load(tmp_path / "m.onnx")
    ctx = CompileContext(options)
    Pipeline([CanonicalizePass(), CalibratePass(progress=False)]).run(m, ctx)
    params = ctx.quant["r"]
    bias = params.bias if params.bias is not None else np.zeros(3, np.float32)
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    ref.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    z = ort.InferenceSession(ref.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(["z"], {"x": X})[0]
    neuron = _Neuron(get_neuron(options.neuron) if target == "ort" else None, options, params)
    train = neuron.run(z + bias.reshape(1, -1, 1, 1), params.lam, True)
    expected = train.mean(axis=0)

    from snncc import runtime
    snn = ort.InferenceSession(str(tmp_path / "snn.onnx"), runtime.session_options(),
                               providers=["CPUExecutionProvider"])
    got = snn.run(None, {"x": X})[0]
    # the bias is folded into the conv bias in the compiled model: float rounding may move a
    # membrane across a threshold in rare positions, so compare spike-level agreement
    unit = float(np.max(params.lam)) / options.levels
    close = np.abs(got - expected) <= 1e-4 * unit + 1e-6
    assert close.mean() > 0.995


@pytest.mark.parametrize("residual", [False, True])
def test_fold_batchnorm_adds_the_calibrated_bias(residual):
    """A site's calibrated bias current enters z exactly once: ORT z after the pass equals
    z before plus the bias (on one branch for a residual Add), and the params drop it."""
    from helpers import run_passes

    from snncc.context import CompileContext, CompileOptions, QuantClipParams
    from snncc.passes.fold_batchnorm import FoldBatchNormPass

    model = _model(residual=residual)
    site = "z2" if residual else "c2"
    bias = np.array([0.25, -0.5, 0.125, 1.0], np.float32)
    ctx = CompileContext(CompileOptions(target="qann"))
    ctx.quant["y"] = QuantClipParams(lam=np.full(4, 1.5, np.float32), levels=4, bias=bias)
    ctx.quant["r1"] = QuantClipParams(lam=np.float32(1.5), levels=4)
    out, report, ctx = run_passes(model, [FoldBatchNormPass()], ctx=ctx)
    assert ctx.quant["y"].bias is None and ctx.quant["y"].phi == 0.5
    # counted as what it is (without the bias shift it had been counted as bias_shifted)
    assert report.rows[0].counts.get("calib_bias_folded") == 1
    assert "bias_shifted" not in report.rows[0].counts

    def z_of(m):
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.graph.output.append(helper.make_tensor_value_info(site, TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m2.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"]).run([site], {"x": X})[0]

    before, after = z_of(model), z_of(out)
    np.testing.assert_allclose(after, before + bias.reshape(1, -1, 1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("neuron, const", [("if", False), ("srp", True)])
def test_large_sites_search_on_a_position_subset(monkeypatch, neuron, const):
    """Above SEARCH_BUDGET values a site picks lambda and bias on a fixed subset of positions
    (the same choice as a walk given only that subset), and still returns the whole-map train,
    simulated with the chosen values, for the layers downstream."""
    import snncc.snn_calibration as sc
    options = make_options(neuron=neuron, timesteps=4)
    spec = get_neuron(neuron)
    start = QuantClipParams(lam=np.full(3, 1.2, np.float32), levels=options.levels)
    n = 8
    target = np.maximum(RNG.normal(0.3, 0.5, (n, 3, 7, 9)), 0).astype(np.float32)
    z = RNG.normal(0.3, 0.6, ((1 if const else 4) * n, 3, 7, 9))
    z = z.astype(np.float32)
    neuron_ = _Neuron(spec, options, start)
    monkeypatch.setattr(sc, "SEARCH_BUDGET", n * 3 * 20)
    sub_z, sub_target = sc._search_subset(z, target)
    assert sub_z.shape[-1] == 20 and sub_target.shape == (n, 3, 20)
    params, train, _ = sc._refine_site(Site("z", "y"), z, const, target, neuron_)
    monkeypatch.setattr(sc, "SEARCH_BUDGET", 10 ** 9)
    direct, _, _ = sc._refine_site(Site("z", "y"), sub_z, const, sub_target, neuron_)
    assert np.array_equal(params.lam, direct.lam)
    assert (params.bias is None) == (direct.bias is None)
    if params.bias is not None:
        assert np.array_equal(params.bias, direct.bias)
    current = z if params.bias is None else z + params.bias.reshape(1, -1, 1, 1)
    assert train.shape[1:] == (n, 3, 7, 9)
    assert np.array_equal(train, neuron_.run(current, params.lam, const))


def test_targets_come_from_the_segments_exactly():
    """The walk computes each site's ANN activation from the ANN's own upstream activations, one
    segment at a time; a site whose activation reads more than its z falls back to the whole
    ANN. Both equal the ANN's activation bit for bit."""
    import snncc.snn_calibration as sc
    from snncc import ir
    proto = ir.with_outputs(_model(residual=True), free_batch=True)
    full = sc._session(ir.with_outputs(proto, ["r1", "y"])).run(["r1", "y"], {"x": X})
    sites = [Site("z1", "r1"), Site("z2", "y")]
    segments = sc._Segments(proto, sites)
    shapes = {"r1": full[0].shape, "y": full[1].shape}
    z2 = sc._run(sc._session(segments.model("z2", shapes)[0]), "z2", {"r1": full[0]}, 16)
    assert np.array_equal(segments.activation(sites[1], z2, {"x": X}, 16), full[1])
    # y = Relu(Add(c2, r1)) read from c2 needs r1 too: the whole ANN computes it
    odd = sc._Segments(proto, [sites[0], Site("c2", "y")])
    assert np.array_equal(odd.activation(Site("c2", "y"), z2, {"x": X}, 16), full[1])


def _bitserial_schedules(tmp_path, model: onnx.ModelProto, T: int) -> dict:
    """``model`` compiled to bit-serial at ``T`` under the folded and streaming schedules."""
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", X)
    return {schedule: compile_model(tmp_path / "m.onnx", tmp_path / f"{schedule}.onnx",
                                    make_options(neuron="bitserial", timesteps=T,
                                                 calib_path=str(tmp_path / "c.npy"),
                                                 schedule=schedule, fidelity_samples=0))
            for schedule in ("folded", "streaming")}


def _spy_on_walk(monkeypatch) -> dict:
    """Record what the walk hands each site: ``{y: (current z, chosen params)}``."""
    import snncc.snn_calibration as sc

    seen = {}
    real = sc._refine_site

    def spy(site, z, const, target, n):
        result = real(site, z, const, target, n)
        seen[site.y] = (z, result[0])
        return result

    monkeypatch.setattr(sc, "_refine_site", spy)
    return seen


def _maxpool_model(pool_first: bool = False) -> onnx.ModelProto:
    """x[N,2,6,6] -> Conv -> Relu (r1) -> MaxPool 2x2 -> Conv -> Relu (y); ``pool_first``: the
    second MaxPool comes after the second Conv, before its Relu (relu(max_pool(conv(x))))."""
    w1 = RNG.normal(0, 0.6, (4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32)
    pool = helper.make_node("MaxPool", ["c2" if pool_first else "r1"],
                            ["z2" if pool_first else "p1"], kernel_shape=[2, 2], strides=[2, 2])
    conv = helper.make_node("Conv", ["r1" if pool_first else "p1", "w2"],
                            ["c2" if pool_first else "z2"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["z1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["z1"], ["r1"]),
         *((conv, pool) if pool_first else (pool, conv)),
         helper.make_node("Relu", ["z2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("neuron, mean_slices", [("bitserial", True), ("if", False)])
def test_a_max_pool_after_a_bit_serial_layer_pools_the_window_mean(monkeypatch, neuron,
                                                                   mean_slices):
    """The compiled model pools a bit-serial layer's mean current (the MaxPool moves in front of
    the neuron), so the walk must hand the segments downstream the window mean in every slice: a
    plain MaxPool over the per-slice bit planes pooled bits, which no compiled model does, and
    fitted the next layer to another network (relative logit error 4-5x that of mse on small
    max-pool nets). Other neurons keep their trains."""
    model = _maxpool_model()
    seen = _spy_on_walk(monkeypatch)
    options = make_options(neuron=neuron, timesteps=4)
    sites = [Site("z1", "r1"), Site("z2", "y")]
    refine_sites(model, sites, _start(options.levels), {"x": X}, options,
                 neuron_spec=get_neuron(neuron), progress=False)
    z = seen["y"][0]
    S = len(z) // len(X)
    slices = z.reshape((S, len(X)) + z.shape[1:])
    assert S > 1 and np.array_equal(slices, np.broadcast_to(slices[:1], slices.shape)) == mean_slices


def _deeper(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with one more Conv -> Relu in front (x -> Conv -> Relu -> the old graph), so
    that its first MaxPool reads a neuron fed by spikes (pool-first leaves it in place)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    w0 = RNG.normal(0, 0.6, (2, 2, 3, 3)).astype(np.float32)
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([helper.make_node("Conv", ["x", "w0"], ["z0"], pads=[1, 1, 1, 1]),
                             helper.make_node("Relu", ["z0"], ["x0"])])
    for node in old:
        node.input[:] = ["x0" if i == "x" else i for i in node.input]
    model.graph.node.extend(old)
    model.graph.initializer.append(numpy_helper.from_array(w0, "w0"))
    return model


def test_streaming_warns_that_it_gates_a_max_pool(tmp_path):
    """Bit-serial streaming spike-gates a MaxPool after a neuron fed by spikes (folded and window
    pool the mean current exactly): the outputs differed by up to 0.47 of the folded ones, and
    nothing said so."""
    results = _bitserial_schedules(tmp_path, _deeper(_maxpool_model()), 2)
    warned = {k: [w for w in r.warnings if "spike-gates 1 MaxPool" in w]
              for k, r in results.items()}
    assert len(warned["streaming"]) == 1
    assert "right after a bitserial neuron exactly" in warned["streaming"][0]
    assert warned["folded"] == []


@pytest.mark.parametrize("neuron", ["if", "bitserial"])
def test_a_first_layer_max_pool_is_exact_in_every_schedule(tmp_path, neuron):
    """pool-first moves a MaxPool after a first-layer activation in front of it: no gate, no
    warning, and streaming equals folded (the gate made them differ)."""
    from snncc.simulate import run_compiled

    onnx.save(_maxpool_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", X)
    outs = {}
    for schedule in ("folded", "streaming"):
        res = compile_model(tmp_path / "m.onnx", tmp_path / f"{schedule}.onnx",
                            make_options(neuron=neuron, timesteps=4, schedule=schedule,
                                         calib_path=str(tmp_path / "c.npy"), fidelity_samples=0))
        assert not [w for w in res.warnings if "MaxPool" in w]
        assert set(res.report["notes"]["maxpool"].values()) == {
            "moved before its activation (pool-first)"}  # recorded as such (a sweep: it was {})
        outs[schedule] = run_compiled(res.output, X, batch_size=len(X)).outputs["y"]
    np.testing.assert_allclose(outs["streaming"], outs["folded"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("neuron, pool_first", [("if", False), ("mt", False), ("srp", False),
                                                ("if", True), ("bitserial", True)])
def test_the_walk_sees_the_current_the_compiled_model_computes_after_a_max_pool(
        tmp_path, monkeypatch, neuron, pool_first):
    """The layer after a max-pool: its current in the walk (plus the chosen bias) equals the
    compiled model's, slice by slice (bit-serial: up to its per-channel rounding shift, which
    the compiled model adds to the bias). The compiled model spike-gates the pool; the walk
    pooled the spike slices with a plain MaxPool (IF: off by up to 3.6 on a scale of 8.5), and
    a bit-serial pool after a conv must stay gated on the bit planes (only a pool reading the
    neuron itself moves in front of it: the window-mean test above)."""
    from snncc import ir, runtime

    onnx.save(_maxpool_model(pool_first), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", X)
    seen = _spy_on_walk(monkeypatch)
    options = make_options(neuron=neuron, timesteps=4, calib_path=str(tmp_path / "c.npy"),
                           fidelity_samples=0, schedule="folded")
    compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx", options)
    model = onnx.load(str(tmp_path / "o.onnx"))
    current = [n for n in model.graph.node if n.domain == "snncc.ops"][-1].input[0]
    session = ort.InferenceSession(ir.with_outputs(model, [current]).SerializeToString(),
                                   runtime.session_options(), providers=["CPUExecutionProvider"])
    got = session.run([current], {"x": X})[0]
    z, params = seen["y"]
    want = z + (0 if params.bias is None else params.bias.reshape(1, -1, 1, 1))
    if neuron == "bitserial":  # the rounding shift: one constant per channel
        want = want + (got - want).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(got).max()))


def test_every_schedule_calibrates_a_net_without_max_pools_alike(tmp_path, monkeypatch):
    """Window means and bit planes give the same current up to float rounding, and the rounding
    moved a few thresholds: streaming and folded bit-serial models of nets without a MaxPool
    stopped being identical (coverage sweep: up to 6e-3 of the output). The walk keeps the
    trains wherever no MaxPool needs the mean, as streaming does, so both calibrate alike."""
    seen = _spy_on_walk(monkeypatch)
    options = make_options(neuron="bitserial", timesteps=4)
    refine_sites(_model(), SITES, _start(options.levels), {"x": X}, options,
                 neuron_spec=get_neuron("bitserial"), progress=False)
    z = seen["y"][0]
    slices = z.reshape((-1, len(X)) + z.shape[1:])
    assert not np.array_equal(slices, np.broadcast_to(slices[:1], slices.shape))  # the bit planes
    results = _bitserial_schedules(tmp_path, _model(), 4)
    assert results["folded"].report["quant"] == results["streaming"].report["quant"]


def _island_model() -> onnx.ModelProto:
    """x -> Conv -> Relu (r1) -> Conv -> LeakyReLU (an analog island under --allow-analog) ->
    Conv -> Relu (y) -> Flatten -> Gemm (out)."""
    w1 = RNG.normal(0, 0.6, (4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32)
    w3 = RNG.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32)
    wf = RNG.normal(0, 0.3, (3, 4 * 6 * 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["z1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["z1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("LeakyRelu", ["c2"], ["l2"], alpha=0.1),
         helper.make_node("Conv", ["l2", "w3"], ["z3"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["z3"], ["y"]),
         helper.make_node("Flatten", ["y"], ["f"]),
         helper.make_node("Gemm", ["f", "wf"], ["out"], transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"),
                                                      (wf, "wf"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_analog_island_is_calibrated_on_its_decoded_input(tmp_path):
    """The compiled schedule runs an analog island once, on its decoded (time-mean) input; the
    walk ran it on every slice, so bit-serial at T = 4 no longer equalled its L = 15 QANN
    (1.9-3.7 % off on a small net from the coverage sweep; exact with mse)."""
    from snncc import runtime

    onnx.save(_island_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.concatenate([X] * 4))
    outs = {}
    for target, kw in (("ort", {"neuron": "bitserial", "timesteps": 4}),
                       ("qann", {"levels": 15})):
        compile_model(tmp_path / "m.onnx", tmp_path / f"{target}.onnx", make_options(
            target=target, calib_path=str(tmp_path / "c.npy"), allow_analog=True,
            fidelity_samples=0, **kw))
        outs[target] = ort.InferenceSession(str(tmp_path / f"{target}.onnx"),
                                            runtime.session_options()).run(None, {"x": X})[0]
    np.testing.assert_allclose(outs["ort"], outs["qann"], rtol=0, atol=1e-4 * np.abs(
        outs["qann"]).max())
