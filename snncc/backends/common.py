"""Small pure helpers shared by backends that read the ANN-shaped ONNX graph themselves.

Backends never import each other; what two of them decode the same way lives here. Nothing in
this module knows a backend's error codes: a caller passes its own ``error(message, hint)``
factory, so each backend still reports under its own ``SNN-E`` code.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from snncc.ir import node_attrs

__all__ = ["node_attrs", "matrix_weights"]


#: The hint of a refused MaxPool (a target with no max pooling).
AVG_HINT = ("train the net with average pooling, or use --maxpool avg, which replaces each MaxPool "
            "by an AveragePool and so changes the network (compile's fidelity line says how much)")


def channels_last_hint(node: onnx.NodeProto, graph: onnx.GraphProto) -> str | None:
    """The hint for a refused ``Transpose`` that reads a graph input (a channels-last model
    permuting its input to NCHW), else None."""
    if node.op_type != "Transpose" or not node.input or \
            node.input[0] not in {i.name for i in graph.input}:
        return None
    return ("the model takes channels-last input and permutes it to NCHW: export it taking NCHW "
            "input (drop the permute, and feed x.transpose(0, 3, 1, 2)), or use --target ort, "
            "which runs the Transpose")


def matrix_weights(node: onnx.NodeProto, const: Callable[[onnx.NodeProto, int], Any],
                   error: Callable[[str, str], Exception]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """The fully connected layer of a ``Gemm`` or ``MatMul`` node as ``(W, bias)``.

    ``W`` is out x in (``y = W @ x + bias``), alpha and beta folded in; ``bias`` is None when the
    node has none (MatMul, or Gemm without C). ``const(node, i)`` returns input ``i`` as an
    array (None when absent) and raises the backend's own error for a non-constant input;
    ``error(message, hint)`` builds the exception raised for ``transA=1`` or a MatMul weight that
    is not a matrix. Arrays keep the dtype ``const`` gives them.
    """
    if node.op_type == "Gemm":
        attrs = node_attrs(node)
        if attrs.get("transA", 0):
            raise error("Gemm with transA=1", "export without transA")
        w = const(node, 1)
        w = w.T if not attrs.get("transB", 0) else w
        c = const(node, 2)
        return w * attrs.get("alpha", 1.0), None if c is None else c * attrs.get("beta", 1.0)
    w = const(node, 1)
    if w is None or w.ndim != 2:
        raise error("MatMul with a non-matrix weight", "use a 2-D weight")
    return w.T, None
