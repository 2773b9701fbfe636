"""Run a NetX network (``network.net`` from ``snncc compile ... --target loihi``) in real Lava.

    python examples/lava/run_netx.py NET X.npy OUT.npy

Loads NET with lava-dl's reader (``lava.lib.dl.netx.hdf5.Network``) and runs every sample of X
(float, [N, *input shape]) in Lava's CPU simulation with bit-accurate fixed-point models
(``Loihi2SimCfg(select_tag="fixed_pt")``). Writes the readout per sample, int64 [N, classes]:

* ``voltage`` (the last layer is snncc's non-spiking readout): the readout layer's integer voltage
  gained over the counted steps, in Lava's units; ``snncc run DIR --semantics hardware`` computes
  the same integers (``SimResult.raw``) and decodes them to the network outputs;
* ``spikes`` (a spiking last layer, e.g. a residual net's sequential first piece): its spike
  counts over the counted steps, flattened in snncc's (C, H, W) order (Lava's own is (x, y, c)),
  so that they equal ``SimResult.raw`` of the simulator's hardware semantics.

How the file is driven comes from its root attributes (``snncc_*``, written by snncc; the NetX
reader ignores them): the analog input is sent every step as graded payloads
``round(x * 2**input_frac_bits)`` straight into the first synapse (the input layer has no neuron),
for ``total_steps`` steps per sample. Samples run back to back: every layer j (1-based) sees
sample k at Lava steps ``k * total + j + 1 ...``, and ``reset_interval=total, reset_offset=1``
makes each layer reset when its window starts. Needs only lava-nc, lava-dl, numpy and h5py
(``bash scripts/lava_env.sh`` builds such an environment).
"""
from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np


def _attrs(path: str) -> dict:
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        t_sample = int(f["simulation/tSample"][()]) if "simulation/tSample" in f else 1
    total = int(a.get("snncc_total_steps", t_sample))
    return {"total": total, "counted": int(a.get("snncc_counted_steps", total)),
            "frac_bits": int(a.get("snncc_input_frac_bits", 8)),
            "message_bits": int(a.get("snncc_input_message_bits", 24)),
            "readout": str(a.get("snncc_readout", "voltage"))}


def encode(x: np.ndarray, frac_bits: int, message_bits: int) -> np.ndarray:
    """snncc's analog input payload: round(x * 2**frac_bits), clipped to the message width."""
    top = (1 << (message_bits - 1)) - 1
    return np.clip(np.round(np.asarray(x, np.float64) * 2.0 ** frac_bits), -top, top
                   ).astype(np.int64)


def run(net_path: str, x: np.ndarray) -> np.ndarray:
    from lava.lib.dl.netx import hdf5
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer
    from lava.proc.monitor.process import Monitor

    a = _attrs(net_path)
    total, counted = a["total"], a["counted"]
    net = hdf5.Network(net_config=net_path, input_message_bits=a["message_bits"],
                       reset_interval=total, reset_offset=1)
    depth = len(net.layers)
    n = len(x)
    payload = encode(x, a["frac_bits"], a["message_bits"])
    in_shape = tuple(int(s) for s in net.inp.shape)
    if len(in_shape) == 3:           # (C, H, W) -> Lava's (x, y, c) = (W, H, C)
        frames = payload.reshape((n,) + in_shape[::-1]).transpose(0, 3, 2, 1)
    else:                            # a dense first layer reads the C-order flat input
        frames = payload.reshape(n, -1)
    steps = n * total + depth
    data = np.zeros(in_shape + (steps,), dtype=np.int32)
    for k in range(n):
        data[..., k * total:(k + 1) * total] = frames[k][..., None]
    source = RingBuffer(data=data)
    source.s_out.connect(net.inp)
    last = net.layers[-1].neuron
    monitor = Monitor()
    target = last.v if a["readout"] == "voltage" else last.s_out
    monitor.probe(target, steps)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        record = monitor.get_data()[last.name][target.name]
    finally:
        net.stop()
    record = np.asarray(record).reshape(steps, -1).astype(np.int64)   # row i: after step i + 1
    out_shape = tuple(int(s) for s in target.shape)
    out = np.zeros((n, record.shape[1]), dtype=np.int64)
    first = total - counted
    for k in range(n):
        end = k * total + depth + total            # the step the sample's window ends on
        if a["readout"] == "voltage":
            out[k] = record[end - 1] - (record[end - 1 - counted] if first > 0 else 0)
        else:
            out[k] = record[end - counted:end].sum(axis=0)
    if len(out_shape) == 3:          # Lava's (x, y, c) = (W, H, C) -> snncc's (C, H, W)
        out = out.reshape((n,) + out_shape).transpose(0, 3, 2, 1).reshape(n, -1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", help="NetX file (network.net)")
    p.add_argument("x", help="inputs, .npy float [N, *input shape]")
    p.add_argument("out", help="readout per sample, .npy int64 [N, classes] (or [N, units] in "
                   "(C, H, W) order for a spiking last layer)")
    args = p.parse_args(argv)
    x = np.load(args.x)
    out = run(args.net, x)
    np.save(args.out, out)
    print(f"{len(x)} samples -> {args.out} {list(out.shape)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
