"""A streaming model of K steps per call (``--steps-per-call K``) equals the one-step model step
for step, bit for bit, in outputs and spike counts: the neurons run their K slices with the state
carried (the kernels' chunked form), a bit-serial shortcut's delay line shifts by K, a
spike-gated MaxPool's running sum adds the K steps in the one-step order."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from snn import (build, chain, compile_snn, deep_net, feeds, input_skip_net, maxpool_net, options,
                 residual_net, streaming)

from snncc.errors import SnnccError
from snncc.simulate import (StreamStepper, _session, _zero_states, run_compiled, split_steps,
                            steps_per_call)

NETS = {"deep": deep_net, "residual": residual_net, "maxpool": maxpool_net,
        "input_skip": input_skip_net}
CASES = [("if", 4, 4, 2.0), ("gn", 2, 4, 2.0), ("mt", 1, 4, 2.0), ("lif", 4, 4, 2.0),
         ("srp", 2, 2, 2.0), ("bitserial", 3, 7, 3.5)]


def per_call(model, key, T, levels, K):
    opts = streaming(options(key, T, maxpool="gate"))
    return compile_snn(model, replace(opts, steps_per_call=K))


def plain_calls(proto, frames, K):
    """Every step's outputs by the protocol's plain loop, K frames per call, time-major."""
    sess = _session(proto, True, True)
    outs = [o.name for o in sess.get_outputs()]
    f = dict(_zero_states(proto, len(next(iter(frames[0].values())))))
    steps = []
    for call in range(0, len(frames), K):
        f.update({k: np.concatenate([fr[k] for fr in frames[call:call + K]])
                  for k in frames[0]})
        f["step"] = np.array(call, dtype=np.int64)
        values = dict(zip(outs, sess.run(outs, f)))
        for k in [k for k in f if k.startswith("state_in/")]:
            f[k] = values["state_out/" + k[len("state_in/"):]]
        steps += split_steps({k: v for k, v in values.items()
                              if not k.startswith("state_out/")}, K)
    return steps


@pytest.mark.requires_runtime
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("key, T, levels, lam", CASES)
def test_k_steps_per_call_equal_one_step_calls_with_changing_frames(net, key, T, levels, lam):
    model = NETS[net](lam=lam, levels=levels)
    one, _, ctx = per_call(model, key, T, levels, 1)
    steps = ctx.notes["schedule"]["steps"]
    # a frame that changes every step (the hardest case for the carried state) over two windows
    frames = [feeds(model, batch=3, seed=s, scale=2.0) for s in range(2 * steps)]
    want = plain_calls(one, frames, 1)
    for K in sorted({2, steps} - {1}):
        if steps % K:
            continue
        proto, _, kctx = per_call(model, key, T, levels, K)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert steps_per_call(proto) == K == kctx.notes["schedule"]["steps_per_call"]
        assert meta["snncc.steps"] == str(steps)
        got = plain_calls(proto, frames, K)
        assert len(got) == len(want)
        for g, (a, b) in enumerate(zip(got, want)):
            assert a.keys() == b.keys()
            for k in b:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"K={K}, step {g}, {k}")
        # the stepper (IO binding, states in place): a frame per step through set_inputs
        sess = _session(proto, True, True)
        stepper = StreamStepper(sess, proto, frames[0], [o.name for o in sess.get_outputs()])
        for call in range(0, len(frames), K):
            stepper.set_inputs({k: np.concatenate([fr[k] for fr in frames[call:call + K]])
                                for k in frames[0]})
            for g, a in enumerate(split_steps(stepper.step(call), K), call):
                for k in want[g]:
                    np.testing.assert_array_equal(a[k], want[g][k], err_msg=f"step {g}, {k}")


@pytest.mark.requires_runtime
@pytest.mark.parametrize("key, T, levels, lam", [CASES[0], CASES[4], CASES[5]])
def test_run_compiled_gives_the_same_results_and_spike_counts(key, T, levels, lam, tmp_path):
    model = residual_net(lam=lam, levels=levels)
    x = feeds(model, batch=5, scale=2.0)
    results = []
    for K in (1, 2):
        proto, _, _ = per_call(model, key, T, levels, K)
        onnx.save(proto, tmp_path / f"k{K}.onnx")
        results.append(run_compiled(tmp_path / f"k{K}.onnx", x))
    (a, b) = results
    assert a.outputs.keys() == b.outputs.keys()
    for k in a.outputs:
        np.testing.assert_array_equal(a.outputs[k], b.outputs[k])
    assert a.spikes_per_layer == b.spikes_per_layer and a.spikes_per_layer
    assert a.events_per_layer == b.events_per_layer


@pytest.mark.requires_runtime
def test_held_samples_are_repeated_over_the_call():
    """N samples given to the stepper are held over the K steps of a call, as the one-step model
    holds them; a wrong shape is SNN-E105."""
    model = deep_net(lam=2.0, levels=4)
    one, _, ctx = per_call(model, "if", 4, 4, 1)
    four, _, _ = per_call(model, "if", 4, 4, 4)
    x = feeds(model, batch=2, scale=2.0)
    want = plain_calls(one, [x] * 4, 1)
    sess = _session(four, True, True)
    stepper = StreamStepper(sess, four, x)
    for g, a in enumerate(split_steps(stepper.step(0), 4)):
        for k in want[g]:
            np.testing.assert_array_equal(a[k], want[g][k])
    with pytest.raises(SnnccError) as err:
        stepper.set_inputs({k: np.concatenate([v] * 3) for k, v in x.items()})
    assert err.value.code == "SNN-E105" and "each of the 4 steps" in err.value.message


@pytest.mark.parametrize("kw, words", [
    ({"steps_per_call": 3}, "does not divide the 4 steps"),
    ({"steps_per_call": 0}, "positive integer"),
    ({"steps_per_call": 2, "schedule": "folded"}, "folded"),
])
def test_steps_per_call_that_cannot_be_is_e375(kw, words, tmp_path):
    from snncc.driver import compile_model, make_options

    model = deep_net(lam=2.0, levels=4)
    onnx.save(model, tmp_path / "m.onnx")
    kw = {"schedule": "streaming", **kw}
    with pytest.raises(SnnccError) as err:
        compile_model(tmp_path / "m.onnx", tmp_path / "out.onnx",
                      make_options(target="ort", neuron="if", timesteps=4, **kw))
    assert err.value.code == "SNN-E375" and words in err.value.message
    assert not (tmp_path / "out.onnx").exists()


def test_an_edited_steps_per_call_is_e102():
    model = deep_net(lam=2.0, levels=4)
    proto, _, _ = per_call(model, "if", 4, 4, 2)
    for bad in ("-2", "3", "999999"):   # not a count, not dividing the 4 steps
        for p in proto.metadata_props:
            if p.key == "snncc.steps_per_call":
                p.value = bad
        with pytest.raises(SnnccError) as err:
            steps_per_call(proto)
        assert err.value.code == "SNN-E102"


@pytest.mark.requires_runtime
def test_a_model_that_fixes_its_batch_runs_k_frames_of_it_per_call(tmp_path):
    """A model exported with batch 1: its K-step model takes K frames of one sample per call, and
    run_compiled still runs one sample at a time (it had read the input's K rows as the batch)."""
    model = deep_net(lam=2.0, levels=4)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    x = feeds(model, batch=1, scale=2.0)
    many = {k: np.concatenate([v, feeds(model, batch=1, seed=7, scale=2.0)[k] * 0.5])
            for k, v in x.items()}
    results = []
    for K in (1, 4):
        proto, _, _ = per_call(model, "if", 4, 4, K)
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == K
        onnx.save(proto, tmp_path / f"k{K}.onnx")
        results.append(run_compiled(tmp_path / f"k{K}.onnx", many))
    a, b = results
    for k in a.outputs:
        assert a.outputs[k].shape[0] == 2
        np.testing.assert_array_equal(a.outputs[k], b.outputs[k])
    assert a.spikes_per_layer == b.spikes_per_layer


def stem_net(stem: str) -> onnx.ModelProto:
    """An analog stem op (``p`` from ``x``) before conv+QCFS, GAP, Gemm: with K steps per call
    the stem runs on the K steps too."""
    body = (stem + "c1 = Conv <pads = [1, 1, 1, 1]> (p, w1, b1)\n" + chain(1, "c1", "a1")
            + "g = GlobalAveragePool(a1)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[3,4] wf", "float[3] bf",
             "int64 zero_ax = {0}", "int64 one_ax = {1}", "int64[4] rep1 = {1, 1, 1, 1}"]
    return build(body, decls, 1, lam=2.0, levels=4)


MIXING_STEMS = {   # each mixes the rows of axis 0: K steps of a call would be mixed
    "cumsum": "p = CumSum(x, zero_ax)\n",
    "reducemax": "r = ReduceMax <axes = [0], keepdims = 1> (x)\n p = Add(x, r)\n",
    "softmax": "p = Softmax <axis = 0> (x)\n",
    "argmax": "r = ArgMax (x)\n c = Cast <to = 1> (r)\n p = Add(x, c)\n",
    "tile": None,   # _tile_net
    "einsum": "p = Einsum <equation = \"nchw->nchw\"> (x)\n",
}
ROW_STEMS = {      # each keeps the rows apart
    "cumsum": "p = CumSum(x, one_ax)\n",
    "reducemax": "r = ReduceMax <axes = [1], keepdims = 1> (x)\n p = Sub(x, r)\n",
    "softmax": "p = Softmax <axis = 1> (x)\n",
    "tile": "p = Tile(x, rep1)\n",
    "abs": "p = Abs(x)\n",
}


@pytest.mark.parametrize("name", sorted(MIXING_STEMS))
def test_an_op_across_the_k_steps_is_e242(name):
    """A review found a CumSum or ReduceMax over axis 0 in the stem compiled at K = 2 and summed
    the call's steps together: now SNN-E242 names the op and --steps-per-call 1, which
    compiles (one step per call has one row per sample)."""
    model = _tile_net() if name == "tile" else stem_net(MIXING_STEMS[name])
    per_call(model, "if", 4, 4, 1)
    with pytest.raises(SnnccError) as err:
        per_call(model, "if", 4, 4, 2)
    assert err.value.code == "SNN-E242"
    text = str(err.value)
    assert "holds the 2 steps of a call with --steps-per-call 2" in text
    assert "use --steps-per-call 1" in text and "folded" not in text


def _tile_net() -> onnx.ModelProto:
    """Tile over axis 0 (two copies of the batch), then the first N rows kept by a Slice whose
    end is the batch size: per sample at one step per call, mixed at K."""
    body = ("n = Shape <start = 0, end = 1> (x)\n t = Tile(x, rep0)\n"
            " p = Slice(t, zero1, n, zero1)\n c1 = Conv <pads = [1, 1, 1, 1]> (p, w1, b1)\n"
            + chain(1, "c1", "a1")
            + "g = GlobalAveragePool(a1)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n")
    decls = ["float[4,2,3,3] w1", "float[4] b1", "float[3,4] wf", "float[3] bf",
             "int64[4] rep0 = {2, 1, 1, 1}", "int64[1] zero1 = {0}"]
    return build(body, decls, 1, lam=2.0, levels=4)


@pytest.mark.requires_runtime
@pytest.mark.parametrize("name", sorted(ROW_STEMS))
def test_a_row_wise_stem_runs_k_steps_per_call_as_one(name):
    model = stem_net(ROW_STEMS[name])
    one, _, _ = per_call(model, "if", 4, 4, 1)
    frames = [feeds(model, batch=3, seed=s, scale=2.0) for s in range(4)]
    want = plain_calls(one, frames, 1)
    got = plain_calls(per_call(model, "if", 4, 4, 2)[0], frames, 2)
    for g, (a, b) in enumerate(zip(got, want)):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"step {g}, {k}")


