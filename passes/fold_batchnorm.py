"""fold-batchnorm: fold per-channel affine ops into the linear op before them; optional bias shift.

Folding. Before::   x -> Conv|Gemm|MatMul[+Add(b)] -> t -> BN | Mul(g) | Add(h) -> y
After::             x -> Conv'|Gemm'|MatMul'[+Add(b')] -> y

A ``BatchNormalization`` (inference form) is the affine map ``g*t + h`` per output channel with
``g = gamma/sqrt(var + eps)`` and ``h = beta - mean*g``; a ``Mul``/``Add`` by a scalar or
per-channel constant is the same map with ``h = 0`` / ``g = 1``. Folding (architecture.md 6.3)::

    W' = W * g   (per output channel: Conv axis 0, Gemm columns of op(B), MatMul columns)
    b' = (b - mean) * g + beta = b*g + h      (Gemm: C' = beta_attr*C*g + h, beta_attr := 1)

computed in float64 and stored as new float32 constants (no constant is ever edited in place).
The linear op then writes ``y``, so downstream names are stable. A MatMul without a bias gets a
new ``Add(h)`` when ``h != 0``; an ``Add`` right after a MatMul is that MatMul's bias and is kept.
Mul/Add nodes that belong to a QCFS pattern (:mod:`snncc.passes.quant_clip`) are never touched.

Declines (``PassResult.declines``; the affine op stays):

* ``NO_LINEAR_PRODUCER``: the input is not produced by Conv, Gemm or MatMul(+Add) (e.g. a graph
  input, a pooling). A BatchNormalization node is then rewritten as ``Mul(g) -> Add(h)`` with
  constants of shape ``(C, 1, ..., 1)``, so later passes see only linear ops.
* ``PRODUCER_HAS_OTHER_USERS``: the linear op's output also feeds another node or is a graph output.
* ``SHARED_WEIGHT``: the weight feeds another node too. We decline rather than copy the weight:
  copying would silently untie weights and grow the model.
* ``NON_CONSTANT_PARAM``: a weight, bias or BN parameter is not a constant.
* ``NOT_PER_CHANNEL``: the Mul/Add constant does not broadcast along the output channels.
* ``UNKNOWN_RANK``: the rank needed to place the channel axis is unknown (run canonicalize).
* ``TRAINING_MODE``: a BatchNormalization with ``training_mode=1`` or extra outputs.

Declined BatchNormalization nodes are rewritten as Mul+Add (count ``bn_to_affine``) whenever
their parameters are constant, the mode is inference and the input rank is known.

Bias shift (seed 000, neurons.md 2.3), only when ``options.bias_shift`` is True (None counts as
False here; the driver resolves it). For every activation site whose ``ctx.quant`` params have
``phi != 0``: ``floor(z*L/lam + phi) = floor((z + phi*lam/L) * L/lam)``, so ``shift = phi*lam/L``
(``lam/(2L)`` for QCFS; float32; per channel when lam is) is added to the bias of the linear op
producing the site input ``z`` and the site's ``phi`` becomes 0.0 in ``ctx.quant``. Where ``z`` is
produced by a residual ``Add`` of two tensors, exactly one branch is shifted: the first Add input
produced by a Conv, Gemm or Add-with-constant whose output feeds only that Add (nothing else is
walked through), or the Conv/Gemm before a MaxPool that is its only reader (per channel
``max(t) + b = max(t + b)``; pool-first puts stem pools there). A Conv/Gemm without bias gets
one. If no such producer exists (or ``z`` has other users), an explicit ``Add(z, shift)`` is
inserted before the activation. QCFS patterns present in the graph are re-emitted with
``phi = 0``. Counts: ``bias_shifted``, ``shift_add_inserted``.

Calibrated bias (whatever ``options.bias_shift``): a site whose params carry ``bias`` (a per-channel
current chosen by SNN-aware calibration, :mod:`snncc.snn_calibration`) gets it added the same way
(together with the rounding shift when both apply); its params then have ``bias = None``.
Counts: ``calib_bias_folded`` (into a producer's bias, no rounding shift), or the counts above.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from snncc import ir
from snncc.context import CompileContext
from snncc.errors import PreconditionError
from snncc.passes.base import Decline, Pass, PassResult
from snncc.passes.quant_clip import (ActivationSite, activation_sites, channel_shape,
                                     emit_quant_clip, find_quant_clips, tensor_rank)

__all__ = ["FoldBatchNormPass"]

_LINEAR = ("Conv", "Gemm", "MatMul")


class _Declined(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class FoldBatchNormPass(Pass):
    name = "fold-batchnorm"

    NO_LINEAR_PRODUCER: ClassVar[str] = "NO_LINEAR_PRODUCER"
    PRODUCER_HAS_OTHER_USERS: ClassVar[str] = "PRODUCER_HAS_OTHER_USERS"
    SHARED_WEIGHT: ClassVar[str] = "SHARED_WEIGHT"
    NON_CONSTANT_PARAM: ClassVar[str] = "NON_CONSTANT_PARAM"
    NOT_PER_CHANNEL: ClassVar[str] = "NOT_PER_CHANNEL"
    UNKNOWN_RANK: ClassVar[str] = "UNKNOWN_RANK"
    TRAINING_MODE: ClassVar[str] = "TRAINING_MODE"

    def run(self, model: ir.Model, ctx: CompileContext) -> PassResult:
        graph = model.graph
        self._graph = graph
        self._outputs = {t.name for t in graph.outputs}
        in_pattern = {id(n) for qc in find_quant_clips(graph) for n in qc.nodes}
        counts: Counter = Counter()
        declines: list[Decline] = []
        for node in list(graph.nodes):
            if id(node) in in_pattern or not node.outputs:
                continue
            if node.op == "BatchNormalization":
                kind = "bn"
            elif node.op in ("Mul", "Add") and len(node.inputs) == 2 and \
                    sum(ir.const_value(t) is not None for t in node.inputs) == 1:
                kind = node.op.lower()
            else:
                continue
            try:
                folded = self._fold(node, kind)
            except _Declined as why:
                declines.append(Decline(ir.node_label(node, model.provenance), why.code,
                                        why.reason))
                ctx.logger.debug("%s: declined %s: %s", self.name, node.name, why.reason)
                if kind == "bn" and why.code not in (self.NON_CONSTANT_PARAM,
                                                     self.TRAINING_MODE) \
                        and self._bn_to_affine(node):
                    counts["bn_to_affine"] += 1
                continue
            if folded:
                counts[f"{kind}_folded"] += 1
        for site in activation_sites(graph, model.provenance):
            self._shift_site(site, ctx, counts)
        return PassResult(modified=bool(counts), counts=dict(counts), declines=tuple(declines))

    # ------------------------------------------------------------------ folding

    def _bn_affine(self, node: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray]:
        """(input tensor, g, h) of a BatchNormalization, ``y = g*x + h`` with g, h float64 (C,)."""
        if node.attrs.get("training_mode", 0) or len([o for o in node.outputs if o.name]) > 1:
            raise _Declined(self.TRAINING_MODE, "BatchNormalization in training mode")
        values = [ir.const_value(t) for t in node.inputs[1:5]]
        if any(v is None for v in values):
            raise _Declined(self.NON_CONSTANT_PARAM, "BatchNormalization parameters are not "
                                                     "constants")
        gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
        g = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return node.inputs[0], g, beta - mean * g

    def _linear_producer(self, x: gs.Tensor):
        """(linear node, MatMul bias Add or None, channel position from the right, rank)."""
        prod = ir.producer(x)
        bias_add = None
        if prod is not None and prod.op == "Add":
            consts = [ir.const_value(t) is not None for t in prod.inputs]
            inner = ir.producer(prod.inputs[consts.index(False)]) if consts.count(True) == 1 \
                else None
            if inner is not None and inner.op == "MatMul":
                if self._has_other_users(prod.inputs[consts.index(False)]):
                    raise _Declined(self.PRODUCER_HAS_OTHER_USERS,
                                    f"MatMul output '{inner.outputs[0].name}' has other users")
                prod, bias_add = inner, prod
        if prod is None or prod.op not in _LINEAR:
            what = "a graph input" if prod is None else f"{prod.op} '{prod.name}'"
            raise _Declined(self.NO_LINEAR_PRODUCER, f"input '{x.name}' comes from {what}, not "
                                                     "Conv/Gemm/MatMul")
        w = ir.const_value(prod.inputs[1]) if len(prod.inputs) > 1 else None
        if w is None:
            raise _Declined(self.NON_CONSTANT_PARAM, f"the weight of '{prod.name}' is not a "
                                                     "constant")
        if prod.op == "Conv":
            return prod, bias_add, w.ndim - 2, w.ndim
        if prod.op == "Gemm":
            return prod, bias_add, 0, 2
        if w.ndim != 2:
            raise _Declined(self.NOT_PER_CHANNEL, f"MatMul '{prod.name}' has a rank-{w.ndim} "
                                                  "weight")
        a = prod.inputs[0]
        return prod, bias_add, 0, (len(a.shape) if a.shape is not None else None)

    def _has_other_users(self, t: gs.Tensor) -> bool:
        return len(t.outputs) != 1 or t.name in self._outputs

    @staticmethod
    def _per_channel(value: np.ndarray, channels: int, pos_right: int, rank: int | None
                     ) -> np.ndarray | None:
        v = np.asarray(value, np.float64)
        if rank is not None and v.ndim > rank:
            return None
        if v.size == 1:
            return np.full(channels, v.reshape(()))
        axes = [i for i, d in enumerate(v.shape) if d != 1]
        if axes != [v.ndim - 1 - pos_right] or v.shape[axes[0]] != channels:
            return None
        return v.reshape(-1)

    def _fold(self, node: gs.Node, kind: str) -> bool:
        if kind == "bn":
            x, g, h = self._bn_affine(node)
        else:  # Mul/Add: the constant operand, turned into (g, h) once the channels are known
            var = 0 if ir.const_value(node.inputs[1]) is not None else 1
            x, const = node.inputs[var], ir.const_value(node.inputs[1 - var])
        prod = ir.producer(x)
        if kind == "add" and prod is not None and prod.op == "MatMul":
            return False  # this Add is the MatMul's bias: part of the linear unit, not a BN
        lin, bias_add, pos_right, rank = self._linear_producer(x)
        if self._has_other_users(x):
            raise _Declined(self.PRODUCER_HAS_OTHER_USERS,
                            f"'{x.name}' feeds other nodes or is a graph output")
        if len(lin.inputs[1].outputs) > 1:
            raise _Declined(self.SHARED_WEIGHT, f"weight '{lin.inputs[1].name}' of "
                                                f"'{lin.name}' is shared with other nodes")
        w = ir.const_value(lin.inputs[1]).astype(np.float64)
        trans_b = lin.op == "Gemm" and lin.attrs.get("transB", 0)
        channels = w.shape[0] if lin.op == "Conv" or trans_b else w.shape[-1]
        if kind == "bn":
            if lin.op == "MatMul" and rank is None:
                raise _Declined(self.UNKNOWN_RANK, f"rank of '{x.name}' is unknown")
            if lin.op == "MatMul" and rank != 2:
                raise _Declined(self.NOT_PER_CHANNEL, f"BatchNormalization axis 1 is not the "
                                                      f"MatMul output channel (rank {rank})")
            if g.size != channels:
                raise _Declined(self.NOT_PER_CHANNEL, f"{g.size} BN channels vs {channels}")
        else:
            if lin.op == "MatMul" and rank is None and np.ndim(const) > 1:
                raise _Declined(self.UNKNOWN_RANK, f"rank of '{x.name}' is unknown")
            vec = self._per_channel(const, channels, pos_right, rank)
            if vec is None:
                raise _Declined(self.NOT_PER_CHANNEL, f"constant of shape {np.shape(const)} does "
                                                      f"not broadcast along {channels} channels")
            g, h = (vec, np.zeros(channels)) if kind == "mul" else (np.ones(channels), vec)
        if bias_add is not None:
            bias_idx = [ir.const_value(t) is not None for t in bias_add.inputs].index(True)
            bias = ir.const_value(bias_add.inputs[bias_idx])
        elif self._has_bias(lin):
            bias = ir.const_value(lin.inputs[2])
            if bias is None:
                raise _Declined(self.NON_CONSTANT_PARAM, f"the bias of '{lin.name}' is not a "
                                                         "constant")
        else:
            bias = None
        # rewrite with new constants only; the linear unit then writes y
        y = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        if lin.op == "Conv":
            w = w * g.reshape((-1,) + (1,) * (w.ndim - 1))
        else:
            w = w * (g[:, None] if trans_b else g[None, :])
        lin.inputs[1] = ir.new_const(self._graph, f"{self.name}/{lin.name}/W", w)
        if lin.op == "Gemm" and bias is not None:
            bias = float(lin.attrs.get("beta", 1.0)) * np.asarray(bias, np.float64)
            lin.attrs["beta"] = 1.0
        if bias is None and not np.any(h):
            lin.outputs[0] = y
            return True
        new_bias = (0.0 if bias is None else np.asarray(bias, np.float64) * g) + h
        const = ir.new_const(self._graph, f"{self.name}/{lin.name}/B", new_bias)
        if bias_add is not None:
            bias_add.inputs[bias_idx] = const
            bias_add.outputs[0] = y
        elif lin.op == "MatMul":  # no bias slot: add one after it
            self._graph.nodes.append(gs.Node(
                "Add", ir.unique_name(self._graph, f"{self.name}/{lin.name}/bias"),
                inputs=[lin.outputs[0], const], outputs=[y]))
        else:
            self._set_bias(lin, const)
            lin.outputs[0] = y
        return True

    @staticmethod
    def _has_bias(node: gs.Node) -> bool:
        return len(node.inputs) > 2 and bool(node.inputs[2].name or ir.is_const(node.inputs[2]))

    @staticmethod
    def _set_bias(node: gs.Node, const: gs.Constant) -> None:
        if len(node.inputs) > 2:
            node.inputs[2] = const
        else:
            node.inputs.append(const)

    def _bn_to_affine(self, node: gs.Node) -> bool:
        """Rewrite a BatchNormalization as Mul(g) -> Add(h); False (kept) if the rank is unknown."""
        x, g, h = self._bn_affine(node)
        rank = tensor_rank(x)
        if rank is None:
            return False
        y = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        base = f"{self.name}/{node.name}"
        mid = gs.Variable(ir.unique_name(self._graph, f"{base}/scaled"), dtype=np.float32,
                          shape=x.shape)
        self._graph.nodes.append(gs.Node("Mul", ir.unique_name(self._graph, f"{base}/Mul"),
                                         inputs=[x, ir.new_const(self._graph, f"{base}/scale",
                                                                 channel_shape(g, rank))],
                                         outputs=[mid]))
        self._graph.nodes.append(gs.Node("Add", ir.unique_name(self._graph, f"{base}/Add"),
                                         inputs=[mid, ir.new_const(self._graph, f"{base}/shift",
                                                                   channel_shape(h, rank))],
                                         outputs=[y]))
        return True

    # ------------------------------------------------------------------ bias shift

    def _shift_site(self, site: ActivationSite, ctx: CompileContext, counts: Counter) -> None:
        params = ctx.quant.get(site.y.name)
        rounding = bool(ctx.options.bias_shift) and params is not None and params.phi != 0
        if params is None or not (rounding or params.bias is not None):
            return
        lam = np.asarray(params.lam, np.float32)
        shift = np.float32(params.phi) * lam / np.float32(params.levels) if rounding \
            else np.zeros_like(lam)
        if params.bias is not None:
            shift = (shift + np.asarray(params.bias, np.float32)).astype(np.float32)
        z = site.z
        sole_user = len(z.outputs) == 1 and z.outputs[0] is site.nodes[0] \
            and z.name not in self._outputs
        target = self._bias_owner(z) if sole_user else None
        if target is not None:
            self._add_to_bias(target, shift, z)
            # said as what it is: a compile without the bias shift had said bias_shifted=3
            counts["bias_shifted" if rounding else "calib_bias_folded"] += 1
        else:
            rank = tensor_rank(z)
            if shift.ndim == 1 and rank is None:
                raise PreconditionError(f"{self.name}: node {site.label}: per-channel bias shift "
                                        f"needs the rank of '{z.name}', which is unknown",
                                        code="SNN-E223", hint="run canonicalize first")
            shifted = gs.Variable(ir.unique_name(self._graph, f"{self.name}/{z.name}/shifted"),
                                  dtype=np.float32, shape=z.shape)
            const = ir.new_const(self._graph, f"{self.name}/{z.name}/shift",
                                 channel_shape(shift, rank or 0))
            self._graph.nodes.append(gs.Node("Add", ir.unique_name(self._graph,
                                                                   f"{self.name}/shift_add"),
                                             inputs=[z, const], outputs=[shifted]))
            first = site.nodes[0]
            first.inputs[[i for i, t in enumerate(first.inputs) if t is z][0]] = shifted
            z = shifted
            counts["shift_add_inserted"] += 1
        new = dataclasses.replace(params, phi=0.0 if rounding else params.phi, bias=None)
        ctx.quant[site.y.name] = new
        if site.kind == "pattern":
            for n in site.nodes:
                n.inputs.clear()
                n.outputs.clear()
            emit_quant_clip(self._graph, z, site.y, new, prefix=self.name)

    def _bias_owner(self, z: gs.Tensor) -> gs.Node | None:
        """The node whose bias to shift for site input ``z`` (see the module doc), or None."""
        prod = ir.producer(z)
        if prod is None:
            return None
        if self._owns_bias(prod):
            return prod
        if prod.op == "MaxPool" and not (len(prod.outputs) > 1 and prod.outputs[1].outputs):
            # max(t) + b = max(t + b) per channel (pool-first put the pool there): the bias of
            # the op before the pool, when the pool is its only reader
            owner = ir.producer(prod.inputs[0])
            if owner is not None and not self._has_other_users(prod.inputs[0]) and \
                    self._owns_bias(owner) and owner.op != "Add":
                return owner
            return None
        if prod.op == "Add" and all(ir.const_value(t) is None for t in prod.inputs):
            for branch in prod.inputs:
                owner = ir.producer(branch)
                if owner is not None and not self._has_other_users(branch) and \
                        self._owns_bias(owner):
                    return owner
        return None

    def _owns_bias(self, node: gs.Node) -> bool:
        if node.op in ("Conv", "Gemm"):
            if len(node.inputs) < 2 or ir.const_value(node.inputs[1]) is None:
                return False  # a computed weight: its channel count is unknown here
            return not self._has_bias(node) or ir.const_value(node.inputs[2]) is not None
        return node.op == "Add" and len(node.inputs) == 2 and \
            sum(ir.const_value(t) is not None for t in node.inputs) == 1

    def _add_to_bias(self, node: gs.Node, shift: np.ndarray, z: gs.Tensor) -> None:
        if node.op == "Add":
            idx = [ir.const_value(t) is not None for t in node.inputs].index(True)
            old = ir.const_value(node.inputs[idx]).astype(np.float32)
            rank = tensor_rank(z)
            if shift.ndim == 1 and rank is None:
                raise PreconditionError(f"{self.name}: node {ir.node_label(node)}: per-channel "
                                        f"bias shift needs the rank of '{z.name}', which is "
                                        "unknown", code="SNN-E223", hint="run canonicalize first")
            node.inputs[idx] = ir.new_const(self._graph, f"{self.name}/{node.name}/B",
                                            old + channel_shape(shift, rank or 0))
            return
        w = ir.const_value(node.inputs[1])
        channels = w.shape[0] if node.op == "Conv" or node.attrs.get("transB", 0) else w.shape[1]
        old = ir.const_value(node.inputs[2]).astype(np.float32) if self._has_bias(node) else \
            np.zeros(channels, np.float32)
        if node.op == "Gemm":
            old = old * np.float32(node.attrs.get("beta", 1.0))
            node.attrs["beta"] = 1.0
        self._set_bias(node, ir.new_const(self._graph, f"{self.name}/{node.name}/B", old + shift))
