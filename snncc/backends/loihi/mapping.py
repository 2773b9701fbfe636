"""Core mapping: split every group's neurons across Loihi cores under per-core limits.

Resources of a core (configurable :class:`CoreLimits`, defaults in docs/netlist.md):

* neurons (compartments);
* synaptic memory: every synapse of the core's neurons is stored expanded (no weight sharing),
  ``bits_per_synapse`` each, structural fan-in including zero weights;
* input axons: distinct source neurons that send spikes to the core (exact receptive-field union
  per source group);
* output axons: per neuron, the number of distinct destination cores it must reach.

Algorithm. Groups are visited from the outputs back to the input (networkx topological order,
reversed), so the destination cores of every neuron are known when its own group is split. A
group's neurons are ordered H, W, C (all channels of a pixel together, which keeps receptive fields
compact) and cut greedily into the longest contiguous chunks that fit one core (galloping + binary
search; every resource is monotone in the chunk length). Chunks that do not fill a core are then
packed first-fit-decreasing into shared cores (summing their axons, an upper bound). The lower
bound is ``max(ceil(neurons / limit), ceil(synapse bits / limit), ceil(neurons that send
spikes / out-axon limit))`` (every sending neuron needs at least one output axon). A spiking
neuron that alone exceeds a limit can never be mapped: SNN-E640, collected for all groups; a
non-spiking readout that does is accumulated by the host instead (``host_groups``, with the
reason). More cores than ``max_cores``: SNN-E641. The analog input is injected by the host.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import networkx as nx
import numpy as np

from snncc.backends.loihi.netlist import Block, Netlist, conv_fanin
from snncc.errors import Diagnostic

__all__ = ["CoreLimits", "map_cores", "hwc_order", "fanin_map", "source_mask"]

PASS = "loihi-map"
RESOURCES = ("neurons", "synapse_bits", "in_axons", "out_axons")


@dataclass(frozen=True)
class CoreLimits:
    """Per-core limits assumed for Loihi 2 (sources and caveats in docs/netlist.md)."""

    neurons: int = 8192             # "up to ~8k neurons per core" (secondary source)
    synapse_bytes: int = 128 * 1024  # 128 KB SRAM per core (secondary; Loihi 1: 128 KiB)
    in_axons: int = 8192            # ASSUMED: Loihi 1's 4096 scaled with the neuron count
    out_axons: int = 8192           # ASSUMED, as in_axons (Intel publishes no Loihi 2 value)
    bits_per_synapse: int = 8       # an 8-bit weight per synapse, dense encoding
    max_cores: int | None = None    # None: any number of chips (128 cores each)

    @classmethod
    def loihi1(cls) -> "CoreLimits":
        """Loihi 1 (nengo-loihi ``block.py``): 1024 compartments, 4096 in/out axons,
        16384 x 64-bit synapse words, 128 cores per chip."""
        return cls(neurons=1024, synapse_bytes=128 * 1024, in_axons=4096, out_axons=4096)

    @property
    def synapse_bits(self) -> int:
        return self.synapse_bytes * 8

    def to_json(self) -> dict:
        return {**asdict(self), "synapse_bits": self.synapse_bits}


def hwc_order(view: tuple[int, int, int]) -> np.ndarray:
    """Flat (C, H, W) indices listed pixel by pixel, channels innermost."""
    return np.arange(int(np.prod(view))).reshape(view).transpose(1, 2, 0).ravel()


def fanin_map(block: Block) -> np.ndarray:
    """Structural synapses per destination neuron of the block: [rows, H, W] int64."""
    if block.kind == "dense":
        return np.full((block.rows,) + block.out_hw, int(np.prod(block.src_view)), np.int64)
    return conv_fanin(block)


def source_mask(block: Block, dst_mask: np.ndarray) -> np.ndarray:
    """Source neurons [*src_view] (bool) that reach the destination neurons in ``dst_mask``."""
    rows = dst_mask[block.offset:block.offset + block.rows]
    if not rows.any():
        return np.zeros(block.src_view, dtype=bool)
    if block.kind == "dense":
        return np.ones(block.src_view, dtype=bool)
    r0, reach = _reach_rows(rows, 0, block)
    out = np.zeros(block.src_view, dtype=bool)
    out[:, r0:r0 + reach.shape[1]] = reach
    return out


def _reach_rows(rows: np.ndarray, h0: int, blk: Block) -> tuple[int, np.ndarray]:
    """The source neurons of conv block ``blk`` read by its destination rows ``rows``
    [rows, nh, W] (which start at destination row ``h0``): (first source row, mask
    [C_in, nr, W_in]) of the source rows that can be read. The adjoint of a convolution with an
    all-ones kernel, as boolean slices (the mapper calls this for every candidate core slice, so
    it works on the band of rows only)."""
    (kh, kw), (sh, sw), (pt, pl) = blk.shape[2:], blk.stride, blk.pads
    c_in, in_h, in_w = blk.src_view
    g, (_, nh, wo) = blk.groups, rows.shape
    per_group = rows.reshape(g, -1, nh, wo).any(axis=1)
    wp = max(in_w + pl, (wo - 1) * sw + kw)
    reach = np.zeros((g, (nh - 1) * sh + kh, wp), dtype=bool)   # padded rows from h0 * sh
    for i in range(kh):
        for j in range(kw):
            reach[:, i:i + (nh - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw] |= per_group
    first = h0 * sh - pt                                          # its first source row
    lo, hi = max(first, 0), min(first + reach.shape[1], in_h)
    reach = reach[:, lo - first:hi - first, pl:pl + in_w]
    return lo, np.repeat(reach, blk.shape[1], axis=0)


def _union_rows(x: tuple[int, np.ndarray], y: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    """The union of two row-window masks (first row, [C, n, W])."""
    lo = min(x[0], y[0])
    hi = max(x[0] + x[1].shape[1], y[0] + y[1].shape[1])
    out = np.zeros((x[1].shape[0], hi - lo, x[1].shape[2]), dtype=bool)
    for r0, m in (x, y):
        out[:, r0 - lo:r0 - lo + m.shape[1]] |= m
    return lo, out


class _GroupSplitter:
    def __init__(self, net: Netlist, name: str, limits: CoreLimits, dest: np.ndarray):
        self.g = net.group(name)
        self.blocks = net.blocks_into(name)
        self.limits = limits
        self.order = hwc_order(self.g.view)
        fanin = np.zeros(self.g.view, dtype=np.int64)
        for b in self.blocks:
            fanin[b.offset:b.offset + b.rows] += fanin_map(b)
        bits = fanin.reshape(-1)[self.order] * limits.bits_per_synapse
        self.cum_bits = np.concatenate([[0], np.cumsum(bits)])
        self.cum_out = np.concatenate([[0], np.cumsum(dest[self.order])])
        self.net = net
        self.c_of, self.h_of, self.w_of = np.unravel_index(self.order, self.g.view)

    def dst_mask(self, a: int, b: int) -> np.ndarray:
        mask = np.zeros(self.g.size, dtype=bool)
        mask[self.order[a:b]] = True
        return mask.reshape(self.g.view)

    def sources(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Source group -> neurons needed by chunk [a, b) (union over that group's blocks)."""
        mask = self.dst_mask(a, b)
        out: dict[str, np.ndarray] = {}
        for blk in self.blocks:
            m = source_mask(blk, mask).reshape(-1)
            out[blk.src] = m if blk.src not in out else out[blk.src] | m
        return out

    def windows(self, a: int, b: int) -> dict[str, tuple[int, np.ndarray] | None]:
        """:meth:`sources` on the rows that matter: source group -> (first row, mask [C, n, W]
        of those rows), or None for all of it (a dense block). Chunk [a, b) (hwc order) touches a
        band of destination rows, which read a band of source rows; full-size masks for every
        candidate chunk made mapping cost (group size) x (chunks) (an ImageNet-shaped ResNet-34
        spent more than 20 CPU-minutes here)."""
        C, H, W = self.g.view
        h0, h1 = int(self.h_of[a]), int(self.h_of[b - 1])
        dst = np.zeros((C, h1 - h0 + 1, W), dtype=bool)
        dst[self.c_of[a:b], self.h_of[a:b] - h0, self.w_of[a:b]] = True
        out: dict[str, tuple[int, np.ndarray] | None] = {}
        for blk in self.blocks:
            rows = dst[blk.offset:blk.offset + blk.rows]
            if not rows.any() or (blk.src in out and out[blk.src] is None):
                continue
            if blk.kind == "dense":
                out[blk.src] = None
                continue
            window = _reach_rows(rows, h0, blk)
            out[blk.src] = window if blk.src not in out else _union_rows(out[blk.src], window)
        return out

    def in_axons(self, a: int, b: int) -> int:
        """``sum(m.sum() for m in self.sources(a, b).values())``, from :meth:`windows`."""
        return sum(int(np.prod(self.net.group(src).view)) if w is None else int(w[1].sum())
                   for src, w in self.windows(a, b).items())

    def add_sources(self, a: int, b: int, dest: dict[str, np.ndarray]) -> None:
        """``dest[src] += mask`` for every source mask of chunk [a, b), from :meth:`windows`."""
        for src, w in self.windows(a, b).items():
            if w is None:
                dest[src] += 1
                continue
            r0, mask = w
            view = dest[src].reshape(self.net.group(src).view)
            view[:, r0:r0 + mask.shape[1]] += mask

    def cost(self, a: int, b: int) -> dict[str, int]:
        return {"neurons": b - a, "synapse_bits": int(self.cum_bits[b] - self.cum_bits[a]),
                "in_axons": self.in_axons(a, b),
                "out_axons": int(self.cum_out[b] - self.cum_out[a])}

    def fits(self, cost: dict[str, int]) -> bool:
        lim = self.limits
        return (cost["neurons"] <= lim.neurons and cost["synapse_bits"] <= lim.synapse_bits
                and cost["in_axons"] <= lim.in_axons and cost["out_axons"] <= lim.out_axons)

    def split(self) -> tuple[list[tuple[int, int, dict[str, int]]], dict[str, int] | None]:
        """Chunks (start, stop, cost); or the cost of a single neuron that does not fit."""
        n, a, chunks = self.g.size, 0, []
        while a < n:
            first = self.cost(a, a + 1)
            if not self.fits(first):
                return chunks, first
            good, step = a + 1, 1
            bad = None
            while good < n:
                b = min(n, a + 2 * step)
                if self.fits(self.cost(a, b)):
                    good, step = b, 2 * step
                else:
                    bad = b
                    break
            if bad is not None:
                while bad - good > 1:
                    mid = (good + bad) // 2
                    good, bad = (mid, bad) if self.fits(self.cost(a, mid)) else (good, mid)
            chunks.append((a, good, self.cost(a, good)))
            a = good
        return chunks, None


