"""The backend-neutral netlist: neuron groups joined by synapse blocks, saved as JSON + NPZ.

A :class:`Group` is one population (the graph input, one neuron op, a non-spiking readout that
accumulates the network output, or a relay: a graded pass-through that sends its input current
each slice, inserted where a chain of linear ops cannot be composed into one conv). A
:class:`Block` is one set of synapses from a source group into a slice of a destination group:
``conv`` (shared kernel, stride, begin pads, groups, explicit output size) or ``dense`` (a matrix
over the flattened source). Every block reads the *values*
its source sends (a spike of payload p from channel c is worth ``p * unit[c]``) and writes a
current into channels ``[offset, offset + rows)`` of the destination's 3-D ``view``.

:func:`snncc.backends.loihi.lowering.lower` builds the netlist from the ANN-shaped ONNX graph
that insert-neurons produces (neuron ops in domain ``snncc.ops``, one per activation site).
:mod:`snncc.backends.loihi.quantize` then adds the integer fields, and :func:`save` /
:func:`load` write and read ``netlist.json`` + ``netlist.npz`` (docs/netlist.md). The linear
kernels here (:func:`conv2d`, :func:`block_apply`, ...) are what the lowering, the simulator and
the SynOp count share.

Error code: SNN-E650 unreadable netlist directory.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from snncc.errors import BackendCapabilityError

__all__ = ["FORMAT", "VERSION", "Group", "Block", "Netlist", "save", "load",
           "conv2d", "conv2d_adjoint", "block_apply", "window_matrix", "conv_fanout", "conv_fanin",
           "conv_box_sum"]

FORMAT = "snncc-netlist"
VERSION = 1


# ----------------------------------------------------------------------------- data model

@dataclass
class Group:
    """One population. ``kind``: ``input`` (analog graph input), ``neuron``, ``readout``,
    ``relay`` (graded pass-through of its current, zero delay); in a count-only netlist
    (:mod:`snncc.analysis.count_lowering`) also ``pool`` (a MaxPool over one neuron's spikes,
    or a nearest Resize copying them: ``attrs["events_of"]`` names that neuron node,
    ``attrs["op"]`` the op, ``source`` its output tensor) and ``analog`` (such an op over
    currents computed from the input)."""

    name: str
    kind: str
    shape: tuple[int, ...]            # per sample, as in the ONNX graph (no batch axis)
    view: tuple[int, int, int]        # (C, H, W) view of the neurons, C-order = flat order
    neuron: str = ""                  # registry key when kind == "neuron"
    attrs: dict[str, Any] = field(default_factory=dict)
    spike: str = "analog"             # analog | binary | graded | none
    source: str = ""                  # ONNX node (or tensor) the group comes from
    bias: np.ndarray | None = None    # float bias current per neuron, shape `view`
    # fixed point, filled by quantize.quantize
    frac_bits: int = 0
    unit: np.ndarray | None = None        # float value of one payload unit, per channel
    state_unit: np.ndarray | None = None  # float value of 2**frac_bits state, per channel
    fixed: dict[str, Any] = field(default_factory=dict)
    bias_mant: np.ndarray | None = None
    bias_exp: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.view))

    @property
    def sends_events(self) -> bool:
        """A neuron, a relay or a pool: its payloads are events whose count the SynOp figures
        need."""
        return self.kind in ("neuron", "relay", "pool")

    @property
    def updates(self) -> bool:
        """Its units are updated every slice (neurons, relays, readouts; not an input or a
        max-pool, which holds no state)."""
        return self.kind in ("neuron", "relay", "readout")


@dataclass
class Block:
    """Synapses ``src -> dst[offset : offset + rows]`` (rows along axis 0 of ``dst_view``)."""

    name: str
    src: str
    dst: str
    kind: str                               # conv | dense (| deconv, count-only netlists)
    # float64; conv and deconv [O, Cin/g, kh, kw], dense [O, F_in]. A deconv block is a
    # transposed conv (ONNX ConvTranspose: output o reads input i where o = i*stride - pad + k)
    # with its weight in conv layout: w[o_ch, c, k] = ConvTranspose weight[c, o_ch, k]
    weight: np.ndarray | None
    src_view: tuple[int, int, int]
    dst_view: tuple[int, int, int]
    offset: int = 0
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int] = (0, 0)          # begin pads (top, left); the end is implied by dst
    groups: int = 1
    mant: np.ndarray | None = None          # integer mantissas (int8 at 8 bits), by quantize
    exp: int = 0

    @property
    def rows(self) -> int:
        return int(self.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple((self.weight if self.weight is not None else self.mant).shape)

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.dst_view[1], self.dst_view[2]


@dataclass
class Netlist:
    groups: list[Group]                     # topological order, the input group first
    blocks: list[Block]
    outputs: list[dict[str, Any]]           # {"name", "group"}: graph output -> group decoded
    timesteps: int
    total_steps: int
    counted_steps: int
    ann_macs: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ann_macs_in_bounds(self) -> int:
        """The ANN's MACs without the kernel taps on a conv's zero padding (the lowering's
        ``meta``; ``ann_macs`` for a netlist saved before it counted them)."""
        return int(self.meta.get("ann_macs_in_bounds", self.ann_macs))

    def group(self, name: str) -> Group:
        return self._groups()[name]

    def _groups(self) -> dict[str, Group]:
        return {g.name: g for g in self.groups}

    def blocks_into(self, name: str) -> list[Block]:
        return [b for b in self.blocks if b.dst == name]

    def graph(self) -> nx.MultiDiGraph:
        """Groups as nodes, one edge per block (key = block name)."""
        g = nx.MultiDiGraph()
        g.add_nodes_from(gr.name for gr in self.groups)
        g.add_edges_from((b.src, b.dst, b.name) for b in self.blocks)
        return g


# ----------------------------------------------------------------------------- linear kernels

def _padded(x: np.ndarray, pads: tuple[int, int], need: tuple[int, int]) -> np.ndarray:
    b, c, h, w = x.shape
    hp, wp = max(need[0], pads[0] + h), max(need[1], pads[1] + w)
    out = np.zeros((b, c, hp, wp), dtype=x.dtype)
    out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = x
    return out


def conv2d(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], pads: tuple[int, int],
           groups: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Grouped 2-D convolution of ``x`` [B, C, H, W] with ``w`` [O, C/g, kh, kw], zero padding
    ``pads`` at the begin, output exactly ``out_hw``. Exact for integer dtypes."""
    (sh, sw), (ho, wo) = stride, out_hw
    o, cg, kh, kw = w.shape
    xp = _padded(x, pads, ((ho - 1) * sh + kh, (wo - 1) * sw + kw))
    bsz = x.shape[0]
    if groups == 1:
        # im2col in channels-last order (contiguous runs of C when gathering), then one
        # matrix product (BLAS for floats) instead of one einsum per tap
        xh = np.ascontiguousarray(xp.transpose(0, 2, 3, 1))            # [B, Hp, Wp, C]
        win = np.lib.stride_tricks.sliding_window_view(xh, (kh, kw), axis=(1, 2))
        win = win[:, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw]     # [B, ho, wo, C, kh, kw]
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(bsz * ho * wo, kh * kw * cg)
        wm = w.transpose(0, 2, 3, 1).reshape(o, -1).T.astype(np.result_type(x, w), copy=False)
        return (cols @ wm).reshape(bsz, ho, wo, o).transpose(0, 3, 1, 2)
    xg = xp.reshape(bsz, groups, cg, xp.shape[2], xp.shape[3])
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = np.zeros((bsz, groups, o // groups, ho, wo), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
            out += np.einsum("bgchw,goc->bgohw", patch, wg[:, :, :, i, j], optimize=True)
    return out.reshape(bsz, o, ho, wo)


def conv2d_adjoint(y: np.ndarray, w: np.ndarray, stride: tuple[int, int], pads: tuple[int, int],
                   groups: int, in_hw: tuple[int, int]) -> np.ndarray:
    """The transpose of :func:`conv2d`: ``y`` [B, O, ho, wo] -> [B, C, H, W]."""
    (sh, sw) = stride
    o, cg, kh, kw = w.shape
    bsz, _, ho, wo = y.shape
    hp = max(in_hw[0] + pads[0], (ho - 1) * sh + kh)
    wp = max(in_hw[1] + pads[1], (wo - 1) * sw + kw)
    out = np.zeros((bsz, groups, cg, hp, wp), dtype=np.result_type(y, w))
    yg = y.reshape(bsz, groups, o // groups, ho, wo)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw] += np.einsum(
                "bgohw,goc->bgchw", yg, wg[:, :, :, i, j], optimize=True)
    out = out[:, :, :, pads[0]:pads[0] + in_hw[0], pads[1]:pads[1] + in_hw[1]]
    return out.reshape(bsz, groups * cg, in_hw[0], in_hw[1])


def window_matrix(size: int, out: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """int64 [out, size]: 1 where output position ``o`` of a 1-D window of ``kernel`` taps,
    ``stride`` and begin padding ``pad`` (as :func:`conv2d`) reads input position ``i``."""
    i = np.arange(size)[None, :] + pad
    o = np.arange(out)[:, None] * stride
    return ((i >= o) & (i < o + kernel)).astype(np.int64)


def _windows(block: Block) -> tuple[np.ndarray, np.ndarray]:
    """The block's two 1-D window matrices [out, in]: 1 where an output position reads an input
    position (a deconv block's are the transposes of the conv's it is the adjoint of)."""
    _, _, kh, kw = block.shape
    (_, h, w), (ho, wo) = block.src_view, block.out_hw
    if block.kind == "deconv":
        return (window_matrix(ho, h, kh, block.stride[0], block.pads[0]).T,
                window_matrix(wo, w, kw, block.stride[1], block.pads[1]).T)
    return (window_matrix(h, ho, kh, block.stride[0], block.pads[0]),
            window_matrix(w, wo, kw, block.stride[1], block.pads[1]))


def pair_mask(block: Block) -> np.ndarray:
    """bool [rows, C/g] (dense: [rows, F_in]): which (row, source channel of its group) pairs
    have a kernel with any nonzero weight."""
    w = block.weight if block.weight is not None else block.mant
    return np.any(w.reshape(w.shape[0], w.shape[1], -1) != 0, axis=2)


def conv_fanout(block: Block, mask: np.ndarray | None = None) -> np.ndarray:
    """Synapses leaving each source position of a conv block (every tap counts, zero weights
    too): int64 [*src_view]. Equals ``conv2d_adjoint`` of ones with a ones kernel, computed from
    the two 1-D window matrices (the count is separable). With a :func:`pair_mask`, only the
    pairs it marks count (a count-only netlist, whose weights are its structure)."""
    ah, aw = _windows(block)
    plane = np.outer(ah.sum(axis=0), aw.sum(axis=0))
    if mask is None:
        return np.broadcast_to(block.rows // block.groups * plane, block.src_view).copy()
    g = block.groups
    rows = mask.reshape(g, block.rows // g, -1).sum(axis=1).reshape(-1)     # per source channel
    return (rows[:, None, None] * plane[None]).astype(np.int64)


def conv_fanin(block: Block) -> np.ndarray:
    """Synapses into each destination of a conv block: int64 [rows, *out_hw]; equals
    :func:`conv2d` of ones with a ones kernel."""
    ah, aw = _windows(block)
    plane = block.shape[1] * np.outer(ah.sum(axis=1), aw.sum(axis=1))
    return np.broadcast_to(plane, (block.rows,) + block.out_hw).copy()


def conv_box_sum(block: Block, values: np.ndarray, mask: np.ndarray | None = None
                 ) -> np.ndarray:
    """:func:`conv2d` of one integer map ``values`` [*src_view] with a ones kernel of the
    block's shape: per destination row, the sum over its group's channels (those ``mask``
    marks, :func:`conv_fanout`) and its window. int64 [rows, *out_hw], exact."""
    ah, aw = _windows(block)
    c, h, w = block.src_view
    g = block.groups
    if mask is None:
        per_group = values.astype(np.int64).reshape(g, c // g, h, w).sum(axis=1)
        boxed = np.matmul(np.matmul(ah, per_group), aw.T)              # [groups, ho, wo]
        return np.repeat(boxed, block.rows // g, axis=0)
    boxed = np.matmul(np.matmul(ah, values.astype(np.int64).reshape(c, h, w)), aw.T)
    out = np.einsum("goc,gchw->gohw", mask.reshape(g, block.rows // g, c // g).astype(np.int64),
                    boxed.reshape((g, c // g) + boxed.shape[1:]))
    return out.reshape((block.rows,) + boxed.shape[1:])


def block_apply(block: Block, x: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The block's output rows for source values ``x`` [B, *src_view] -> [B, rows, H, W]."""
    w = block.weight if weight is None else weight
    if block.kind == "conv":
        return conv2d(x.reshape((-1,) + block.src_view), w, block.stride, block.pads,
                      block.groups, block.out_hw)
    flat = x.reshape(x.shape[0], -1) @ w.T
    return flat.reshape((x.shape[0], w.shape[0]) + block.out_hw)


# ----------------------------------------------------------------------------- files

_GROUP_ARRAYS = ("bias", "unit", "state_unit", "bias_mant", "bias_exp")


def save(net: Netlist, out_dir: str | os.PathLike, *, with_float: bool = True) -> list[Path]:
    """Write ``netlist.json`` and ``netlist.npz`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    groups = []
    for i, g in enumerate(net.groups):
        entry = {"name": g.name, "kind": g.kind, "shape": list(g.shape), "view": list(g.view),
                 "neuron": g.neuron, "attrs": g.attrs, "spike": g.spike, "source": g.source,
                 "frac_bits": g.frac_bits, "fixed": g.fixed, "arrays": {}}
        for key in _GROUP_ARRAYS:
            value = getattr(g, key)
            if value is not None and (with_float or key not in ("bias",)):
                entry["arrays"][key] = f"g{i}/{key}"
                arrays[f"g{i}/{key}"] = value
        groups.append(entry)
    blocks = []
    for i, b in enumerate(net.blocks):
        entry = {"name": b.name, "src": b.src, "dst": b.dst, "kind": b.kind,
                 "src_view": list(b.src_view), "dst_view": list(b.dst_view), "offset": b.offset,
                 "stride": list(b.stride), "pads": list(b.pads), "groups": b.groups,
                 "exp": b.exp, "arrays": {}}
        for key in ("weight", "mant"):
            value = getattr(b, key)
            if value is not None and (with_float or key != "weight"):
                entry["arrays"][key] = f"b{i}/{key}"
                arrays[f"b{i}/{key}"] = value
        blocks.append(entry)
    doc = {"format": FORMAT, "version": VERSION, "timesteps": net.timesteps,
           "total_steps": net.total_steps, "counted_steps": net.counted_steps,
           "ann_macs": net.ann_macs, "outputs": net.outputs, "meta": net.meta,
           "groups": groups, "blocks": blocks}
    jpath, npath = out / "netlist.json", out / "netlist.npz"
    jpath.write_text(json.dumps(doc, indent=1, default=_json_default))
    np.savez_compressed(npath, **arrays)
    return [jpath, npath]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load(out_dir: str | os.PathLike) -> Netlist:
    """Read a netlist written by :func:`save`; SNN-E650 when missing or of another version."""
    from snncc.outputs import reading

    out = Path(os.path.expanduser(os.fspath(out_dir)))
    with reading(out):   # never half of a concurrent recompile (SNN-E373: a killed one's)
        return _load(out)


def _load(out: Path) -> Netlist:
    jpath, npath = out / "netlist.json", out / "netlist.npz"
    if not jpath.is_file() or not npath.is_file():
        raise BackendCapabilityError(f"'{out}' holds no netlist.json/netlist.npz",
                                     code="SNN-E650",
                                     hint="pass the directory written by snncc compile "
                                          "--target loihi")
    try:
        doc = json.loads(jpath.read_text())
        with np.load(npath, allow_pickle=False) as npz:
            arrays = dict(npz)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RecursionError) as exc:
        raise BackendCapabilityError(f"'{out}': unreadable netlist ({exc})", code="SNN-E650",
                                     hint="recompile the model") from exc
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise BackendCapabilityError(f"'{jpath}' is format {doc.get('format')!r} version "
                                     f"{doc.get('version')!r}, expected {FORMAT!r} {VERSION}",
                                     code="SNN-E650", hint="recompile with this snncc")
    try:
        net = _build(doc, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        # an edited netlist.json (a missing key, a list for an object, a bad array name) had
        # been an internal error
        raise BackendCapabilityError(f"'{jpath}' does not describe a netlist snncc can run "
                                     f"({type(exc).__name__}: {exc}): edited by hand or by "
                                     "another tool",
                                     code="SNN-E650", hint="recompile the model") from exc
    steps = (net.timesteps, net.total_steps, net.counted_steps)
    # (T = -5 or 1e9 had ended in a ValueError or a MemoryError in the simulator)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in steps) or not (
            1 <= net.timesteps and 1 <= net.counted_steps <= net.total_steps <= 64 * 1024):
        raise BackendCapabilityError(f"'{jpath}' gives timesteps / total_steps / counted_steps "
                                     f"{' / '.join(map(repr, steps))}, which no compile writes "
                                     "(edited by hand or by another tool)", code="SNN-E650",
                                     hint="recompile the model")
    return net


def _build(doc: dict, arrays: dict[str, np.ndarray]) -> Netlist:
    for key, kind in (("groups", list), ("blocks", list), ("outputs", list), ("meta", dict)):
        if not isinstance(doc[key], kind):
            raise TypeError(f"'{key}' is a {type(doc[key]).__name__}, not a {kind.__name__}")
    groups = []
    for e in doc["groups"]:
        g = Group(e["name"], e["kind"], tuple(e["shape"]), tuple(e["view"]), e["neuron"],
                  e["attrs"], e["spike"], e["source"], frac_bits=e["frac_bits"],
                  fixed=e["fixed"])
        for key, ref in e["arrays"].items():
            setattr(g, key, arrays[ref])
        groups.append(g)
    blocks = []
    for e in doc["blocks"]:
        arr = {k: arrays[ref] for k, ref in e["arrays"].items()}
        blocks.append(Block(e["name"], e["src"], e["dst"], e["kind"], arr.get("weight"),
                            tuple(e["src_view"]), tuple(e["dst_view"]), e["offset"],
                            tuple(e["stride"]), tuple(e["pads"]), e["groups"], arr.get("mant"),
                            e["exp"]))
    return Netlist(groups, blocks, doc["outputs"], doc["timesteps"], doc["total_steps"],
                   doc["counted_steps"], doc["ann_macs"], doc["meta"])
