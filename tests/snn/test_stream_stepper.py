"""The streaming step loop of snncc run (StreamStepper: IO binding, states written in place) gives
every step's outputs bit for bit as the protocol's plain loop (sess.run, states fed back)."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from snn import (compile_snn, deep_net, feeds, input_skip_net, maxpool_net, options,
                 residual_net, streaming)

from snncc.simulate import StreamStepper, _session, _zero_states, in_place_states

NETS = {"deep": deep_net, "residual": residual_net, "maxpool": maxpool_net}
CASES = [("if", 4, 4, 2.0), ("gn", 2, 4, 2.0), ("mt", 1, 4, 2.0), ("lif", 4, 4, 2.0),
         ("srp", 2, 2, 2.0), ("bitserial", 4, 15, 7.5)]


def plain_steps(sess, proto, x, steps):
    """Every step's outputs by the protocol's plain loop."""
    outs = [o.name for o in sess.get_outputs()]
    f = {**x, **_zero_states(proto, len(next(iter(x.values()))))}
    for g in range(steps):
        f["step"] = np.array(g, dtype=np.int64)
        values = dict(zip(outs, sess.run(outs, f)))
        for k in [k for k in f if k.startswith("state_in/")]:
            f[k] = values["state_out/" + k[len("state_in/"):]]
        yield {k: v for k, v in values.items() if not k.startswith("state_out/")}


def assert_stepper_equals_plain(proto, x, steps, optimize):
    sess = _session(proto, True, optimize)
    stepper = StreamStepper(sess, proto, x, [o.name for o in sess.get_outputs()])
    kept = []
    for g, want in enumerate(plain_steps(sess, proto, x, steps)):
        got = stepper.step(g)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"step {g}, {k}")
        kept.append(got)
    return kept, stepper


@pytest.mark.requires_runtime
@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("net", ["deep", "residual", "maxpool"])
@pytest.mark.parametrize("key, T, levels, lam", CASES)
def test_in_place_states_give_the_plain_loop_step_for_step(net, key, T, levels, lam, optimize):
    model = NETS[net](lam=lam, levels=levels)
    proto, _, ctx = compile_snn(model, streaming(options(key, T, maxpool="gate")))
    states = {i.name[len("state_in/"):] for i in proto.graph.input
              if i.name.startswith("state_in/")}
    # every state is written in place but a bit-serial shortcut's delay line (a shift by Concat)
    assert states and in_place_states(proto) == {s for s in states if not s.endswith("/delay")}
    assert any(s.endswith("/delay") for s in states) == (key == "bitserial" and net == "residual")
    x = feeds(model, batch=4, scale=2.0)
    kept, _ = assert_stepper_equals_plain(proto, x, ctx.notes["schedule"]["steps"], optimize)
    # what a step returned stays as it was (the binding reuses its output buffers)
    again = list(plain_steps(_session(proto, True, optimize), proto, x, len(kept)))
    for got, want in zip(kept, again):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.requires_runtime
def test_a_state_read_elsewhere_is_not_written_in_place():
    """A second reader of state_in/X (here a probe output) could see the new state if it ran
    after the writer: that state goes through ORT's own buffers instead."""
    model = deep_net(lam=2.0, levels=4)
    proto, _, ctx = compile_snn(model, streaming(options("if", 4)))
    name = next(i.name for i in proto.graph.input if i.name.startswith("state_in/"))
    probed = copy.deepcopy(proto)
    probed.graph.node.append(onnx.helper.make_node("Neg", [name], ["probe"]))
    probed.graph.output.append(onnx.helper.make_tensor_value_info(
        "probe", onnx.TensorProto.FLOAT, None))
    assert name[len("state_in/"):] not in in_place_states(probed)
    assert len(in_place_states(probed)) == len(in_place_states(proto)) - 1
    kept, stepper = assert_stepper_equals_plain(probed, feeds(model, batch=4), 6, False)
    assert stepper.passed == [name[len("state_in/"):]]
    assert any(np.any(k["probe"]) for k in kept)  # the probe saw nonzero membranes