_FANIN_HINT = ("reduce the layer's fan-in (fewer input channels or features; where an average "
               "pool comes before it, the pool is folded into its synapses, so it reads the "
               "pool's input), use --target ort, or raise the limits in CoreLimits (Python API) "
               "if the target allows it")


def _over(cost: dict[str, int], limits: CoreLimits) -> str:
    return ", ".join(f"{r} {cost[r]} > {getattr(limits, r)}" for r in RESOURCES
                     if cost[r] > getattr(limits, r))


def _pack(chunks: list[dict], limits: CoreLimits) -> list[dict]:
    caps = {"neurons": limits.neurons, "synapse_bits": limits.synapse_bits,
            "in_axons": limits.in_axons, "out_axons": limits.out_axons}
    order = sorted(chunks, key=lambda c: -max(c["cost"][r] / caps[r] for r in RESOURCES))
    # first fit over the open cores only: a core that cannot take the per-resource minimum of
    # all chunk costs can take no chunk, so dropping it leaves the first fit unchanged (and most
    # chunks fill a core); the fit test is one vectorised comparison
    costs = np.array([[ch["cost"][r] for r in RESOURCES] for ch in order], dtype=np.int64)
    cap = np.array([caps[r] for r in RESOURCES], dtype=np.int64)
    least = costs.min(axis=0) if len(order) else np.zeros(len(RESOURCES), np.int64)
    use = np.zeros((len(order), len(RESOURCES)), dtype=np.int64)
    members: list[list[dict]] = []
    open_cores: list[int] = []
    for ch, cost in zip(order, costs):
        idx = np.asarray(open_cores, dtype=np.int64)
        fit = np.flatnonzero(np.all(use[idx] + cost <= cap, axis=1)) if idx.size else idx
        if fit.size:
            core = int(idx[fit[0]])
        else:
            core = len(members)
            members.append([])
            open_cores.append(core)
        members[core].append({k: ch[k] for k in ("group", "start", "stop")})
        use[core] += cost
        if np.any(use[core] + least > cap):
            open_cores.remove(core)
    cores = [{"chunks": m, "use": dict(zip(RESOURCES, map(int, use[i])))}
             for i, m in enumerate(members)]
    out = []
    for i, core in enumerate(cores):
        out.append({"id": i, "chunks": core["chunks"], **core["use"],
                    "utilisation": {r: core["use"][r] / caps[r] for r in RESOURCES}})
    return out


