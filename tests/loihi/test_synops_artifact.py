"""SynOp accounting in every artifact: synops.json of a Loihi directory and the ORT section
(:func:`snncc.analysis.synops.artifact_synops`), checked against the analysis functions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from loihi import Graph
from snncc.analysis.synops import (ARTIFACT_SAMPLES, artifact_synops, count_synops, fanout_map,
                                   format_synops_line, ort_events)
from snncc.backends.loihi import netlist as nl
from snncc.backends.loihi.backend import LoihiBackend
from snncc.backends.loihi.simulator import run_netlist
from snncc.context import CompileContext, CompileOptions
from snncc.driver import compile_model, make_options
from snncc.outputs import MARKER

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGITS = str(EXAMPLES / "digits_cnn.onnx")
DIGITS_CALIB = str(EXAMPLES / "digits_cnn_calib.npz")
GROUP_KEYS = {"kind", "neuron", "neurons", "synapses_in", "synapses_out", "fanout_per_spike",
              "fanout_max"}


def sequential():
    g = Graph((2, 8, 8))
    s1 = g.neuron(g.conv("x", 2, 4))
    s2 = g.neuron(g.conv(s1, 4, 6, stride=2))
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 4 * 4, 5))


@pytest.fixture(scope="module")
def digits_loihi(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "digits.loihi"
    res = compile_model(DIGITS, out, make_options(target="loihi", timesteps=4,
                                                   calib_path=DIGITS_CALIB))
    return out, res


def test_static_synops_json_without_samples(tmp_path):
    model = sequential()
    backend = LoihiBackend()
    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    assert backend.check(model, ctx) == []
    art = backend.emit(model, ctx, tmp_path / "out")
    assert tmp_path / "out" / "synops.json" in art.files
    syn = json.loads((tmp_path / "out" / "synops.json").read_text())
    assert syn["measured"] is None and syn["energy"] is None
    net = nl.load(tmp_path / "out")
    for g in net.groups:
        row = syn["groups"][g.name]
        assert GROUP_KEYS <= set(row) and row["neurons"] == g.size
    for b in net.blocks:                  # one block per source here: fan-out = its fanout map
        f = fanout_map(b)
        assert syn["groups"][b.src]["fanout_per_spike"] == pytest.approx(f.mean())
        assert syn["groups"][b.src]["fanout_max"] == f.max()
        assert syn["groups"][b.dst]["synapses_in"] == f.sum()
    assert syn["synapses"] == sum(int(fanout_map(b).sum()) for b in net.blocks)
    assert syn["ann"]["macs"] == net.ann_macs
    assert "no calibration samples" in format_synops_line(syn)
    assert art.report["synops"] == format_synops_line(syn)


def test_synops_json_with_calibration_is_the_simulators_count(digits_loihi):
    out, res = digits_loihi
    syn = json.loads((out / "synops.json").read_text())
    assert "synops.json" in json.loads((out / MARKER).read_text())["files"]
    m = syn["measured"]
    # the held-out samples, as the ORT target measures (it had counted calibrated ones)
    held = res.report["fidelity"]["samples"]
    x = np.load(DIGITS_CALIB)["input"][-held:][:ARTIFACT_SAMPLES]
    assert m["samples"] == len(x) and "held-out samples" in m["source"]
    _, events = run_netlist(out, x)
    ref = count_synops(out, events, mapping=json.loads((out / "cores.json").read_text()),
                       analog_once=False)   # the netlist sends its input every step
    assert m["analog_once"] is False
    assert m["synops_per_inference"] == pytest.approx(ref["total_synops"])
    assert m["macs_per_inference"] == pytest.approx(ref["total_macs"])
    assert m["cores"] == pytest.approx(ref["cores"])
    assert set(syn["energy"]) >= {"digital45nm", "loihi"}
    for e in syn["energy"].values():
        assert e["snn_pj"] > 0 and e["ann_pj"] == pytest.approx(syn["ann"]["energy_pj"])
    for name, row in ref["layers"].items():
        if "events" in row:
            assert syn["groups"][name]["events"] == pytest.approx(row["events"])
            assert syn["groups"][name]["synops_in"] == pytest.approx(row["synops"])
    line = format_synops_line(syn)
    assert line.startswith("SynOps/inference") and "ANN MACs" in line and "uJ" in line
    assert res.report["backend"]["synops"] == line
    # the compile report's synops section is synops.json's (it was null for Loihi)
    assert json.loads(json.dumps(res.report["synops"])) == syn


@pytest.fixture(scope="module")
def digits_ort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ort")
    opts = make_options(target="ort", timesteps=4, calib_path=DIGITS_CALIB)
    compile_model(DIGITS, tmp / "snn.onnx", opts, dump_after=["insert-neurons"],
                  dump_dir=tmp / "dump")
    snn = onnx.load(str(tmp / "snn.onnx"))
    ann = onnx.load(str(tmp / "dump" / "after-insert-neurons.onnx"))
    return snn, ann, opts


def test_ort_section_has_the_loihi_keys_and_counts_ort_events(digits_ort, digits_loihi):
    snn, ann, opts = digits_ort
    x = np.load(DIGITS_CALIB)["input"]
    sec = artifact_synops(snn, ann, {"input": x}, opts)
    loihi = json.loads((digits_loihi[0] / "synops.json").read_text())
    assert sec["available"] and set(sec) == set(loihi)
    # the structure is the target's, not the data's: same as the Loihi directory's
    for key in ("neurons", "synapses", "ann_macs"):
        assert sec[key] == loihi[key]
    assert {k: {f: r[f] for f in GROUP_KEYS} for k, r in sec["groups"].items()} == \
        {k: {f: r[f] for f in GROUP_KEYS} for k, r in loihi["groups"].items()}
    events = ort_events(snn, {"input": x[:ARTIFACT_SAMPLES]})
    ref = count_synops(ann, events, timesteps=4)
    assert sec["measured"]["samples"] == ARTIFACT_SAMPLES
    assert sec["measured"]["synops_per_inference"] == pytest.approx(ref["total_synops"])
    assert sec["measured"]["spikes_per_inference"] == pytest.approx(
        sum(int(e.sum()) for e in events.values()) / ARTIFACT_SAMPLES)
    assert format_synops_line(sec).startswith("SynOps/inference")


def test_ort_section_without_samples_is_static(digits_ort):
    snn, ann, opts = digits_ort
    sec = artifact_synops(snn, ann, None, opts)
    assert sec["available"] and sec["measured"] is None and sec["energy"] is None
    assert sec["synapses"] > 0


def test_ort_section_of_a_model_without_netlist_form():
    g = Graph((2, 4, 4))
    s = g.neuron(g.op("Sigmoid", [g.conv("x", 2, 2)]))
    model = g.model(g.gemm(g.op("Flatten", [s], axis=1), 32, 3))
    sec = artifact_synops(model, model, None, CompileOptions(target="ort", timesteps=4))
    assert sec["available"] is False and "SNN-E270" in sec["reason"]
    line = format_synops_line(sec)  # the first diagnostic itself, not the bare header
    assert line.startswith("SynOps: not available ([SNN-E270] synop-count: ") and \
        "op Sigmoid has no SynOp count" in line and "Loihi" not in line
    assert "Hint" not in line and "\n" not in line


@pytest.mark.requires_runtime
def test_streaming_schedule_counts_the_same_spikes(digits_ort, tmp_path):
    snn, ann, opts = digits_ort
    stream_opts = make_options(target="ort", timesteps=4, calib_path=DIGITS_CALIB,
                               schedule="streaming")
    compile_model(DIGITS, tmp_path / "s.onnx", stream_opts)
    x = {"input": np.load(DIGITS_CALIB)["input"][:16]}
    folded = artifact_synops(snn, ann, x, opts)
    stream = artifact_synops(onnx.load(str(tmp_path / "s.onnx")), ann, x, stream_opts)
    assert stream["measured"]["source"].startswith("ONNX Runtime (streaming")
    assert stream["measured"]["synops_per_inference"] == pytest.approx(
        folded["measured"]["synops_per_inference"])
    assert stream["measured"]["spikes_per_inference"] == folded["measured"][
        "spikes_per_inference"]
    # a step model computes the input layer at every step (the caller feeds the input each
    # step); the folded one computes its current once
    assert folded["measured"]["analog_once"] and not stream["measured"]["analog_once"]
    assert stream["measured"]["macs_per_inference"] == 4 * folded["measured"][
        "macs_per_inference"] > 0


def test_sample_count_shrinks_with_the_network():
    from snncc.analysis.synops import ARTIFACT_MAC_STEPS, artifact_sample_count
    assert artifact_sample_count(190_720, 4, 256) == ARTIFACT_SAMPLES        # digits CNN
    assert artifact_sample_count(190_720, 4, 10) == 10                       # fewer given
    assert artifact_sample_count(1_800_000_000, 4, 256) == 1                 # ResNet-18 224
    assert artifact_sample_count(ARTIFACT_MAC_STEPS // 40, 4, 256) == 10


@pytest.mark.parametrize("n_in,k,stride,pad", [(8, 3, 1, 1), (7, 3, 2, 1), (8, 5, 2, 2),
                                             (5, 1, 1, 0), (6, 4, 3, 2)])
def test_in_bounds_taps_count_what_reads_the_real_input(n_in, k, stride, pad):
    from snncc.backends.loihi.lowering import in_bounds_taps

    n_out = (n_in + 2 * pad - k) // stride + 1
    brute = sum(0 <= o * stride - pad + t < n_in for o in range(n_out) for t in range(k))
    assert in_bounds_taps(n_in, n_out, k, stride, pad) == brute


def test_the_anns_macs_are_also_given_without_the_zero_padding(digits_ort):
    """MACs_l (neurons.md 7.2) counts the taps on a conv's zero padding, which have no synapse in
    the SNN count: the section gives both, and the energy ratio on both."""
    snn, ann, opts = digits_ort
    sec = artifact_synops(snn, ann, {"input": np.load(DIGITS_CALIB)["input"][:8]}, opts)
    a = sec["ann"]
    assert 0 < a["macs_in_bounds"] < a["macs"] == sec["ann_macs"]
    assert a["energy_in_bounds_pj"] == pytest.approx(a["macs_in_bounds"] * 4.6)
    e = sec["energy"]["digital45nm"]
    assert e["ann_over_snn_in_bounds"] == pytest.approx(
        e["ann_over_snn"] * a["macs_in_bounds"] / a["macs"])
    assert "without padding" in format_synops_line(sec)
    # shown however close the two are (within 1 % it had been dropped), with enough digits
    close = dict(sec, ann=dict(a, macs_in_bounds=a["macs"] - 16))
    assert f"ANN MACs {a['macs']:.4g}, {a['macs'] - 16:.4g} without padding" in \
        format_synops_line(close)
    same = dict(sec, ann=dict(a, macs_in_bounds=a["macs"]))
    assert "without padding" not in format_synops_line(same)


def test_an_analog_island_is_counted_as_macs_after_it(tmp_path):
    """--allow-analog: SynOps had been 'not available' (the count had no form for the island's
    LayerNormalization). The island is an analog group with no synapses; the Gemm after it runs
    once on its values (MACs), the spikes before it feed no synapse."""
    from helpers import dense_net

    rng = np.random.default_rng(0)
    onnx.save(dense_net(["LayerNormalization", "Sigmoid"]), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.random((40, 8), dtype=np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx",
                        make_options(calib_path=str(tmp_path / "c.npy"), allow_analog=True))
    sec = res.report["synops"]
    assert sec["available"], sec.get("reason")
    kinds = {name: row["kind"] for name, row in sec["groups"].items()}
    assert kinds["ln"] == "analog" and kinds["sig"] == "analog"
    assert sec["groups"]["sig"]["synapses_out"] == 36 and sec["groups"]["ln"]["synapses_in"] == 0
    m = sec["measured"]
    assert m["macs_per_inference"] == 8 * 6 + 6 * 6   # fc1 on the input, fc2 on the island
    assert 0 < m["synops_per_inference"] <= 6 * 3 * 4  # relu2's spikes into fc3, 4 slices


def test_a_missing_kernel_library_says_how_to_count_them():
    """A streaming compile without the kernel library printed 'SynOps: not available
    ([SNN-E701] ... does not exist)' and no way on (a fresh install met it)."""
    from snncc.errors import RuntimeLibraryError

    reason = RuntimeLibraryError("runtime: the kernel library /x/libsnncc_ops.so does not exist",
                                 code="SNN-E701", hint="build it").render()
    line = format_synops_line({"available": False, "reason": reason})
    assert line.startswith("SynOps: not available ([SNN-E701]")
    assert "python -m snncc.runtime.build" in line and "to count them" in line
