"""snncc.backends.common.matrix_weights: the one Gemm/MatMul decoding both the Loihi lowering and
the NIR export use (each passes its own error code)."""
import numpy as np
import onnx
import pytest

from snncc.backends.common import matrix_weights, node_attrs


class _Err(Exception):
    def __init__(self, message, hint):
        super().__init__(message)
        self.hint = hint


def _decode(node, consts):
    def const(n, i):
        return consts.get(n.input[i]) if i < len(n.input) and n.input[i] else None
    return matrix_weights(node, const, _Err)


def test_gemm_folds_transb_alpha_beta_into_out_by_in():
    rng = np.random.default_rng(0)
    w, c = rng.normal(size=(3, 5)), rng.normal(size=3)
    x = rng.normal(size=5)
    for trans_b, stored in ((0, w.T), (1, w)):
        node = onnx.helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=trans_b, alpha=2.0,
                                     beta=0.5)
        wg, bias = _decode(node, {"W": stored, "C": c})
        assert wg.shape == (3, 5)
        np.testing.assert_allclose(wg @ x + bias, 2.0 * (w @ x) + 0.5 * c)
    node = onnx.helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    assert _decode(node, {"W": w})[1] is None


def test_matmul_is_the_transpose_without_bias():
    w = np.arange(6.0).reshape(2, 3)                 # x [*, 2] @ w -> [*, 3]
    wg, bias = _decode(onnx.helper.make_node("MatMul", ["x", "W"], ["y"]), {"W": w})
    np.testing.assert_array_equal(wg, w.T)
    assert bias is None


def test_refusals_use_the_callers_error():
    with pytest.raises(_Err, match="transA=1"):
        _decode(onnx.helper.make_node("Gemm", ["x", "W"], ["y"], transA=1), {"W": np.ones((2, 2))})
    with pytest.raises(_Err, match="non-matrix weight"):
        _decode(onnx.helper.make_node("MatMul", ["x", "W"], ["y"]), {"W": np.ones(3)})


def test_node_attrs_decodes_strings():
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="VALID", group=2)
    assert node_attrs(node) == {"auto_pad": "VALID", "group": 2}