def dense_fanin_problems(net: Netlist, limits: CoreLimits = CoreLimits()) -> list[Diagnostic]:
    """SNN-E640 before calibration: a spiking group whose dense inputs alone need more input
    axons per neuron than a core has (no split of the layer helps). Structural, so the compile
    checks it with placeholder lambdas instead of failing after calibration (a LeNet's Gemm
    after a folded average pool: 12544 inputs)."""
    diags = []
    for g in net.groups:
        if g.kind != "neuron":
            continue   # a too wide readout is accumulated by the host (map_cores)
        dense = [b for b in net.blocks_into(g.name) if b.kind == "dense"]
        axons = sum(net.group(b.src).size for b in {b.src: b for b in dense}.values())
        if axons > limits.in_axons:
            diags.append(_too_wide(net, g.name, f"in_axons {axons} > {limits.in_axons}", dense))
    return diags


def _too_wide(net: Netlist, name: str, over: str, blocks: list[Block]) -> Diagnostic:
    """SNN-E640 for group ``name``, naming what its neurons read through ``blocks``."""
    reads = ", ".join(f"{net.group(b.src).size} neurons of {b.src}" for b in blocks)
    return Diagnostic("SNN-E640", f"group {name}: a single neuron exceeds the core limits even "
                      f"when the layer is split ({over}; it reads {reads})", pass_name=PASS,
                      node=net.group(name).source, hint=_FANIN_HINT)


