"""Compile options and the context object handed explicitly to every pass."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["CompileOptions", "QuantClipParams", "CompileContext", "TARGETS", "MAX_TIMESTEPS",
           "MAX_LEVELS"]

TARGETS = ("qann", "ort", "loihi", "nir")

#: the largest -T (SNN-E354); neurons reuse it to bound other slice counts (srp's pre-run tau)
MAX_TIMESTEPS = 64
#: the most quantization levels: -L (SNN-E355) and every L' a neuron derives (SNN-E309), since
#: float32 counts integers exactly only up to 2^24
MAX_LEVELS = 2 ** 24


#: auto fidelity hold-out: at least this many samples ...
FIDELITY_MIN = 32
#: ... and at most this many (more only when --fidelity-samples asks)
FIDELITY_AUTO_MAX = 64


@dataclass(frozen=True)
class QuantClipParams:
    """Parameters of one QCFS quantized clip ``y = lam * clip(floor(z*L/lam + phi)/L, 0, 1)``.

    ``lam`` is a float32 array of shape ``()`` (per layer) or ``(C,)`` (per channel, axis 1).
    ``phi`` is 0.5 for plain QCFS rounding and 0.0 when the bias shift +lam/(2L) was folded into
    the producer's bias (seed 000), which turns the rounding into a pure floor.
    ``bias`` (float32 ``()`` or ``(C,)``, or None) is a current to add to the clip's input ``z``,
    chosen by SNN-aware calibration; fold-batchnorm folds it into the producer's bias and sets it
    back to None.
    """

    lam: np.ndarray
    levels: int
    phi: float = 0.5
    source: str = "calibration"  # "calibration" | "pattern"
    bias: np.ndarray | None = None

    @property
    def per_channel(self) -> bool:
        return self.lam.ndim == 1

    def to_json(self) -> dict[str, Any]:
        out = {"lam": np.asarray(self.lam).tolist(), "levels": self.levels, "phi": self.phi,
               "source": self.source}
        if self.bias is not None:
            out["bias"] = np.asarray(self.bias).tolist()
        return out


@dataclass(frozen=True)
class CompileOptions:
    """Everything the user chose. Validated by :func:`snncc.driver.make_options`."""

    target: str = "ort"
    timesteps: int = 4
    neuron: str = "if"
    levels: int | None = None              # L; None = derived from the neuron and T, else 8
    calib_path: str | None = None
    calib_method: str = "snn"              # snn | mse | percentile | max
    calib_percentile: float = 99.99
    calib_per_channel: bool | None = None  # None = per channel unless the neuron cannot
    calib_max_samples: int = 256
    #: normalise images read from a --calib folder: x/255, then (x - mean) / std (one value or
    #: one per channel); None = none. Arrays (.npy/.npz) are taken as the model's input as they are
    calib_mean: tuple[float, ...] | None = None
    calib_std: tuple[float, ...] | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    bias_shift: bool | None = None         # None = what the neuron needs
    maxpool: str = "auto"                  # auto | avg | gate
    allow_analog: bool = False
    allow_lossy: bool = False              # nir: export soft-reset neurons anyway
    schedule: str = "auto"                 # auto | folded | window | streaming
    #: streaming: steps one call of the model runs (K frames in, K per-step outputs out, the
    #: states carried over); 1 = the one-step model
    steps_per_call: int = 1
    neuron_params: Mapping[str, Any] = field(default_factory=dict)
    #: samples held out for the fidelity check; None (the CLI default) = auto: the samples beyond
    #: calib_max_samples, at least FIDELITY_MIN and at most FIDELITY_AUTO_MAX
    fidelity_samples: int | None = 0
    opset: int = 17
    #: set by make_options: what levels / bias_shift / per-channel were derived from (target,
    #: neuron, T, neuron params) and their values as given (None: derived). compile_model derives
    #: them again when options were built otherwise or changed since (dataclasses.replace)
    derived_from: tuple = field(default=(), compare=False, repr=False)

    @property
    def wants_fidelity(self) -> bool:
        """A fidelity estimate is due: calibration data is given and not all of it calibrates."""
        return bool(self.calib_path) and (self.fidelity_samples is None
                                          or self.fidelity_samples > 0)

    @property
    def fidelity_max(self) -> int:
        """The most samples the fidelity check may hold out (what to load beyond calibration)."""
        return FIDELITY_AUTO_MAX if self.fidelity_samples is None else self.fidelity_samples

    def fidelity_holdout(self, available: int) -> int:
        """Samples to hold out of ``available`` calibration samples (before split_holdout keeps
        enough to calibrate)."""
        if self.fidelity_samples is not None:
            return self.fidelity_samples
        return min(FIDELITY_AUTO_MAX, max(FIDELITY_MIN, available - self.calib_max_samples))


@dataclass
class CompileContext:
    """Explicit state shared by the passes of one compilation (no ambient globals).

    ``quant`` maps the output tensor name of each activation site to its clip parameters; it is
    filled by calibration or by reading QCFS patterns, and read by fold-batchnorm (bias shift),
    relu-to-quant-clip and insert-neurons. ``calibration`` holds raw statistics per site.
    ``notes`` collects facts for the compile report (islands kept analog, latency, ...).
    """

    options: CompileOptions
    quant: dict[str, QuantClipParams] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    #: things the user should hear about although the compile succeeds (printed on stderr)
    warnings: list[str] = field(default_factory=list)
    holdout: dict[str, np.ndarray] | None = None   # held-out samples (fidelity estimate)
    #: neuron node -> int64 [1, ...] unit events over all slices, summed over the
    #: ``measured_samples`` held-out samples by the backend's predict (reused by the SynOp section
    #: instead of a second run)
    measured_events: dict[str, np.ndarray] | None = None
    measured_samples: int = 0
    #: pool group -> (tensor, neuron node, first channel, channel stop): MaxPool outputs whose
    #: events the SynOp count needs besides the neurons' (:func:`snncc.analysis.synops.pool_taps`);
    #: predict measures them too
    event_taps: dict[str, tuple[str, str, int, int]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("snncc"))
