"""Calibration: load sample inputs, collect pre-activation statistics with ORT, choose lambda.

Works on ONNX protos and NumPy only (no graph-surgeon objects); the ``calibrate`` pass decides
which tensors to observe.

Samples (:func:`load_samples`): a ``.npy`` file holds one array ``[N, *input_shape[1:]]`` for a
single-input model; a ``.npz`` file holds one array per input, keyed by input name (a single
array is accepted for a single-input model whatever its key); a directory is read as
``snncc finetune --data`` reads one (an image folder or an ``x.npy`` pair, memory-mapped; needs
torch and PIL), only as many images as are used. Arrays must be float (for float
inputs), finite, and match the model input shape except the batch axis.

Statistics (:func:`collect_statistics`): ORT (graph optimisations off) runs the model in
batches with the observed tensors added as graph outputs. Per tensor it keeps the exact running
min and max (per layer, or per channel on axis 1) and a bounded uniform subsample of the positive
values: at most ``max_values`` per tensor (per channel: ``max(max_values // C, 4096)`` each).
When a tensor has more values than that, each batch contributes a random subset at the rate that
fills the budget over the whole run; ``SiteStats.subsampled`` says so. Memory is therefore
``O(#tensors * max_values)`` plus one batch of outputs, whatever the number of samples.

Methods (:func:`choose_lambda`), all over the pre-activation ``z``:

* ``max``: ``lam = max(z)``;
* ``percentile``: ``lam = np.percentile(z[z > 0], p)`` (linear interpolation), ``p`` in (0, 100];
* ``mse``: ``lam`` minimising ``sum over z > 0 of (relu(z) - q_lam(z))^2`` where ``q_lam`` is the
  QCFS clip with ``L`` levels and ``phi = 0.5`` (values ``z <= 0`` have zero error for every
  lam, so they do not change the argmin). Search: a grid of 32 points ``max * j/32`` (j = 1..32),
  then 32 evenly spaced points between the best point's two neighbours; the best of all points
  evaluated wins (ties go to the larger lam), so the result lies in ``(0, max]``. The error is
  evaluated on a fixed random subset of at most 65536 positive values (4096 per channel).

A layer whose ``z`` is never positive gets ``lam = 1.0`` (any value quantizes it to 0); a dead
channel (never positive, or its largest value below ``DEAD_FRACTION`` of its layer's largest: float
noise, 0 under any lambda of the layer's scale) gets the largest lambda of its layer's live
channels, so that per-channel thresholds stay on one scale (Loihi folds them into weights that
share one exponent per block); one whose subsample holds no positive value falls back to its max.
"""
from __future__ import annotations

import contextvars
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from snncc import ir
from snncc.errors import CalibrationError

__all__ = ["METHODS", "InputSpec", "SiteStats", "model_inputs", "load_samples",
           "collect_statistics", "choose_lambda"]

logger = logging.getLogger("snncc.calibration")

METHODS = ("max", "percentile", "mse")
_GRID = 32
_MIN_PER_CHANNEL = 4096
_MSE_VALUES = 1 << 16
#: a channel whose max is below this fraction of its layer's largest channel max counts as dead
DEAD_FRACTION = 1e-6


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (None for a symbolic dim) and NumPy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype



