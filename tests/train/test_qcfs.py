"""QCFS activation: exact forward, STE gradients (neurons.md §1.1), module swaps, a short fine-tune."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from snncc.errors import ModelInputError, OptionError  # noqa: E402
from snncc.train.finetune import finetune_module  # noqa: E402
from snncc.train.qcfs import QCFS, replace_maxpool_with_avgpool, replace_relu_with_qcfs  # noqa: E402


def qcfs_reference(z: np.ndarray, lam: np.float32, L: int) -> np.ndarray:
    """λ·clip(floor(z·L/λ + 1/2)/L, 0, 1) in float32, in the order of the ONNX chain."""
    x = z / lam
    x = x * np.float32(L)
    x = x + np.float32(0.5)
    x = np.floor(x)
    x = x / np.float32(L)
    return np.clip(x, np.float32(0), np.float32(1)) * lam


@pytest.mark.parametrize("L", [1, 3, 4, 8, 15])
@pytest.mark.parametrize("lam", [2.0, 8.0, 1.7])
def test_forward_equals_formula_exactly(L, lam):
    z = np.random.default_rng(L).normal(0, lam, size=2000).astype(np.float32)
    z[:64] = np.arange(-16, 48, dtype=np.float32) * np.float32(lam / (2 * L))  # bin edges included
    m = QCFS(L, lam)
    got = m(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_array_equal(got, qcfs_reference(z, np.float32(lam), L))
    assert len(np.unique(got)) <= L + 1


def test_gradients_follow_the_ste_window():
    """∂a/∂z = 1 and ∂a/∂λ = (a − z)/λ for −λ/(2L) ≤ z < λ + λ/(2L); above: 0 and 1; below: 0 and 0."""
    lam, L = 2.0, 4
    z_values = [-1.0, -0.3, -0.25, -0.1, 0.0, 0.3, 0.6, 1.0, 1.9, 2.0, 2.2, 2.25, 2.5, 5.0]
    for zv in z_values:
        m = QCFS(L, lam)
        z = torch.tensor(zv, requires_grad=True)
        a = m(z)
        a.backward()
        if zv < -lam / (2 * L):
            want_z, want_lam = 0.0, 0.0
        elif zv < lam + lam / (2 * L):
            want_z, want_lam = 1.0, (float(a.detach()) - zv) / lam
        else:
            want_z, want_lam = 0.0, 1.0
        assert float(z.grad) == want_z, zv
        assert float(m.lam.grad) == pytest.approx(want_lam, abs=1e-6), zv


def test_module_swaps():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, 2, 1), nn.Flatten(), nn.Linear(8, 4),
                        nn.ReLU(), nn.Linear(4, 2))
    assert replace_maxpool_with_avgpool(net) == ["2"]
    pool = net[2]
    assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (2, 2, 1)
    assert replace_relu_with_qcfs(net, 4, {"1": 3.0, "5": 5.0}) == ["1", "5"]
    assert isinstance(net[1], QCFS) and net[1].lam.item() == 3.0 and net[5].lam.item() == 5.0


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 6, 6)).astype(np.float32)
    x[:, 0, :2, :] += (y == 0)[:, None, None]
    x[:, 0, 2:4, :] += (y == 1)[:, None, None]
    x[:, 0, 4:, :] += (y == 2)[:, None, None]
    return x, y


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("lambda_init", [8.0, "p99.9"])
def test_finetune_module_trains_lambda_and_reports(lambda_init):
    net = _tiny_cnn()
    res = finetune_module(net, _blobs(96, 0), _blobs(48, 1), levels=4, epochs=2, sparsity=1e-4, lr=0.05,
                          batch_size=32, lambda_init=lambda_init, progress=False)
    assert isinstance(net[1], nn.ReLU)  # the input module is left alone
    assert [type(m) for m in res.module if isinstance(m, QCFS)] == [QCFS, QCFS]
    assert len(res.history) == 2 and res.history[-1].val_acc is not None
    assert set(res.history[-1].bits_per_neuron) == {"1", "5"}
    assert all(0 <= v <= 3 for v in res.history[-1].bits_per_neuron.values())  # L=4 -> 3 bits
    if lambda_init == 8.0:
        assert any(v != 8.0 for v in res.lambdas.values())


@pytest.mark.parametrize("kw, code", [({"levels": 0}, "SNN-E804"), ({"lambda_init": "pX"}, "SNN-E804"),
                                      ({"sparsity": -1.0}, "SNN-E804"), ({"maxpool": "gate"}, "SNN-E804")])
def test_bad_options(kw, code):
    with pytest.raises(OptionError) as err:
        finetune_module(_tiny_cnn(), _blobs(8, 0), **kw)
    assert err.value.code == code


def test_model_without_relu_is_rejected():
    with pytest.raises(ModelInputError) as err:
        finetune_module(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), _blobs(8, 0), epochs=0, progress=False)
    assert err.value.code == "SNN-E805"


@pytest.mark.parametrize("T", [1, 3, 4])
def test_the_in_loop_max_pool_is_compile_s_window_gate(T):
    """With the IF SNN in the loop a MaxPool ran a per-slice max of the spikes, not what compile
    builds; SpikeMaxPool2d is the window gate, equal to the schedule's standard-op gate (the
    unit of the largest total passes its train), and the MaxPool itself when not spiking."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from snncc.train.qcfs import SpikeMaxPool2d, set_spiking

    rng = np.random.default_rng(T)
    spikes = (rng.random((T * 2, 3, 6, 6)) < 0.4) * rng.uniform(0.5, 2.0, (1, 3, 1, 1))
    x = torch.tensor(spikes, dtype=torch.float32, requires_grad=True)
    net = nn.Sequential(nn.MaxPool2d(2, 2))
    set_spiking(net, T)
    assert isinstance(net[0], SpikeMaxPool2d)
    y = net(x)
    y.sum().backward()
    keys = helper.make_tensor("k", TensorProto.FLOAT, [T, T], np.ones((T, T), np.float32).ravel())
    nodes = [helper.make_node("Reshape", ["x", "w"], ["v"]), helper.make_node("MatMul", ["k", "v"], ["c"]),
             helper.make_node("Shape", ["x"], ["xs"]), helper.make_node("Reshape", ["c", "xs"], ["c4"]),
             helper.make_node("MaxPool", ["c4"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["x", "f"], ["xf"]), helper.make_node("Reshape", ["i", "f"], ["if"]),
             helper.make_node("GatherElements", ["xf", "if"], ["g"]), helper.make_node("Shape", ["i"], ["is"]),
             helper.make_node("Reshape", ["g", "is"], ["y"])]
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [keys, numpy_helper.from_array(np.array([T, -1]), "w"),
                               numpy_helper.from_array(np.array([-1]), "f")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": spikes.astype(np.float32)})[0]
    np.testing.assert_array_equal(y.detach().numpy(), want)
    assert float(x.grad.sum()) == float(np.prod(want.shape))   # one input unit per output value
    set_spiking(net, None)
    np.testing.assert_array_equal(net(x).detach().numpy(),
                                  nn.functional.max_pool2d(x, 2, 2).detach().numpy())
