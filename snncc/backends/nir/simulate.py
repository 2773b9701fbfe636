"""A NumPy run of a NIR graph as NIR defines it, in discrete time (dt = 1).

Each step the input is fed again (the analog input as constant current), every node runs in
topological order (a node with several incoming edges gets their sum), and the outputs are
averaged over the steps. Neurons (NIR 1.0, forward Euler with dt = 1):

* ``IF``: ``v += r*I``; spike when ``v > v_threshold``; then ``v = v_reset``;
* ``LIF``: ``v += (v_leak - v + r*I) / tau``; same threshold and reset.

Used for the compile-time fidelity estimate of ``--target nir`` (what a NIR consumer computes:
Norse's ``from_nir`` gives the same numbers, tests/nir) and by the tests.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from snncc.backends.loihi.netlist import conv2d

__all__ = ["run_graph"]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride, pad, groups: int,
          dilation=(1, 1)) -> np.ndarray:
    dh, dw = (int(d) for d in dilation)
    if (dh, dw) != (1, 1):  # the dilated kernel, zeros between the taps
        k = w.shape[2:]
        wide = np.zeros(w.shape[:2] + ((k[0] - 1) * dh + 1, (k[1] - 1) * dw + 1), w.dtype)
        wide[:, :, ::dh, ::dw] = w
        w = wide
    kh, kw = w.shape[2:]
    out_hw = ((x.shape[2] + 2 * int(pad[0]) - kh) // int(stride[0]) + 1,
              (x.shape[3] + 2 * int(pad[1]) - kw) // int(stride[1]) + 1)
    y = conv2d(x, w, (int(stride[0]), int(stride[1])), (int(pad[0]), int(pad[1])), int(groups),
               out_hw)
    return y + b.reshape(1, -1, 1, 1)


def _order(graph: Any) -> list[str]:
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    done: list[str] = []
    seen: set[str] = set()
    while len(done) < len(preds):
        ready = [n for n in preds if n not in seen and all(p in seen for p in preds[n])]
        if not ready:
            raise ValueError("the NIR graph has a cycle")
        for n in ready:
            seen.add(n)
            done.append(n)
    return done


def run_graph(graph: Any, x: np.ndarray, steps: int,
              spikes: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Outputs by ``Output`` node name: float64 [N, *shape], the mean over ``steps``. With
    ``spikes`` (a dict), each IF/LIF node's spikes summed over samples and steps are added to
    ``spikes[name]`` (int64, the node's shape)."""
    import nir

    order = _order(graph)
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    state: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    x = f64(x)
    for _ in range(steps):
        vals: dict[str, np.ndarray] = {}
        for name in order:
            n = graph.nodes[name]
            if isinstance(n, nir.Input):
                vals[name] = x
                continue
            h = sum(vals[p] for p in preds[name])
            if isinstance(n, nir.Conv2d):
                h = _conv(h, f64(n.weight), f64(n.bias), n.stride, n.padding, n.groups,
                          n.dilation)
            elif isinstance(n, (nir.SumPool2d, nir.AvgPool2d)):
                k = tuple(int(v) for v in n.kernel_size)
                c = h.shape[1]
                h = _conv(h, np.ones((c, 1) + k), np.zeros(c), n.stride, n.padding, c)
                if isinstance(n, nir.AvgPool2d):
                    h = h / (k[0] * k[1])
            elif isinstance(n, nir.Flatten):
                h = h.reshape(h.shape[0], -1) if n.start_dim == 0 and n.end_dim == -1 else \
                    h.reshape(h.shape[:1 + n.start_dim] + (-1,))
            elif isinstance(n, nir.Affine):
                h = h @ f64(n.weight).T + f64(n.bias)
            elif isinstance(n, nir.Linear):
                h = h @ f64(n.weight).T
            elif isinstance(n, nir.Scale):
                h = h * f64(n.scale)
            elif isinstance(n, (nir.IF, nir.LIF)):
                v = state.get(name, np.zeros_like(h))
                if isinstance(n, nir.IF):
                    v = v + f64(n.r) * h
                else:
                    v = v + (f64(n.v_leak) - v + f64(n.r) * h) / f64(n.tau)
                z = v > f64(n.v_threshold)
                state[name] = np.where(z, f64(n.v_reset), v)
                h = z.astype(np.float64)
                if spikes is not None:
                    spikes[name] = z.sum(axis=0, dtype=np.int64) + spikes.get(name, 0)
            elif not isinstance(n, nir.Output):
                raise ValueError(f"no rule for NIR node {type(n).__name__}")
            vals[name] = h
        for name, n in graph.nodes.items():
            if isinstance(n, nir.Output):
                sums[name] = vals[name] + sums.get(name, 0.0)
    return {k: v / steps for k, v in sums.items()}
