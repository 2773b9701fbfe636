"""The one module that emits and recognises quantized-clip (QCFS) patterns.

A quantized clip with parameters ``(lam, L, phi)`` (:class:`snncc.context.QuantClipParams`) is::

    y = lam * clip(floor(z * L / lam + phi) / L, 0, 1)

Emitted form (:func:`emit_quant_clip`), standard ONNX ops only, float32 constants::

    z -> Mul(k) -> [Add(phi)] -> Floor -> Clip(0, L) -> Mul(s) -> y
    k = float32(L) / lam,  s = lam / float32(L)     (float32 divisions; Add omitted when phi == 0)

Per-channel ``lam`` (shape ``(C,)``) becomes constants of shape ``(C, 1, ..., 1)`` that broadcast on
axis 1 of ``z``. The last node writes the original tensor ``y`` so downstream names stay stable.
:func:`numpy_quant_clip` is the NumPy reference with exactly that float32 arithmetic.

Recognised forms (:func:`find_quant_clips`). A site is a chain ``z -> op -> ... -> y`` around one
``Floor`` where every other op has one variable input plus constants, and every intermediate tensor
feeds only the next op of the chain (and is not a graph output). Accepted ops:

* affine: ``Mul``, ``Div`` (variable numerator), ``Add``, ``Sub`` (either order) by a scalar or a
  per-channel constant (non-1 only on the axis that lands on axis 1 of ``z``);
* clamps: ``Clip`` (constant or missing min/max inputs), ``Min`` / ``Max`` with a constant;
* the floor: ``Floor(u)``, or the straight-through export ``Add(u, Sub(Floor(u), u))``.

The chain is solved symbolically, not matched against fixed templates: affine maps compose, and
each clamp is moved to just after the floor (valid because ``floor`` and increasing affine maps are
monotone: ``f(clip(x, lo, hi)) = clip(f(x), f(lo), f(hi))``). The result
``y = c * clip(floor(a*z + b), lo, hi) + d`` is a match when ``lo`` and ``hi`` are integers,
``L = hi - lo >= 1``, ``phi = b - lo`` lies in ``[0, 1)``, ``d + c*lo = 0``, ``a, c > 0`` and
``a*c = 1`` (relative 1e-5); then ``lam = c*L``. This covers, among others:

* old QCFS repo: ``Div(lam) -> Mul(L) -> Add(0.5) -> Floor -> Div(L) -> Clip(0,1) -> Mul(lam)``;
* new QCFS repo: ``Div(lam) -> Clip(0,1) -> Mul(L) -> Add(0.5) -> Floor -> Div(L) -> Mul(lam)``;
* GN: ``Mul(L) -> Div(lam) -> Add(0.5) -> Floor -> Clip(0,L) -> Mul(lam) -> Div(L)`` (any order
  of the scalings);
* our own emitted chain; ``Mul`` by a reciprocal instead of ``Div``; ``Min``/``Max`` instead of
  ``Clip``; scalar or per-channel ``lam``.

Where several chain lengths solve, the longest tail after the floor and the longest head before it
win, but a head never starts with ``Add``/``Sub``: every QCFS form scales ``z`` first, so a bias or
an inserted bias-shift ``Add`` in front stays outside (and ``a*c = 1`` keeps a BatchNorm ``Mul``
with gamma != 1 outside). ``lam`` is recovered exactly for emitted chains (the float32 value
whose ``k`` and ``s`` reproduce the constants), so emit -> find round-trips bit for bit.

Activation sites (:func:`activation_sites`) are these patterns plus ``Relu`` nodes and
``Clip(0, max)`` nodes (ReLU6; ``max`` constant or missing) that are not part of a pattern.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from snncc import ir
from snncc.context import QuantClipParams
from snncc.errors import PreconditionError

__all__ = ["QuantClipSite", "ActivationSite", "emit_quant_clip", "numpy_quant_clip",
           "find_quant_clips", "activation_sites", "tensor_rank", "channel_shape"]

_AFFINE = ("Mul", "Div", "Add", "Sub")
_CLAMP = ("Clip", "Min", "Max", "Relu")   # Relu: canonicalize's spelling of Max(x, 0)
_MAX_CHAIN = 8
_REL_TOL = 1e-5


@dataclass
class QuantClipSite:
    """A recognised quantized clip: ``y = quant_clip(z)`` computed by ``nodes``."""

    z: gs.Tensor
    y: gs.Tensor
    params: QuantClipParams
    nodes: list[gs.Node]


@dataclass
class ActivationSite:
    """An activation to quantize: ``kind`` is ``relu``, ``clip`` (ReLU6-like) or ``pattern``."""

    kind: str
    z: gs.Tensor
    y: gs.Tensor
    nodes: list[gs.Node]
    clip_max: float | None = None          # the Clip's upper bound (kind "clip")
    params: QuantClipParams | None = None  # the pattern's parameters (kind "pattern")
    label: str = field(default="")


# ------------------------------------------------------------------------------ shapes

def tensor_rank(tensor: gs.Tensor) -> int | None:
    """Rank of ``tensor`` from its shape, else from its producer's weight (Conv, Gemm)."""
    if tensor.shape is not None:
        return len(tensor.shape)
    prod = ir.producer(tensor)
    if prod is not None and prod.op == "Conv" and len(prod.inputs) > 1:
        w = ir.const_value(prod.inputs[1])
        return None if w is None else w.ndim
    if prod is not None and prod.op == "Gemm":
        return 2
    return None


