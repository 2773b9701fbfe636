"""Run a compiled spiking ONNX model in ONNX Runtime and count its spikes.

:func:`run_compiled` handles both schedules. A folded model runs once. A streaming model (model
metadata ``snncc.schedule == "streaming"``) runs step by step following the protocol of
:mod:`snncc.passes.schedule_timesteps`: zero states, ``step`` = 0, 1, ..., the states fed back,
and the outputs averaged over the steps from ``snncc.decode_from`` on.

Spike counts: every neuron output becomes an extra graph output of a copy of the model, and per
neuron node ``spikes`` = nonzero output elements and ``events`` = ``spec.events(y, attrs)`` (graded
outputs count several unit events), summed over all slices (a SRP pre-run included; a pipelined
bit-serial streaming model from the step its pipeline is full, ``snncc.pipeline_fill``: what one
inference of a stream costs).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from snncc.errors import ModelInputError, OptionError, RuntimeLibraryError, SnnccError
from snncc import input_range, ir
from snncc.ir import SNN_DOMAIN, node_attrs
from snncc.neurons import NEURONS
from snncc.neurons.common import binary_events
from snncc.passes.insert_neurons import spec_for_op
from snncc.runtime import RUNTIME_OP_NAMES

__all__ = ["RunResult", "run_compiled", "neuron_nodes", "with_neuron_outputs", "summed_events",
           "node_attrs", "data_inputs", "StreamStepper", "in_place_states", "check_shape",
           "steps_per_call", "split_steps",
           "check_sample_counts"]


@dataclass
class RunResult:
    """Graph outputs by name, and spikes / unit events per neuron node (None when not counted),
    summed over all samples and slices. ``units_per_layer``: neurons per sample of each node."""

    outputs: dict[str, np.ndarray]
    spikes_per_layer: dict[str, int] | None = field(default=None)
    events_per_layer: dict[str, int] | None = field(default=None)
    samples: int = 0
    slices: int = 1
    units_per_layer: dict[str, int] = field(default_factory=dict)
    #: what the run warned about (also logged to ``snncc.run``), as CompileResult.warnings
    warnings: list[str] = field(default_factory=list)

    def activity(self) -> dict[str, Any]:
        """Per layer: events and spikes per sample, the rate (unit events per neuron and slice,
        neurons.md 7.2: what a SynOp count, a Loihi run and ``snncc report`` call the spike
        rate) and the spike rate (nonzero outputs per neuron and slice; equal to the rate for
        binary neurons, lower for graded ones, whose one output may carry several unit events);
        empty without spike counts."""
        if self.spikes_per_layer is None:
            return {}
        n = max(self.samples, 1)

        def per(name: str) -> float:
            return n * self.slices * max(self.units_per_layer.get(name, 1), 1)

        layers = [{"name": name, "events_per_sample": self.events_per_layer[name] / n,
                   "spikes_per_sample": spikes / n,
                   "rate": self.events_per_layer[name] / per(name),
                   "spike_rate": spikes / per(name)}
                  for name, spikes in self.spikes_per_layer.items()]
        return {"events_per_layer": dict(self.events_per_layer), "layers": layers}


def neuron_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.domain == SNN_DOMAIN]


def with_neuron_outputs(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy whose graph also outputs every neuron's first output; node name -> tensor name."""
    names = {node.name: node.output[0] for node in neuron_nodes(proto)}
    return ir.with_outputs(proto, list(names.values())), names


def summed_events(node: onnx.NodeProto, y: np.ndarray, attrs: Mapping[str, Any],
                  rows: int) -> np.ndarray:
    """Unit events of neuron ``node`` per sample and position, summed over the slices of its
    output ``y`` (``[S*rows, ...]``, or ``[rows, ...]`` decoded): int64 ``[rows, ...]``."""
    ev = spec_for_op(node.op_type).events(y, attrs)
    return ev.reshape((-1, rows) + y.shape[1:]).sum(axis=0)


def _session(proto: onnx.ModelProto, use_library: bool, optimize: bool) -> ort.InferenceSession:
    if use_library and optimize:  # the kernels inside ORT's blocked layout: same outputs, faster
        from snncc.runtime.layout import session
        return session(proto)
    if use_library:
        from snncc.runtime import session_options
        so = session_options()
    else:
        so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


#: the note that a run fell back to the portable functions has been logged in this process
_FALLBACK_SAID = [False]


