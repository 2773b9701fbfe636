"""The calibration samples' input range, kept with the compiled model, and the check that a run's
inputs are on the same scale.

A converted network's thresholds are chosen for the calibration samples as given. Inputs on
another scale at run time (pixels in 0..255 where the calibration saw 0..1, or normalised where it
saw raw values, or the reverse) drive its first layer far off those thresholds, and the SNN falls
towards chance while the compile's own fidelity estimate (held-out samples of the same file) says
nothing: a trained digits CNN calibrated on ``x * 255`` reached 100 % agreement at compile time
and 8.6 % on the test images. The ANN tolerates such scales (BN and ReLU are nearly
scale-equivariant), which is why nothing else warns.

:func:`summarize` gives per graph input the samples' count, mean, standard deviation and largest
magnitude (the Loihi backend sizes its input encoding by it); compile
stores it as the model metadata ``snncc.calibration_inputs`` (a Loihi netlist: ``meta``).
:func:`mismatches` compares a run's inputs with it: a standard deviation more than
:data:`SCALE_FACTOR` times larger or smaller, or a mean more than :data:`MEAN_SHIFT` calibration
standard deviations away; on fewer than :data:`FEW_SAMPLES` samples only a root-mean-square
:data:`GROSS_FACTOR` times larger or its square smaller (a single image's statistics vary too
much for more; a blank one says nothing). ``snncc run`` and :func:`snncc.simulate.run_compiled`
warn with it.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import numpy as np

__all__ = ["METADATA_KEY", "SCALE_FACTOR", "MEAN_SHIFT", "FEW_SAMPLES", "GROSS_FACTOR", "summarize",
           "mismatches", "warn"]

METADATA_KEY = "snncc.calibration_inputs"
#: A run's spread this many times the calibration samples' (or less than 1 / this) is a mismatch.
SCALE_FACTOR = 2.0
#: A run's mean this many calibration standard deviations away is a mismatch.
MEAN_SHIFT = 1.0
#: below this many samples only a gross scale error is said (one natural image's brightness and
#: contrast vary far more than a data set's: 637 of 1000 single photo patches had warned)
FEW_SAMPLES = 32
#: ... a root-mean-square this many times off (x 255, / 255, 16-bit samples)
GROSS_FACTOR = 8.0


def _moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation, accumulated in float64 over chunks (no float64 copy of a
    large input)."""
    flat = np.asarray(x).reshape(-1)
    total = squares = 0.0
    for i in range(0, flat.size, 1 << 20):
        part = flat[i:i + (1 << 20)].astype(np.float64)
        total += float(part.sum())
        squares += float(np.dot(part, part))
    n = max(flat.size, 1)
    mean = total / n
    return mean, float(np.sqrt(max(squares / n - mean * mean, 0.0)))


def summarize(samples: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per input name: ``samples``, and ``mean``, ``std`` and ``max_abs`` over all values of all
    samples."""
    out = {}
    for name, x in samples.items():
        mean, std = _moments(x)
        out[name] = {"samples": int(len(x)), "mean": float(f"{mean:.6g}"),
                     "std": float(f"{std:.6g}"),
                     "max_abs": float(f"{float(np.max(np.abs(x))) if np.size(x) else 0.0:.6g}")}
    return out


def parse(value: str | Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The stored summary (JSON text or a dict); {} when absent or unreadable."""
    if not value:
        return {}
    try:
        data = json.loads(value) if isinstance(value, str) else dict(value)
        return {k: {"mean": float(v["mean"]), "std": float(v["std"]),
                    **({"max_abs": float(v["max_abs"])} if "max_abs" in v else {})}
                for k, v in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def mismatches(stored: Mapping[str, Mapping[str, float]],
               inputs: Mapping[str, np.ndarray]) -> list[str]:
    """One sentence per input whose values are not on the calibration samples' scale."""
    found = []
    for name, ref in stored.items():
        if name not in inputs or np.size(inputs[name]) == 0:
            continue
        mean, std = _moments(inputs[name])
        ref_mean, ref_std = ref["mean"], ref["std"]
        if ref_std <= 0 or not np.isfinite(std):
            continue
        if len(inputs[name]) < FEW_SAMPLES:   # a few samples: only a gross scale error
            rms = np.hypot(mean, std) / max(float(np.hypot(ref_mean, ref_std)), 1e-30)
            if rms == 0 or GROSS_FACTOR ** -2 <= rms <= GROSS_FACTOR:   # a blank or dark image
                continue
            how = (f"a magnitude {rms:.3g}x larger than" if rms > 1 else
                   f"a magnitude {1 / rms:.3g}x smaller than")
        elif std > SCALE_FACTOR * ref_std or 0 < std < ref_std / SCALE_FACTOR:
            ratio = std / ref_std
            how = (f"a spread {ratio:.3g}x wider than" if ratio > 1 else
                   f"a spread {1 / ratio:.3g}x narrower than")
        elif abs(mean - ref_mean) > MEAN_SHIFT * ref_std:
            how = (f"a mean {abs(mean - ref_mean) / ref_std:.2g} standard deviations away "
                   "from")
        else:
            continue
        found.append(f"input '{name}' has {how} the calibration samples (mean {mean:.3g}, std "
                     f"{std:.3g}; calibrated on mean {ref_mean:.3g}, std {ref_std:.3g})")
    return found


def warn(stored: Mapping[str, Mapping[str, float]], inputs: Mapping[str, np.ndarray],
         logger: str = "snncc.run") -> list[str]:
    """Log one warning for all mismatches (see :func:`mismatches`); returns it (as logged:
    the mismatches and the advice), or [] when there are none."""
    found = mismatches(stored, inputs)
    if not found:
        return []
    text = ("; ".join(found) + ": the SNN's thresholds suit inputs on the scale of the samples "
            "it was compiled with (--calib: calibrated there, or checked there for a trained "
            "QCFS graph), so its accuracy can fall to chance (the ANN may not show it); "
            "preprocess these inputs exactly as those samples were (scaling, normalisation), "
            "or compile with samples on the scale it will run on")
    logging.getLogger(logger).warning("%s", text)
    return [text]
