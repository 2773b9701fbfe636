"""SynOps through upsampling: ConvTranspose and Resize (the count-only lowering).

A ConvTranspose is a block of synapses (kind ``deconv``); a stride-1 conv after it, with no
neuron in between (a U-Net's Concat + conv), composes with it into one larger deconv block. A
nearest Resize copies spikes: a ``pool`` group whose events are the copies; an integer-scale
linear Resize is the deconv of its fixed window. Checked against a count made without the
netlist: per source position, the destinations that the ANN's linear chain connects it to (the
chain run in torch, or ONNX Runtime for its own Resize, with all-ones weights on one-hot
inputs), times the events measured at that position.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402
from snncc.analysis.synops import count_netlist, count_synops, ort_events, pool_taps  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.ir import SNN_DOMAIN  # noqa: E402

torch = pytest.importorskip("torch")
F = torch.nn.functional


def unet() -> tuple[onnx.ModelProto, dict[str, str]]:
    """A (8x8) -> B (stride 2, 4x4) -> ConvTranspose 2x2/2 -> Concat(A, .) -> conv -> D;
    Concat(D, nearest Resize x2 of B) -> conv -> E; ConvTranspose 3x3/2 pad 1 + output padding
    1 -> G (16x16); GAP, Gemm. Returns the model and the ReLU outputs by letter."""
    b = zoo._Builder(11)
    relu = {}
    relu["A"] = b.op("Relu", [b.conv("x", 3, 4)])
    relu["B"] = b.op("Relu", [b.conv(relu["A"], 4, 6, strides=[2, 2])])
    up = b.op("ConvTranspose", [relu["B"], b.rand((6, 5, 2, 2)), b.rand((5,))],
              kernel_shape=[2, 2], strides=[2, 2])
    relu["D"] = b.op("Relu", [b.conv(b.op("Concat", [relu["A"], up], axis=1), 9, 7)])
    rs = b.op("Resize", [relu["B"], "", b.const([1, 1, 2, 2])], mode="nearest")
    relu["E"] = b.op("Relu", [b.conv(b.op("Concat", [relu["D"], rs], axis=1), 13, 8)])
    g = b.op("ConvTranspose", [relu["E"], b.rand((8, 4, 3, 3)), b.rand((4,))],
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    relu["G"] = b.op("Relu", [g])
    y = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [relu["G"]])], axis=1), 4, 5)
    return b.model(y, input_shape=("N", 3, 8, 8)), relu


def _fanout(shape: tuple[int, int, int], chain) -> np.ndarray:
    """Destinations connected to each source position: ``chain`` (torch, all-ones weights) run
    on one one-hot map per position, nonzeros counted."""
    n = int(np.prod(shape))
    out = chain(torch.eye(n, dtype=torch.float64).reshape((n,) + shape))
    return (out.reshape(n, -1) != 0).sum(dim=1).numpy().reshape(shape)


def _ones(o, i, k):
    return torch.ones((o, i, k, k), dtype=torch.float64)


def _deconv(x, cout, k, **kw):
    return F.conv_transpose2d(x, torch.ones((x.shape[1], cout, k, k), dtype=torch.float64), **kw)


@pytest.mark.parametrize("neuron", ["if", "mt"])
def test_upsampling_counts_what_the_ann_s_linear_chains_connect(tmp_path, neuron):
    model, relu = unet()
    onnx.save(model, tmp_path / "u.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(
        size=(64, 3, 8, 8)).astype(np.float32))
    opts = make_options(target="ort", timesteps=4, neuron=neuron, calib_method="max",
                        calib_path=str(tmp_path / "calib.npz"))
    res = compile_model(str(tmp_path / "u.onnx"), tmp_path / "s.onnx", opts,
                        dump_after=["insert-neurons"], dump_dir=tmp_path / "dump")
    sec = res.report["synops"]
    assert sec["available"], sec.get("reason")
    ann = onnx.load(str(tmp_path / "dump" / "after-insert-neurons.onnx"))
    snn = onnx.load(str(tmp_path / "s.onnx"))
    node = {n.output[0]: n.name for n in ann.graph.node if n.domain == SNN_DOMAIN}
    name = {k: node[v] for k, v in relu.items()}
    net = count_netlist(ann, 4, "auto", snn)
    taps = pool_taps(net)
    (resize, (_, of, lo, hi)), = taps.items()
    assert of == name["B"] and (lo, hi) == (0, 6)
    assert {b.kind for b in net.blocks} == {"conv", "deconv", "dense"}
    x = {"x": np.load(tmp_path / "calib.npz")["x"][:8]}
    events = ort_events(snn, x, taps)
    rep = count_synops(net, events)
    ev = {k: events[v].sum(axis=0) for k, v in name.items()}
    # the Resize copies B's events: each position's count twice along both axes
    assert np.array_equal(events[resize].sum(axis=0), ev["B"].repeat(2, 1).repeat(2, 2))

    def synops(src: str, chain) -> float:
        return float((ev[src] * _fanout(ev[src].shape, chain)).sum()) / 8

    expect = {
        "B": synops("A", lambda t: F.conv2d(t, _ones(6, 4, 3), stride=2, padding=1)),
        "D": synops("A", lambda t: F.conv2d(t, _ones(7, 4, 3), padding=1))
        + synops("B", lambda t: F.conv2d(_deconv(t, 5, 2, stride=2), _ones(7, 5, 3),
                                         padding=1)),
        "E": synops("D", lambda t: F.conv2d(t, _ones(8, 7, 3), padding=1))
        + float((ev["B"].repeat(2, 1).repeat(2, 2)
                 * _fanout((6, 8, 8), lambda t: F.conv2d(t, _ones(8, 6, 3), padding=1))
                 ).sum()) / 8,
        "G": synops("E", lambda t: _deconv(t, 4, 3, stride=2, padding=1, output_padding=1)),
    }
    for k, value in expect.items():
        assert rep["layers"][name[k]]["synops"] == pytest.approx(value, rel=1e-12), k
    assert rep["layers"][resize]["kind"] == "upsample"
    # the ANN's MACs include both ConvTransposes (every weight at every input position)
    assert net.ann_macs == (4 * 3 * 9 * 64 + 6 * 4 * 9 * 16 + 6 * 5 * 4 * 16 + 7 * 9 * 9 * 64
                            + 8 * 13 * 9 * 64 + 8 * 4 * 9 * 64 + 5 * 4)


def _one_upsample(op: str, scales=(1, 1, 2, 2), **attrs) -> onnx.ModelProto:
    b = zoo._Builder(12)
    h = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    if op == "Resize":
        h = b.op("Resize", [h, "", b.const(list(scales))], **attrs)
    else:
        h = b.op("ConvTranspose", [h, b.rand((4, 4, 2, 2))], kernel_shape=[2, 2], strides=[2, 2],
                 **attrs)
    h = b.op("Relu", [b.conv(h, 4, 6, **({"strides": [2, 2]} if op == "strided" else {}))])
    return b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 6, 5),
                   input_shape=("N", 3, 8, 8))


@pytest.mark.parametrize("case,reason", [
    ("cubic", "a Resize in mode cubic is not counted"),
    ("linear-1.5", "is not a fixed window"),
    ("strided", "a strided conv or a pooling follows a ConvTranspose"),
    ("cropped", "only through positions that the ConvTranspose before it crops"),
])
def test_what_upsampling_has_no_count_for_says_why(tmp_path, case, reason):
    """A cubic Resize is not counted, nor a linear one whose structure is no deconv window
    (4 -> 6 positions; align_corners at x2 has one); a strided conv after a ConvTranspose does
    not compose with it, nor does a conv that reaches a spike only through positions the
    ConvTranspose cropped (a crop as large as its kernel)."""
    model = (_one_upsample("Resize", mode="cubic") if case == "cubic"
             else _one_upsample("Resize", scales=(1, 1, 1.5, 1.5), mode="linear")
             if case == "linear-1.5"
             else _one_upsample("ConvTranspose", pads=[2, 2, 2, 2]) if case == "cropped"
             else _one_upsample("ConvTranspose"))
    if case == "strided":   # the conv after the ConvTranspose at stride 2
        conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0].startswith(
            "convtranspose"))
        conv.attribute.append(onnx.helper.make_attribute("strides", [2, 2]))
        model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).normal(
        size=(48, 3, 8, 8)).astype(np.float32))
    opts = make_options(target="ort", timesteps=4, calib_method="max",
                        calib_path=str(tmp_path / "calib.npz"))
    sec = compile_model(str(tmp_path / "m.onnx"), tmp_path / "s.onnx", opts).report["synops"]
    assert not sec["available"] and reason in sec["reason"]


def test_a_cropping_conv_transpose_then_a_padded_conv_counts_exactly(tmp_path):
    """ConvTranspose 4x4/2 with pads 1 (the DCGAN form), then a 3x3 conv with pads 1 and no
    neuron between: the conv's padding reads positions the ConvTranspose cropped, but every
    (spike, neuron) pair is also joined inside the map, so the composed structure is exact."""
    b = zoo._Builder(13)
    a = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    up = b.op("ConvTranspose", [a, b.rand((4, 5, 4, 4))], kernel_shape=[4, 4], strides=[2, 2],
              pads=[1, 1, 1, 1])
    d = b.op("Relu", [b.conv(up, 5, 6)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [d])], axis=1), 6, 5),
                    input_shape=("N", 3, 8, 8))
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(3).normal(
        size=(48, 3, 8, 8)).astype(np.float32))
    opts = make_options(target="ort", timesteps=4, calib_method="max",
                        calib_path=str(tmp_path / "calib.npz"))
    compile_model(str(tmp_path / "m.onnx"), tmp_path / "s.onnx", opts,
                  dump_after=["insert-neurons"], dump_dir=tmp_path / "dump")
    ann = onnx.load(str(tmp_path / "dump" / "after-insert-neurons.onnx"))
    snn = onnx.load(str(tmp_path / "s.onnx"))
    node = {n.output[0]: n.name for n in ann.graph.node if n.domain == SNN_DOMAIN}
    events = ort_events(snn, {"x": np.load(tmp_path / "calib.npz")["x"][:8]})
    rep = count_synops(count_netlist(ann, 4, "auto", snn), events)
    ev = events[node[a]].sum(axis=0)
    fan = _fanout(ev.shape, lambda t: F.conv2d(_deconv(t, 5, 4, stride=2, padding=1),
                                               _ones(6, 5, 3), padding=1))
    assert rep["layers"][node[d]]["synops"] == pytest.approx(float((ev * fan).sum()) / 8,
                                                               rel=1e-12)


def _count(tmp_path, model, seed=4):
    """Compile ``model`` (IF, T = 4, max calibration) and count: the count's layers, the events
    by neuron output tensor (summed over 8 samples) and the neuron names by output tensor."""
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(seed).normal(
        size=(48,) + tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    ).astype(np.float32))
    opts = make_options(target="ort", timesteps=4, calib_method="max",
                        calib_path=str(tmp_path / "calib.npz"))
    res = compile_model(str(tmp_path / "m.onnx"), tmp_path / "s.onnx", opts,
                        dump_after=["insert-neurons"], dump_dir=tmp_path / "dump")
    assert res.report["synops"]["available"], res.report["synops"].get("reason")
    ann = onnx.load(str(tmp_path / "dump" / "after-insert-neurons.onnx"))
    snn = onnx.load(str(tmp_path / "s.onnx"))
    net = count_netlist(ann, 4, "auto", snn)
    events = ort_events(snn, {"x": np.load(tmp_path / "calib.npz")["x"][:8]}, pool_taps(net))
    node = {n.output[0]: n.name for n in ann.graph.node if n.domain == SNN_DOMAIN}
    ev = {t: events[name].sum(axis=0) for t, name in node.items()}
    return count_synops(net, events)["layers"], ev, node


def test_grouped_conv_transposes_over_a_concat_count_each_part_s_own_synapses(tmp_path):
    """A depthwise ConvTranspose over Concat(A, B), then a depthwise conv over Concat(A, that):
    each spike reaches one channel's taps (the groups used to be lost to the other part's
    zero rows: 4x the synapses). And a grouped ConvTranspose with an all-zero output channel
    (it crashed the count; its zero weights inside a group count, as stored synapses do)."""
    b = zoo._Builder(14)
    a = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    c = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    up = b.op("ConvTranspose", [b.op("Concat", [a, c], axis=1), b.rand((8, 1, 2, 2))],
              kernel_shape=[2, 2], strides=[2, 2], group=8)
    d = b.op("Relu", [up])
    w = b.rng.normal(size=(4, 3, 2, 2))
    w[2:, 2] = 0   # output channel 5 (the last of group 1): no synapse
    e = b.op("Relu", [b.op("ConvTranspose", [a, b.const(w)], kernel_shape=[2, 2],
                                               strides=[2, 2], group=2)])
    f = b.op("Relu", [b.conv(b.op("Concat", [d, e], axis=1), 14, 14, group=14)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [f])], axis=1), 14, 5),
                    input_shape=("N", 3, 8, 8))
    layers, ev, node = _count(tmp_path, model)

    def dw_deconv(t):
        return F.conv_transpose2d(t, torch.ones((4, 1, 2, 2), dtype=torch.float64), stride=2,
                                  groups=4)

    wz = torch.ones((4, 3, 2, 2), dtype=torch.float64)
    expect = {
        d: sum(float((ev[s] * _fanout(ev[s].shape, dw_deconv)).sum()) for s in (a, c)) / 8,
        e: float((ev[a] * _fanout(ev[a].shape, lambda t: F.conv_transpose2d(
            t, wz, stride=2, groups=2))).sum()) / 8,
        f: sum(float((ev[s] * _fanout(ev[s].shape, lambda t: F.conv2d(
            t, torch.ones((t.shape[1], 1, 3, 3), dtype=torch.float64), padding=1,
            groups=t.shape[1]))).sum()) for s in (d, e)) / 8,
    }
    for t, value in expect.items():
        assert layers[node[t]]["synops"] == pytest.approx(value, rel=1e-12), t


def _ort_fanout(shape: tuple[int, int, int], build) -> np.ndarray:
    """As :func:`_fanout`, with the chain run by ONNX Runtime: ``build(b, x)`` adds its nodes
    (all-ones weights) to a zoo builder and returns the output."""
    import onnxruntime as ort

    b = zoo._Builder(0)
    model = b.model(build(b, "x"), input_shape=("N",) + tuple(shape))
    n = int(np.prod(shape))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.eye(n, dtype=np.float32).reshape((n,) + tuple(shape))})[0]
    return (out.reshape(n, -1) != 0).sum(axis=1).reshape(shape)


@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_a_linear_resize_counts_as_its_window(tmp_path, ctm):
    """A linear Resize is a fixed per-channel linear map: counted as the deconv of its window
    (composed with the conv after it, or straight into a neuron), against ONNX Runtime's own
    Resize on one-hot inputs."""
    attrs = dict(mode="linear", coordinate_transformation_mode=ctm)
    b = zoo._Builder(16)
    a = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    up = b.op("Resize", [a, "", b.const([1, 1, 2, 2])], **attrs)
    d = b.op("Relu", [b.conv(up, 4, 6)])
    e = b.op("Relu", [b.op("Resize", [d, "", b.const([1, 1, 2, 2])], **attrs)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [e])], axis=1), 6, 5),
                    input_shape=("N", 3, 8, 8))
    layers, ev, node = _count(tmp_path, model)

    def resize(bb, x):
        return bb.op("Resize", [x, "", bb.const([1, 1, 2, 2])], **attrs)

    conv_ones = (lambda bb, x: bb.op("Conv", [resize(bb, x), bb.const(np.ones((6, 4, 3, 3)))],
                                     kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    for src, dst, chain in ((a, d, conv_ones), (d, e, resize)):
        fan = _ort_fanout(ev[src].shape, chain)
        assert layers[node[dst]]["synops"] == pytest.approx(float((ev[src] * fan).sum()) / 8,
                                                            rel=1e-12), dst


def test_a_resize_to_the_same_size_counts_as_the_copy_it_is(tmp_path):
    """Scales 1.2 on a 4x4 map give 4x4: ONNX Runtime copies the input (whatever the mode),
    so the conv after it counts as if there were no Resize (it had counted a 2-tap window)."""
    attrs = dict(mode="linear")
    b = zoo._Builder(17)
    a = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    d = b.op("Relu", [b.conv(b.op("Resize", [a, "", b.const([1, 1, 1.2, 1.2])], **attrs), 4, 6)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [d])], axis=1), 6, 5),
                    input_shape=("N", 3, 8, 8))
    layers, ev, node = _count(tmp_path, model)
    fan = _ort_fanout(ev[a].shape, lambda bb, x: bb.op("Conv", [
        bb.op("Resize", [x, "", bb.const([1, 1, 1.2, 1.2])], **attrs),
        bb.const(np.ones((6, 4, 3, 3)))], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    assert layers[node[d]]["synops"] == pytest.approx(float((ev[a] * fan).sum()) / 8, rel=1e-12)


def test_group_structures_the_block_cannot_express_count_only_their_synapses(tmp_path):
    """A conv with groups 2 over Concat(A: 2 channels, B: 4): B's first channel is in group 0,
    its others in group 1; and a ConvTranspose with groups 2 before a conv with groups 3. The
    blocks store such terms densely; the count reads the structure (the count-only netlist's
    weights are ones where the graph stores one) and charges only connected pairs (it had
    counted 1.5-1.7x)."""
    b = zoo._Builder(18)
    a = b.op("Relu", [b.conv("x", 3, 2, strides=[2, 2])])
    c = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    d = b.op("Relu", [b.conv(b.op("Concat", [a, c], axis=1), 6, 6, group=2)])
    up = b.op("ConvTranspose", [c, b.rand((4, 3, 2, 2))], kernel_shape=[2, 2], strides=[2, 2],
              group=2)
    e = b.op("Relu", [b.conv(up, 6, 6, group=3)])
    pooled = [b.op("Flatten", [b.op("GlobalAveragePool", [t])], axis=1) for t in (d, e)]
    model = b.model(b.gemm(b.op("Concat", pooled, axis=1), 12, 5), input_shape=("N", 3, 8, 8))
    layers, ev, node = _count(tmp_path, model)

    def into_d(lo, hi):
        def chain(t):
            full = torch.zeros((t.shape[0], 6) + tuple(t.shape[2:]), dtype=torch.float64)
            full[:, lo:hi] = t
            return F.conv2d(full, _ones(6, 3, 3), padding=1, groups=2)
        return chain

    expect_d = sum(float((ev[s] * _fanout(ev[s].shape, into_d(lo, hi))).sum())
                   for s, lo, hi in ((a, 0, 2), (c, 2, 6))) / 8
    expect_e = float((ev[c] * _fanout(ev[c].shape, lambda t: F.conv2d(F.conv_transpose2d(
        t, torch.ones((4, 3, 2, 2), dtype=torch.float64), stride=2, groups=2),
        _ones(6, 2, 3), padding=1, groups=3))).sum()) / 8
    assert layers[node[d]]["synops"] == pytest.approx(expect_d, rel=1e-12)
    assert layers[node[e]]["synops"] == pytest.approx(expect_e, rel=1e-12)


@pytest.mark.parametrize("size,to", [(8, 8), (10, 7)])
def test_a_resize_to_constant_sizes_compiles_and_counts_its_copies(tmp_path, size, to):
    """Resize(x, sizes=[1, 4, H', W']) named the export batch, which the folded T*N rows
    contradict (the compiled model did not load). canonicalize writes 4 -> 8 as scales, and
    reads 5 -> 7's batch from the input (no float scale gives 7 in both ONNX Runtime and shape
    inference); the copies (ORT's own Resize of the event map) are counted with the conv's
    fan-out, at the size shape inference gives."""
    import onnxruntime as ort

    b = zoo._Builder(19)
    a = b.op("Relu", [b.conv("x", 3, 4, strides=[2, 2])])
    up = b.op("Resize", [a, "", "", b.const([1, 4, to, to], dtype=np.int64)], mode="nearest")
    d = b.op("Relu", [b.conv(up, 4, 6)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [d])], axis=1), 6, 5),
                    input_shape=(1, 3, size, size))
    layers, ev, node = _count(tmp_path, model)
    rb = zoo._Builder(0)
    resize = rb.model(rb.op("Resize", ["x", "", "", rb.const([1, 4, to, to], dtype=np.int64)],
                            mode="nearest"), input_shape=(1, 4, size // 2, size // 2))
    copies = ort.InferenceSession(resize.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"x": ev[a][None].astype(np.float32)})[0][0]
    fan = _fanout((4, to, to), lambda t: F.conv2d(t, _ones(6, 4, 3), padding=1))
    assert layers[node[d]]["synops"] == pytest.approx(float((copies * fan).sum()) / 8,
                                                      rel=1e-12)