def _library_or_functions(proto: onnx.ModelProto) -> tuple[bool, str | None]:
    """Whether to run a folded model with the kernel library, and a note when it runs without.
    A model with no snncc op needs no library; where the library was never built (an installed
    snncc: ``pip install`` builds no C++), the model's portable ONNX functions compute the same
    outputs, more slowly, so the run goes on with a note. A library that ``SNNCC_RUNTIME_LIB``
    names is the caller's choice: missing, it stays an error (SNN-E701)."""
    from snncc import runtime

    if not any(n.domain == SNN_DOMAIN for n in proto.graph.node):
        return runtime.is_built(), None
    if runtime.is_built() or os.environ.get(runtime.ENV_VAR):
        return True, None
    return False, ("the C++ kernel library is not built here, so the neurons ran as the "
                   "model's portable ONNX functions (the same outputs, slower); build it with "
                   f"{runtime._BUILD_HINT}")


def _zero_states(proto: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    states = {}
    for inp in proto.graph.input:
        if inp.name.startswith("state_in/"):
            dims = [d.dim_value if d.HasField("dim_value") else batch
                    for d in inp.type.tensor_type.shape.dim]
            states[inp.name] = np.zeros(dims, dtype=np.float32)
    return states


def runtime_rewritten(proto: onnx.ModelProto) -> str:
    """What marks ``proto`` as rewritten by ``snncc.runtime`` (``layout.blocked_model``,
    ``gates.fuse_gates``, ``pools.fuse_avg_pools``) for embedding, or '' for a compiled model:
    ops of ORT's blocked layout, fused kernels that are no registry neuron, or neurons given a
    ``channel_block``."""
    marks = []
    if any(n.domain == "com.microsoft.nchwc" for n in proto.graph.node):
        marks.append("ORT's blocked layout")
    fused = sorted({n.op_type for n in neuron_nodes(proto) if n.op_type in RUNTIME_OP_NAMES})
    if fused:
        marks.append("fused kernels " + ", ".join(fused))
    if any(a.name == "channel_block" for n in neuron_nodes(proto) for a in n.attribute):
        marks.append("neurons with channel_block")
    return "; ".join(marks)


def data_inputs(proto: onnx.ModelProto) -> list[str]:
    """The inputs a caller feeds: graph inputs that are not initializers, ``step`` or states."""
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits and i.name != "step"
            and not i.name.startswith("state_in/")]


