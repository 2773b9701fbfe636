"""The whole pipeline on real PyTorch exports (VGG, ResNet-18, DenseNet-style, ShuffleNet, MNIST CNN
with max-pool): the QANN with a very large L reproduces the ANN, and the bit-serial SNN reproduces
its QANN (lossless by construction) through time folding, residual adds, concats and shuffles."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.export_models import export, random_model  # noqa: E402

from helpers import run_ort  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
import onnx  # noqa: E402

FAST = [("vgg11", {}), ("resnet18", {}), ("densenet_small", {}), ("shufflenet_small", {}),
        ("mnist_cnn", {"pool": "max"})]
CASES = [pytest.param(n, kw, id=n) for n, kw in FAST] + [
    pytest.param("resnet34", {}, id="resnet34", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict[str, tuple[Path, Path, np.ndarray]] = {}

    def get(name: str, kw: dict):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            shape = (1, 1, 28, 28) if name == "mnist_cnn" else (1, 3, 32, 32)
            path = d / f"{name}.onnx"
            export(random_model(name, shape, **kw), path, shape, dynamic_batch=True)
            rng = np.random.default_rng(0)
            x = rng.random((4, *shape[1:]), dtype=np.float32)
            calib = d / "calib.npy"
            # calibrating on the test inputs too keeps every activation below lambda, so the
            # huge-L comparison sees quantization error only, not clipping
            np.save(calib, np.concatenate([x, rng.random((4, *shape[1:]), dtype=np.float32)]))
            cache[name] = (path, calib, x)
        return cache[name]
    return get


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return run_ort(onnx.load(str(path)), {"input": x})[0]


@pytest.mark.parametrize("name, kw", CASES)
def test_qann_with_huge_L_matches_the_ann(tmp_path, exported, name, kw):
    src, calib, x = exported(name, kw)
    out = tmp_path / "qann.onnx"
    compile_model(src, out, make_options(target="qann", levels=2 ** 16, calib_path=str(calib)))
    ann, qann = _logits(src, x), _logits(out, x)
    scale = np.abs(ann).max()
    np.testing.assert_allclose(qann, ann, atol=2e-3 * scale, rtol=0)
    assert (qann.argmax(1) == ann.argmax(1)).all()


@pytest.mark.parametrize("name, kw", CASES[:len(FAST)])
def test_bitserial_snn_equals_its_qann(tmp_path, exported, name, kw):
    """Lossless w.r.t. the L = 2^T - 1 QANN; float summation order differs, so 1e-4 relative."""
    src, calib, x = exported(name, kw)
    snn, qann = tmp_path / "snn.onnx", tmp_path / "qann.onnx"
    # the same lambda for both: a statistics method (the SNN-aware walk simulates each its own way)
    compile_model(src, snn, make_options(target="ort", timesteps=2, neuron="bitserial",
                                         calib_path=str(calib), calib_method="mse"))
    compile_model(src, qann, make_options(target="qann", levels=3, calib_path=str(calib),
                                          bias_shift=True, calib_method="mse"))
    a, b = _logits(snn, x), _logits(qann, x)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max(), rtol=0)
