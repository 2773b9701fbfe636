"""SNN-aware calibration: choose each layer's lambda and bias by simulating the spiking layer.

Post-training conversion at low T fails mostly through a *systematic* per-channel error: uneven
input makes a spiking layer's time-mean output differ from the ANN activation it replaces, and the
error compounds with depth (shared/design/calibration.md). This module removes it layer by layer,
in the spirit of Li et al. 2021 ("A Free Lunch From ANN", bias and potential correction) and of
QCFS Theorem 2 (neurons.md 1.3).

Inputs: the canonical ANN (ONNX proto, before fold-batchnorm), its activation sites in topological
order ``(z, y)`` (pre-activation and activation output tensor names), a starting
:class:`~snncc.context.QuantClipParams` per site (per-channel MSE lambda), the neuron spec and the
compile options, and the calibration samples.

The walk. Each site is cut out of the graph: its activation output ``y`` becomes an input of a
*segment* model holding the nodes between the graph inputs / earlier sites and the site's input
``z`` (ORT, graph optimisations off). Going through the sites in order, with the sites before
already calibrated:

1. **Current.** The segment runs on the spike trains of the upstream sites, time folded into the
   batch (``[S*N, ...]``, row ``t*N + n``; a graph input is repeated over time). A segment that
   depends on graph inputs only is static: its current is computed once and the neuron gets
   ``const_input=1``, as in the compiled model.
2. **Lambda.** For every factor ``f`` of :data:`SCALES`, the neuron (its registry NumPy
   reference, attributes from ``spec.from_quant_clip`` exactly as insert-neurons derives them)
   runs on that current with ``lam = f * lam0``; per channel (or per layer) the ``f`` with the
   smallest mean squared error between the layer's decoded output (mean over the counted slices)
   and the ANN activation wins (ties: the larger lambda).
3. **Bias.** A per-channel current ``b`` is added to ``z``: ``b += mean over samples and
   positions of (ANN activation - decoded output)``, re-simulating after each of up to
   :data:`BIAS_ROUNDS` rounds; a round that does not lower the site's error is undone and ends
   the rounds.
4. **Margin.** The bias rounds match means, so a channel whose positions share one current
   (the constant background of an image, at every sample) ends them on the edge of a spike-count
   step: the calibration samples cannot tell one side from the other, and any tiny change of the
   current (Loihi's 8-bit weights, another runtime's summation order) moves all those positions
   over it at once. Per channel the walk therefore also simulates ``b + k * delta`` for
   ``k = -2..2`` with ``delta = MARGIN_STEP * lam / L`` (a fraction of one quantization level)
   and moves the bias by the ``k`` in {-1, 0, 1} whose neighbourhood (k - 1, k, k + 1) has the
   smallest summed error: the middle of a flat stretch of the error, not its edge. The moves
   are undone if they leave the site's error above its error before the walk. (A bottleneck
   ResNet at IF T = 4: 34 -> 87 % on Loihi's 8-bit weights, 88.3 % in ORT either way;
   ``examples/results/margin.md``.)
5. The site's spike train with the chosen ``(lam, b)`` feeds the segments downstream.

Pools as the compiled model runs them. A segment on spike trains spike-gates its MaxPools (the
schedule's gate: per window the slice of the unit with the highest running sum; its calls then
take all S slices of a few samples, :func:`_run_slices`); ``--maxpool avg`` makes them
AveragePools. After an accumulate-then-fire neuron (bit-serial) a segment whose MaxPools all read
a neuron's output gets the window mean in every slice instead of the bit planes: the compiled
model pools that neuron's mean current (the MaxPool moves in front of it), and every other reader
sees only the mean. A MaxPool further down (after a conv) is gated on the bit planes, as compiled.
An analog island (``--allow-analog``) gets its inputs decoded as the schedule decodes them (the
mean over the counted slices, in every slice), so it runs on what the compiled model feeds it.

The bias ends up in ``QuantClipParams.bias``; fold-batchnorm adds it to the bias of the linear op
producing ``z`` (or inserts an ``Add``), so the QANN and every target see the same corrected
current. For the ``qann`` target the "neuron" is the quantized clip itself (one slice), which
makes the walk a bias-corrected QANN calibration.

Cost per site: two runs of its segment (on the upstream spike trains, and on the ANN's own upstream
activations, which give the site's target through its activation node) and up to ``len(SCALES) +
BIAS_ROUNDS + 7`` neuron simulations (5 of them for the margin step); stored spike trains and ANN
activations are freed once their last reader has run. The sample count is lowered (to at least
:data:`MIN_SAMPLES`) so that the stored trains fit :data:`MEMORY_BUDGET` and the largest site
simulates at most :data:`SIMULATION_BUDGET` values per slice. A site that still holds more (a
224x224 map keeps 16 samples of 64 x 224 x 224 = 51 M values) searches lambda and bias on a fixed
subset of its spatial positions (the same for every sample and channel, at most
:data:`SEARCH_BUDGET` values per slice; the neurons are element-wise, so the subset is simulated
exactly) and simulates the whole map once, with the chosen values, for the train that feeds the
layers downstream. Its reported errors are those of the subset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from snncc import ir, runtime
from snncc.calibration import bar_disabled
from snncc.context import CompileOptions, QuantClipParams
from snncc.errors import CalibrationError, RuntimeLibraryError
from snncc.passes.insert_neurons import normalize_attrs

__all__ = ["SCALES", "BIAS_ROUNDS", "MARGIN_STEP", "Site", "refine_sites", "SiteReport"]

logger = logging.getLogger("snncc.snn_calibration")

#: Factors of the starting lambda tried per channel.
SCALES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3)
#: Rounds of bias correction per site (a round that does not lower the error ends them).
BIAS_ROUNDS = 6
#: The margin step (4. above) in quantization levels: ``delta = MARGIN_STEP * lam / L``.
MARGIN_STEP = 0.1
#: Bytes the stored spike trains and ANN activations may take; more samples are dropped.
MEMORY_BUDGET = 3 << 30
#: Values per time slice that the largest site may simulate; more samples are dropped (at least
#: :data:`MIN_SAMPLES` stay). Large feature maps give every channel plenty of positions anyway:
#: a 224x224 ResNet walks 16 samples, the MNIST nets all 256.
SIMULATION_BUDGET = 8_000_000
MIN_SAMPLES = 16
#: Values per time slice above which a site searches lambda and bias on a subset of its positions.
SEARCH_BUDGET = SIMULATION_BUDGET
#: Bytes of output per ORT call of a segment model (and fewer rows per call above it).
RUN_BYTES = 256 << 20


@dataclass(frozen=True)
class Site:
    """An activation site: pre-activation ``z`` and output ``y`` tensor names, and a label."""

    z: str
    y: str
    label: str = ""


@dataclass
class SiteReport:
    """What the walk did at one site (for the compile report)."""

    site: str
    rel_error_before: float
    rel_error_after: float
    scale_mean: float
    bias_abs_mean: float

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "rel_error_before": round(self.rel_error_before, 5),
                "rel_error_after": round(self.rel_error_after, 5),
                "lambda_scale_mean": round(self.scale_mean, 4),
                "bias_abs_mean": float(f"{self.bias_abs_mean:.4g}")}


# ------------------------------------------------------------------------------ graph cutting

def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


class _Segments:
    """Per-site segment models of one ANN whose site outputs are cut into inputs."""

    def __init__(self, proto: onnx.ModelProto, sites: Sequence[Site]):
        self.proto = proto
        self.site_y = {s.y for s in sites}
        graph = proto.graph
        self.inits = {i.name for i in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.inits]
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
        self.value_info = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
        self.order = {id(n): i for i, n in enumerate(graph.node)}

    def needs(self, z: str) -> tuple[list[onnx.NodeProto], list[str]]:
        """The nodes computing ``z`` from graph inputs / site outputs, and the inputs they read."""
        nodes: dict[int, onnx.NodeProto] = {}
        inputs: list[str] = []
        stack, seen = [z], set()
        while stack:
            name = stack.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            if name in self.site_y or name in self.graph_inputs:
                inputs.append(name)
                continue
            if name in self.inits:
                continue
            node = self.producer.get(name)
            if node is None:
                continue
            nodes[id(node)] = node
            stack.extend(node.input)
            for attr in node.attribute:  # subgraph captures are outside the scope of a CNN
                if attr.type == onnx.AttributeProto.GRAPH:
                    raise CalibrationError(f"calibrate: node '{node.name}' has a subgraph",
                                           code="SNN-E413", hint="use --calib-method mse")
        return sorted(nodes.values(), key=lambda n: self.order[id(n)]), sorted(set(inputs))

    def _submodel(self, title: str, nodes: Sequence[onnx.NodeProto], inputs: list,
                  output: str) -> onnx.ModelProto:
        """``nodes`` (in graph order) as a model reading ``inputs`` (value infos) and writing
        ``output``, with the initializers they use."""
        used = {t for n in nodes for t in n.input}
        graph = onnx.helper.make_graph(
            list(nodes), title, inputs,
            [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
            [i for i in self.proto.graph.initializer if i.name in used])
        model = onnx.helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        return model

    def model(self, z: str, shapes: Mapping[str, tuple[int, ...]]) -> tuple[onnx.ModelProto,
                                                                            list[str]]:
        nodes, inputs = self.needs(z)
        infos = [self._input_info(name, shapes) for name in inputs]
        return self._submodel(f"segment_{z}", nodes, infos, z), inputs

    def pools_read_sites(self, model: onnx.ModelProto) -> bool:
        """The segment ``model`` has MaxPools, and each reads a site output (a neuron's train).
        (Without one, trains and window means give the same current up to float rounding: the
        trains are kept, so that every schedule calibrates alike.)"""
        pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
        return bool(pools) and all(n.input[0] in self.site_y for n in pools)

    def as_compiled(self, model: onnx.ModelProto, slices: int | None,
                    maxpool: str, window: int = 0) -> onnx.ModelProto | None:
        """``model`` with its MaxPools as the compiled model runs them (None: no change):
        ``--maxpool avg`` makes them AveragePools; with ``slices`` (a segment on spike trains,
        time-major ``[S*N, ...]``) they become the schedule's spike gate: per pooling window
        the slice of the input unit with the highest running sum, or with ``window`` (the
        folded schedules under ``--maxpool auto``: the number of decoded slices) the train of
        the unit with the highest total over those (schedule_timesteps doc)."""
        pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
        if not pools or (maxpool != "avg" and slices is None):
            return None
        out = onnx.ModelProto()
        out.CopyFrom(model)
        graph = out.graph
        nodes = []
        for k, node in enumerate(graph.node):
            if node.op_type != "MaxPool":
                nodes.append(node)
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                     if a.name != "storage_order"}
            if maxpool == "avg":
                if any(d != 1 for d in attrs.pop("dilations", [1])):
                    nodes.append(node)
                    continue
                nodes.append(onnx.helper.make_node("AveragePool", [node.input[0]],
                                                   [node.output[0]], count_include_pad=0,
                                                   **attrs))
                continue
            nodes += _gate_nodes(graph, f"walk_gate{k}", node.input[0], node.output[0],
                                 int(slices), attrs, window)
        del graph.node[:]
        graph.node.extend(nodes)
        return out

    def decode_islands(self, model: onnx.ModelProto, islands: set[str], slices: int,
                       counted: int) -> onnx.ModelProto | None:
        """``model`` (a segment on time-major ``[S*N, ...]`` trains) with the inputs of each
        analog island (``--allow-analog``: an op with no spiking form between spiking layers)
        decoded as the schedule decodes them: the mean over the counted slices, here given to
        every slice, so the island runs on what the compiled model feeds it. None: no island."""
        if not any(n.output and n.output[0] in islands for n in model.graph.node):
            return None
        out = onnx.ModelProto()
        out.CopyFrom(model)
        graph = out.graph
        opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 17)
        dynamic = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.output and node.output[0] in islands:
                for j, name in enumerate(node.input):
                    if name in dynamic:
                        tag = f"walk_decode{len(nodes)}"
                        nodes += _decode_nodes(graph, tag, name, f"{tag}/y", slices, counted,
                                               opset)
                        node.input[j] = f"{tag}/y"
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        return out

    def activation(self, site: Site, z: np.ndarray, inputs: Mapping[str, np.ndarray],
                   batch: int) -> np.ndarray:
        """The ANN's activation ``y`` of ``site`` from its pre-activation ``z``: the nodes between
        the two (a Relu, a Clip, a QCFS pattern) with their constants. Should ``y`` read anything
        else, the whole ANN computes it from the graph inputs instead."""
        nodes: dict[int, onnx.NodeProto] = {}
        stack, seen = [site.y], set()
        while stack:
            name = stack.pop()
            if name in seen or not name or name == site.z or name in self.inits:
                continue
            seen.add(name)
            node = self.producer.get(name)
            if node is None or name in self.graph_inputs or (name != site.y and
                                                             name in self.site_y):
                session = _session(ir.with_outputs(self.proto, [site.y]))
                return _run(session, site.y, inputs, batch)
            nodes[id(node)] = node
            stack.extend(node.input)
        chain = sorted(nodes.values(), key=lambda n: self.order[id(n)])
        info = onnx.helper.make_tensor_value_info(site.z, onnx.TensorProto.FLOAT,
                                                  ["batch", *z.shape[1:]])
        model = self._submodel(f"activation_{site.y}", chain, [info], site.y)
        return _run(_session(model), site.y, {site.z: z}, batch)

    def _input_info(self, name: str, shapes: Mapping[str, tuple[int, ...]]):
        if name in self.value_info and name in self.graph_inputs:
            return self.value_info[name]  # the walk made the model batch-agnostic
        shape = ["batch", *shapes[name][1:]]
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _window_mean(train: np.ndarray, slices: int, counted: int) -> np.ndarray:
    """A time-major ``[S*N, ...]`` train with every slice replaced by the mean of the last
    ``counted`` slices."""
    view = train.reshape((slices, -1) + train.shape[1:])
    mean = view[-counted:].mean(axis=0, dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(mean, view.shape)).reshape(train.shape)


def _tagged(graph: onnx.GraphProto, tag: str):
    """(``const(name, ints)``: an int64 initializer named ``tag/name``; ``t(name)``: a tensor
    name under ``tag``) for the subgraphs the walk splices into a segment."""
    def const(name: str, value) -> str:
        graph.initializer.append(onnx.numpy_helper.from_array(
            np.asarray(value, np.int64), f"{tag}/{name}"))
        return f"{tag}/{name}"

    return const, lambda name: f"{tag}/{name}"


def _gate_nodes(graph: onnx.GraphProto, tag: str, x: str, y: str, slices: int,
                attrs: Mapping[str, Any], window: int = 0) -> list[onnx.NodeProto]:
    """The spike gate of a MaxPool over a time-major ``[S*N, ...]`` input ``x`` writing ``y``:
    keyed by the running sum, or with ``window`` by the total over the last ``window`` (the
    decoded) slices (the schedule's product, so that the sums are the compiled model's)."""
    const, t = _tagged(graph, tag)
    mk = onnx.helper.make_node
    if window:
        from snncc.passes.schedule_timesteps import window_keys

        graph.initializer.append(onnx.numpy_helper.from_array(window_keys(slices, window),
                                                              t("ones")))
    total = mk("MatMul", [t("ones"), t("view")], [t("sum")]) if window else \
        mk("CumSum", [t("view"), const("axis", 0)], [t("sum")])
    return [mk("Shape", [x], [t("shape")]),
            mk("Reshape", [x, const("time", [slices, -1])], [t("view")]),
            total,
            mk("Reshape", [t("sum"), t("shape")], [t("running")]),
            mk("MaxPool", [t("running")], [t("pooled"), t("indices")], **attrs),
            mk("Reshape", [x, const("flat", [-1])], [t("x_flat")]),
            mk("Reshape", [t("indices"), f"{tag}/flat"], [t("i_flat")]),
            mk("GatherElements", [t("x_flat"), t("i_flat")], [t("picked")]),
            mk("Shape", [t("indices")], [t("out_shape")]),
            mk("Reshape", [t("picked"), t("out_shape")], [y])]


def _decode_nodes(graph: onnx.GraphProto, tag: str, x: str, y: str, slices: int, counted: int,
                  opset: int) -> list[onnx.NodeProto]:
    """``y``: the time-major ``[S*N, ...]`` ``x`` with every slice replaced by the mean of its
    last ``counted`` slices (the schedule's decode, broadcast back over time)."""
    const, t = _tagged(graph, tag)
    mk = onnx.helper.make_node
    mean = (mk("ReduceMean", [t("counted"), const("axes", [0])], [t("mean")], keepdims=1)
            if opset >= 18 else mk("ReduceMean", [t("counted")], [t("mean")], axes=[0],
                                   keepdims=1))
    return [mk("Shape", [x], [t("shape")]),
            mk("Reshape", [x, const("time", [slices, -1])], [t("view")]),
            mk("Slice", [t("view"), const("start", [slices - counted]), const("end", [slices]),
                         const("axis", [0])], [t("counted")]),
            mean,
            mk("Tile", [t("mean"), const("reps", [slices, 1])], [t("tiled")]),
            mk("Reshape", [t("tiled"), t("shape")], [y])]


def _island_outputs(proto: onnx.ModelProto) -> set[str]:
    """First outputs of the nodes the schedule makes analog islands (the shared rule)."""
    from snncc.passes.support import ISLAND, conversion_roles

    graph = ir.load(proto).graph
    roles = conversion_roles(graph)
    return {n.outputs[0].name for n in graph.nodes if n.outputs and roles.get(id(n)) == ISLAND}


def _run_slices(session: ort.InferenceSession, output: str, feeds: Mapping[str, np.ndarray],
                slices: int, batch: int) -> np.ndarray:
    """:func:`_run` on time-major ``[S*N, ...]`` feeds whose ops mix the slices of a sample (the
    spike gate): each call gets all S slices of up to ``batch`` samples."""
    views = {k: v.reshape((slices, -1) + v.shape[1:]) for k, v in feeds.items()}
    n = next(iter(views.values())).shape[1]
    out = None
    for start in range(0, n, batch):
        part = session.run([output], {k: np.ascontiguousarray(v[:, start:start + batch])
                                      .reshape((-1,) + v.shape[2:]) for k, v in views.items()})[0]
        part = part.reshape((slices, -1) + part.shape[1:])
        if out is None:
            out = np.empty((slices, n) + part.shape[2:], part.dtype)
        out[:, start:start + part.shape[1]] = part
    return out.reshape((-1,) + out.shape[2:])


def _run(session: ort.InferenceSession, output: str, feeds: Mapping[str, np.ndarray],
         batch: int) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    out = None
    for start in range(0, n, batch):
        part = session.run([output], {k: v[start:start + batch] for k, v in feeds.items()})[0]
        if out is None:
            out = np.empty((n,) + part.shape[1:], part.dtype)
        if len(part) != min(batch, n - start):
            raise ValueError(f"the segment gave {len(part)} rows for {min(batch, n - start)}")
        out[start:start + len(part)] = part
    return out


def _rows(batch: int, shape: Sequence[int]) -> int:
    """Rows per ORT call of a segment whose output rows have ``shape[1:]``: ``batch``, or fewer
    where a call's output would pass :data:`RUN_BYTES` (ORT keeps the largest call's
    intermediate tensors in its arena until the session is freed)."""
    return max(1, min(batch, RUN_BYTES // max(4 * int(np.prod(shape[1:])), 1)))


# ------------------------------------------------------------------------------ neuron simulation

@dataclass
class _Neuron:
    """Simulates one site as the compiled model will: ``run(z, lam, const) -> (S, N, ...)``."""

    spec: Any            # NeuronSpec, or None for the qann target (the clip itself)
    options: CompileOptions
    params: QuantClipParams

    def attrs(self, lam: np.ndarray) -> dict[str, Any]:
        return self.spec.from_quant_clip(replace(self.params, lam=lam), self.options)

    def steps(self, lam: np.ndarray) -> tuple[int, int]:
        if self.spec is None:
            return 1, 1
        a = self.attrs(lam)
        return (self.spec.total_steps(self.options.timesteps, a),
                self.spec.counted_steps(self.options.timesteps, a))

    def run(self, z: np.ndarray, lam: np.ndarray, const: bool) -> np.ndarray:
        """Spike train ``[S, N, ...]`` for current ``z`` (``[N, ...]`` when const, else
        ``[S*N, ...]``)."""
        lam = np.asarray(lam, np.float32)
        if self.spec is None:
            lv = np.float32(self.params.levels)
            lam_b = lam.reshape((-1,) + (1,) * (z.ndim - 2)) if lam.ndim else lam
            q = np.clip(np.floor(z * lv / lam_b + np.float32(self.params.phi)), 0, lv)
            return (lam_b / lv * q)[None].astype(np.float32)
        a = self.attrs(lam)
        S, _ = self.steps(lam)
        a.update(T=S, const_input=int(const))
        y = _kernel(self.spec, z, a)
        if y is None:
            y, _ = self.spec.reference(z, a)
        return y.reshape((S, -1) + y.shape[1:])

    def run_in_parts(self, z: np.ndarray, lam: np.ndarray, const: bool,
                     bias: np.ndarray | None) -> np.ndarray:
        """:meth:`run` on ``z`` plus the per-channel ``bias``, a few samples at a time."""
        def part(x: np.ndarray) -> np.ndarray:
            return self.run(x if bias is None else x + _bcast(bias, x.ndim), lam, const)
        return _in_parts(part, z, const, self.steps(lam)[0])


#: False once the kernel library failed to load in this process (the references then simulate)
_KERNELS_OK = [True]
_NOT_BUILT_SAID = [False]


def _kernel(spec: Any, z: np.ndarray, attrs: dict[str, Any]) -> np.ndarray | None:
    """The neuron's C++ kernel on ``z`` (bit for bit its NumPy reference, 3-6x faster), or None
    where there is none: the library is not built or does not load (e.g. built for another
    onnxruntime; calibration needs no library, so it falls back with a log line), or the neuron
    was registered without a kernel."""
    if not runtime.is_built():
        if not _NOT_BUILT_SAID[0]:   # once per process (-v): calibration is about 2x slower
            _NOT_BUILT_SAID[0] = True
            logger.info("snn calibration: simulating with the NumPy references (the kernel "
                        "library is not built: %s)", runtime._BUILD_HINT)
        return None
    if not (_KERNELS_OK[0] and spec.op_type in runtime.OP_NAMES):
        return None
    try:
        return runtime.run_neuron(spec.op_type, z, normalize_attrs(spec, attrs))
    except RuntimeLibraryError as exc:
        _KERNELS_OK[0] = False
        logger.info("snn calibration: simulating with the NumPy references (%s)", exc.message)
        return None


def _in_parts(run: Callable[[np.ndarray], np.ndarray], z: np.ndarray, const: bool,
              steps: int) -> np.ndarray:
    """``run`` (an element-wise simulation ``[S*k or k, ...] -> [S, k, ...]``) over a few
    samples at a time, so that its temporaries stay near :data:`SEARCH_BUDGET` values per slice
    instead of the whole map's: the result is the same, ``[S, N, ...]``."""
    n = len(z) if const else len(z) // steps
    zt = z if const else z.reshape((steps, n) + z.shape[1:])
    per = max(1, SEARCH_BUDGET // max(1, int(np.prod(z.shape[1:]))))
    out = None
    for a in range(0, n, per):
        part = zt[a:a + per] if const else zt[:, a:a + per].reshape((-1,) + z.shape[1:])
        train = run(part)
        if out is None:
            out = np.empty((train.shape[0], n) + train.shape[2:], train.dtype)
        out[:, a:a + train.shape[1]] = train
    return out


def _search_subset(z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, target)`` itself, or both restricted to a fixed subset of spatial positions when the
    target holds more than :data:`SEARCH_BUDGET` values (see the module doc): ``[..., C, P]``.
    """
    if target.ndim < 3 or target.size <= SEARCH_BUDGET:
        return z, target
    positions = int(np.prod(target.shape[2:]))
    keep = max(1, SEARCH_BUDGET // (target.shape[0] * target.shape[1]))
    if keep >= positions:
        return z, target
    chosen = np.sort(np.random.default_rng(0).choice(positions, keep, replace=False))

    def cut(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(a.shape[:2] + (positions,))[:, :, chosen])

    return cut(z), cut(target)


def _margin_move(decode: Callable[[np.ndarray], np.ndarray], target: np.ndarray,
                 bias: np.ndarray, err: np.ndarray, lam: np.ndarray,
                 levels: int) -> np.ndarray | None:
    """Step 4 of the walk: the bias moved per channel by -delta, 0 or +delta to the middle of a
    flat stretch of the error (``decode(bias float32) -> decoded output``; ``err``: the error per
    channel at ``bias``), or None when no channel moves (always for a site without a channel
    axis, whose bias is one number)."""
    if MARGIN_STEP <= 0 or target.ndim < 2:
        return None
    channels = bias.shape[0]
    delta = MARGIN_STEP * np.broadcast_to(np.asarray(lam, np.float64), (channels,)) / levels
    errs = np.stack([err if k == 0 else
                     _channel_mse(decode((bias + k * delta).astype(np.float32)), target)
                     for k in (-2, -1, 0, 1, 2)])                        # [5, C]
    around = errs[:-2] + errs[1:-1] + errs[2:]                           # k = -1, 0, 1
    best = np.argmin(around, axis=0)
    move = around[best, np.arange(channels)] < around[1]
    if not move.any():
        return None
    return bias + np.where(move, best - 1, 0) * delta


def _channel_mse(decoded: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean squared error per channel (axis 1) over samples and positions."""
    d = (decoded - target).astype(np.float64)
    axes = tuple(i for i in range(d.ndim) if i != 1)
    return np.mean(d * d, axis=axes) if d.ndim > 1 else np.mean(d * d, keepdims=True)


def _channel_mean(d: np.ndarray) -> np.ndarray:
    axes = tuple(i for i in range(d.ndim) if i != 1)
    return np.mean(d.astype(np.float64), axis=axes)


def _bcast(values: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(values, np.float32).reshape((1, -1) + (1,) * (ndim - 2))


# ------------------------------------------------------------------------------ the walk

def refine_sites(proto: onnx.ModelProto, sites: Sequence[Site],
                 start: Mapping[str, QuantClipParams], samples: Mapping[str, np.ndarray],
                 options: CompileOptions, *, neuron_spec: Any = None, batch_size: int = 64,
                 progress: bool | None = None,
                 on_site: Callable[[str], None] | None = None
                 ) -> tuple[dict[str, QuantClipParams], list[SiteReport]]:
    """Refine ``start[y]`` for every site (see the module doc). ``neuron_spec=None`` walks with the
    quantized clip (qann target). Returns the new params and one report per site."""
    if not sites:
        return dict(start), []
    proto = ir.with_outputs(proto, free_batch=True)
    segments = _Segments(proto, sites)
    inputs = {k: np.asarray(v, np.float32) for k, v in samples.items()}
    n = len(next(iter(inputs.values())))

    # sample count bounded by memory and simulation time (site sizes from a one-sample probe)
    ann = _session(ir.with_outputs(proto, [s.y for s in sites]))
    probe = {k: v[:1] for k, v in inputs.items()}
    probed = ann.run([s.y for s in sites], probe)
    del ann
    sizes = [int(np.prod(a.shape[1:])) for a in probed]
    first = _Neuron(neuron_spec, options, start[sites[0].y])
    S, counted = first.steps(np.asarray(start[sites[0].y].lam))
    per_sample = 4 * sum(sizes) * (1 + S)
    keep = max(MIN_SAMPLES, min(n, int(MEMORY_BUDGET // max(per_sample, 1)),
                                int(SIMULATION_BUDGET // max(max(sizes), 1))))
    if keep < n:
        logger.info("snn calibration: %d of %d samples fit the memory and time budget", keep, n)
        inputs = {k: v[:keep] for k, v in inputs.items()}
        n = keep

    # last use of each site output, to free spike trains early
    needs = {s.z: segments.needs(s.z)[1] for s in sites}
    last_use: dict[str, int] = {}
    for i, s in enumerate(sites):
        for name in needs[s.z]:
            last_use[name] = i

    trains: dict[str, np.ndarray] = {}       # site y -> [S*N, ...] spike train
    # accumulate-then-fire neurons (bit-serial): a MaxPool reading such a neuron's output moves
    # in front of it in the compiled model and pools its mean current, and the other readers
    # (linear ops, the next such neuron) see only the window mean. So a segment whose MaxPools
    # all read a site output gets the window mean in every slice (its bit planes would make a
    # plain MaxPool pool the bits); one with a MaxPool further down (after a conv: the compiled
    # model gates it on the bit planes) gets the trains and the gate, like the other neurons
    window_mean = (neuron_spec is not None and neuron_spec.window_attr is not None
                   and options.maxpool == "auto" and options.schedule != "streaming")
    # the folded schedules window-gate the other MaxPools under --maxpool auto
    window_gate = counted if options.maxpool == "auto" and options.schedule != "streaming" \
        else 0
    # analog islands (--allow-analog) run once on their decoded inputs in the compiled model
    islands = _island_outputs(proto) if options.allow_analog and neuron_spec is not None \
        else set()
    # site y -> the ANN's activation [N, ...]: the site's target, and the input of the ANN's
    # own segments downstream (so only the activations still to be read are held, like trains)
    ann_y: dict[str, np.ndarray] = {}
    shapes = {s.y: (n,) + a.shape[1:] for s, a in zip(sites, probed)}
    result = dict(start)
    reports: list[SiteReport] = []
    with tqdm(total=len(sites), desc="calibrate (snn)", unit="layer",
              disable=bar_disabled(progress)) as bar:
        for i, site in enumerate(sites):
            if on_site:
                on_site(site.y)
            model, seg_inputs = segments.model(site.z, shapes)
            temporal = any(name in segments.site_y for name in seg_inputs)
            use_mean = window_mean and temporal and segments.pools_read_sites(model)
            gate = temporal and not use_mean
            feeds = {}
            for name in seg_inputs:
                if name in trains:
                    feeds[name] = _window_mean(trains[name], S, counted) if use_mean \
                        else trains[name]
                else:
                    feeds[name] = np.tile(inputs[name], (S,) + (1,) * (inputs[name].ndim - 1)) \
                        if temporal else inputs[name]
            try:
                session = _session(model)
                decoded = segments.decode_islands(model, islands, S, counted) \
                    if temporal and islands else None
                compiled = None if neuron_spec is None else segments.as_compiled(
                    decoded or model, S if gate else None, options.maxpool, window_gate)
                compiled = compiled or decoded
                rows = _rows(batch_size * (S if temporal else 1), shapes[site.y])
                if compiled is None:
                    z = _run(session, site.z, feeds, rows)
                elif gate or decoded is not None:  # gates and decodes mix a sample's slices
                    z = _run_slices(_session(compiled), site.z, feeds, S, max(1, rows // S))
                else:
                    z = _run(_session(compiled), site.z, feeds, rows)
                rows = _rows(batch_size, shapes[site.y])
                target = segments.activation(site, _run(
                    session, site.z, {k: ann_y.get(k, inputs.get(k)) for k in seg_inputs},
                    rows), inputs, rows)
                del session, feeds  # free its arena before the simulations
            except Exception as exc:  # ORT failures on odd graphs: say where
                raise CalibrationError(
                    f"calibrate: ONNX Runtime failed on the segment before {site.label or site.y} "
                    f"({type(exc).__name__}: {exc})", code="SNN-E413",
                    hint="use --calib-method mse, which needs no segment models") from exc
            for name in [k for k in trains if last_use.get(k, -1) <= i]:  # read for the last time
                del trains[name], ann_y[name]
            neuron = _Neuron(neuron_spec, options, start[site.y])
            params, train, report = _refine_site(site, z, not temporal, target, neuron)
            result[site.y] = params
            reports.append(report)
            if last_use.get(site.y, -1) > i:  # a later segment reads this train
                trains[site.y] = train.reshape((-1,) + train.shape[2:])
                ann_y[site.y] = target
            del z, target, train
            bar.update(1)
    return result, reports


def _refine_site(site: Site, z: np.ndarray, const: bool, target: np.ndarray,
                 neuron: _Neuron) -> tuple[QuantClipParams, np.ndarray, SiteReport]:
    params = neuron.params
    lam0 = np.asarray(params.lam, np.float32)
    per_channel = lam0.ndim == 1 and target.ndim >= 2
    _, counted = neuron.steps(lam0)
    full_z, (z, target) = z, _search_subset(z, target)
    norm = float(np.mean(target.astype(np.float64) ** 2)) or 1.0

    def simulate(lam: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        cur = z if bias is None else z + _bcast(bias, z.ndim)
        train = neuron.run(cur, lam, const)
        return train, train[-counted:].mean(axis=0)

    train0, decoded0 = simulate(lam0, None)
    err0 = _channel_mse(decoded0, target)
    best_err, best_lam, best_train, best_dec = err0, lam0, train0, decoded0
    for f in sorted(SCALES, reverse=True):  # larger first: ties keep the larger lambda
        if f == 1.0:
            continue
        lam = (lam0 * np.float32(f)).astype(np.float32)
        train, decoded = simulate(lam, None)
        err = _channel_mse(decoded, target)
        if per_channel:
            better = err < best_err
            if better.any():
                best_lam = np.where(better, lam, best_lam).astype(np.float32)
                best_err = np.where(better, err, best_err)
        elif err.mean() < best_err.mean():
            best_lam, best_err = lam, err
    if per_channel or best_lam is not lam0:
        best_train, best_dec = simulate(best_lam, None)
    channels = target.shape[1] if target.ndim >= 2 else 1
    bias = np.zeros(channels, np.float64)
    total = float(np.mean(_channel_mse(best_dec, target)))
    for _ in range(BIAS_ROUNDS):
        trial = bias + _channel_mean(target - best_dec)
        train, decoded = simulate(best_lam, trial.astype(np.float32))
        err = float(np.mean(_channel_mse(decoded, target)))
        if err >= total:
            break
        bias, total, best_train, best_dec = trial, err, train, decoded
    moved = _margin_move(lambda b: simulate(best_lam, b)[1], target, bias,
                         _channel_mse(best_dec, target), best_lam, params.levels)
    if moved is not None:
        train, decoded = simulate(best_lam, moved.astype(np.float32))
        err = float(np.mean(_channel_mse(decoded, target)))
        if err <= float(np.mean(err0)):    # the site's error stays at most where it started
            bias, total, best_train, best_dec = moved, err, train, decoded
    bias32 = bias.astype(np.float32)
    new = replace(params, lam=best_lam,
                  bias=bias32 if np.any(bias32) else None)
    if z is not full_z:  # searched on a subset: the train downstream needs the whole map
        best_train = neuron.run_in_parts(full_z, best_lam, const, new.bias)
    report = SiteReport(site.label or site.y, float(np.mean(err0)) / norm, total / norm,
                        float(np.mean(best_lam / np.where(lam0 > 0, lam0, 1))),
                        float(np.mean(np.abs(bias))))
    return new, best_train, report