def check_samples(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float32 samples: floating point, at least one dimension and one sample, every
    value finite (``snncc run`` and :func:`run_compiled` check alike); ``what`` names them."""
    if not np.issubdtype(x.dtype, np.floating):
        raise ModelInputError(f"{what} are {x.dtype}, not floating point", code="SNN-E104",
                              hint="convert the samples to float32 on the scale the model was "
                              "trained on (8-bit pixels: x.astype('float32') / 255, as snncc "
                              "finetune reads them)" if x.dtype == np.uint8 else
                              "convert the samples to float32")
    if x.ndim == 0:
        raise ModelInputError(f"{what} are a single number, not a batch of samples",
                              code="SNN-E105", hint="pass samples shaped [N, ...] (N first)")
    if x.shape[0] == 0 or x.size == 0:
        raise ModelInputError(f"{what} hold no samples (shape {list(x.shape)})",
                              code="SNN-E682", hint="pass at least one sample")
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ModelInputError(f"{what} hold {bad} NaN or Inf value(s) (of {x.size})",
                              code="SNN-E681",
                              hint="a spiking network maps NaN/Inf to finite spikes silently; "
                              "clean or drop those samples")
    return x.astype(np.float32, copy=False)


def check_sample_counts(inputs: Mapping[str, np.ndarray], where: str = "the inputs") -> int:
    """The number of samples every input holds; SNN-E105 when they disagree (ORT would
    broadcast one sample over the batch, or a batch would drop the extra samples)."""
    counts = {k: len(v) for k, v in inputs.items()}
    if len(set(counts.values())) > 1:
        raise ModelInputError(f"{where} disagree on the number of samples "
                              f"({', '.join(f'{n}: {c}' for n, c in counts.items())})",
                              code="SNN-E105", hint="give every input the same N")
    return next(iter(counts.values()), 0)


def check_shape(proto, name: str, x: np.ndarray) -> None:
    """Samples must match the model input in every non-batch dimension that the model fixes."""
    inp = next(i for i in proto.graph.input if i.name == name)
    if not inp.type.tensor_type.HasField("shape"):   # rank unknown: ONNX Runtime judges
        return
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    want = ["N"] + [d if d else "?" for d in dims[1:]]
    if x.ndim != len(dims) or any(d and d != g for d, g in zip(dims[1:], x.shape[1:])):
        # each sample's shape: the count may be a caller's subset (report's --samples)
        raise ModelInputError(f"each sample has shape {list(x.shape[1:])} but the model input "
                              f"'{name}' is {want}", code="SNN-E105",
                              hint="pass samples shaped like the model input (N first)")


def run_compiled(model_path: str | os.PathLike | onnx.ModelProto,
                 inputs: Mapping[str, np.ndarray] | np.ndarray, *, use_library: bool = True,
                 spike_counts: bool = True, optimize: bool = True,
                 batch_size: int | None = None) -> RunResult:
    """Run a compiled model on ``inputs`` (name -> array, or one array for a single-input model),
    in batches of ``batch_size`` samples (all at once by default). ``optimize=False`` disables ORT
    graph optimisations (bit-exact comparisons)."""
    if not isinstance(model_path, (str, os.PathLike, onnx.ModelProto)):
        raise OptionError(f"the model ({type(model_path).__name__}) is not a path or an "
                          "onnx.ModelProto", code="SNN-E349",
                          hint="pass the compiled model's path (bytes: onnx.load_from_string)")
    for name, flag in (("use_library", use_library), ("spike_counts", spike_counts),
                       ("optimize", optimize)):
        if not isinstance(flag, (bool, np.bool_)):
            raise OptionError(f"{name}={flag!r} ({type(flag).__name__}) must be True or False",
                              code="SNN-E349", hint=f"pass {name} as True or False")
    proto = ir.read_proto(model_path)  # SNN-E101 / E102 like the CLI
    if batch_size is not None and (isinstance(batch_size, (bool, np.bool_)) or not isinstance(
            batch_size, (int, np.integer))):
        raise OptionError(f"batch_size={batch_size!r} ({type(batch_size).__name__}) must be an "
                          "integer", code="SNN-E349", hint="e.g. batch_size=16")
    if batch_size is not None and batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size!r}",
                          code="SNN-E684", hint="e.g. batch_size=16")
    wanted_inputs = data_inputs(proto)
    if not isinstance(inputs, Mapping) and (not isinstance(inputs, np.ndarray) or inputs.ndim < 1):
        raise ModelInputError(f"inputs must be an array of samples or a mapping input name -> "
                              f"samples, not {type(inputs).__name__}", code="SNN-E683",
                              hint="e.g. run_compiled(model, x) with x of shape [N, C, H, W]")
    if not isinstance(inputs, Mapping):
        if len(wanted_inputs) != 1:
            raise ModelInputError(f"the model has {len(wanted_inputs)} inputs "
                                  f"({', '.join(wanted_inputs)}); one array cannot feed them",
                                  code="SNN-E683", hint="pass a mapping input name -> samples")
        inputs = {wanted_inputs[0]: inputs}
    missing = [n for n in wanted_inputs if n not in inputs]
    if missing:
        raise ModelInputError(f"no samples for the model input(s) {', '.join(missing)}",
                              code="SNN-E683", hint="feed every input: "
                              + ", ".join(wanted_inputs))
    extra = [n for n in inputs if n not in wanted_inputs]
    if extra:
        raise ModelInputError(f"the model has no input(s) {', '.join(map(str, extra))}",
                              code="SNN-E683", hint="feed exactly: " + ", ".join(wanted_inputs))
    if not inputs or any(np.size(v) == 0 for v in inputs.values()):
        raise ModelInputError("no samples to run", code="SNN-E682",
                              hint="pass at least one sample")
    inputs = {k: check_samples(np.asarray(v), f"the samples for input '{k}'")
              for k, v in inputs.items()}
    for k, v in inputs.items():
        check_shape(proto, k, v)
    check_sample_counts(inputs)
    meta = {p.key: p.value for p in proto.metadata_props}
    _check_schedule_metadata(meta)
    scale_warnings = input_range.warn(input_range.parse(meta.get(input_range.METADATA_KEY)),
                                      inputs)
    if meta.get("snncc.schedule") == "streaming" and not use_library:
        raise RuntimeLibraryError(
            "a --schedule streaming model runs only with the C++ kernel library: the portable "
            "ONNX function bodies implement the folded form only (no state inputs)",
            code="SNN-E703", hint="drop --no-library (build the kernels: python -m "
            "snncc.runtime.build), or compile with --schedule folded")
    unknown = sorted({n.op_type for n in neuron_nodes(proto) if spec_for_op(n.op_type) is None
                      and n.op_type not in RUNTIME_OP_NAMES})
    if unknown:
        raise ModelInputError(f"op(s) {', '.join(unknown)} of domain {SNN_DOMAIN} are no snncc "
                              "neuron or runtime kernel", code="SNN-E241",
                              hint="run a model written by snncc compile (neuron ops: "
                              + ", ".join(sorted(s.op_type for s in NEURONS.values())) + ")")
    rewritten = runtime_rewritten(proto)
    notes = []
    if rewritten:   # snncc.runtime's embedding rewrite (blocked layout, fused kernels) of a model
        from snncc import runtime

        what = (f"this model was rewritten by snncc.runtime for embedding ({rewritten}): it "
                "runs only with the C++ kernel library")
        if not use_library:
            raise RuntimeLibraryError(what, code="SNN-E703", hint="drop --no-library, or run "
                                      "the compiled model it was made from")
        if not runtime.is_built():
            raise RuntimeLibraryError(f"{what}, which is not built here "
                                      f"({runtime.library_path()})", code="SNN-E701",
                                      hint=f"build it with {runtime._BUILD_HINT}, or run the "
                                      "compiled model it was made from (it runs without it)")
        if spike_counts:
            notes.append(f"note: this model was rewritten by snncc.runtime ({rewritten}): it ran "
                         "as it is, without spike counts (its neurons' outputs are in ORT's "
                         "blocked layout or fused with the pool after them); run the compiled "
                         "model it was made from for them (snncc run rewrites it the same way)")
            logging.getLogger("snncc.run").warning("%s", notes[-1][len("note: "):])
        spike_counts, optimize, use_library = False, False, True
    names: dict[str, str] = {}
    # the model's own outputs (a streaming model may output a neuron's spikes as they are)
    own_outputs = [o.name for o in proto.graph.output if not o.name.startswith("state_out/")]
    if spike_counts:
        proto, names = with_neuron_outputs(proto)
    attrs = {n.name: node_attrs(n) for n in neuron_nodes(proto)} if not rewritten else {}
    specs = {n.name: spec_for_op(n.op_type) for n in neuron_nodes(proto)} if not rewritten \
        else {}
    # a decoded output (window mean) holds no spike elements: its events are binary spikes of
    # the train it stands for (bit-serial: popcount of q)
    decoded = {k: bool(spec.decoded_attr and attrs[k].get(spec.decoded_attr))
               for k, spec in specs.items()}
    if use_library and not rewritten and meta.get("snncc.schedule") != "streaming":
        use_library, note = _library_or_functions(proto)
        if note:
            notes.append(f"note: {note}")
            if not _FALLBACK_SAID[0]:   # once per process; every RunResult carries it
                _FALLBACK_SAID[0] = True
                logging.getLogger("snncc.run").warning("%s", note)
    try:
        sess = _session(proto, use_library, optimize and not rewritten)
    except RuntimeLibraryError as exc:
        if exc.code == "SNN-E701" and meta.get("snncc.schedule") != "streaming":
            raise RuntimeLibraryError(exc.message, code=exc.code, hint=exc.hint + "; or run "
                                      "without it: --no-library (the model's portable ONNX "
                                      "functions, same outputs, slower)") from None
        if exc.code == "SNN-E701":   # streaming: the functions have no state inputs
            raise RuntimeLibraryError(exc.message + "; a --schedule streaming model runs only "
                                      "with it", code=exc.code, hint=exc.hint + "; or compile "
                                      "with --schedule folded") from None
        raise
    except SnnccError:
        raise
    except Exception as exc:  # ORT rejects the graph: not a model snncc (or ORT) can run
        raise ModelInputError(f"ONNX Runtime cannot load the model ({type(exc).__name__}: "
                              f"{str(exc).strip()[:300]})", code="SNN-E102",
                              hint="run a model written by snncc compile (or any valid "
                              "ONNX model)") from exc
    out_names = [o.name for o in sess.get_outputs()]
    wanted = own_outputs or out_names
    # a pipelined streaming model (bit-serial) fills its pipeline first: spikes are counted from
    # the step where every layer works on the input, i.e. what one inference of a stream costs,
    # as compile's SynOps count (all (D+1)*T steps had been counted: 3.5-4.8x its events)
    fill = int(meta.get("snncc.pipeline_fill", 0))
    result = RunResult({}, {n: 0 for n in names} if spike_counts else None,
                       {n: 0 for n in names} if spike_counts else None,
                       samples=len(next(iter(inputs.values()))),
                       slices=int(meta.get("snncc.steps", 1)) - fill,
                       warnings=[f"warning: {w}" for w in scale_warnings] + notes)

    def count(values: dict[str, np.ndarray]) -> None:
        for node, tensor in names.items():
            y = values[tensor]
            result.units_per_layer[node] = y.size // max(y.shape[0], 1) if y.ndim else 1
            if specs[node].events is binary_events:  # one event per spike: a single count
                n = int(np.count_nonzero(y))
                result.spikes_per_layer[node] += n
                result.events_per_layer[node] += n
                continue
            ev = specs[node].events(y, attrs[node])
            result.spikes_per_layer[node] += int(np.sum(ev) if decoded[node]
                                                 else np.count_nonzero(y))
            result.events_per_layer[node] += int(np.sum(ev))

    size = batch_size or result.samples or 1
    fixed = _fixed_batch(proto, wanted_inputs)
    if fixed is not None and meta.get("snncc.schedule") == "streaming":
        fixed //= steps_per_call(proto)   # a call takes K frames of the samples, time-major
    if fixed is not None:  # e.g. an ANN exported with batch 1: run it in batches of that size
        size = fixed
        if result.samples % fixed and names:
            raise ModelInputError(f"the model fixes its batch at {fixed}, and {result.samples} "
                                  "samples are not a multiple of it", code="SNN-E105",
                                  hint=f"pass a multiple of {fixed} samples")
    chunks = []
    for start in range(0, max(result.samples, 1), size):
        feeds = {k: v[start:start + size] for k, v in inputs.items()}
        n = len(next(iter(feeds.values())))
        if fixed is not None and n < fixed:  # pad the last batch; the padding is dropped
            feeds = {k: np.concatenate([v, np.zeros((fixed - n, *v.shape[1:]), v.dtype)])
                     for k, v in feeds.items()}
        try:
            if meta.get("snncc.schedule") == "streaming":
                chunk = _run_streaming(sess, proto, meta, feeds, out_names, wanted, count,
                                       count_from=fill)
            else:
                values = dict(zip(out_names, sess.run(out_names, feeds)))
                count(values)
                chunk = {k: values[k] for k in wanted}
        except SnnccError:
            raise
        except Exception as exc:  # ORT refuses these inputs (a dimension the model fixes...)
            raise ModelInputError(f"ONNX Runtime failed on these inputs ({type(exc).__name__}: "
                                  f"{str(exc).strip()[:300]})", code="SNN-E685",
                                  hint="pass samples shaped and typed like the model input; "
                                  "if they are, rerun with --debug and report it") from exc
        chunks.append({k: v[:n] for k, v in chunk.items()})
    result.outputs = {k: np.concatenate([c[k] for c in chunks]) for k in wanted}
    return result


def _fixed_batch(proto: onnx.ModelProto, names: list[str]) -> int | None:
    """The batch size every data input fixes (dim 0 > 0), or None when any leaves it free."""
    sizes = set()
    for inp in proto.graph.input:
        if inp.name in names:
            dims = inp.type.tensor_type.shape.dim
            if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
                return None
            sizes.add(dims[0].dim_value)
    return sizes.pop() if len(sizes) == 1 else None


class StreamStepper:
    """The streaming protocol's step loop through ORT's IO binding, each state updated in place.

    ``state_out/X`` is bound to the very buffer bound as ``state_in/X`` when the op that writes it
    is the only reader of ``state_in/X`` and is known to read each element before writing it
    (:func:`in_place_states`: every neuron kernel works chunk by chunk, state in, then state out;
    the spike gate's running sum is an elementwise Add). A state written in place needs no fresh
    output buffer per step, its lines are still in cache when they are written, and nothing
    passes through NumPy. Every other state gets ORT's own output buffer, a fresh one per step,
    passed on to the next step. Data inputs are bound once; only the step number changes, in
    place. A model of K steps per call (``--steps-per-call``, metadata ``snncc.steps_per_call``)
    takes K frames time-major: ``inputs`` are the N samples held over the call (repeated K
    times here), or with ``frames=True`` the K frames of the first call, ``[K*N, ...]`` (step k
    in rows k*N .. k*N+N-1); :meth:`step` runs K steps and returns their outputs time-major,
    ``[K*N, ...]`` (:func:`split_steps` cuts them into steps)."""

    def __init__(self, sess: ort.InferenceSession, proto: onnx.ModelProto | str | os.PathLike,
                 inputs: Mapping[str, np.ndarray], out_names: list[str] | None = None, *,
                 frames: bool = False) -> None:
        if not isinstance(sess, ort.InferenceSession):
            raise OptionError(f"sess ({type(sess).__name__}) is not an onnxruntime session",
                              code="SNN-E349", hint="pass snncc.runtime.layout.session(model)")
        proto = ir.read_proto(proto)   # a path is read (SNN-E101/E102)
        if "step" not in {i.name for i in proto.graph.input}:   # the streaming protocol's
            schedule = {p.key: p.value for p in proto.metadata_props}.get("snncc.schedule")
            raise OptionError("StreamStepper steps a model of the streaming protocol (a 'step' "
                              f"input); this one has none (schedule {schedule or 'unknown'})",
                              code="SNN-E349",
                              hint="compile with --schedule streaming, or use run_compiled")
        wanted = data_inputs(proto)
        if not isinstance(inputs, Mapping) or sorted(inputs) != sorted(wanted):
            raise ModelInputError(f"inputs must map exactly the model's data input(s) "
                                  f"({', '.join(wanted)}) to samples", code="SNN-E683",
                                  hint="e.g. {'" + (wanted[0] if wanted else "input") + "': x}")
        inputs = {k: check_samples(np.asarray(v), f"the samples for input '{k}'")
                  for k, v in inputs.items()}
        for k, v in inputs.items():
            check_shape(proto, k, v)
        check_sample_counts(inputs)
        graph_inputs = sorted(i.name for i in proto.graph.input
                              if i.name not in {t.name for t in proto.graph.initializer})
        if sorted(i.name for i in sess.get_inputs()) != graph_inputs:
            raise OptionError("sess is a session of another model (its inputs differ)",
                              code="SNN-E349", hint="pass a session of the same model")
        known = [o.name for o in sess.get_outputs()]
        if out_names is None:
            out_names = known
        elif isinstance(out_names, str) or not all(n in known for n in out_names):
            raise OptionError(f"out_names {out_names!r} must be a list of the session's outputs",
                              code="SNN-E349", hint="choose from: " + ", ".join(
                                  n for n in known if not n.startswith("state_out/")))
        self.sess = sess
        self.binding = sess.io_binding()
        if not isinstance(frames, (bool, np.bool_)):
            raise OptionError(f"frames={frames!r} ({type(frames).__name__}) must be True or "
                              "False", code="SNN-E349", hint="pass frames as True or False")
        self.per_call = K = steps_per_call(proto)
        rows = len(next(iter(inputs.values())))
        if frames and rows % K:
            raise ModelInputError(f"frames=True takes the {K} frames of a call time-major, "
                                  f"K*N rows; {rows} rows are not a multiple of {K}",
                                  code="SNN-E105", hint=f"stack {K} frames of N samples "
                                  "(np.concatenate), or pass frames=False to hold N samples")
        self.batch = batch = rows // K if frames else rows
        # bound memory: a copy of the samples (the caller may reuse its arrays between steps),
        # repeated over the steps of one call unless given a frame each
        self._keep = {k: np.array(np.concatenate([v] * K) if K > 1 and not frames else v,
                                  dtype=np.float32, order="C")
                      for k, v in inputs.items()}
        self.data_names = sorted(self._keep)
        for k, v in self._keep.items():
            self.binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v))
        self.step_value = np.zeros((), dtype=np.int64)  # the binding reads it in place
        self._keep["step"] = self.step_value
        self.binding.bind_ortvalue_input("step", ort.OrtValue.ortvalue_from_numpy(self.step_value))
        in_place = in_place_states(proto)
        self.order: list[str] = []  # output names in binding order (that of get_outputs())
        self.passed: list[str] = []  # states that go through ORT's output buffers
        self._stepped = False        # a step has run since the states were zero
        for k, v in _zero_states(proto, batch).items():
            name = k[len("state_in/"):]
            value = ort.OrtValue.ortvalue_from_numpy(v)
            self._keep[k] = v
            self.binding.bind_ortvalue_input(k, value)
            if name in in_place:
                self.binding.bind_ortvalue_output("state_out/" + name, value)
            else:
                self.binding.bind_output("state_out/" + name)
                self.passed.append(name)
            self.order.append("state_out/" + name)
        self.others = [o for o in out_names if not o.startswith("state_out/")]
        for o in self.others:
            self.binding.bind_output(o)
        self.order += self.others
        self.buffers: dict[str, np.ndarray] = {}  # the other outputs' own arrays, after step one

    def step(self, g: int) -> dict[str, np.ndarray]:
        """Run global step ``g`` (with K steps per call, steps g .. g+K-1); returns copies of
        the outputs other than the states. Step 0 starts a new sequence: every state is zero
        again, as the protocol prescribes (the neuron kernels ignore theirs at step 0, a spike
        gate's running sum does not)."""
        K = self.per_call
        if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer)) or g < 0:
            raise OptionError(f"step {g!r} is not a step number (an integer from 0)",
                              code="SNN-E349", hint=f"step 0, {K}, {2 * K}, ... in turn, as "
                              "run_compiled does")
        if g % K:
            raise OptionError(f"step {g} is not the first step of a call: with {K} steps per "
                              f"call, calls start at multiples of {K}", code="SNN-E349",
                              hint=f"step 0, {K}, {2 * K}, ... in turn, as run_compiled does")
        if g == 0 and self._stepped:
            self._zero()
        self._stepped = True
        self.step_value[()] = g
        self.sess.run_with_iobinding(self.binding)
        if self.buffers and not self.passed:
            return {o: buf.copy() for o, buf in self.buffers.items()}
        outs = dict(zip(self.order, self.binding.get_outputs()))
        for name in self.passed:  # this step's state in, a fresh buffer for the next one's
            self.binding.bind_ortvalue_input("state_in/" + name, outs["state_out/" + name])
            self.binding.bind_output("state_out/" + name)
        if not self.buffers:  # shapes known now: later steps write into arrays of our own
            for o in self.others:
                self.buffers[o] = np.array(outs[o].numpy())
                self._keep[o] = self.buffers[o]
                self.binding.bind_ortvalue_output(
                    o, ort.OrtValue.ortvalue_from_numpy(self.buffers[o]))
        return {o: buf.copy() for o, buf in self.buffers.items()}


    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Feed other samples from the next step on (a new frame of a stream; the stepper keeps
        its own copy of what it is given): the same input names and shapes (SNN-E683/E105).
        With K steps per call, N samples are held over the call's K steps, and K*N samples
        (time-major: step k is rows k*N .. k*N+N-1) give each step its own frame."""
        if not isinstance(inputs, Mapping) or sorted(inputs) != self.data_names:
            raise ModelInputError("set_inputs takes the stepper's data inputs by name",
                                  code="SNN-E683", hint="e.g. {'input': x}, as given to it")
        checked = {}
        for k, v in inputs.items():
            v = check_samples(np.asarray(v), f"the samples for input '{k}'")
            held = (self.batch, *self._keep[k].shape[1:])
            if v.shape != self._keep[k].shape and (self.per_call == 1 or v.shape != held):
                raise ModelInputError(f"the samples for input '{k}' have shape {list(v.shape)}, "
                                      f"the stepper's {list(held)}" + (
                                          f" (or {list(self._keep[k].shape)}: a frame for "
                                          f"each of the {self.per_call} steps of a call)"
                                          if self.per_call > 1 else ""),
                                      code="SNN-E105", hint="the same batch and sample shape; "
                                      "a new StreamStepper for another batch size")
            checked[k] = v
        for k, v in checked.items():
            if v.shape == self._keep[k].shape:
                self._keep[k][...] = v
            else:
                self._keep[k].reshape(self.per_call, *v.shape)[...] = v

    def _zero(self) -> None:
        """Every state back to zero: in-place buffers cleared, passed states bound to zeros."""
        for out in self.order:
            if not out.startswith("state_out/"):
                continue
            name = "state_in/" + out[len("state_out/"):]
            if name[len("state_in/"):] in self.passed:
                shape = self._keep[name].shape
                self._keep[name] = np.zeros(shape, np.float32)
                self.binding.bind_ortvalue_input(
                    name, ort.OrtValue.ortvalue_from_numpy(self._keep[name]))
            else:
                self._keep[name][...] = 0


def steps_per_call(proto: onnx.ModelProto) -> int:
    """Steps one call of a streaming model runs (metadata ``snncc.steps_per_call``; 1 for a
    model written before it was recorded). A value that is not a positive integer (an edited
    model) is SNN-E102."""
    meta = {p.key: p.value for p in proto.metadata_props}
    value, steps = meta.get("snncc.steps_per_call", "1"), meta.get("snncc.steps", "1")
    if not (value.isdigit() and steps.isdigit() and int(value) >= 1
            and int(steps) % int(value) == 0):
        raise ModelInputError(f"the model's metadata snncc.steps_per_call is {value!r}, not a "
                              f"positive integer dividing its steps ({steps!r})",
                              code="SNN-E102",
                              hint="compile the model again (its metadata was edited)")
    return int(value)


def split_steps(values: Mapping[str, np.ndarray], per_call: int) -> list[dict[str, np.ndarray]]:
    """The outputs of one call of ``per_call`` steps, time-major ``[K*N, ...]``, as one dict per
    step (``[N, ...]`` each)."""
    if per_call == 1:
        return [dict(values)]
    return [dict(zip(values, parts)) for parts in
            zip(*(np.split(v, per_call) for v in values.values()))]


def in_place_states(proto: onnx.ModelProto) -> set[str]:
    """States ``X`` that may be written into the buffer they are read from: ``state_in/X`` has
    exactly one reader, it writes ``state_out/X``, and it is an op known to read each element
    before writing it: one of our neuron kernels (state at input 1, output 1) or an elementwise
    Add of two same-shape tensors (the gate's running sum; the schedule declares both with the
    MaxPool input's shape). Nothing else: an op such as Gemm may write its output before it has
    read all of its input. A state read inside a subgraph or also fetched as a graph output is
    never written in place."""
    from snncc.runtime.gates import subgraph_reads, value_shapes, wiring

    _, readers, graph_outputs = wiring(proto.graph)
    shapes = value_shapes(proto.graph)
    hidden = subgraph_reads(proto.graph) | graph_outputs
    out = set()
    for inp in proto.graph.input:
        if not inp.name.startswith("state_in/") or inp.name in hidden:
            continue
        name = inp.name[len("state_in/"):]
        nodes = {id(n): n for n in readers.get(inp.name, [])}  # a node reading it twice: one
        if len(nodes) != 1:
            continue
        node = next(iter(nodes.values()))
        if node.domain == SNN_DOMAIN:
            ok = (len(node.input) == 3 and node.input[1] == inp.name and len(node.output) == 2
                  and node.output[1] == "state_out/" + name)
        else:
            ok = (node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.input) == 2
                  and list(node.output) == ["state_out/" + name]
                  and shapes.get(node.input[0]) is not None
                  and shapes.get(node.input[0]) == shapes.get(node.input[1]))
        if ok:
            out.add(name)
    return out


def _check_schedule_metadata(meta: Mapping[str, str]) -> None:
    """SNN-E102 for schedule metadata no compile writes (a hand edit: snncc.timesteps -3 or a
    pipeline fill of 1e9 had given negative spike rates at exit 0, or a ValueError)."""
    def number(key: str, default: int) -> int | None:
        try:
            return int(meta.get(key, default))
        except ValueError:
            return None

    steps, first = number("snncc.steps", 1), number("snncc.decode_from", 0)
    fill, T = number("snncc.pipeline_fill", 0), number("snncc.timesteps", 1)
    head = meta.get("snncc.output_head", "{}")
    try:
        head_ok = isinstance(json.loads(head), dict)
    except ValueError:
        head_ok = False
    if None in (steps, first, fill, T) or not (
            T >= 1 and 1 <= steps <= 64 * 1024 and 0 <= first < steps and 0 <= fill < steps) \
            or not head_ok:
        raise ModelInputError(
            "the model's schedule metadata is not what any compile writes (snncc.steps "
            f"{meta.get('snncc.steps')!r}, decode_from {meta.get('snncc.decode_from')!r}, "
            f"pipeline_fill {meta.get('snncc.pipeline_fill')!r}, timesteps "
            f"{meta.get('snncc.timesteps')!r}, output_head {ir.shown(head, 60)!r}): edited by "
            "hand or by another tool", code="SNN-E102", hint="recompile the model")


def _run_streaming(sess: ort.InferenceSession, proto: onnx.ModelProto, meta: dict[str, str],
                   feeds: dict[str, np.ndarray], out_names: list[str], wanted: list[str],
                   count: Callable[[dict[str, np.ndarray]], None],
                   count_from: int = 0) -> dict[str, np.ndarray]:
    """The step loop of the streaming protocol; returns the mean of the decoded steps.
    ``count`` sees the outputs of the steps from ``count_from`` on."""
    steps, decode_from = int(meta["snncc.steps"]), int(meta["snncc.decode_from"])
    stepper = StreamStepper(sess, proto, feeds, out_names)
    sums: dict[str, np.ndarray] = {}
    for call in range(0, steps, stepper.per_call):
        for g, values in enumerate(split_steps(stepper.step(call), stepper.per_call), call):
            if g >= count_from:
                count(values)
            if g >= decode_from:
                for k in wanted:
                    sums[k] = values[k] if k not in sums else sums[k] + values[k]
    n = np.float32(steps - decode_from)
    means = {k: (v / n).astype(np.float32) for k, v in sums.items()}
    for name, head in json.loads(meta.get("snncc.output_head", "{}")).items():
        if name in means:  # the Softmax/LogSoftmax that streaming leaves to the step loop
            means[name] = _apply_head(means[name], head["op"], int(head["axis"]))
    return means


def _apply_head(x: np.ndarray, op: str, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return (log_p if op == "LogSoftmax" else np.exp(log_p)).astype(np.float32)
