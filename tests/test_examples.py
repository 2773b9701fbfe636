"""The example models export to clean ONNX that matches torch, the data splits are fixed, and the
bundled MNIST artefacts classify at the accuracy recorded in examples/README.md."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import session

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.requires_torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))

from examples.data import load_digits_split, load_mnist_subset  # noqa: E402
from examples.export_models import INPUT_NAME, OUTPUT_NAME, export, main, random_model  # noqa: E402
from examples.models import INPUT_SHAPES, MODELS  # noqa: E402

CASES = [pytest.param(name, {}, id=name) for name in MODELS if name != "resnet34"] + [
    pytest.param("resnet34", {}, id="resnet34", marks=pytest.mark.slow),
    pytest.param("mnist_cnn", {"pool": "max"}, id="mnist_cnn-maxpool"),
    pytest.param("vgg11", {"pool": "max"}, id="vgg11-maxpool"),
    pytest.param("resnet18", {"stem": "torchvision"}, id="resnet18-torchvision-stem"),
]


@pytest.mark.parametrize("name,kw", CASES)
def test_export_matches_torch(name, kw, tmp_path):
    shape = INPUT_SHAPES[name]
    model = random_model(name, shape, seed=1, **kw)
    path = tmp_path / f"{name}.onnx"
    export(model, str(path), shape, dynamic_batch=True)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert {n.domain for n in proto.graph.node} == {""}
    assert not {"Shape", "Gather", "Identity"} & {n.op_type for n in proto.graph.node}
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    x = np.random.default_rng(2).normal(size=(3,) + shape[1:]).astype(np.float32)
    (got,) = session(proto).run(None, {INPUT_NAME: x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batchnorm_is_kept_with_nontrivial_statistics(tmp_path):
    path = tmp_path / "resnet18.onnx"
    main(["resnet18", "-o", str(path)])
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 20 and "Identity" not in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    var = inits["stem.1.running_var"]
    assert not np.allclose(var, 1.0) and not np.allclose(inits["stem.1.weight"], 1.0)


def test_cli_input_shape(tmp_path):
    path = tmp_path / "vgg.onnx"
    main(["vgg11", "-o", str(path), "--input-shape", "2x1x64x64"])
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 1, 64, 64]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_subset(seed=0)


@pytest.mark.parametrize("loader,side,sizes", [
    (load_mnist_subset, 28, (3500, 500, 1000)),
    (load_digits_split, 8, (1257, 180, 360)),
])
def test_data_split_shapes_and_determinism(loader, side, sizes):
    split = loader(seed=0)
    for (x, y), n in zip(split, sizes):
        assert x.shape == (n, 1, side, side) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) <= set(range(10))
    again = loader(seed=0)
    for part, part_again in zip(split, again):
        np.testing.assert_array_equal(part[0], part_again[0])
        np.testing.assert_array_equal(part[1], part_again[1])
    assert not np.array_equal(loader(seed=1).test[1], split.test[1])


def recorded_test_accuracy() -> float:
    text = (EXAMPLES / "README.md").read_text()
    return float(re.search(r"test accuracy:\s*([\d.]+)\s*%", text).group(1)) / 100


def test_bundled_data_match_the_loader(mnist):
    test = np.load(EXAMPLES / "mnist_test.npz")
    x, y = mnist.test
    np.testing.assert_array_equal(test["x"], x)
    np.testing.assert_array_equal(test[INPUT_NAME], x)
    np.testing.assert_array_equal(test["y"], y)
    calib = np.load(EXAMPLES / "mnist_calib.npz")
    np.testing.assert_array_equal(calib[INPUT_NAME], mnist.train[0][:256])


def test_bundled_model_accuracy():
    proto = onnx.load(str(EXAMPLES / "mnist_cnn.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    test = np.load(EXAMPLES / "mnist_test.npz")
    (logits,) = session(proto).run(None, {INPUT_NAME: test[INPUT_NAME]})
    assert logits.shape == (1000, 10)
    accuracy = float((logits.argmax(1) == test["y"]).mean())
    assert accuracy >= recorded_test_accuracy() - 0.005


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python block that calls compile_model runs as written (from a folder with
    the repo's examples/ and an out/ beside it) and gives the quoted-table accuracy range."""
    import re

    text = (EXAMPLES.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "compile_model" in b)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    acc = (scope["run"].outputs["logits"].argmax(1) == scope["test"]["y"]).mean()
    assert acc > 0.97 and scope["res"].report["fidelity"]["snn_vs_ann"]["top1_agreement"] > 0.9


def test_other_nets_table_is_the_json_it_came_from():
    """examples/results/other_nets.md is other_nets.py's rendering of other_nets.json, and every
    net of the script was measured; each architecture builds and exports (no training here)."""
    import json

    from examples import other_nets

    rows = json.loads((EXAMPLES / "results" / "other_nets.json").read_text())
    assert list(rows) == list(other_nets.NETS)
    assert (EXAMPLES / "results" / "other_nets.md").read_text() == other_nets.markdown(rows)
    for name, (make, _) in other_nets.NETS.items():
        out = make().eval()(torch.zeros(2, 1, 28, 28))
        assert out.shape == (2, 10), name


def test_other_nets_refuses_a_work_folder_with_files(tmp_path, capsys):
    """Its trained nets and compiled models would overwrite files of the same name there."""
    from examples import other_nets

    (tmp_path / "mobilenet.onnx").write_text("mine")
    with pytest.raises(SystemExit):
        other_nets.main(["--work", str(tmp_path)])
    assert (tmp_path / "mobilenet.onnx").read_text() == "mine"
    assert "not empty" in capsys.readouterr().err


@pytest.mark.requires_runtime
@pytest.mark.parametrize("neuron, per_call", [("mt", 1), ("bitserial", 1), ("bitserial", 4)])
def test_the_streaming_example_runs_and_each_window_equals_run_compiled(tmp_path, neuron,
                                                                        per_call, capsys):
    """examples/stream_frames.py: the streaming protocol with a new frame per window (a helper
    found no runnable streaming example; the README's prose had left out the gate states),
    also with K steps per call."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import stream_frames
    finally:
        sys.path.remove(str(EXAMPLES))
    assert stream_frames.main(["--neuron", neuron, "--frames", "2", "--out", str(tmp_path),
                               "--steps-per-call", str(per_call)]) == 0
    out = capsys.readouterr().out
    assert "each window equals run_compiled on its frame: True" in out
