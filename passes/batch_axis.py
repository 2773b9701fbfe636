"""Batch-axis rules of schedule-timesteps: which ops keep the rows of axis 0 apart.

The folded schedule holds the time steps in the batch axis (``[S*N, ...]``), and a streaming model
of K steps per call (``--steps-per-call K``) holds its K steps there (``[K*N, ...]``): an op that
works across axis 0 (a Concat on it, a reduction over it, a transpose that moves it...) would mix
steps, so it is refused (SNN-E242), as is a Reshape whose literal target fixes or merges the batch
(SNN-E243). :func:`touches_batch` knows the axis conventions of the ONNX ops that have one; with
K steps per call every op on the data (the analog stem before the first neuron too) runs on the
K steps, so an op it does not know to be row-wise (:data:`ROW_WISE`) is refused there as well.
``snncc inspect`` predicts the folded schedule's refusals with :func:`batch_axis_problem`.
"""
from __future__ import annotations

from typing import Collection

import numpy as np

from snncc import ir

__all__ = ["batch_axis_problem", "touches_batch", "ROW_WISE"]

#: ops with an ``axis`` attribute over which they mix, and its default when absent (None: the
#: op flattens the input without it)
_AXIS_DEFAULT: dict[str, int | None] = {
    "Concat": 0, "Split": 0, "Flatten": 1, "ArgMax": 0, "ArgMin": 0, "GatherElements": 0,
    "Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "LpNormalization": -1,
    "LayerNormalization": -1, "TopK": -1, "Compress": None}
#: ops that work over the listed ``axes`` (attribute, or input 1 from opset 13/18)
_AXES_OPS = frozenset({"Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                       "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                       "ReduceSumSquare"})
#: per-element ops: each output element is computed from the elements at its own index
_ELEMENTWISE = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitShift",
    "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Cast", "CastLike", "Ceil", "Celu",
    "Clip", "Cos", "Cosh", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu",
    "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mod", "Mul", "Neg",
    "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid",
    "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Where", "Xor"})
#: ops that work on each sample alone (over its channels and positions)
_PER_SAMPLE = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth"})
#: ops known to keep the rows of axis 0 apart, given that :func:`touches_batch` says so
ROW_WISE = (_ELEMENTWISE | _PER_SAMPLE | _AXES_OPS | frozenset(_AXIS_DEFAULT) | frozenset({
    "Transpose", "Slice", "Pad", "Resize", "Upsample", "Tile", "Expand", "Gemm", "MatMul",
    "Reshape", "Gather", "CumSum"}))


def _const_ints(node: ir.Node, attr: str | None, input_index: int, kind=int) -> list | None:
    """A list given as attribute ``attr`` or as constant input ``input_index`` (of ``kind``)."""
    if attr is not None and attr in node.attrs:
        return [kind(v) for v in np.atleast_1d(node.attrs[attr])]
    if len(node.inputs) > input_index and node.inputs[input_index].name:
        value = ir.const_value(node.inputs[input_index])
        return None if value is None else [kind(v) for v in np.atleast_1d(value)]
    return None


