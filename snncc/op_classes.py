"""The single table that classifies ONNX ops for snncc.

Every op belongs to one group: ``linear`` (weighted layers, the ones that count MACs),
``activation``, ``pooling`` or ``other`` (everything else: BatchNorm, Add, Concat, Reshape...).
Activations with no spiking equivalent are marked ``spiking=False`` and carry a hint; canonicalize
rejects them unless ``--allow-analog`` is given, and ``snncc inspect`` lists them.
Composite activations that exporters spell out as several ops (x*Sigmoid(x) for SiLU, the erf
form of GELU, x*HardSigmoid(x), x*tanh(softplus(x))) have their own hints in
:data:`PATTERN_HINTS`.

How ops behave once time is folded into the batch (``[S*N, ...]``, schedule-timesteps) is also
tabled here, so that the front end (canonicalize, inspect) and the scheduler decide the same way
(:func:`snncc.passes.support.conversion_roles`): :data:`TIME_OPS` are per-row ops that run on
spike trains as they are (linear in time, so decoding after them equals decoding before);
:data:`META_OPS` never carry spikes; :data:`OUTPUT_ONLY` ops are allowed without
``--allow-analog`` only in the output head (after the last spiking layer), where they run once
on the decoded output.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Op domains ONNX Runtime runs (with the snncc kernels for ``snncc.ops``); a node of any other
#: domain cannot run, so snncc can neither calibrate nor execute a model that has one.
ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "snncc.ops")

__all__ = ["LINEAR", "ACTIVATION", "POOLING", "OTHER", "GROUPS", "OpInfo", "OPS", "op_info",
           "OUTPUT_ONLY", "PATTERN_HINTS", "TIME_OPS", "META_OPS", "RECURRENT", "QUANTIZED",
           "ORT_FUSED", "QUANTIZED_HINT", "FUSED_HINT"]

LINEAR, ACTIVATION, POOLING, OTHER = "linear", "activation", "pooling", "other"
GROUPS = (LINEAR, ACTIVATION, POOLING, OTHER)

_ANALOG = "or compile with --allow-analog to keep it as a non-spiking layer"
_RETRAIN = ("retrain the model with nn.ReLU (or a clipped ReLU such as ReLU6) in its place, "
            + _ANALOG)

_HEAD_ONLY = ("Softmax/LogSoftmax is supported only in the output head, after the last ReLU "
              "(there it runs once on the decoded output); " + _ANALOG)


@dataclass(frozen=True)
class OpInfo:
    """How snncc sees one ONNX op: its group, whether spikes can express it, and a hint if not."""

    group: str
    spiking: bool = True
    hint: str = ""


def _unsupported(hint: str = _RETRAIN) -> OpInfo:
    return OpInfo(ACTIVATION, spiking=False, hint=hint)


OPS: dict[str, OpInfo] = {
    # weighted layers
    "Conv": OpInfo(LINEAR),
    "ConvTranspose": OpInfo(LINEAR),
    "Gemm": OpInfo(LINEAR),
    "MatMul": OpInfo(LINEAR),
    # activations a spiking neuron reproduces (ReLU and clipped ReLU)
    "Relu": OpInfo(ACTIVATION),
    "Clip": OpInfo(ACTIVATION),
    # pooling
    "AveragePool": OpInfo(POOLING),
    "MaxPool": OpInfo(POOLING),
    "GlobalAveragePool": OpInfo(POOLING),
    "GlobalMaxPool": OpInfo(POOLING),
    # activations with no spiking equivalent
    "Sigmoid": _unsupported(),
    "HardSigmoid": _unsupported(),
    "HardSwish": _unsupported(),
    "Swish": _unsupported("SiLU/Swish has no spiking equivalent: " + _RETRAIN),
    "Gelu": _unsupported(),
    "Erf": _unsupported("Erf is the core of an exported GELU: " + _RETRAIN),
    "Tanh": _unsupported(),
    "Softplus": _unsupported(),
    "Softsign": _unsupported(),
    "Mish": _unsupported(),
    "Elu": _unsupported(),
    "Celu": _unsupported(),
    "Selu": _unsupported(),
    "LeakyRelu": _unsupported("spikes cannot carry the negative slope: " + _RETRAIN),
    "PRelu": _unsupported("spikes cannot carry the negative slope: " + _RETRAIN),
    "ThresholdedRelu": _unsupported(),
    "Shrink": _unsupported(),
    "LRN": _unsupported("remove local response normalisation (BatchNorm is supported) and "
                        "retrain, " + _ANALOG),
    "Softmax": _unsupported(_HEAD_ONLY),
    "LogSoftmax": _unsupported(_HEAD_ONLY),
    "Hardmax": _unsupported("Hardmax is not supported; " + _ANALOG),
    # recurrent layers: sigmoid/tanh gates inside one op
    **{op: OpInfo(OTHER, spiking=False, hint=(
        f"{op} is a recurrent layer whose gates (sigmoid, tanh) have no spiking equivalent; "
        "snncc converts feed-forward CNNs with ReLU activations"))
       for op in ("LSTM", "GRU", "RNN")},
}

#: Quantized-model ops (QDQ and QOperator formats, ORT's own quantized ops): SNN-E207. A
#: DequantizeLinear of a constant (a weight-only quantized export) is folded instead.
QUANTIZED = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                       "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                       "QLinearAdd", "QLinearMul", "QLinearAveragePool",
                       "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu",
                       "QLinearSigmoid", "QGemm", "DynamicQuantizeMatMul"})
#: ONNX Runtime's fused ops (an ORT-optimized model saved to file): SNN-E207.
ORT_FUSED = frozenset({"FusedConv", "FusedGemm", "FusedMatMul", "NhwcConv", "NhwcMaxPool",
                       "QuickGelu", "BiasGelu", "FastGelu"})
QUANTIZED_HINT = ("snncc compiles float models and quantizes them itself (the QANN): compile the "
                  "float model this one was quantized from")
TRAINING_HINT = ("export the model in inference mode: call model.eval() before torch.onnx.export "
                 "(or pass training=torch.onnx.TrainingMode.EVAL)")
FUSED_HINT = ("compile the model as exported, not one saved after ONNX Runtime's extended "
              "optimizations (they fuse activations into com.microsoft ops)")

#: Control flow: subgraphs that run data-dependent ops; never converted (SNN-E206).
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

#: Recurrent ops (their input X is [seq, batch, ...] unless layout=1).
RECURRENT = frozenset({"LSTM", "GRU", "RNN"})

#: Ops that are fine in the output head: no spiking layer (ReLU) follows them.
OUTPUT_ONLY = frozenset({"Softmax", "LogSoftmax"})

#: Hints for activations exported as several ops, keyed by the activation's usual name.
PATTERN_HINTS = {  # the message already says "<pattern> has no spiking equivalent"
    "SiLU": "x*Sigmoid(x) is SiLU: " + _RETRAIN,
    "HardSwish": "x*HardSigmoid(x) is HardSwish: " + _RETRAIN,
    "GELU": _RETRAIN,
    "Mish": "x*tanh(softplus(x)) is Mish: " + _RETRAIN,
}

#: Per-row ops that commute with folding time into the batch: op -> input indices that may carry
#: spikes (None: any). "Mul" takes at most one spiking factor (checked by the users).
TIME_OPS: dict[str, tuple[int, ...] | None] = {
    **{op: (0,) for op in (
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Div", "AveragePool", "GlobalAveragePool",
        "BatchNormalization", "Flatten", "Reshape", "Transpose", "Pad", "Identity", "Dropout",
        "Neg", "Squeeze", "Unsqueeze", "Slice", "Split", "ReduceMean", "ReduceSum", "Resize",
        "DepthToSpace", "SpaceToDepth")},
    **{op: None for op in ("Add", "Sub", "Sum", "Concat")},
    "Mul": (0, 1),
}

#: Ops whose output describes a tensor instead of holding its values: never spiking.
META_OPS = frozenset({"Shape", "Size"})

_DEFAULT = OpInfo(OTHER)


def op_info(op_type: str, domain: str = "") -> OpInfo:
    """The table entry for an op; ops of other domains and unlisted ops are ``other``."""
    if domain not in ("", "ai.onnx"):
        return _DEFAULT
    return OPS.get(op_type, _DEFAULT)