def channel_shape(values: np.ndarray, rank: int) -> np.ndarray:
    """Reshape a ``()`` or ``(C,)`` array to broadcast on axis 1 of a rank-``rank`` tensor."""
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    return values.reshape((values.size,) + (1,) * (rank - 2))


# ------------------------------------------------------------------------------ emit

def _constants(params: QuantClipParams) -> tuple[np.ndarray, np.ndarray, np.float32]:
    lam = np.asarray(params.lam, dtype=np.float32)
    levels = np.float32(params.levels)
    return levels / lam, lam / levels, levels


def emit_quant_clip(graph: gs.Graph, z: gs.Tensor, y: gs.Tensor, params: QuantClipParams, *,
                    prefix: str = "quant_clip", rank: int | None = None) -> list[gs.Node]:
    """Append the nodes computing ``y = quant_clip(z)`` to ``graph`` and return them.

    ``y`` must have no producer (remove the old activation first). ``rank`` overrides the rank
    of ``z`` used to shape per-channel constants.
    """
    lam = np.asarray(params.lam, dtype=np.float32)
    if params.levels < 1 or lam.ndim > 1 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise PreconditionError(f"quant clip for '{y.name}': lambda must be positive and finite "
                                f"with shape () or (C,), and L >= 1 (got lambda shape "
                                f"{lam.shape}, L={params.levels})", code="SNN-E222",
                                hint="recalibrate or fix the QCFS parameters")
    k, s, levels = _constants(params)
    if lam.ndim == 1:
        rank = rank or tensor_rank(z)
        if rank is None or rank < 2:
            raise PreconditionError(f"quant clip for '{y.name}': per-channel lambda needs the "
                                    f"rank of '{z.name}', which is unknown", code="SNN-E221",
                                    hint="run canonicalize (shape inference) first")
        k, s = channel_shape(k, rank), channel_shape(s, rank)
    base = f"{prefix}/{y.name}"

    def var(hint: str) -> gs.Variable:
        return gs.Variable(ir.unique_name(graph, f"{base}/{hint}"), dtype=np.float32,
                           shape=z.shape)

    def node(op: str, inputs: list[gs.Tensor], out: gs.Tensor) -> gs.Node:
        n = gs.Node(op, ir.unique_name(graph, f"{base}/{op}"), inputs=inputs, outputs=[out])
        graph.nodes.append(n)
        return n

    nodes = []
    scaled = var("scaled")
    nodes.append(node("Mul", [z, ir.new_const(graph, f"{base}/k", k)], scaled))
    if params.phi != 0:
        shifted = var("shifted")
        nodes.append(node("Add", [scaled, ir.new_const(graph, f"{base}/phi", params.phi)],
                          shifted))
        scaled = shifted
    floored, clipped = var("floor"), var("clip")
    nodes.append(node("Floor", [scaled], floored))
    nodes.append(node("Clip", [floored, ir.new_const(graph, f"{base}/zero", 0.0),
                               ir.new_const(graph, f"{base}/levels", levels)], clipped))
    nodes.append(node("Mul", [clipped, ir.new_const(graph, f"{base}/s", s)], y))
    return nodes


def numpy_quant_clip(z: np.ndarray, params: QuantClipParams) -> np.ndarray:
    """NumPy reference of :func:`emit_quant_clip`, with exactly the same float32 operations."""
    z = np.asarray(z, dtype=np.float32)
    k, s, levels = _constants(params)
    if k.ndim == 1:
        k, s = channel_shape(k, z.ndim), channel_shape(s, z.ndim)
    t = z * k
    if params.phi != 0:
        t = t + np.float32(params.phi)
    t = np.clip(np.floor(t), np.float32(0), levels)
    return (t * s).astype(np.float32)


