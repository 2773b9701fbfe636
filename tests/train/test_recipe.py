"""The fine-tuning recipe: λ from the calibration code of compile, per-channel QCFS export, the IF SNN
in the loop equal to the compiled IF SNN, distillation, the one-cycle schedule."""
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from snncc.calibration import choose_lambda, collect_statistics  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.simulate import run_compiled  # noqa: E402
from snncc.train.export import export_onnx  # noqa: E402
from snncc.train.finetune import Distillation, calibrate_lambdas, finetune_module  # noqa: E402
from snncc.train.onnx_to_torch import load_onnx_module  # noqa: E402
from snncc.train.qcfs import QCFS, replace_relu_with_qcfs, set_spiking  # noqa: E402
from .test_data_scale import _blobs, _tiny_onnx  # noqa: E402


def _qcfs_net(tmp_path, levels=4):
    module = load_onnx_module(_tiny_onnx(tmp_path / "m.onnx"))
    x, _ = _blobs(64)
    lam = calibrate_lambdas(module, torch.from_numpy(x), levels)
    replace_relu_with_qcfs(module, levels, lam)
    return module.eval(), lam, x


def test_lambda_init_is_the_compile_calibration(tmp_path):
    module = load_onnx_module(_tiny_onnx(tmp_path / "m.onnx"))
    x, _ = _blobs(64)
    ours = calibrate_lambdas(module, torch.from_numpy(x), 4, "mse")
    proto = onnx.load(tmp_path / "m.onnx")
    relus = [n for n in proto.graph.node if n.op_type == "Relu"]
    stats = collect_statistics(proto, [n.input[0] for n in relus], {"input": x}, per_channel=True)
    theirs = [choose_lambda(stats[n.input[0]], "mse", levels=4) for n in relus]
    assert len(ours) == 2 and all(v.shape == (c,) for v, c in zip(ours.values(), (4, 8)))
    for a, b in zip(ours.values(), theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4)


def test_per_channel_qcfs_export_compiles_to_the_same_qann(tmp_path):
    module, lam, x = _qcfs_net(tmp_path)
    export_onnx(module, torch.from_numpy(x[:1]), str(tmp_path / "q.onnx"), input_name="input", output_name="logits")
    lam_inits = [t for t in onnx.load(tmp_path / "q.onnx").graph.initializer if t.name.endswith(".lambda")]
    assert [list(t.dims) for t in lam_inits] == [[4, 1, 1], [8]]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    compile_model(tmp_path / "q.onnx", tmp_path / "qann.onnx", make_options(target="qann"))
    got = next(iter(run_compiled(tmp_path / "qann.onnx", x, spike_counts=False).outputs.values()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_if_in_the_loop_equals_the_compiled_if_snn(tmp_path):
    module, lam, x = _qcfs_net(tmp_path)
    export_onnx(module, torch.from_numpy(x[:1]), str(tmp_path / "q.onnx"), input_name="input", output_name="logits")
    T = 4
    set_spiking(module, T)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        want = module(xt.repeat(T, 1, 1, 1)).reshape(T, len(x), -1).mean(0).numpy()
    compile_model(tmp_path / "q.onnx", tmp_path / "if.onnx", make_options(target="ort", timesteps=T, neuron="if"))
    got = next(iter(run_compiled(tmp_path / "if.onnx", x, spike_counts=False).outputs.values()))
    close = np.isclose(got, want, rtol=1e-4, atol=1e-4).all(axis=1)
    assert close.mean() >= 0.95          # a spike exactly at threshold may flip with summation order
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_if_in_the_loop_gradient_is_the_rate_path():
    m = QCFS(4, np.array([1.0, 2.0], np.float32))
    m.timesteps = 2
    z = torch.tensor([[0.3, 1.0], [0.9, 1.0]], requires_grad=True)   # T=2 slices of one sample, 2 channels
    y = m(z)
    # channel 0: mean 0.6, θ = 1: v = 0.5 -> 0.8 (no spike) -> 1.7 (spike): outputs 0, 1
    assert y.detach()[:, 0].tolist() == [0.0, 1.0]
    y.sum().backward()
    assert z.grad[:, 0].tolist() == [1.0, 1.0]   # T slices x d q(mean)/d mean (STE: 1) x d mean/d z_t (1/T)


def test_distillation_loss():
    teacher = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    logits = teacher(x).detach()
    crit = Distillation(teacher, alpha=0.5, temperature=4.0)
    ce = nn.functional.cross_entropy(logits, y)
    assert float(crit(logits, y, x)) == pytest.approx(0.5 * float(ce), abs=1e-6)   # KL(p || p) = 0
    assert float(Distillation(None, 0.5)(logits, y, x)) == pytest.approx(float(ce))


def test_default_recipe_runs_with_one_cycle_and_frozen_bn(tmp_path):
    module = load_onnx_module(_tiny_onnx(tmp_path / "m.onnx"))
    bn = nn.BatchNorm2d(1)
    net = nn.Sequential(bn, module)
    before = bn.running_mean.clone()
    res = finetune_module(net, _blobs(64, 0), _blobs(32, 1), epochs=2, batch_size=16, progress=False)
    assert len(res.history) == 2 and res.ann_val_acc is not None and res.val_acc is not None
    trained_bn = res.module[0]
    # (.cpu(): on a GPU machine the default device is cuda)
    assert torch.equal(trained_bn.running_mean.cpu(), before)  # statistics frozen by default
    assert all(isinstance(m, QCFS) and m.lam.dim() == 1 for m in res.module.modules() if isinstance(m, QCFS))
    res = finetune_module(net, _blobs(64, 0), epochs=1, batch_size=16, progress=False, bn="train",
                          snn_timesteps=2, distill=0.0)
    assert not torch.equal(res.module[0].running_mean.cpu(), before)
    assert res.qann_val_acc is None and all(m.timesteps is None for m in res.module.modules()
                                           if isinstance(m, QCFS))


def test_bundled_residual_net_loads_with_shared_initializers():
    """The exporter shares equal initializers through Identity nodes (digits_resnet: the zero biases
    of two BatchNorms); the builder folds them and matches ONNX Runtime."""
    import onnxruntime as ort
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "digits_resnet.onnx"
    if not path.exists():
        pytest.skip("examples/digits_resnet.onnx not bundled")
    assert "Identity" in [n.op_type for n in onnx.load(path).graph.node]
    module = load_onnx_module(path).eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, rtol=1e-4, atol=1e-4)
    n_bn = sum(1 for s in module.steps if s.op == "BatchNormalization")
    assert module.fold_batchnorm() == n_bn == 7   # every Conv -> BN pair, shortcut ones included
    assert not any(s.op == "BatchNormalization" for s in module.steps)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_creates_its_bias_on_the_weights_device():
    """A Conv without bias gets a new bias parameter when its BN folds in; it must live where the
    weights live. It was created on the CPU, so `snncc finetune --device cuda` failed with
    'Expected all tensors to be on the same device' (found on a GPU machine). The meta device
    shows the same mismatch without a GPU."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"
    module = load_onnx_module(path).to("meta")
    assert module.fold_batchnorm() == 3
    assert {p.device.type for p in module.parameters()} == {"meta"}