def _gemm_state_model() -> onnx.ModelProto:
    """state_out = Gemm(state_in, W, C=x): a state that cannot be written in place."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [0.0, 1.0, 1.0, 0.0])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["state_in/s", "w", "x"], ["state_out/s"]),
         helper.make_node("Identity", ["state_out/s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("state_in/s", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("step", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("state_out/s", TensorProto.FLOAT, [1, 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.requires_runtime
def test_an_op_that_may_write_before_reading_keeps_its_state_out_of_place():
    """state_out = Gemm(state_in, W, C=x): ORT's Gemm copies C into its output before reading A,
    so the state cannot share a buffer; the stepper still equals the plain loop."""
    proto = _gemm_state_model()
    assert in_place_states(proto) == set()
    x = {"x": np.array([[1.0, 2.0]], np.float32)}
    kept, stepper = assert_stepper_equals_plain(proto, x, 4, False)
    assert stepper.passed == ["s"] and kept[-1]["y"].tolist() != kept[0]["y"].tolist()


@pytest.mark.requires_runtime
@pytest.mark.parametrize("neuron", ["if", "bitserial", "srp"])
def test_blocked_layout_states_in_place(neuron, tmp_path):
    """The bundled MNIST CNN (16-channel maps: its neurons and their states move into ORT's
    blocked layout), streaming: the stepper in the blocked session equals the plain loop."""
    from pathlib import Path

    from snncc.driver import compile_model, make_options
    from snncc.runtime import layout

    examples = Path(__file__).resolve().parents[2] / "examples"
    out = tmp_path / "m.onnx"
    compile_model(str(examples / "mnist_cnn.onnx"), out,
                  make_options(target="ort", timesteps=4, neuron=neuron, schedule="streaming",
                               calib_path=str(examples / "mnist_calib.npz"), fidelity_samples=0))
    proto = onnx.load(str(out))
    if layout.block_size() > 1:
        assert layout.blocked_model(proto)[1] > 0
    x = {proto.graph.input[0].name: np.load(examples / "mnist_test.npz")["x"][:6].astype(np.float32)}
    steps = int({p.key: p.value for p in proto.metadata_props}["snncc.steps"])
    assert_stepper_equals_plain(proto, x, steps, True)


@pytest.mark.requires_runtime
@pytest.mark.parametrize("net, key, levels", [("maxpool", "if", 4), ("deep", "bitserial", 15),
                                              ("residual", "mt", 4)])
def test_step_zero_starts_a_new_sequence(net, key, levels):
    """A stepper run again from step 0 gives the first sequence's outputs bit for bit: every
    state is zero again (a spike-gated MaxPool's running sum had carried over: 11.07 off on a
    helper's max-pool MNIST net); and the samples are the stepper's own copy (changing the
    caller's array had changed the outputs of a float32 input, not of a float64 one)."""
    model = NETS[net](lam=2.0, levels=levels)
    proto, _, ctx = compile_snn(model, streaming(options(key, 4, maxpool="gate")))
    steps = ctx.notes["schedule"]["steps"]
    x = feeds(model, batch=3, scale=2.0)
    for optimize in (False, True):
        first, _ = assert_stepper_equals_plain(proto, x, steps, optimize)
        sess = _session(proto, True, optimize)
        mine = {k: v.copy() for k, v in x.items()}
        stepper = StreamStepper(sess, proto, mine, [o.name for o in sess.get_outputs()])
        for v in mine.values():
            v += 1.0      # the caller reuses its array: the stepper keeps the samples it got
        for _ in range(2):
            for g in range(steps):
                got = stepper.step(g)
                for k in first[g]:
                    np.testing.assert_array_equal(got[k], first[g][k], err_msg=f"step {g}, {k}")


@pytest.mark.requires_runtime
def test_a_restart_zeroes_states_passed_through_ort_buffers():
    """The out-of-place path of the restart (the Gemm state above): step 0 again starts from
    zero."""
    proto = _gemm_state_model()
    x = {"x": np.array([[1.0, 2.0]], np.float32)}
    sess = _session(proto, True, False)
    stepper = StreamStepper(sess, proto, x, ["y"])
    runs = [[stepper.step(g)["y"].tolist() for g in range(4)] for _ in range(2)]
    assert stepper.passed == ["s"] and runs[0] == runs[1] and runs[0][0] != runs[0][-1]


@pytest.mark.requires_runtime
def test_set_inputs_feeds_new_samples():
    """The stepper keeps its own copy of the samples; set_inputs feeds new ones (a caller had
    streamed frames by overwriting its array, which the copy would ignore)."""
    model = deep_net(lam=2.0, levels=4)
    proto, _, ctx = compile_snn(model, streaming(options("if", 4)))
    steps = ctx.notes["schedule"]["steps"]
    a, b = feeds(model, batch=3, scale=2.0), feeds(model, batch=3, scale=1.0)
    want, _ = assert_stepper_equals_plain(proto, b, steps, False)
    sess = _session(proto, True, False)
    stepper = StreamStepper(sess, proto, a, [o.name for o in sess.get_outputs()])
    stepper.step(0)
    stepper.set_inputs(b)
    for g in range(steps):
        got = stepper.step(g)
        for k in want[g]:
            np.testing.assert_array_equal(got[k], want[g][k])
    from snncc.errors import SnnccError

    with pytest.raises(SnnccError) as err:
        stepper.set_inputs({k: v[:1] for k, v in b.items()})
    assert err.value.code == "SNN-E105"



@pytest.mark.parametrize("net", [residual_net, deep_net, input_skip_net])
def test_bit_serial_streaming_delays_shortcuts_so_changing_frames_stay_whole(net):
    """Each bit-serial layer fires one epoch late, and the residual shortcut had not been
    delayed: a helper's MNIST ResNet, fed a new digit each epoch, mixed frames (81 % agreement
    with the frame D epochs back; the bundled one 74-94 % per epoch, logits up to 9.9 off). The
    shallower train now waits in a delay line: epoch e of a stream of changing frames equals,
    bit for bit, the held-input stream of frame e - D. An analog branch from the input (this
    step's frame) waits the whole depth of the train it meets (a review's input-skip net)."""
    proto, report, ctx = compile_snn(net(lam=2.0, levels=7), streaming(options("bitserial", 3)))
    assert report.rows[-1].counts.get("delays", 0) == (0 if net is deep_net else 1)
    assert not [w for w in ctx.warnings if "delayed" in w], ctx.warnings
    meta = {p.key: p.value for p in proto.metadata_props}
    steps, first = int(meta["snncc.steps"]), int(meta["snncc.decode_from"])
    S, D = steps - first, first // (steps - first)
    frames = [feeds(net(lam=2.0, levels=7), seed=s) for s in range(4)]
    sess = _session(proto, True, True)

    def window_means(stepper, per_epoch):
        out, g = [], 0
        for x in per_epoch:
            stepper.set_inputs(x)
            out.append(np.mean([next(iter(stepper.step(g + k).values())) for k in range(S)],
                               axis=0))
            g += S
        return out

    held = [window_means(StreamStepper(sess, proto, x), [x] * (D + 1))[-1] for x in frames]
    changing = window_means(StreamStepper(sess, proto, frames[0]),
                            frames + [frames[-1]] * D)[D:]
    for e, (got, want) in enumerate(zip(changing, held)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {e}")
