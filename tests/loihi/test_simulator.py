"""The integer simulator agrees exactly with the ORT model where the semantics coincide."""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph, dyadic_input, ort_reference, residual_pool_model
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.backend import LoihiBackend
from snncc.backends.loihi.quantize import quantize
from snncc.backends.loihi.simulator import run_netlist, simulate
from snncc.context import CompileContext, CompileOptions
from snncc.errors import SnnccError

EXACT = {  # neuron op and attributes whose quantized netlist is exact (dyadic units)
    "if": ("IFNeuron", {}),
    "if_per_channel": ("IFNeuron", {"theta": [2.0, 1.0, 1.0, 2.0]}),
    "gn": ("GroupNeuron", {"tau": 4}),
    "mt_parallel": ("MTNeuron", {"fractions": [1.0, 0.75, 0.5, 0.25], "mode": "parallel"}),
    "mt_cascade_hard": ("MTNeuron", {"fractions": [0.5, 0.25, 0.125], "mode": "cascade",
                                     "reset": "hard"}),
    "lif": ("LIFNeuron", {"leak": 1.0}),
    "lif_leak": ("LIFNeuron", {"leak": 0.75}),
    "srp": ("SRPNeuron", {"tau": 2}),
    "bitserial": ("BitSerialNeuron", {"theta": [0.9375]}),   # unit theta/15 = 1/16
}


def _run(op, attrs, T=4, seed=0):
    model = residual_pool_model(seed, op, **attrs)
    x = dyadic_input((3, 2, 8, 8), seed=seed + 1)
    net = lower(model, T)
    report, diags = quantize(net)
    return model, x, net, report, diags


@pytest.mark.parametrize("case", EXACT)
def test_exact_agreement_with_ort(case):
    op, attrs = EXACT[case]
    model, x, net, report, diags = _run(op, attrs)
    assert not diags and report["all_exact"]
    sim = simulate(net, x)
    ref = ort_reference(model, x, 4)
    (name, out), = sim.outputs.items()
    np.testing.assert_array_equal(out, ref.outputs[name])
    assert {k: int(v.sum()) for k, v in sim.events.items()} == ref.events_per_layer
    assert sim.saturations == 0


def test_inexact_weights_are_reported_not_hidden():
    # per-channel thresholds 4x apart need 10 mantissa bits for 1/16-step weights
    model, x, net, report, _ = _run("IFNeuron", {"theta": [2.0, 1.0, 0.5, 1.0]})
    assert not report["all_exact"]
    assert 0 < max(w["max_rel_err"] for w in report["weights"]) < 2 ** -7
    out = simulate(net, x).outputs
    ref = ort_reference(model, x, 4).outputs
    assert np.abs(out["gemm20"] - ref["gemm20"]).max() < 0.1


def one_neuron(op="IFNeuron", current=0.75, **attrs):
    """x [N, 1, 1, 1] -> 1x1 conv (weight = current) -> neuron, output = decoded spikes."""
    g = Graph((1, 1, 1))
    conv = g.conv("x", 1, 1, k=1, weight=np.full((1, 1, 1, 1), current), bias=False)
    return g.model(g.neuron(conv, op, **attrs))


@pytest.mark.parametrize("current,semantics,expected", [
    (0.75, "emulated", 0.75),   # v0 = 0.5: 1.25 s, 1.0 s (>=), 0.75, 1.5 s -> 3 spikes / 4
    # hardware: v0 = 0, v_init 0.5 spread as bias 0.125 per step, fire on >, reset to 0:
    (0.75, "hardware", 0.5),    # 0.875, 1.75 s, 0.875, 1.75 s -> 2 spikes / 4
    (0.375, "emulated", 0.5),   # 0.875, 1.25 s, 0.625, 1.0 s (>=) -> 2 spikes / 4
    (0.375, "hardware", 0.25),  # 0.5, 1.0 (not > 1), 1.5 s, 0.5 -> 1 spike / 4
])
def test_reset_semantics_by_hand(current, semantics, expected):
    net = lower(one_neuron(current=current), 4)
    quantize(net)
    out = simulate(net, np.ones((1, 1, 1, 1), np.float32), semantics=semantics).outputs
    assert out[net.outputs[0]["name"]].item() == expected


def test_hardware_semantics_differ_and_are_reported(tmp_path):
    model, x, *_ = _run("IFNeuron", {})
    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    art = LoihiBackend().emit(model, ctx, tmp_path / "out")
    assert art.report["reset"]["emulated_soft_reset"] == ["if"]
    emulated, ev = run_netlist(tmp_path / "out", x)
    hardware, _ = run_netlist(tmp_path / "out", x, semantics="hardware")
    ref = ort_reference(model, x, 4)
    np.testing.assert_array_equal(emulated["gemm20"], ref.outputs["gemm20"])
    assert not np.array_equal(hardware["gemm20"], emulated["gemm20"])
    assert {k: int(v.sum()) for k, v in ev.items()} == ref.events_per_layer


