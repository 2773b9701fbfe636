"""insert-neurons: every QCFS chain becomes the chosen neuron op, for every registered neuron."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import op_types, run_ort, run_passes
from snn import deep_net, options, single_layer

from snncc.context import CompileContext
from snncc.errors import SnnccError
from snncc.ir import SNN_DOMAIN
from snncc.neurons import NEURONS, get_neuron
from snncc.neurons.registry import validate_attrs
from snncc.passes.insert_neurons import InsertNeuronsPass
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass
from snncc.simulate import node_attrs

T = 2


def levels_for(key: str) -> int:
    return get_neuron(key).levels_for(T, options(key, T)) or T


def insert(model, opts):
    return run_passes(model, [InsertNeuronsPass()], ctx=CompileContext(opts))


@pytest.mark.parametrize("key", sorted(NEURONS))
def test_chain_becomes_neuron(key):
    spec = get_neuron(key)
    opts = options(key, T)
    out, report, ctx = insert(single_layer(lam=1.0, levels=levels_for(key)), opts)
    assert op_types(out) == ["Conv", spec.op_type]
    neuron = out.graph.node[1]
    assert neuron.domain == SNN_DOMAIN
    assert list(neuron.output) == ["a1"]  # the site's tensor keeps its name
    attrs = node_attrs(neuron)
    assert attrs == validate_attrs(spec, attrs)
    assert report.rows[0].counts == {"neurons_inserted": 1, "already_spiking": 0}
    [record] = ctx.notes["neurons"]
    assert (record["node"], record["neuron"], record["site"]) == (neuron.name, key, "a1")
    assert [(f.domain, f.name) for f in out.functions] == [(SNN_DOMAIN, spec.op_type)]
    onnx.checker.check_model(out, full_check=True)


def test_one_function_per_op_and_every_site_replaced():
    out, report, _ = insert(deep_net(lam=2.0, levels=4), options("if", 4))
    assert op_types(out) == ["Conv", "IFNeuron"] * 3 + ["GlobalAveragePool", "Flatten", "Gemm"]
    assert len(out.functions) == 1
    assert report.rows[0].counts["neurons_inserted"] == 3


def test_per_channel_lambda_becomes_per_channel_theta():
    lam = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    model = single_layer(lam=1.0, levels=4, extra={
        "k1": (np.float32(4) / lam).reshape(4, 1, 1), "s1": (lam / np.float32(4)).reshape(4, 1, 1)})
    out, _, _ = insert(model, options("if", 4))
    assert node_attrs(out.graph.node[1])["theta"] == lam.tolist()


def already_spiking_model() -> onnx.ModelProto:
    """x -> Conv -> snncc.ops::LIFNeuron (an IIR-trained export) -> y."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.full((2, 2, 1, 1), 0.25, np.float32), "w")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node("LIFNeuron", ["c"], ["y"], name="lif", domain=SNN_DOMAIN, T=4,
                         const_input=0, theta=[1.0], leak=0.5, amplitude=1.0, v_init=0.0)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, ["N", 2, 3, 3])],
                         [h.make_tensor_value_info("y", 1, ["N", 2, 3, 3])], [w])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17),
                                              h.make_opsetid(SNN_DOMAIN, 1)])


def test_existing_neurons_are_kept_and_scheduled():
    out, report, ctx = run_passes(already_spiking_model(),
                                  [InsertNeuronsPass(), ScheduleTimestepsPass()],
                                  ctx=CompileContext(options("if", 4)))
    assert report.rows[0].counts == {"neurons_inserted": 0, "already_spiking": 1}
    assert ctx.notes["neurons"][0]["neuron"] == "lif"
    assert [f.name for f in out.functions] == ["LIFNeuron"]
    onnx.checker.check_model(out, full_check=True)
    x = {"x": np.ones((2, 2, 3, 3), np.float32)}
    # constant current 0.5 per slice, leak 0.5: u = 0.5, 0.75, 0.875, 0.9375 -> never above 1
    np.testing.assert_array_equal(run_ort(out, x)[0], np.zeros((2, 2, 3, 3), np.float32))


def test_leftover_relu_fails_the_precondition():
    body_model = single_layer(lam=2.0, levels=4)
    relu = onnx.helper.make_node("Relu", ["x"], ["r"])
    body_model.graph.node.insert(0, relu)
    body_model.graph.output.append(onnx.helper.make_tensor_value_info("r", 1, None))
    with pytest.raises(SnnccError) as err:
        insert(body_model, options("if", 4))
    assert err.value.codes == {"SNN-E240"}


def test_unknown_neuron_op_is_rejected():
    model = already_spiking_model()
    model.graph.node[1].op_type = "FancyNeuron"
    with pytest.raises(SnnccError) as err:
        insert(model, options("if", 4))
    assert err.value.codes == {"SNN-E241"}

