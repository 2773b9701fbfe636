"""The streaming step loop of snncc run (StreamStepper: IO binding, states written in place) gives
every step's outputs bit for bit as the protocol's plain loop (sess.run, states fed back)."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from snn import compile_snn, deep_net, feeds, maxpool_net, options, residual_net, streaming

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
    assert states and in_place_states(proto) == states  # every state is written in place
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