def test_inspect_reads_a_k_step_model_as_the_one_step_model():
    """The K-step model keeps its intermediate shapes, K times the rows (a review found them
    cleared: inspect showed '?' and a total of 1,280 MACs); inspect lists no canonicalize
    problems for the compiled model's int64 step and state inputs."""
    from snncc.inspect import inspect_model

    model = residual_net(lam=2.0, levels=4)
    reports = [inspect_model(per_call(model, "if", 4, 4, K)[0]) for K in (1, 2)]
    one, two = reports
    assert two["macs"]["total"] == one["macs"]["total"] > 0
    assert two["macs"]["complete"] and two["problems"] == one["problems"] == []
    assert two["compiled"]["steps_per_call"] == 2
    for group in one["nodes"]:
        for a, b in zip(one["nodes"][group], two["nodes"][group]):
            assert a["node"] == b["node"]
            if a["output_shape"]:
                assert b["output_shape"] == ["2*N"] + a["output_shape"][1:]


@pytest.mark.requires_runtime
def test_the_stepper_takes_a_frame_per_step_from_its_constructor_and_calls_at_multiples_of_k():
    """``frames=True``: the K*N rows are the call's frames, not K*N held samples (a review found
    them tiled again to K*K*N rows); step(g) with g not a multiple of K is SNN-E349 (it had run
    the call as if it started at g)."""
    model = deep_net(lam=2.0, levels=4)
    one, _, _ = per_call(model, "if", 4, 4, 1)
    two, _, _ = per_call(model, "if", 4, 4, 2)
    frames = [feeds(model, batch=3, seed=s, scale=2.0) for s in range(4)]
    want = plain_calls(one, frames, 1)
    sess = _session(two, True, True)
    first = {k: np.concatenate([frames[0][k], frames[1][k]]) for k in frames[0]}
    stepper = StreamStepper(sess, two, first, frames=True)
    assert stepper.batch == 3
    got = split_steps(stepper.step(0), 2)
    stepper.set_inputs({k: np.concatenate([frames[2][k], frames[3][k]]) for k in frames[0]})
    got += split_steps(stepper.step(2), 2)
    for g, (a, b) in enumerate(zip(got, want)):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"step {g}, {k}")
    with pytest.raises(SnnccError) as err:
        stepper.step(3)
    assert err.value.code == "SNN-E349" and "multiples of 2" in err.value.message
    assert "step 0, 2, 4, ..." in err.value.hint
    with pytest.raises(SnnccError) as err:
        StreamStepper(sess, two, frames[0], frames=True)   # 3 rows: not K*N
    assert err.value.code == "SNN-E105"
