"""Helpers for the Loihi backend tests: hand-built ANN-shaped spiking graphs (the form
insert-neurons produces) and the ORT reference run of the same graph (folded schedule)."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snncc import ir
from snncc.context import CompileContext, CompileOptions
from snncc.passes.insert_neurons import add_function, spec_for_op
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass
from snncc.pipeline import Pipeline
from snncc.simulate import run_compiled


class Graph:
    """Collects nodes and initializers; ``x`` is the input name."""

    def __init__(self, in_shape: Sequence[int], seed: int = 0):
        self.in_shape = tuple(in_shape)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def const(self, value, hint: str = "c") -> str:
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def dyadic(self, shape, scale: float = 0.5, denom: int = 16) -> np.ndarray:
        return (np.round(self.rng.normal(0, scale, shape) * denom) / denom).astype(np.float32)

    def op(self, op_type: str, inputs: Sequence[str], domain: str = "", **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{out}",
                                           domain=domain, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int | None = None,
             group: int = 1, weight: np.ndarray | None = None, bias: bool = True) -> str:
        pad = k // 2 if pad is None else pad
        w = self.dyadic((cout, cin // group, k, k)) if weight is None else weight
        ins = [x, self.const(np.asarray(w, np.float32), "w")]
        if bias:
            ins.append(self.const(self.dyadic((cout,), 0.25), "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2,
                       group=group)

    def neuron(self, x: str, op: str = "IFNeuron", **attrs) -> str:
        attrs.setdefault("theta", [1.0])
        return self.op(op, [x], domain=ir.SNN_DOMAIN, **attrs)

    def gemm(self, x: str, fin: int, fout: int) -> str:
        return self.op("Gemm", [x, self.const(self.dyadic((fout, fin), 0.25), "fc_w"),
                                self.const(self.dyadic((fout,), 0.25), "fc_b")], transB=1)

    def model(self, out: str) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            ["N", *self.in_shape])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(ir.SNN_DOMAIN, 1)])


def dyadic_input(shape: Sequence[int], seed: int = 1, denom: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.round(rng.uniform(0, 1, shape) * denom) / denom).astype(np.float32)


def compiled_ort(model: onnx.ModelProto, T: int) -> onnx.ModelProto:
    """The same spiking graph scheduled for ORT (folded), with its model-local functions."""
    m = ir.load(copy.deepcopy(model))
    for op in {n.op_type for n in model.graph.node if n.domain == ir.SNN_DOMAIN}:
        add_function(m, spec_for_op(op))
    Pipeline([ScheduleTimestepsPass()]).run(m, CompileContext(CompileOptions(target="ort",
                                                                             timesteps=T)))
    return ir.to_proto(m)


def ort_reference(model: onnx.ModelProto, x: np.ndarray, T: int):
    """The ORT folded-schedule run of the same spiking graph: RunResult."""
    return run_compiled(compiled_ort(model, T), {"x": x}, use_library=False, optimize=False)


def exact_lowering_equals_ort(model: onnx.ModelProto, x: np.ndarray, T: int = 4):
    """Lower and quantize ``model`` (exactly: no diagnostics, all weights exact), simulate ``x``
    and assert its one output equals the ORT folded run; returns (netlist, SimResult, RunResult)."""
    from snncc.backends.loihi.lowering import lower
    from snncc.backends.loihi.quantize import quantize
    from snncc.backends.loihi.simulator import simulate

    net = lower(model, T)
    report, diags = quantize(net)
    assert not diags and report["all_exact"]
    sim, ref = simulate(net, x), ort_reference(model, x, T)
    (name, out), = sim.outputs.items()
    np.testing.assert_array_equal(out, ref.outputs[name])
    return net, sim, ref


def residual_pool_model(seed: int = 0, op: str = "IFNeuron", **attrs) -> onnx.ModelProto:
    """conv -> neuron -> [conv + identity] -> neuron -> avgpool -> conv -> neuron -> concat
    -> GAP -> flatten -> gemm."""
    g = Graph((2, 8, 8), seed)
    s1 = g.neuron(g.conv("x", 2, 4), op, **attrs)
    s2 = g.neuron(g.op("Add", [g.conv(s1, 4, 4), s1]), op, **attrs)
    p = g.op("AveragePool", [s2], kernel_shape=[2, 2], strides=[2, 2])
    s3 = g.neuron(g.conv(p, 4, 4), op, **attrs)
    cat = g.op("Concat", [s3, p], axis=1)
    gap = g.op("GlobalAveragePool", [cat])
    return g.model(g.gemm(g.op("Flatten", [gap], axis=1), 8, 5))
