"""What every benchmark here shares: the bundled trained nets, ORT sessions set up alike, and
interleaved timing.

Sessions: ``threads`` intra-op threads (0: one per core), one inter-op thread, no spinning
(every session owns a thread pool whose workers spin after a run; with several sessions measured
round-robin that spinning steals the cores from the next one), the kernel library when
``library``. Timing: one warm-up call each, then ``rounds`` rounds calling every variant once,
in an order shuffled every round (seeded): background load on a shared machine hits every
variant alike, ratios within one run stay meaningful, and no variant always runs after the same
one (a variant that sweeps much memory leaves the caches cold for whatever follows it).
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

__all__ = ["EXAMPLES", "NETS", "bundled", "bundled_inputs", "session_options", "session", "step_feeds",
           "interleaved", "interleaved_medians"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: the trained example nets the benchmarks run: (model, calibration, test) file names in examples/
NETS = {"cnn": ("mnist_cnn.onnx", "mnist_calib.npz", "mnist_test.npz"),
        "resnet": ("mnist_resnet.onnx", "mnist_resnet_calib.npz", "mnist_resnet_test.npz")}


def bundled(net: str) -> tuple[Path, Path, Path]:
    """(model, calibration, test) paths of the bundled net ``net``."""
    return tuple(EXAMPLES / name for name in NETS[net])  # type: ignore[return-value]


def bundled_inputs() -> list[Path]:
    """Every bundled file a benchmark reads: what an output path must never name."""
    return [path for net in NETS for path in bundled(net)]


def session_options(library: bool, threads: int) -> ort.SessionOptions:
    if library:
        from snncc.runtime import session_options as with_library
        so = with_library()
    else:
        so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def session(path: Path, library: bool, threads: int, blocked: bool = True,
            so: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """ORT session of ``path`` (options ``so``, default :func:`session_options`); with the kernel
    library and ``blocked``, the neurons run inside ORT's NCHWc layout
    (``snncc.runtime.layout``, what ``snncc run`` does)."""
    so = so if so is not None else session_options(library, threads)
    if library and blocked:
        from snncc.runtime.layout import session as blocked_session
        return blocked_session(path, so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def step_feeds(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds of ``sess`` for input ``x`` (its first input); for a streaming model also step 1
    and zero states, i.e. one mid-window step."""
    feeds = {}
    for i, inp in enumerate(sess.get_inputs()):
        if i == 0:
            feeds[inp.name] = x
        elif inp.name == "step":
            feeds[inp.name] = np.array(1, dtype=np.int64)
        else:
            dims = [d if isinstance(d, int) else len(x) for d in inp.shape]
            feeds[inp.name] = np.zeros(dims, dtype=np.float32)
    return feeds


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Per-round seconds of each callable: one warm-up call each, then ``rounds`` rounds of one
    call each, in a freshly shuffled order every round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved(fns, rounds).items()}