# ------------------------------------------------------------------------------ recognise

def _single_variable(node: gs.Node) -> tuple[int, list[np.ndarray]] | None:
    """(index of the one variable input, constant values) or None."""
    var_idx, consts = None, []
    for i, t in enumerate(node.inputs):
        if not t.name and not isinstance(t, gs.Constant):
            consts.append(None)  # missing optional input
            continue
        value = ir.const_value(t)
        if value is None:
            if var_idx is not None:
                return None
            var_idx = i
        consts.append(value)
    return None if var_idx is None else (var_idx, consts)


def _is_chain_op(node: gs.Node) -> bool:
    if node.op not in _AFFINE + _CLAMP or node.domain not in ("", "ai.onnx", None):
        return False
    found = _single_variable(node)
    if found is None:
        return False
    var_idx, _ = found
    if node.op in ("Clip", "Relu"):
        return var_idx == 0
    if node.op == "Div":
        return var_idx == 0
    return len(node.inputs) == 2


def _sole_consumer(graph_outputs: set[str], t: gs.Tensor) -> gs.Node | None:
    if t.name in graph_outputs or len(t.outputs) != 1:
        return None
    return t.outputs[0]


def _floor_units(graph: gs.Graph) -> list[tuple[gs.Tensor, gs.Tensor, list[gs.Node]]]:
    """(u, floor(u), nodes) for plain Floor and the straight-through Add(u, Sub(Floor(u), u))."""
    units = []
    for node in graph.nodes:
        if node.op != "Floor" or not node.inputs or not node.outputs:
            continue
        u, f = node.inputs[0], node.outputs[0]
        ste = None
        if len(f.outputs) == 1 and f.outputs[0].op == "Sub":
            sub = f.outputs[0]
            diff = sub.outputs[0] if sub.outputs else None
            if (len(sub.inputs) == 2 and sub.inputs[0] is f and sub.inputs[1] is u
                    and diff is not None and len(diff.outputs) == 1):
                add = diff.outputs[0]
                if add.op == "Add" and {id(t) for t in add.inputs} == {id(u), id(diff)}:
                    ste = (u, add.outputs[0], [node, sub, add])
        units.append(ste or (u, f, [node]))
    return units


def _channel_vector(value: np.ndarray, rank: int | None) -> tuple[np.ndarray, int | None] | None:
    """A constant as float64 ``()`` or ``(C,)`` on axis 1, plus the rank it implies."""
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return v.reshape(()), rank
    axes = [i for i, d in enumerate(v.shape) if d != 1]
    if len(axes) != 1:
        return None
    implied = v.ndim - axes[0] + 1
    if rank is not None and rank != implied:
        return None
    return v.reshape(-1), implied


