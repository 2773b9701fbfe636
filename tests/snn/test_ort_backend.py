"""The ORT backend end to end: exactness against the QANN, folded vs streaming, function bodies
vs kernel library, emitted files, capability checks and spike counting."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from helpers import run_ort
from snn import (compile_snn, deep_net, feeds, maxpool_net, options, qann_levels, residual_net,
                 single_layer, snn_levels, streaming)

from snncc import ir
from snncc.backends.registry import get_backend
from snncc.context import CompileContext
from snncc.errors import SnnccError
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass
from snncc.simulate import run_compiled, with_neuron_outputs

NETS = {"deep": deep_net, "residual": residual_net, "maxpool": maxpool_net}


def assert_equals_qann(net, key, T, *, lam, levels, phi=0.5, **opt):
    """The folded SNN's output and every layer's decoded level equal the QANN's, bit for bit
    (a site whose neuron moved behind a MaxPool has no tensor a{i} left to compare)."""
    model = net(lam=lam, levels=levels, phi=phi)
    out, _, ctx = compile_snn(model, options(key, T, **opt))
    x = feeds(model)
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])
    produced = {o for n in out.graph.node for o in n.output}
    sites = [i for i in (1, 2, 3) if f"a{i}" in produced]
    assert len(sites) >= 2
    sched = ctx.notes["schedule"]
    got = snn_levels(out, x, sites, slices=sched["total_slices"], counted=sched["counted_slices"],
                     unit=lam / levels)
    for snn, qann in zip(got, qann_levels(model, x, sites)):
        np.testing.assert_array_equal(snn, qann)


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_if_single_layer_constant_input_is_exact(levels):
    """QCFS Theorem 1 (shifted form): IF with T = L, theta = lambda, v(0) = theta/2."""
    model = single_layer(lam=2.0, levels=levels)
    out, _, _ = compile_snn(model, options("if", levels))
    x = feeds(model, scale=2.0)
    result = run_compiled(out, x, use_library=False, optimize=False)
    np.testing.assert_array_equal(result.outputs["a1"], run_ort(model, x)[0])
    [q] = qann_levels(model, x, [1])
    [spikes] = result.spikes_per_layer.values()
    assert spikes == int(q.sum())  # spike-count domain: one spike per level


@pytest.mark.parametrize("key, T, levels", [("gn", 2, 4), ("gn", 4, 8), ("mt", 1, 4),
                                            ("bitserial", 3, 7)])
def test_single_layer_constant_input_is_exact(key, T, levels):
    model = single_layer(lam=levels / 2, levels=levels)
    out, _, _ = compile_snn(model, options(key, T))
    x = feeds(model, scale=2.0)
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])


@pytest.mark.parametrize("net", ["deep", "residual", "maxpool"])
@pytest.mark.parametrize("key, T", [("gn", 1), ("mt", 1)])
def test_one_slice_neurons_equal_the_qann_on_deep_nets(net, key, T):
    """GN with tau*T = L and MT equidistant with n = L at T = 1 quantize like the QANN."""
    assert_equals_qann(NETS[net], key, T, lam=2.0, levels=4)


@pytest.mark.parametrize("net", ["deep", "residual", "maxpool"])
@pytest.mark.parametrize("T", [2, 4])
@pytest.mark.parametrize("phi", [0.5, 0.0])
def test_bitserial_equals_the_qann_on_deep_nets(net, T, phi):
    """L = 2^T - 1; phi = 0 is the bias-shifted QANN (v_init = 0), phi = 0.5 the plain one."""
    levels = 2 ** T - 1
    assert_equals_qann(NETS[net], "bitserial", T, lam=levels / 2, levels=levels, phi=phi)


CASES = [("if", 4, 4, 2.0), ("gn", 2, 4, 2.0), ("mt", 1, 4, 2.0), ("lif", 4, 4, 2.0),
         ("srp", 2, 2, 2.0), ("bitserial", 2, 3, 1.5), ("bitserial", 4, 15, 7.5)]


@pytest.mark.requires_runtime
@pytest.mark.parametrize("net", ["deep", "residual"])
@pytest.mark.parametrize("key, T, levels, lam", CASES)
def test_streaming_reproduces_folded(net, key, T, levels, lam):
    """Step-by-step streaming (kernel library) averaged over the counted steps == folded; for
    bit-serial neurons after the pipeline fill ((D+1)*T steps, the last T decoded)."""
    model = NETS[net](lam=lam, levels=levels)
    folded, _, _ = compile_snn(model, options(key, T))
    stream, _, ctx = compile_snn(model, streaming(options(key, T)))
    x = feeds(model)
    want = run_compiled(folded, x, use_library=False, optimize=False)
    got = run_compiled(stream, x, use_library=True, optimize=False)
    np.testing.assert_array_equal(got.outputs["out"], want.outputs["out"])
    if key == "bitserial":
        assert ctx.notes["schedule"]["steps"] == (ctx.notes["schedule"]["spiking_depth"] + 1) * T
    else:  # the same spike trains, slice for slice
        assert got.spikes_per_layer == want.spikes_per_layer


@pytest.mark.requires_runtime
@pytest.mark.parametrize("net", ["residual", "maxpool"])
@pytest.mark.parametrize("key, T, levels, lam", CASES)
def test_function_bodies_equal_library_kernels(net, key, T, levels, lam):
    model = NETS[net](lam=lam, levels=levels)
    out, _, _ = compile_snn(model, options(key, T))
    probe, _ = with_neuron_outputs(out)
    x = feeds(model)
    for fn, lib in zip(run_ort(probe, x), run_ort(probe, x, library=True)):
        np.testing.assert_array_equal(fn, lib)


def test_emit_writes_a_checked_model_and_manifest(tmp_path):
    model = residual_net(lam=2.0, levels=4)
    opts = options("if", 4)
    proto, _, ctx = compile_snn(model, opts)
    backend = get_backend("ort")
    assert [type(p) for p in backend.lowering_passes(opts)] == [ScheduleTimestepsPass]
    m = ir.load(proto)
    assert backend.check(m, ctx) == []
    artifact = backend.emit(m, ctx, tmp_path / "net.onnx")
    written = onnx.load(str(artifact.path))
    onnx.checker.check_model(written, full_check=True)
    assert {(i.domain, i.version) for i in written.opset_import} == {("", 17), ("snncc.ops", 1)}
    assert [f.name for f in written.functions] == ["IFNeuron"]
    manifest = json.loads((tmp_path / "net.onnx.json").read_text())
    assert (manifest["neuron"], manifest["timesteps"], manifest["schedule"]) == ("if", 4, "folded")
    assert manifest["neuron_ops"] == ["IFNeuron"] and manifest["snncc_version"]
    assert artifact.files == [tmp_path / "net.onnx", tmp_path / "net.onnx.json"]
    assert artifact.report["neuron_nodes"] == 3 and artifact.report["latency_steps"] == 4
    x = feeds(model)
    np.testing.assert_array_equal(run_ort(written, x)[0], run_ort(proto, x)[0])


def test_check_reports_what_ort_cannot_run():
    model = single_layer(lam=2.0, levels=4)
    relu = copy.deepcopy(model)  # a Relu left, a vendor op
    relu.graph.node.insert(0, onnx.helper.make_node("Relu", ["x"], ["r"]))
    relu.graph.output.append(onnx.helper.make_tensor_value_info("r", 1, None))
    m = ir.load(relu)
    m.graph.nodes[1].domain = "vendor.ops"
    codes = {d.code for d in get_backend("ort").check(m, CompileContext(options("if", 4)))}
    assert codes == {"SNN-E602", "SNN-E604"}
    proto, _, ctx = compile_snn(model, options("if", 4))
    m = ir.load(proto)
    m.functions.clear()
    next(n for n in m.graph.nodes if n.domain == ir.SNN_DOMAIN).op = "FancyNeuron"
    del m.metadata["snncc.schedule"]
    assert {d.code for d in get_backend("ort").check(m, ctx)} == {"SNN-E601", "SNN-E605"}
    with pytest.raises(SnnccError) as err:
        get_backend("ort").emit(m, ctx, "unused.onnx")
    assert "SNN-E601" in err.value.codes


def test_run_compiled_counts_spikes_and_events():
    """GN at T=1 with tau = L: each element fires its level as unit events in one slice."""
    model = deep_net(lam=2.0, levels=4)
    out, _, ctx = compile_snn(model, options("gn", 1))
    x = feeds(model)
    result = run_compiled(out, x, use_library=False, optimize=False)
    levels = qann_levels(model, x, [1, 2, 3])
    names = [r["node"] for r in ctx.notes["neurons"]]
    assert list(result.events_per_layer) == names
    assert [result.events_per_layer[n] for n in names] == [int(q.sum()) for q in levels]
    assert [result.spikes_per_layer[n] for n in names] == [int(np.count_nonzero(q)) for q in levels]
    assert run_compiled(out, x, use_library=False, spike_counts=False).spikes_per_layer is None


def test_run_compiled_batches_single_arrays_and_reports_activity():
    model = deep_net(lam=2.0, levels=4)
    out, _, _ = compile_snn(model, options("if", 4))
    x = feeds(model, batch=5)
    whole = run_compiled(out, x, use_library=False, optimize=False)
    parts = run_compiled(out, x["x"], use_library=False, optimize=False, batch_size=2)
    np.testing.assert_array_equal(parts.outputs["out"], whole.outputs["out"])
    assert parts.spikes_per_layer == whole.spikes_per_layer
    layers = whole.activity()["layers"]
    assert [row["name"] for row in layers] == list(whole.spikes_per_layer)
    first = layers[0]  # 4 channels x 4 x 4 neurons, 4 slices, 5 samples
    assert first["rate"] == whole.events_per_layer[first["name"]] / (5 * 4 * 64)
    assert first["spike_rate"] == whole.spikes_per_layer[first["name"]] / (5 * 4 * 64)
