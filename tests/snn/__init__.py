"""Builders shared by the spiking-model tests: hand-written QANN graphs (ONNX text) whose
activations are the QCFS chain ``y = Mul(Clip(Floor(Add(Mul(z, k), phi)), 0, L), s)``, and a
compile helper (insert-neurons + the ORT lowering) on shape-inferred copies.

Weights, inputs and lambda are dyadic (lambda/L a power of two), so float32 sums are exact and
the theory's exactness claims can be checked with array_equal.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import onnx

from helpers import run_ort, run_passes, tiny_model
from snncc.context import CompileContext, CompileOptions
from snncc.passes.insert_neurons import InsertNeuronsPass
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def chain(i: int, z: str, y: str) -> str:
    """The QCFS chain of site ``i`` (constants k{i}, phi{i}, zero, L{i}, s{i}); writes q{i}."""
    return (f"m{i} = Mul({z}, k{i})\n a{i}_ = Add(m{i}, phi{i})\n f{i} = Floor(a{i}_)\n"
            f" q{i} = Clip(f{i}, zero, L{i})\n {y} = Mul(q{i}, s{i})\n")


def chain_params(i: int, lam: float, levels: int, phi: float) -> dict[str, np.ndarray]:
    L = np.float32(levels)
    return {f"k{i}": np.array(L / np.float32(lam), np.float32),
            f"s{i}": np.array(np.float32(lam) / L, np.float32),
            f"phi{i}": np.array(phi, np.float32), f"L{i}": np.array(L, np.float32),
            "zero": np.array(0, np.float32)}


def chain_decls(i: int) -> list[str]:
    return [f"float k{i}", f"float phi{i}", f"float L{i}", f"float s{i}"]


def _with_value(decl: str) -> str:
    """``float[2,3] w`` -> ``float[2,3] w = {0, ...}`` (tiny_model fills the values)."""
    if "=" in decl:
        return decl
    shape = decl[decl.find("[") + 1:decl.find("]")] if "[" in decl else ""
    size = int(np.prod([int(d) for d in shape.split(",")])) if shape else 1
    return f"{decl} = {{{', '.join(['0'] * size)}}}"


def build(body: str, decls: Sequence[str], sites: int, *, lam: float, levels: int,
          phi: float = 0.5, inputs: str = "float[N,2,4,4] x", outputs: str = "float[N,3] out",
          seed: int = 0, extra: dict | None = None) -> onnx.ModelProto:
    """A QANN from a graph body; every site i in 1..sites gets (lam, levels, phi)."""
    site_decls = [d for i in range(1, sites + 1) for d in chain_decls(i)]
    all_decls = [_with_value(d) for d in list(decls) + site_decls + ["float zero"]]
    text = f"{HEADER}\nqann ({inputs}) => ({outputs}) <{', '.join(all_decls)}>\n{{\n{body}}}\n"
    params: dict[str, Any] = {}
    for i in range(1, sites + 1):
        params.update(chain_params(i, lam, levels, phi))
    params.update(extra or {})
    model = tiny_model(text, seed=seed, params=params, dyadic=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def single_layer(**kw) -> onnx.ModelProto:
    """x -> Conv -> QCFS -> a1 (the graph output)."""
    body = "c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
    return build(body, ["float[4,2,3,3] w1", "float[4] b1"], 1, outputs="float[N,4,4,4] a1", **kw)


def deep_net(**kw) -> onnx.ModelProto:
    """Three conv+QCFS layers, GlobalAveragePool, Gemm."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
            + "c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n" + chain(2, "c2", "a2")
            + "c3 = Conv <pads = [1, 1, 1, 1]> (a2, w3, b3)\n" + chain(3, "c3", "a3")
            + "g = GlobalAveragePool(a3)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2",
             "float[4,4,3,3] w3", "float[4] b3", "float[3,4] wf", "float[3] bf"]
    return build(body, decls, 3, **kw)