def _near_integer(v) -> np.ndarray:
    """``v`` with entries within _REL_TOL (relative, at least absolute) of an integer snapped."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        near = np.round(v)
        close = np.isfinite(v) & (np.abs(v - near) <= _REL_TOL * np.maximum(np.abs(v), 1.0))
    return np.where(close, near, v)


class _Solver:
    """Composes ``y = c * clip(floor(a*z + b), lo, hi) + d`` along a chain (see module doc)."""

    def __init__(self, rank: int | None):
        self.rank = rank
        self.a, self.b = np.float64(1), np.float64(0)
        self.lo, self.hi = np.float64(-np.inf), np.float64(np.inf)
        self.c, self.d = np.float64(1), np.float64(0)
        self.floored = False

    def vector(self, value) -> np.ndarray:
        got = _channel_vector(value, self.rank)
        if got is None:
            raise ValueError("constant is not scalar or per-channel")
        vec, self.rank = got
        return vec

    def affine(self, m, add) -> None:
        if np.any(m == 0) or not np.all(np.isfinite(m)) or not np.all(np.isfinite(add)):
            raise ValueError("degenerate affine op")
        if self.floored:
            self.c, self.d = m * self.c, m * self.d + add
            return
        lo, hi = m * self.lo + add, m * self.hi + add
        self.lo, self.hi = np.where(m > 0, lo, hi), np.where(m > 0, hi, lo)
        self.a, self.b = m * self.a, m * self.b + add

    def clamp(self, lo, hi) -> None:
        if self.floored:  # move the clamp inside: bounds on the integer-valued floor output
            lo, hi = (lo - self.d) / self.c, (hi - self.d) / self.c
            lo, hi = np.where(self.c > 0, lo, hi), np.where(self.c > 0, hi, lo)
            # a bound within rounding of an integer is that integer: Div(L) written (or
            # canonicalized) as Mul(float32(1/L)) puts Clip(0, 1) at 1/c = 7.0000003 for L = 7
            lo, hi = _near_integer(lo), _near_integer(hi)
        self.lo, self.hi = np.maximum(self.lo, lo), np.minimum(self.hi, hi)

    def apply(self, node: gs.Node) -> None:
        var_idx, consts = _single_variable(node)
        if node.op == "Relu":
            self.clamp(np.float64(0), np.inf)
            return
        if node.op == "Clip":
            lo = self.vector(consts[1]) if len(consts) > 1 and consts[1] is not None else -np.inf
            hi = self.vector(consts[2]) if len(consts) > 2 and consts[2] is not None else np.inf
            self.clamp(lo, hi)
            return
        const = self.vector(consts[1 - var_idx])
        if node.op == "Min":
            self.clamp(-np.inf, const)
        elif node.op == "Max":
            self.clamp(const, np.inf)
        elif node.op == "Mul":
            self.affine(const, np.float64(0))
        elif node.op == "Div":
            self.affine(1.0 / const, np.float64(0))
        elif node.op == "Add":
            self.affine(np.float64(1), const)
        else:  # Sub
            self.affine(np.float64(1), -const) if var_idx == 0 else self.affine(np.float64(-1),
                                                                                  const)

    def floor(self) -> None:
        self.lo, self.hi = np.floor(self.lo), np.floor(self.hi)
        self.floored = True

    def result(self, k32: np.ndarray | None, s32: np.ndarray | None) -> QuantClipParams | None:
        lo, hi = np.unique(self.lo), np.unique(self.hi)
        if lo.size != 1 or hi.size != 1 or not np.isfinite(lo[0]) or not np.isfinite(hi[0]):
            return None
        lo, hi = lo[0], hi[0]
        levels = hi - lo
        if lo != np.round(lo) or levels != np.round(levels) or levels < 1:
            return None
        phi = np.unique(self.b - lo)
        if phi.size != 1 or not -1e-7 <= phi[0] < 1:
            return None
        a, c = np.broadcast_arrays(self.a, self.c)
        if np.any(a <= 0) or np.any(c <= 0) or np.any(np.abs(a * c - 1) > _REL_TOL):
            return None
        if np.any(np.abs(self.d + c * lo) > _REL_TOL * np.abs(c) * levels):
            return None
        levels = int(levels)
        lam = _exact_lambda(c * levels, levels, k32, s32)
        return QuantClipParams(lam=lam, levels=levels, phi=float(max(phi[0], 0.0)),
                               source="pattern")


def _exact_lambda(lam64: np.ndarray, levels: int, k32, s32) -> np.ndarray:
    """float32 lambda; among its float32 neighbours prefer one that reproduces ``k`` and ``s``."""
    lam = np.asarray(lam64, dtype=np.float32)
    if k32 is None or s32 is None:
        return lam
    L = np.float32(levels)
    best = lam.copy()
    done = np.zeros(lam.shape, dtype=bool)
    for steps in (0, 1, -1, 2, -2):
        cand = lam
        for _ in range(abs(steps)):
            cand = np.nextafter(cand, np.float32(np.inf if steps > 0 else 0))
        ok = (L / cand == k32) & (cand / L == s32) & ~done
        best = np.where(ok, cand, best)
        done |= ok
    return best.astype(np.float32)


def _const_operand(node: gs.Node) -> np.ndarray:
    var_idx, consts = _single_variable(node)
    return consts[1 - var_idx]


def _emitted_constants(chain: Sequence[gs.Node], rank: int | None):
    """(k, s) as float32 if the chain starts with Mul(k) and ends with Mul(s), else (None, None)."""
    if chain[0].op != "Mul" or chain[-1].op != "Mul":
        return None, None
    k = _channel_vector(_const_operand(chain[0]), rank)
    s = _channel_vector(_const_operand(chain[-1]), rank)
    if k is None or s is None:
        return None, None
    return k[0].astype(np.float32), s[0].astype(np.float32)


def _solve(head: Sequence[gs.Node], floor_nodes: Sequence[gs.Node], tail: Sequence[gs.Node],
           z: gs.Tensor) -> QuantClipParams | None:
    solver = _Solver(len(z.shape) if z.shape is not None else None)
    try:
        with np.errstate(all="ignore"):
            for node in head:
                solver.apply(node)
            solver.floor()
            for node in tail:
                solver.apply(node)
            chain = list(head) + list(tail)
            k32, s32 = _emitted_constants(chain, solver.rank) if chain else (None, None)
            return solver.result(k32, s32)
    except (ValueError, TypeError):
        return None


def find_quant_clips(graph: gs.Graph) -> list[QuantClipSite]:
    """Every quantized-clip chain in ``graph`` (emitted or QCFS-exported), in graph order."""
    outputs = {t.name for t in graph.outputs}
    sites = []
    claimed: set[int] = set()  # nodes of sites found so far: a chain never reaches into another
    for u, f, floor_nodes in _floor_units(graph):
        if u.name in outputs or (len(floor_nodes) == 1 and len(u.outputs) != 1):
            continue
        head: list[gs.Node] = []
        cur = u
        while len(head) < _MAX_CHAIN:
            prod = ir.producer(cur)
            if prod is None or not _is_chain_op(prod) or id(prod) in claimed or \
                    (head and _sole_consumer(outputs, cur) is None):
                break
            head.insert(0, prod)
            cur = prod.inputs[_single_variable(prod)[0]]
        tail: list[gs.Node] = []
        cur = f
        while len(tail) < _MAX_CHAIN:
            nxt = _sole_consumer(outputs, cur)
            if nxt is None or not _is_chain_op(nxt) or nxt.inputs[_single_variable(nxt)[0]] \
                    is not cur:
                break
            tail.append(nxt)
            cur = nxt.outputs[0]
        site = _best_site(head, floor_nodes, tail, u)
        if site is not None:
            sites.append(site)
            claimed.update(id(n) for n in site.nodes)
    return sites


def _best_site(head, floor_nodes, tail, u) -> QuantClipSite | None:
    """The split that covers the most nodes (ties: the longer head). Counting both sides keeps a
    chain whole rather than letting its tail run into the head of a chain right after it, which
    a shorter head would also solve (Mul(lam)·Div(lam) cancel)."""
    splits = sorted(((n_head + n_tail, n_head, n_tail) for n_tail in range(len(tail), 0, -1)
                     for n_head in range(len(head), -1, -1)), reverse=True)
    # a Relu joins a chain only where no split without one solves: canonicalize spells a chain's
    # Max(x, 0) as Relu, while a Relu before or after a whole chain is an activation of its own
    for with_relu, (_, n_head, n_tail) in [(r, sp) for r in (False, True) for sp in splits]:
        used_head = head[len(head) - n_head:]
        if used_head and used_head[0].op in ("Add", "Sub"):
            continue
        if with_relu != any(n.op == "Relu" for n in [*used_head, *tail[:n_tail]]):
            continue
        z = used_head[0].inputs[_single_variable(used_head[0])[0]] if used_head else u
        params = _solve(used_head, floor_nodes, tail[:n_tail], z)
        if params is not None:
            y = tail[n_tail - 1].outputs[0]
            return QuantClipSite(z=z, y=y, params=params,
                                 nodes=list(used_head) + list(floor_nodes) + list(tail[:n_tail]))
    return None


def _clip_bounds(node: gs.Node) -> tuple[float, float | None] | None:
    """(min, max) of a Clip with constant scalar bounds (max None when missing)."""
    bounds = []
    for i in (1, 2):
        if len(node.inputs) <= i or (not node.inputs[i].name
                                     and not isinstance(node.inputs[i], gs.Constant)):
            bounds.append(None)
            continue
        value = ir.const_value(node.inputs[i])
        if value is None or value.size != 1:
            return None
        bounds.append(float(value.reshape(())))
    return (bounds[0], bounds[1]) if bounds[0] is not None else None


def activation_sites(graph: gs.Graph, provenance: dict[str, str] | None = None
                     ) -> list[ActivationSite]:
    """QCFS patterns, then Relu and Clip(0, max) nodes outside them, in graph order."""
    sites = []
    in_pattern: set[int] = set()
    for qc in find_quant_clips(graph):
        in_pattern.update(id(n) for n in qc.nodes)
        sites.append(ActivationSite("pattern", qc.z, qc.y, qc.nodes, params=qc.params,
                                    label=ir.node_label(qc.nodes[-1], provenance)))
    for node in graph.nodes:
        if id(node) in in_pattern or not node.inputs or not node.outputs:
            continue
        if node.op == "Relu":
            sites.append(ActivationSite("relu", node.inputs[0], node.outputs[0], [node],
                                        label=ir.node_label(node, provenance)))
        elif node.op == "Clip":
            bounds = _clip_bounds(node)
            if bounds is not None and bounds[0] == 0 and (bounds[1] is None or bounds[1] > 0):
                sites.append(ActivationSite("clip", node.inputs[0], node.outputs[0], [node],
                                            clip_max=bounds[1],
                                            label=ir.node_label(node, provenance)))
    return sites