def touches_batch(node: ir.Node, rank: int | None, batched: Collection[int] = (0,)) -> bool:
    """Whether the op mixes rows of the batch axis (time steps in the folded schedule, the K
    steps of a call in streaming), or moves the axis: True where it cannot tell (but a Pad's pads
    or a Resize's sizes computed at run time, trusted as before this check knew those ops).
    ``rank`` is that of input 0; ``batched`` the inputs that hold the batch axis."""
    def is_zero(axis: int) -> bool:
        return axis == 0 or (rank is not None and axis == -rank)

    def first_axis(axes: list[int] | None, total: int) -> int | None:
        """The position of axis 0 among ``axes`` (all of them when None), or None."""
        if axes is None:
            return 0 if total else None
        return next((i for i, a in enumerate(axes) if is_zero(a)), None)

    op = node.op
    if op in _AXIS_DEFAULT:
        default = _AXIS_DEFAULT[op]
        if "axis" not in node.attrs and default is None:
            return True
        return is_zero(int(node.attrs.get("axis", default)))
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return (perm is None and rank != 1) or (perm is not None and list(perm)[0] != 0)
    if op in _AXES_OPS:
        axes = _const_ints(node, "axes", 1)
        if axes is None:
            keeps = op.startswith("Reduce") and node.attrs.get("noop_with_empty_axes", 0)
            return not keeps and op != "Unsqueeze"
        return any(is_zero(a) for a in axes)
    if op == "Slice":
        axes = _const_ints(node, None, 3)
        starts = ir.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None:
            return starts is None or np.atleast_1d(starts).size > 0
        return any(is_zero(a) for a in axes)
    if op == "CumSum":
        axis = _const_ints(node, None, 1)
        return axis is None or is_zero(axis[0])
    if op == "Pad":
        pads = _const_ints(node, "pads", 1)
        if pads is None or len(pads) % 2:
            return pads is not None
        i = first_axis(_const_ints(node, None, 3), len(pads) // 2)
        return i is not None and (pads[i] != 0 or pads[i + len(pads) // 2] != 0)
    if op in ("Resize", "Upsample"):   # opset 10's Resize takes its scales as input 1
        scales = _const_ints(node, "scales", 1 if op == "Upsample" or len(node.inputs) == 2
                             else 2, float)
        sizes = _const_ints(node, None, 3) if op == "Resize" else None
        axes = node.attrs.get("axes")
        axes = None if axes is None else [int(a) for a in axes]
        if scales:
            i = first_axis(axes, len(scales))
            return i is not None and scales[i] != 1.0
        # literal sizes fix the batch; sizes computed from the tensor's shape hold its rows
        return bool(sizes) and first_axis(axes, len(sizes)) is not None
    if op == "Tile":
        repeats = _const_ints(node, None, 1)
        return repeats is None or repeats[0] != 1
    if op == "Expand":   # broadcasts from the right: axis 0 stays where the target is no longer
        shape = _const_ints(node, None, 1)
        return shape is None or rank is None or len(shape) > rank or \
            (len(shape) == rank and shape[0] != 1)
    if op == "Gather":   # data rows (axis 0), or indices whose axis lands elsewhere
        axis = int(node.attrs.get("axis", 0))
        return (0 in batched and is_zero(axis)) or (1 in batched and axis != 0)
    if op == "Gemm":
        return bool(node.attrs.get("transA", 0)) or any(i in batched for i in (1, 2))
    if op == "MatMul":
        return 1 in batched
    return False


def _literal_batch(node: ir.Node) -> bool:
    """A Reshape whose constant target shape fixes the batch size (or flattens the batch)."""
    if node.op != "Reshape":
        return False
    shape = ir.const_value(node.inputs[1])
    if shape is None:
        return False
    shape = np.atleast_1d(shape)
    return shape.size < 2 or int(shape[0]) > 0


def batch_axis_problem(node: ir.Node, rank: int | None, batched: Collection[int] = (0,),
                       per_call: int = 1) -> tuple[str, str, str] | None:
    """(code, what, hint) when an op on the batch axis cannot run with time in it: SNN-E243 a
    Reshape with a literal batch, SNN-E242 an op across axis 0 (or, with ``per_call`` > 1 steps
    per call, an op not known to be row-wise). ``snncc inspect`` predicts the folded schedule's
    with this function."""
    if per_call > 1:
        holds = f"holds the {per_call} steps of a call with --steps-per-call {per_call}"
        fix = "use --steps-per-call 1 (one step per call), or "
    else:
        holds, fix = "holds time in the folded schedule", ""
    if _literal_batch(node):
        return ("SNN-E243", f"the Reshape target fixes or merges the batch dimension, which "
                f"{holds}", f"{fix}re-export the model with a dynamic batch (canonicalize "
                "rewrites a batch dimension to -1 only where the target keeps the samples "
                "apart; its declines say why not here)")
    if per_call > 1 and node.op not in ROW_WISE and node.domain not in (ir.SNN_DOMAIN,):
        return ("SNN-E242", f"{node.op} is not known to keep the rows of the batch axis apart, "
                f"which {holds}", "use --steps-per-call 1 (one step per call)")
    if touches_batch(node, rank, batched):
        return ("SNN-E242", f"{node.op} works across the batch axis, which {holds}",
                f"{fix}keep axis 0 out of reshapes, transposes, concatenations and reductions")
    return None