def residual_net(**kw) -> onnx.ModelProto:
    """conv+QCFS, a residual block (conv+QCFS, conv, Add shortcut, QCFS), GAP, Gemm."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
            + "c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n" + chain(2, "c2", "a2")
            + "c3 = Conv <pads = [1, 1, 1, 1]> (a2, w3, b3)\n r = Add(c3, a1)\n"
            + chain(3, "r", "a3")
            + "g = GlobalAveragePool(a3)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2",
             "float[4,4,3,3] w3", "float[4] b3", "float[3,4] wf", "float[3] bf"]
    return build(body, decls, 3, **kw)


def input_skip_net(**kw) -> onnx.ModelProto:
    """conv+QCFS, conv, plus a 1x1 conv straight from the input (an analog branch), QCFS, GAP,
    Gemm: the analog shortcut meets a spike train one neuron deep."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
            + "c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n cs = Conv (x, ws, bs)\n"
            + " r = Add(c2, cs)\n" + chain(2, "r", "a2")
            + "g = GlobalAveragePool(a2)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2",
             "float[4,2,1,1] ws", "float[4] bs", "float[3,4] wf", "float[3] bf"]
    return build(body, decls, 2, **kw)


def maxpool_net(**kw) -> onnx.ModelProto:
    """conv+QCFS twice, MaxPool 2x2 on the second activation, conv+QCFS, GAP, Gemm."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
            + "c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n" + chain(2, "c2", "a2")
            + "p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (a2)\n"
            + "c3 = Conv <pads = [1, 1, 1, 1]> (p, w3, b3)\n" + chain(3, "c3", "a3")
            + "g = GlobalAveragePool(a3)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2",
             "float[4,4,3,3] w3", "float[4] b3", "float[3,4] wf", "float[3] bf"]
    return build(body, decls, 3, **kw)


def island_net(**kw) -> onnx.ModelProto:
    """conv+QCFS, conv, Sigmoid (no spiking form), conv+QCFS, GAP, Gemm."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1")
            + "c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n sg = Sigmoid(c2)\n"
            + "c3 = Conv <pads = [1, 1, 1, 1]> (sg, w3, b3)\n" + chain(2, "c3", "a2")
            + "g = GlobalAveragePool(a2)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2",
             "float[4,4,3,3] w3", "float[4] b3", "float[3,4] wf", "float[3] bf"]
    return build(body, decls, 2, **kw)


def feeds(model: onnx.ModelProto, *, batch: int = 3, seed: int = 1, scale: float = 1.0
          ) -> dict[str, np.ndarray]:
    """Dyadic inputs (multiples of 1/64)."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        dims = [d.dim_value or batch for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = (np.round(rng.normal(0, scale, size=dims) * 64) / 64).astype(np.float32)
    return out


def options(neuron: str, T: int, **kw) -> CompileOptions:
    return CompileOptions(target="ort", neuron=neuron, timesteps=T, **kw)


def compile_snn(model: onnx.ModelProto, opts: CompileOptions):
    """insert-neurons + schedule-timesteps; returns (proto, report, ctx)."""
    return run_passes(model, [InsertNeuronsPass(), ScheduleTimestepsPass()],
                      ctx=CompileContext(opts))


def streaming(opts: CompileOptions) -> CompileOptions:
    return replace(opts, schedule="streaming")


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy with extra float graph outputs."""
    out = copy.deepcopy(model)
    for name in names:
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                   None))
    return out


def qann_levels(model: onnx.ModelProto, x: dict, sites: Sequence[int]) -> list[np.ndarray]:
    """The integer levels q_i of the QCFS sites i (the Clip outputs)."""
    names = [f"q{i}" for i in sites]
    return run_ort(with_outputs(model, names), x, outputs=names)


def snn_levels(proto: onnx.ModelProto, x: dict, sites: Sequence[int], *, slices: int,
               counted: int, unit: float) -> list[np.ndarray]:
    """Per site i, the decoded neuron output a{i} of a folded model in units of lambda/L:
    mean over the counted slices of [S, N, ...], divided by the unit. In a window-collapsed
    model a{i} is already the decoded [N, ...] value."""
    names = [f"a{i}" for i in sites]
    out = run_ort(with_outputs(proto, names), x, outputs=names)
    if {p.key: p.value for p in proto.metadata_props}.get("snncc.schedule") == "window":
        return [y / np.float32(unit) for y in out]
    return [y.reshape((slices, -1) + y.shape[1:])[slices - counted:].mean(axis=0) / np.float32(unit)
            for y in out]