@pytest.mark.parametrize("case,listed", [("mt_parallel", ["mt"]), ("mt_cascade_hard", [])])
def test_an_mt_soft_reset_is_listed_as_emulated(case, listed, tmp_path):
    """MT writes its reset as 'soft'/'hard', not 'subtract'/'zero': netlist.json's
    reset.emulated_soft_reset was empty (and its note blank) for a soft-reset MT net."""
    op, attrs = EXACT[case]
    model, *_ = _run(op, attrs)
    art = LoihiBackend().emit(model, CompileContext(CompileOptions(target="loihi", timesteps=4)),
                              tmp_path / "out")
    assert art.report["reset"]["emulated_soft_reset"] == listed
    assert bool(art.report["reset"]["note"]) == bool(listed)


def test_bad_inputs_to_the_simulator():
    net = lower(one_neuron(), 4)
    quantize(net)
    with pytest.raises(SnnccError) as err:
        simulate(net, np.ones((1, 2, 2, 2), np.float32))
    assert err.value.code == "SNN-E651"
    with pytest.raises(SnnccError) as err:
        simulate(net, np.ones((1, 1, 1, 1), np.float32), semantics="chip")
    assert err.value.code == "SNN-E651"


def test_membrane_saturation_is_counted():
    net = lower(one_neuron(current=-100.0), 4)
    quantize(net)
    assert simulate(net, np.full((1, 1, 1, 1), 100.0, np.float32)).saturations > 0


def test_run_command_semantics_option(tmp_path, capsys):
    """`snncc run DIR --semantics hardware|emulated` picks the simulator's semantics."""
    from snncc.cli import main

    model, x, *_ = _run("IFNeuron", {})
    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    LoihiBackend().emit(model, ctx, tmp_path / "out")
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for sem in ("emulated", "hardware"):
        assert main(["run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"),
                     "--semantics", sem, "-o", str(tmp_path / f"{sem}.npz")]) == 0
        outs[sem] = np.load(tmp_path / f"{sem}.npz")["outputs"]
    want = {sem: run_netlist(tmp_path / "out", x, semantics=sem)[0]["gemm20"]
            for sem in outs}
    for sem in outs:
        np.testing.assert_array_equal(outs[sem], want[sem])
    assert not np.array_equal(outs["emulated"], outs["hardware"])
    assert main(["run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"),
                 "--semantics", "hardware"]) == 0   # the default -o-less path prints


def test_hardware_membrane_saturation_is_counted():
    net = lower(one_neuron(current=-100.0), 4)
    quantize(net)
    res = simulate(net, np.full((1, 1, 1, 1), 100.0, np.float32), semantics="hardware")
    assert res.saturations > 0


def test_hardware_current_wraparound_is_counted_and_said():
    """Lava's 24-bit synaptic current wraps (a large positive current turns negative); the
    simulator did so bit for bit but said nothing (a hardware user's net: 3 of 500 predictions)."""
    from snncc.backends.loihi.simulator import saturation_message

    net = lower(one_neuron(current=0.75), 4)
    quantize(net)
    calm = simulate(net, np.full((1, 1, 1, 1), 1.0, np.float32), semantics="hardware")
    assert calm.wraps == 0 and saturation_message(calm) is None
    hot = simulate(net, np.full((1, 1, 1, 1), 1e5, np.float32), semantics="hardware")
    assert hot.wraps > 0 and "synaptic currents wrapped around (at 24 bits" in \
        saturation_message(hot)
    assert simulate(net, np.full((1, 1, 1, 1), 1e5, np.float32)).wraps == 0   # emulated


def _pool_model(pool_op: str, **pool_attrs):
    g = Graph((2, 8, 8))
    s1 = g.neuron(g.conv("x", 2, 4), "IFNeuron")
    p = g.op(pool_op, [s1], kernel_shape=[2, 2], strides=[2, 2], pads=[1] * 4, **pool_attrs)
    s2 = g.neuron(g.conv(p, 4, 4, k=2, pad=0), "IFNeuron")    # 5x5 -> 4x4: GAP 1/16
    gap = g.op("GlobalAveragePool", [s2])
    return g.model(g.gemm(g.op("Flatten", [gap], axis=1), 4, 3))