#: ``snncc compile -q``: no progress bars, whatever ``progress`` says (set per command)
QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("snncc_quiet", default=False)


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` argument: None (a bar only on a terminal), or
    its negation; always True under ``-q`` (:data:`QUIET`)."""
    if QUIET.get():
        return True
    return None if progress is None else not progress

def model_inputs(proto: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers."""
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, shape,
                               np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


# ------------------------------------------------------------------------------ samples

def _fail(code: str, message: str, hint: str) -> CalibrationError:
    return CalibrationError(f"calibrate: {message}", code=code, hint=hint)


def _read_arrays(path: Path, wanted: Sequence[str] = ()) -> dict[str, np.ndarray | None]:
    """The arrays of a .npy / .npz file by name ('' for a .npy, memory-mapped: only the samples
    used are read). Of a .npz with several members only ``wanted`` and 'x' are read; the others
    map to None (an 8 MB file's unused 8 GiB member had been decompressed, 38 s and 8.5 GB)."""
    if not path.is_file():
        what = ("is not a regular file" if path.exists() else "does not exist")  # /dev/null
        raise _fail("SNN-E402", f"calibration file '{path}' {what}", "check the path")
    if path.suffix not in (".npy", ".npz"):
        raise _fail("SNN-E404", f"calibration file '{path}' has suffix '{path.suffix}'; "
                    "accepted: .npy, .npz", "save the samples with numpy.save or numpy.savez")
    problem = not_numpy(path)
    if problem:
        raise _fail("SNN-E403", f"'{path}' {problem}", "save the samples with numpy.save or "
                    "numpy.savez")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            keep = set(loaded.files) if len(loaded.files) == 1 else {*wanted, "x"}
            return {key: loaded[key] if key in keep else None for key in loaded.files}
    except Exception as exc:  # numpy raises several unrelated types for corrupt files
        raise _fail("SNN-E403", f"'{path}' is not a readable NumPy file ({type(exc).__name__}: "
                    f"{exc})", "re-save it with numpy.save / numpy.savez (no pickled "
                    "objects)") from exc


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each member's shape from its .npy header, nothing decompressed beyond it."""
    import zipfile

    fmt = np.lib.format
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else \
                    fmt.read_array_header_2_0
                shapes[member[:-len(".npy")]] = tuple(read(f)[0])
    return shapes


def not_numpy(path: Path) -> str | None:
    """Why ``path`` is not a .npy / .npz file at all (None when it starts like one): numpy would
    otherwise call a text file 'pickled data'."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head.startswith(b"\x93NUMPY") or head.startswith(b"PK"):
        return None
    return "is not a NumPy .npy/.npz file (it starts with neither header)"


def _read_folder(path: Path, inputs: Sequence[InputSpec], max_samples: int | None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                 ) -> dict[str, np.ndarray]:
    """A directory: an image folder (every PNG/JPEG/... under it, read via PIL and resized to the
    model input; ``max_samples`` of them in a fixed shuffled order, so that class folders mix)
    or an ``x.npy`` (+ ``y.npy``) pair read memory-mapped (its first ``max_samples``)."""
    if len(inputs) != 1:
        raise _fail("SNN-E407", f"'{path}' is a folder but the model has {len(inputs)} inputs",
                    "save a .npz keyed by input name")
    shape = inputs[0].shape
    try:
        from snncc.train.data import ImageFolderDataset, open_dataset
    except ImportError as exc:
        raise _fail("SNN-E403", f"reading the folder '{path}' needs torch and PIL ({exc})",
                    "pip install -e .[train], or save the samples with numpy.save") from exc
    size = tuple(shape[2:4]) if len(shape) == 4 and None not in shape[2:4] else None
    try:  # the finetune reader's errors, told as calibration errors
        ds = open_dataset(path, channels=shape[1] if len(shape) > 1 else None, size=size,
                          mean=mean, std=std, labels=False, what="calibration data")
        n = len(ds) if max_samples is None else min(len(ds), max_samples)
        if n == 0:
            raise _fail("SNN-E408", f"'{path}' holds no samples", "provide at least one sample")
        # image files come in path order, class folder by class folder: the first n would all
        # be one class, and so would the held-out samples; a fixed shuffle mixes them (an x.npy
        # folder keeps the user's order, as a .npz does)
        order = (np.random.default_rng(0).permutation(len(ds))[:n]
                 if isinstance(ds, ImageFolderDataset) else range(n))
        return {"": np.stack([np.asarray(ds[int(i)], dtype=np.float32) for i in order])}
    except CalibrationError as exc:
        raise _fail(exc.code, exc.message.removeprefix("finetune: ").removeprefix(
            "calibrate: "), exc.hint) from exc


def load_samples(path: str | Path, inputs: Sequence[InputSpec], *,
                 max_samples: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Read and validate calibration samples; returns input name -> array (at most max_samples).
    ``mean``/``std`` normalise the images of a folder (``--mean``/``--std``)."""
    path = Path(path)
    arrays = (_read_folder(path, inputs, max_samples, mean, std) if path.is_dir()
              else _read_arrays(path, [spec.name for spec in inputs]))
    names = [spec.name for spec in inputs]
    if len(arrays) == 1 and len(inputs) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    elif len(inputs) == 1 and names[0] not in arrays and "x" in arrays:
        arrays = {names[0]: arrays["x"]}  # the x / y layout of run --input and report --data
    elif "" in arrays:
        raise _fail("SNN-E407", f"'{path}' holds one array but the model has {len(inputs)} "
                    f"inputs ({', '.join(names)})", "save a .npz keyed by input name")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise _fail("SNN-E407", f"'{path}' has no array for input(s) {', '.join(missing)} "
                    f"(arrays: {', '.join(sorted(arrays)) or 'none, the file is empty'})",
                    "key the .npz arrays by the model's input names")
    out = {}
    for spec in inputs:
        arr = arrays[spec.name]
        want_float = np.issubdtype(spec.dtype, np.floating)
        if np.issubdtype(arr.dtype, np.floating) != want_float or arr.dtype == bool:
            raise _fail("SNN-E405", f"samples for '{spec.name}' have dtype {arr.dtype}, the "
                        f"input is {spec.dtype}", "preprocess the samples exactly as for "
                        "inference (normalised floats) before saving")
        expected = ("N",) + tuple("?" if d is None else d for d in spec.shape[1:])
        if arr.ndim != len(spec.shape) or any(d is not None and d != a
                                              for d, a in zip(spec.shape[1:], arr.shape[1:])):
            one = "x".join(str(d) for d in expected[1:])

            def fits(have: tuple, want: tuple) -> bool:
                return len(have) == len(want) and all(w is None or w == h
                                                      for h, w in zip(have, want))

            if fits(arr.shape, tuple(spec.shape[1:])):
                fix = "stack samples along a new first axis (this is one sample)"
            elif len(spec.shape) > 2 and fits(arr.shape[1:], tuple(spec.shape[2:])):
                fix = "add the channel axis: x[:, None] (each sample must be " + one + ")"
            elif arr.ndim == len(spec.shape):
                fix = f"each sample must be {one}, as the model input; preprocess the data " \
                      "for this model"
            else:
                fix = f"give an array [N, {', '.join(map(str, expected[1:]))}]"
            raise _fail("SNN-E406", f"samples for '{spec.name}' have shape {arr.shape}, the input "
                        f"expects {expected}", fix)
        if arr.shape[0] == 0:
            raise _fail("SNN-E408", f"'{path}' holds no samples for '{spec.name}'",
                        "provide at least one sample")
        arr = arr[:max_samples] if max_samples else arr
        if want_float:   # checked as the model takes them: float64 beyond float32 is Inf there
            with np.errstate(over="ignore"):
                arr = np.ascontiguousarray(arr, dtype=spec.dtype)
            if not np.all(np.isfinite(arr)):
                raise _fail("SNN-E409", f"samples for '{spec.name}' contain NaN or infinity "
                            f"(as {np.dtype(spec.dtype).name}, the model's input type)",
                            "clean the calibration data")
        out[spec.name] = np.array(arr, dtype=spec.dtype, order="C")   # not a view of a mapped file
    counts = {len(a) for a in out.values()}
    if len(counts) > 1:
        raise _fail("SNN-E410", f"inputs have different sample counts {sorted(counts)}",
                    "give every input the same number of samples")
    return out


# ------------------------------------------------------------------------------ statistics

@dataclass
class SiteStats:
    """Streaming statistics of one tensor: exact min/max and a bounded subsample of z > 0.

    Per channel (``per_channel``), ``min``/``max`` have shape ``(C,)`` and the samples are
    ``(C, k)`` arrays with NaN where the sampled value was <= 0; else shape ``()`` and 1-D arrays.
    """

    per_channel: bool
    max_values: int
    total: int = 0                 # values expected over the whole run (set on the first batch)
    count: int = 0                 # values seen
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def subsampled(self) -> bool:
        return self.total > self.budget

    @property
    def budget(self) -> int:
        """How many values the subsample may hold."""
        if not self.per_channel or self.max is None:
            return self.max_values
        channels = self.max.size
        return channels * max(self.max_values // channels, _MIN_PER_CHANNEL)

    def update(self, z: np.ndarray, n_total_samples: int, rng: np.random.Generator) -> None:
        if self.per_channel:
            flat = np.moveaxis(z, 1, 0).reshape(z.shape[1], -1)
            lo, hi = flat.min(axis=1), flat.max(axis=1)
        else:
            flat = z.reshape(-1)
            lo, hi = flat.min(), flat.max()
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)
        if self.total == 0:
            self.total = z.size * n_total_samples // max(len(z), 1)
        self.count += z.size
        rate = min(1.0, self.budget / self.total)
        width = flat.shape[-1]
        if rate < 1.0:
            take = rng.integers(0, width, size=math.ceil(rate * width))
            flat = flat[..., take]
        if self.per_channel:
            self.parts.append(np.where(flat > 0, flat, np.nan).astype(np.float32))
        else:
            self.parts.append(flat[flat > 0].astype(np.float32, copy=True))

    def positives(self) -> np.ndarray:
        """Sampled positive values: 1-D, or ``(C, k)`` with NaN for non-positive samples."""
        if not self.parts:
            return np.zeros((self.max.size, 0) if self.per_channel else 0, np.float32)
        return np.concatenate(self.parts, axis=-1)


def collect_statistics(proto: onnx.ModelProto, names: Sequence[str],
                       samples: Mapping[str, np.ndarray], *, per_channel: bool = False,
                       batch_size: int = 8, max_values: int = 1 << 20,
                       progress: bool | None = None, seed: int = 0) -> dict[str, SiteStats]:
    """Run ORT over ``samples`` in batches and gather :class:`SiteStats` for each tensor name.

    ``progress=None`` shows a tqdm bar only on a terminal. Per-channel statistics apply to
    tensors of rank >= 2 (others fall back to per layer).
    """
    specs = {s.name: s for s in model_inputs(proto)}
    n = len(next(iter(samples.values())))
    fixed_dims = {specs[k].shape[0] for k in samples if specs[k].shape and specs[k].shape[0]}
    fixed = len(fixed_dims) == 1
    batch = fixed_dims.pop() if fixed else batch_size
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(ir.with_outputs(proto, names).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _fail("SNN-E412", f"ONNX Runtime could not load the model for calibration "
                    f"({type(exc).__name__}: {exc})", "check the model with onnx.checker") from exc
    rng = np.random.default_rng(seed)
    stats = {name: SiteStats(per_channel, max_values) for name in names}
    fetch = [name for name in names if name not in samples]
    with tqdm(total=n, desc="calibrate", unit="sample", disable=bar_disabled(progress)) as bar:
        for start in range(0, n, batch):
            feeds = {k: v[start:start + batch] for k, v in samples.items()}
            real = len(next(iter(feeds.values())))
            if real < batch and fixed:  # fixed batch size: pad with the first rows
                feeds = {k: np.concatenate([v, v[:1].repeat(batch - real, axis=0)])
                         for k, v in feeds.items()}
            try:
                values = dict(zip(fetch, session.run(fetch, feeds)))
            except Exception as exc:
                raise _fail("SNN-E412", f"ONNX Runtime failed on calibration samples "
                            f"{start}..{start + real - 1} ({type(exc).__name__}: {exc})",
                            "check that the samples match the model inputs") from exc
            values.update({k: v for k, v in feeds.items() if k in stats})
            for name, st in stats.items():
                z = np.asarray(values[name])[:real]
                st.per_channel = st.per_channel and z.ndim >= 2
                st.update(z, n, rng)
            bar.update(real)
    for name, st in stats.items():
        if st.subsampled:
            logger.info("calibrate: '%s' has %d values; percentile/mse use a uniform subsample "
                        "of about %d", name, st.total, st.budget)
    return stats


# ------------------------------------------------------------------------------ methods

def _mse(values: np.ndarray, lam: np.ndarray, levels: int) -> np.ndarray:
    """Sum of (v - q_lam(v))^2 over the last axis; NaN samples count as 0 (error 0)."""
    lam = lam[..., None]
    q = lam / levels * np.clip(np.floor(values * levels / lam + 0.5), 0, levels)
    return np.nansum((values - q) ** 2, axis=-1)


def _mse_lambda(values: np.ndarray, top: np.ndarray, levels: int) -> np.ndarray:
    limit = _MSE_VALUES if top.ndim == 0 else _MIN_PER_CHANNEL
    if values.shape[-1] > limit:
        keep = np.random.default_rng(0).choice(values.shape[-1], limit, replace=False)
        values = values[..., keep]
    values = values.astype(np.float64)
    top = top.astype(np.float64)
    best_lam, best_err = top.copy(), _mse(values, top, levels)

    def scan(grid: np.ndarray) -> None:  # grid: (G, *top.shape)
        nonlocal best_lam, best_err
        for lam in grid[::-1]:  # larger first: ties keep the larger lambda
            err = _mse(values, lam, levels)
            better = err < best_err
            best_lam, best_err = np.where(better, lam, best_lam), np.where(better, err, best_err)

    steps = np.arange(1, _GRID + 1) / _GRID
    steps = steps[:, None] if top.ndim else steps
    scan(steps * top)
    width = top / _GRID
    lo, hi = np.maximum(best_lam - width, width / _GRID), np.minimum(best_lam + width, top)
    frac = np.linspace(0, 1, _GRID)
    scan(lo + (frac[:, None] if top.ndim else frac) * (hi - lo))
    return best_lam


def choose_lambda(stats: SiteStats, method: str, *, levels: int,
                  percentile: float = 99.99) -> np.ndarray:
    """lambda (float32, shape () or (C,)) for one tensor by ``method`` (see the module doc)."""
    if method not in METHODS:
        raise _fail("SNN-E411", f"unknown calibration method '{method}'; accepted: "
                    f"{', '.join(METHODS)}", f"pass --calib-method {'|'.join(METHODS)}")
    top = np.asarray(stats.max, np.float64)
    if method == "max":
        lam = top
    elif method == "percentile":
        if not 0 < percentile <= 100:
            raise _fail("SNN-E411", f"percentile {percentile} is outside (0, 100]",
                        "pass e.g. --percentile 99.99 (calib_percentile in the Python API)")
        values = stats.positives()
        if stats.per_channel:
            with warnings.catch_warnings():  # all-NaN channels: handled below
                warnings.simplefilter("ignore", RuntimeWarning)
                lam = np.nanpercentile(values, percentile, axis=-1) if values.shape[-1] \
                    else np.full(top.shape, np.nan)
        else:
            lam = np.percentile(values, percentile) if values.size else np.float64(np.nan)
    else:
        lam = _mse_lambda(stats.positives(), np.where(top > 0, top, 1.0), levels)
    lam = np.where(np.isfinite(lam) & (lam > 0), lam, top)
    # dead: never positive, or positive only at float-noise level against the layer's largest
    # channel (a ReLU after BN gave one channel 9.4e-14 against ~1, and that lambda took every
    # weight of a Loihi block to the exponent limit: 68 % instead of 99 %)
    if np.ndim(top):
        finite = top[np.isfinite(top)]
        live = top > DEAD_FRACTION * (float(finite.max()) if finite.size else 0.0)
    else:
        live = top > 0
    # a dead channel's lambda on its layer's scale (the largest live one): any value quantizes
    # it to 0, but 1.0 against live lambdas near 3383 (a net fed 0..255 pixels, or scaled
    # weights) gave its Loihi rows folded weights 3383x the others', and the block's one
    # exponent zeroed 94 % of the live weights (8.6 % instead of 91.4 %)
    scale = float(np.max(lam[live])) if np.ndim(lam) and np.any(live) else 1.0
    lam = np.where(live, lam, scale)
    return np.asarray(lam, np.float32)

