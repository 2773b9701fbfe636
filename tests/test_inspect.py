"""snncc inspect: groups, unsupported ops, hand-computed MACs."""
from __future__ import annotations

import onnx
import pytest
import zoo

from snncc.inspect import format_inspect, inspect_model

CONV_3_4_K3_8x8 = 4 * 8 * 8 * 3 * 3 * 3  # Cout*Hout*Wout * Cin*kH*kW


@pytest.mark.parametrize("name, macs", [
    ("act_many", [CONV_3_4_K3_8x8, 4 * 64 * 4 * 9, 4 * 64 * 4 * 9, 4 * 5]),
    ("pools", [CONV_3_4_K3_8x8, 4 * 4 * 4 * 4 * 9, 4 * 5]),        # second conv after 2x2 pool
    ("channel_shuffle", [8 * 64 * 27, 4 * 64 * (8 // 2) * 9, 4 * 5]),  # groups=2
    ("matmul_add_head", [CONV_3_4_K3_8x8, 4 * 5]),
    ("reshape_batch1", [CONV_3_4_K3_8x8, 256 * 5]),
])
def test_macs_per_layer_and_total(name, macs):
    report = inspect_model(zoo.ZOO[name]())
    assert [layer["macs"] for layer in report["macs"]["layers"]] == macs
    assert report["macs"]["total"] == sum(macs) and report["macs"]["complete"]


def test_groups_and_versions():
    report = inspect_model(zoo.ir3_opset7_inits_as_inputs())
    assert (report["ir_version"], report["opset"]) == (3, 7)
    ops = {group: [n["op"] for n in nodes] for group, nodes in report["nodes"].items()}
    assert ops == {"linear": ["Conv", "Gemm"], "activation": ["Relu"], "pooling": ["MaxPool"],
                   "other": ["BatchNormalization", "Flatten"]}
    assert report["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}
    assert report["unsupported"] == [] and report["problems"] == []


def test_unsupported_listed_with_hints():
    report = inspect_model(zoo.act_many())
    assert [u["code"] for u in report["unsupported"]] == ["SNN-E201"] * 3 + ["SNN-E204"]
    assert all(u["hint"] for u in report["unsupported"])
    text = format_inspect(report)
    assert text.count("retrain the model") == 2 and "Hint: as for '/Sigmoid_6'" in text


def test_dynamic_model_reports_problem_then_uses_input_shape():
    report = inspect_model(zoo.dynamic_hw())
    assert [p["code"] for p in report["problems"]] == ["SNN-E114"]
    assert not report["macs"]["complete"]
    # not "cannot convert: none" under a problem that stops compile (an export sweep)
    assert "compile stops on the problem above" in format_inspect(report)
    report = inspect_model(zoo.dynamic_hw(), {"x": [1, 3, 8, 8]})
    assert report["problems"] == [] and report["macs"]["complete"]
    assert report["canonical_inputs"][0]["shape"] == ["batch", 3, 8, 8]


@pytest.mark.parametrize("shapes, code", [({"x": [1, 4, 8, 8]}, "SNN-E116"),
                                          ({"y": [1, 3, 8, 8]}, "SNN-E115")])
def test_a_wrong_input_shape_is_an_error_not_a_listed_problem(tmp_path, capsys, shapes, code):
    """A wrong --input-shape is the user's error: inspect exits 2 as compile does (it used to list
    it as a model problem, exit 0 and print MACs of a half-inferred graph)."""
    from snncc.cli import main
    from snncc.errors import SnnccError

    with pytest.raises(SnnccError) as err:
        inspect_model(zoo.dynamic_hw(), shapes)
    assert err.value.code == "SNN-E110" or code in err.value.codes
    path = tmp_path / "m.onnx"
    onnx.save(zoo.dynamic_hw(), path)
    name, dims = next(iter(shapes.items()))
    assert main(["inspect", str(path), "--input-shape", f"{name}={'x'.join(map(str, dims))}"]) == 2
    assert code in capsys.readouterr().err


def test_from_path_and_text(tmp_path):
    model = zoo.sum3()
    path = tmp_path / "sum3.onnx"
    onnx.save(model, path)
    before = model.SerializeToString()
    report = inspect_model(path)
    assert model.SerializeToString() == before
    text = format_inspect(report)
    assert f"total MACs per sample: {report['macs']['total']:,}" in text
    for nodes in report["nodes"].values():
        for node in nodes:
            assert node["node"] in text


def test_an_op_of_an_unknown_domain_cannot_convert_in_inspect_or_compile(tmp_path):
    """A custom-domain op after the last ReLU looked like an output head to inspect, while
    compile failed on it (ONNX Runtime cannot run it, so nothing can be calibrated)."""
    import numpy as np

    from snncc.driver import compile_model, make_options
    from snncc.errors import SnnccError

    model = zoo.matmul_add_head()
    node = model.graph.node[-1]
    model.graph.node.append(onnx.helper.make_node("Foo", [node.output[0]], ["foo"], name="foo",
                                                  domain="my.ops"))
    model.graph.output[0].name = "foo"
    model.opset_import.append(onnx.helper.make_opsetid("my.ops", 1))
    report = inspect_model(model)
    assert [u["code"] for u in report["unsupported"]] == ["SNN-E205"]
    assert "Foo" not in [h["op"] for h in report["output_head"]]
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((8, 3, 8, 8), np.float32))
    for analog in (False, True):
        with pytest.raises(SnnccError) as err:
            compile_model(tmp_path / "m.onnx", tmp_path / "o.onnx", make_options(
                calib_path=str(tmp_path / "c.npy"), allow_analog=analog))
        assert err.value.code == "SNN-E205"
    assert not (tmp_path / "o.onnx").exists()


def test_an_activation_in_the_analog_prefix_is_said_to_run_once(tmp_path, capsys):
    """A Sigmoid before the first spiking layer compiled as an analog op on the input, exact,
    while inspect said 'cannot convert: none' and compile nothing (a CLI audit): both say it."""
    from pathlib import Path

    import onnx

    from snncc.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    proto = onnx.load(str(examples / "digits_cnn.onnx"))
    next(n for n in proto.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    onnx.save(proto, str(tmp_path / "sig.onnx"))
    assert main(["inspect", str(tmp_path / "sig.onnx")]) == 0
    assert "run once on the input, as analog ops, not neurons (1)" in capsys.readouterr().out
    assert main(["compile", str(tmp_path / "sig.onnx"), "--calib",
                 str(examples / "digits_cnn_calib.npz"), "--no-fidelity", "-o",
                 str(tmp_path / "s.onnx")]) == 0
    assert "run once on the input, as analog ops, not neurons: 1:" in capsys.readouterr().out
    # a Clip that is no clipped ReLU is one too (a review: its table entry 'spikes')
    import numpy as np
    from onnx import numpy_helper

    clip = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    clip.op_type = "Clip"
    clip.input.extend(["lo", "hi"])
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), k)
                                    for k, v in (("lo", -1.0), ("hi", 1.0))])
    onnx.save(proto, str(tmp_path / "clip.onnx"))
    assert main(["inspect", str(tmp_path / "clip.onnx")]) == 0
    assert "run once on the input, as analog ops, not neurons (1)" in capsys.readouterr().out


def test_inspect_with_a_target_says_what_its_backend_refuses(tmp_path, capsys):
    """inspect said 'cannot convert: none' for a max-pool net that compile --target loihi then
    refused (E270) after loading its data; --target runs compile's check before calibrating."""
    from snncc.cli import main
    from snncc.inspect import inspect_model

    onnx.save(zoo.stem_net(), tmp_path / "m.onnx")
    report = inspect_model(tmp_path / "m.onnx", target="loihi")
    check = report["target_check"]
    assert check["checked"] and {p["code"] for p in check["problems"]} == {"SNN-E270"}
    assert inspect_model(tmp_path / "m.onnx", target="ort")["target_check"]["problems"] == []
    assert "target_check" not in inspect_model(tmp_path / "m.onnx")
    assert main(["inspect", str(tmp_path / "m.onnx"), "--target", "nir", "--neuron", "mt"]) == 0
    out = capsys.readouterr().out
    assert "--target nir (--neuron mt, -T 4) cannot express" in out and "SNN-E691" in out
    assert main(["inspect", str(tmp_path / "m.onnx"), "-T", "2"]) == 0
    assert "-T ignored without --target" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