def test_maxpool_avg_lowers_as_average_pool_counting_the_padding():
    """`--maxpool avg` on Loihi: MaxPool runs as AveragePool(count_include_pad=1), exactly."""
    with pytest.raises(SnnccError) as err:
        lower(_pool_model("MaxPool"), 4)
    assert err.value.code == "SNN-E270"
    net = lower(_pool_model("MaxPool"), 4, maxpool="avg")
    report, diags = quantize(net)
    x = dyadic_input((3, 2, 8, 8), seed=3)
    ref = ort_reference(_pool_model("AveragePool", count_include_pad=1), x, 4)
    assert report["all_exact"] and not diags          # 1/4 weights: dyadic
    (name, value), = simulate(net, x).outputs.items()
    np.testing.assert_array_equal(value, ref.outputs[name])
    assert {k: int(v.sum()) for k, v in simulate(net, x).events.items()} == \
        ref.events_per_layer


@pytest.mark.parametrize("semantics", ["emulated", "hardware"])
def test_large_conv_blocks_through_onnxruntime_are_exact(monkeypatch, semantics):
    """Big float32 conv blocks run through ONNX Runtime's Conv; integer sums below 2**24 keep
    them exact: identical to the NumPy path (forced here on a small net)."""
    from snncc.backends.loihi import simulator as sim_mod

    _, x, net, _, _ = _run("IFNeuron", {})
    want = simulate(net, x, semantics=semantics)
    monkeypatch.setattr(sim_mod, "ORT_MIN_WORK", 0)
    got = simulate(net, x, semantics=semantics)
    for k in want.outputs:
        np.testing.assert_array_equal(got.outputs[k], want.outputs[k])
    for k in want.events:
        np.testing.assert_array_equal(got.events[k], want.events[k])


def _border_pool_model(op="IFNeuron", **attrs):
    """conv -> neuron -> 2x2/2 pool of a 7x7 map -> padded 3x3 conv: the conv's padding reads
    pooled position 3, which one composed conv would compute from the real input column 6."""
    g = Graph((2, 7, 7), 4)
    s1 = g.neuron(g.conv("x", 2, 4), op, **attrs)
    p = g.op("AveragePool", [s1], kernel_shape=[2, 2], strides=[2, 2])
    s2 = g.neuron(g.conv(p, 4, 4), op, **attrs)
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 36, 3))   # no 1/9 of a 3x3 GAP


@pytest.mark.parametrize("case", ["if", "gn", "bitserial"])
def test_relay_group_lowers_a_chain_one_conv_cannot_express(case):
    """Where pool + padded conv cannot fold into one conv (SNN-E273 without relays), a relay
    group sends the pooled current on (weights 64 = 1/4 of the spikes, exact) and the netlist
    agrees with ONNX Runtime bit for bit, events of every neuron included."""
    op, attrs = EXACT[case]
    model = _border_pool_model(op, **attrs)
    with pytest.raises(SnnccError) as err:
        lower(model, 4, relay=False)
    assert err.value.code == "SNN-E273"
    net = lower(model, 4)
    relays = [g for g in net.groups if g.kind == "relay"]
    assert len(relays) == 1 and relays[0].view == (4, 3, 3)
    report, diags = quantize(net)
    assert not diags and report["all_exact"]
    x = dyadic_input((3, 2, 7, 7), seed=5)
    sim = simulate(net, x)
    ref = ort_reference(model, x, 4)
    (name, out), = sim.outputs.items()
    np.testing.assert_array_equal(out, ref.outputs[name])
    neurons = {k: int(v.sum()) for k, v in sim.events.items() if k != relays[0].name}
    assert neurons == ref.events_per_layer and sum(neurons.values()) > 0
    assert sim.saturations == 0
    # the relay is saved and loaded like any group, and its graded events are counted
    assert sim.events[relays[0].name].sum() > 0