def map_cores(net: Netlist, limits: CoreLimits = CoreLimits()) -> tuple[dict, list[Diagnostic]]:
    """Place every neuron / readout group on cores; returns (mapping report, diagnostics)."""
    graph = net.graph()
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("the netlist has a cycle")
    dest = {g.name: np.zeros(g.size, dtype=np.int64) for g in net.groups}
    chunks: list[dict] = []
    groups: dict[str, dict] = {}
    diags: list[Diagnostic] = []
    host: list[dict] = []
    kinds = {g.name: g.kind for g in net.groups}
    for name in reversed(list(nx.topological_sort(graph))):
        if kinds[name] == "input":
            continue
        splitter = _GroupSplitter(net, name, limits, dest[name])
        parts, failed = splitter.split()
        if failed is not None and kinds[name] == "readout":
            # a non-spiking readout too wide for one core is accumulated by the host
            for blk in net.blocks_into(name):
                dest[blk.src] += 1
            host.append({"group": name, "reason": _over(failed, limits)})
            continue
        if failed is not None:
            diags.append(_too_wide(net, name, _over(failed, limits), net.blocks_into(name)))
            continue
        for a, b, cost in parts:
            chunks.append({"group": name, "start": a, "stop": b, "cost": cost})
            splitter.add_sources(a, b, dest)
        groups[name] = {"chunks": len(parts), "neurons": net.group(name).size,
                        "synapse_bits": int(splitter.cum_bits[-1])}
    cores = _pack(chunks, limits)
    total_neurons = sum(v["neurons"] for v in groups.values())
    total_bits = sum(v["synapse_bits"] for v in groups.values())
    senders = sum(int(np.count_nonzero(dest[name])) for name in groups)
    bound = max(math.ceil(total_neurons / limits.neurons),
                math.ceil(total_bits / limits.synapse_bits),
                math.ceil(senders / limits.out_axons), 1 if groups else 0)
    if limits.max_cores is not None and len(cores) > limits.max_cores:
        diags.append(Diagnostic("SNN-E641", f"the network needs {len(cores)} cores, more than "
                                f"max_cores={limits.max_cores}", pass_name=PASS,
                                hint="use a smaller network or allow more chips"))
    report = {"limits": limits.to_json(), "order": "hwc", "cores_used": len(cores),
              "lower_bound": bound, "ratio_to_bound": len(cores) / bound if bound else 1.0,
              "total_neurons": total_neurons, "total_synapse_bits": total_bits,
              "groups": groups, "host_groups": host, "cores": cores}
    return report, diags
