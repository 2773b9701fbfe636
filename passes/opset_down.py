"""Opset down-conversion for canonicalize: ``onnx.version_converter`` plus the ops it cannot take
down.

torch's default (dynamo) exporter writes opset 18 and newer, and the version converter has no
adapter below 18 for ``Pad`` (18 added an ``axes`` input, 19 the ``wrap`` mode) or ``Split`` (18
added ``num_outputs``): any such model failed with "No Adapter To Version $17 for Pad". Here
those nodes are first rewritten into their opset-13 form, which every opset from 13 on accepts:

* ``Pad`` with ``axes``: the pads of the listed axes spread over all axes (zeros elsewhere); needs
  ``pads`` and ``axes`` as constants and the input's rank. Mode ``wrap`` has no older form
  (SNN-E118).
* ``Split`` with ``num_outputs``: dropped when the split axis divides evenly (opset 13 splits
  into equal parts by the number of outputs), else a constant ``split`` input of
  ``ceil(d / n)``-sized parts, the last one smaller (opset 18's rule); needs the axis length.

They are then hidden from the converter in a private domain and put back after it. Shapes come
from ONNX shape inference at the source opset.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from snncc.errors import ModelInputError

__all__ = ["convert_version"]

_HELD = "snncc.held"  # the private domain that hides rewritten nodes from the converter
_REWRITE = ("Pad", "Split")


def convert_version(proto: onnx.ModelProto, opset: int, name: str = "canonicalize"
                    ) -> onnx.ModelProto:
    """``proto`` converted to default-domain ``opset`` (a new model); SNN-E118 if it cannot be."""
    source = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    held = [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and n.op_type in _REWRITE]
    if source > opset and opset >= 13 and held:
        proto = _hold(proto, name)
    try:
        out = version_converter.convert_version(proto, opset)
    except Exception as exc:  # the converter raises RuntimeError / ValueError
        raise ModelInputError(f"{name}: converting opset {source} to {opset} failed: {exc}",
                              code="SNN-E118",
                              hint=f"re-export the model with opset {opset}" + (
                                  "" if opset >= 17 else ", or leave the opset option at 17 "
                                  "(the default)")) from exc
    for node in out.graph.node:
        if node.domain == _HELD:
            node.domain = ""
        elif source < 11 and node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            _keep_asymmetric(node)
    keep = [o for o in out.opset_import if o.domain != _HELD]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def _keep_asymmetric(node: onnx.NodeProto) -> None:
    """An opset-10 (or Upsample) linear resize samples at x_out / scale; the converter leaves
    the opset-11 default, half_pixel, which ONNX Runtime then samples elsewhere (nearest agrees
    either way)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"nearest") in (b"linear", "linear") and \
            "coordinate_transformation_mode" not in attrs:
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode",
                                                         "asymmetric"))


def _hold(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # shapes help only Split without an even split; said there
        inferred = proto
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.input, *inferred.graph.value_info,
                        *inferred.graph.output) if v.type.tensor_type.HasField("shape")}
    consts = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = value
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in _REWRITE:
            label = f"{name}: node '{node.name or node.output[0]}' ({node.op_type})"
            (_pad if node.op_type == "Pad" else _split)(proto.graph, node, shapes, consts, label)
            node.domain = _HELD
    proto.opset_import.append(onnx.helper.make_opsetid(_HELD, 1))
    return proto


def _const(consts: dict, tensor: str, label: str, what: str) -> np.ndarray:
    if tensor not in consts:
        raise ModelInputError(f"{label}: its {what} is not a constant, so it has no opset-17 form",
                              code="SNN-E118", hint="re-export the model with opset 17")
    return numpy_helper.to_array(consts[tensor])


def _new_initializer(graph: onnx.GraphProto, hint: str, value: np.ndarray) -> str:
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    name = hint
    while name in names:
        name += "_"
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _pad(graph, node, shapes, consts, label: str) -> None:
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise ModelInputError(f"{label}: pad mode '{mode}' has no opset-17 form",
                              code="SNN-E118", hint="pad with constant, reflect or edge")
    if len(node.input) < 4 or not node.input[3]:
        return
    axes = _const(consts, node.input[3], label, "axes input").astype(np.int64).ravel()
    pads = _const(consts, node.input[1], label, "pads input").astype(np.int64).ravel()
    rank = len(shapes.get(node.input[0], []) or [])
    if not rank:
        raise ModelInputError(f"{label}: padding some axes needs the input's rank, which is "
                              "unknown", code="SNN-E118", hint="re-export the model with opset 17")
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(axes):
        axis = int(axis) % rank
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    node.input[1] = _new_initializer(graph, f"{node.name or node.output[0]}_pads", full)
    del node.input[3:]


def _split(graph, node, shapes, consts, label: str) -> None:
    attrs = {a.name: a for a in node.attribute}
    if "num_outputs" not in attrs:
        return
    keep = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(keep)
    if len(node.input) > 1 and node.input[1]:
        raise ModelInputError(f"{label}: has both a split input and num_outputs, which ONNX "
                              "forbids", code="SNN-E118", hint="the model is not valid ONNX; "
                              "re-export it")
    n = len(node.output)
    axis = attrs["axis"].i if "axis" in attrs else 0
    shape = shapes.get(node.input[0])
    dim = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if dim is None:
        raise ModelInputError(f"{label}: splitting into {n} parts needs the length of axis "
                              f"{axis}, which is unknown", code="SNN-E118",
                              hint="give --input-shape, or re-export the model with opset 17")
    if dim % n == 0:
        return
    part = math.ceil(dim / n)
    sizes = np.array([part] * (n - 1) + [dim - part * (n - 1)], np.int64)
    if sizes[-1] < 0:
        raise ModelInputError(f"{label}: an axis of length {dim} cannot be split into {n} "
                              f"parts of {part} (opset 18's rule)", code="SNN-E118",
                              hint="the model is not valid ONNX; re-export it")
    while len(node.input) < 2:
        node.input.append("")
    node.input[1] = _new_initializer(graph, f"{node.name or node.output[0]}_split", sizes)