def test_a_relay_fed_by_the_input_is_bounded_by_the_calibration_range():
    """A pool of the input then a padded conv that one conv cannot express puts a relay on the
    input. Its current had been bounded as if every input were a full 24-bit payload (a
    torchvision-like stem, AvgPool 3/2/1 then a padded conv, on 8 x 8 digits in [0, 1]: 9 x 2**23,
    SNN-E634); with the calibration samples' largest magnitude known it is bounded for inputs up
    to twice that, and the netlist agrees with ORT bit for bit."""
    g = Graph((2, 7, 7), 4)   # the conv's padding reads pooled position 3, i.e. input row 6
    p = g.op("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])
    s = g.neuron(g.conv(p, 2, 4), "IFNeuron")
    model = g.model(g.gemm(g.op("Flatten", [s], axis=1), 36, 3))
    net = lower(model, 4)
    relay, = [r.name for r in net.groups if r.kind == "relay"]
    _, diags = quantize(net)
    assert [d.code for d in diags] == ["SNN-E634"]       # no input range: the whole payload
    net = lower(model, 4)
    report, diags = quantize(net, input_max=1.0)
    assert not diags and report["all_exact"]
    assert net.group(relay).fixed["peak_payload"] == 4 * 2 * 256
    x = dyadic_input((3, 2, 7, 7), seed=7)
    sim = simulate(net, x)
    ref = ort_reference(model, x, 4)
    (name, out), = sim.outputs.items()
    np.testing.assert_array_equal(out, ref.outputs[name])
    assert sim.saturations == 0 and sim.wraps == 0


def test_netx_export_stops_at_a_relay_and_says_why(tmp_path):
    """A relay is a graded pass-through: NetX has no such neuron, so the export keeps the layers
    before it and lists the relay (and what follows) with reasons."""
    from snncc.backends.loihi.netx import check_netx, write_netx

    net = lower(_border_pool_model(), 4)
    quantize(net)
    meta = write_netx(net, tmp_path / "network.net")
    assert len(meta["layers"]) >= 1 and check_netx(tmp_path / "network.net") == []
    reasons = {s["group"]: s["reason"] for s in meta["not_exported"]}
    relay = next(g.name for g in net.groups if g.kind == "relay")
    assert "relay" in reasons[relay] and "no NetX neuron" in reasons[relay]


@pytest.mark.parametrize("case", ["if", "mt_parallel"])
def test_run_reports_rates_in_the_units_of_an_onnx_run(tmp_path, capsys, case):
    """Unit events per neuron and slice, as RunResult.activity: the Loihi table divided the
    events by the neurons only (T times larger for the same spikes), and for a graded neuron the
    ONNX run's rate had counted nonzero outputs (MNIST MT: 0.303 against the Loihi run's
    0.478 for the same events)."""
    import json

    from snncc.cli import main

    model, x, *_ = _run(*EXACT[case])
    LoihiBackend().emit(model, CompileContext(CompileOptions(target="loihi", timesteps=4)),
                        tmp_path / "out")
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"),
                 "--json"]) == 0
    got = {r["name"]: r for r in json.loads(capsys.readouterr().out)["activity"]["layers"]}
    want = {r["name"]: r for r in ort_reference(model, x, 4).activity()["layers"]}
    assert got.keys() == want.keys()
    for name, row in want.items():
        assert got[name]["rate"] == pytest.approx(row["rate"])
        if case == "if":   # binary: a spike is one event
            assert got[name]["spikes_per_sample"] == pytest.approx(row["spikes_per_sample"])
            assert row["spike_rate"] == row["rate"]
        else:   # graded: the simulator keeps no per-slice outputs; ORT counts nonzero ones
            assert got[name]["spike_rate"] is None and row["spike_rate"] < row["rate"]


def test_a_readouts_netx_unit_holds_its_voltage(tmp_path):
    """Bit-serial on a residual net: the readout's NetX unit (network.net, and the simulator's
    hardware semantics) was the finest one whose bias fits, and its voltage passed Lava's 24-bit
    threshold (it fires and resets to 0): digits ResNet 60.0 % against 98.9 % emulated, MNIST
    ResNet 46.2 % against 98.1 %. The compile now records each readout's peak voltage on the
    calibration samples and sizes the unit for twice it: no readout update saturates."""
    from pathlib import Path

    from snncc.backends.loihi.netlist import load as load_netlist
    from snncc.driver import compile_model, make_options

    examples = Path(__file__).resolve().parents[2] / "examples"
    compile_model(examples / "digits_resnet.onnx", tmp_path / "d.loihi", make_options(
        target="loihi", neuron="bitserial", timesteps=4, fidelity_samples=0,
        calib_path=str(examples / "digits_resnet_calib.npz")))
    test = np.load(examples / "digits_resnet_test.npz")
    x, y = test["input"][:120], test["y"][:120]
    net = load_netlist(tmp_path / "d.loihi")
    readout = next(g for g in net.groups if g.kind == "readout")
    assert readout.fixed["peak_state"] > 0
    hard = simulate(net, x, semantics="hardware")
    emul = simulate(net, x)
    assert hard.saturated.get(readout.name, 0) == 0, hard.saturated
    acc = {k: float((next(iter(r.outputs.values())).argmax(1) == y).mean())
           for k, r in (("hardware", hard), ("emulated", emul))}
    assert acc["hardware"] >= acc["emulated"] - 0.01, acc
