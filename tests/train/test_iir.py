"""IIR-SNN / MT direct training (neurons.md §3, §5): neuron dynamics, surrogate, thresholds, stages."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from snncc.errors import ModelInputError  # noqa: E402
from snncc.train.iir import (LIF, MTNeuron, SpikeFn, convert_to_snn, init_thresholds, run_snn,  # noqa: E402
                             spiking_neurons, train_snn)


def lif_reference(x, theta, leak):
    """docs/neuron-ops.md LIFNeuron in float32: u = leak*u; u = u + x; s = u > θ; u -= θ on spike."""
    theta, leak = np.float32(theta), np.float32(leak)
    u = np.zeros_like(x[0])
    ys = []
    for xt in x:
        u = leak * u
        u = u + xt
        s = u > theta
        u = np.where(s, u - theta, u)
        ys.append(s.astype(np.float32))
    return np.stack(ys)


def mt_reference(x, theta, fractions, mode):
    """docs/neuron-ops.md MTNeuron (soft reset, v_init 0) in float32."""
    ths = [np.float32(theta) * np.float32(f) for f in fractions]
    v = np.zeros_like(x[0])
    ys = []
    for xt in x:
        m = v + xt
        if mode == "parallel":
            y = np.zeros_like(m)
            for th in reversed(ths):
                y = np.where(m >= th, th, y)
            v = m - y
        else:
            r, y = m, np.zeros_like(m)
            for th in ths:
                fire = r >= th
                r = np.where(fire, r - th, r)
                y = np.where(fire, y + th, y)
            v = r
        ys.append(y)
    return np.stack(ys)


def _steps(neuron, x):
    neuron.reset_state()
    return np.stack([neuron(torch.from_numpy(xt)).detach().numpy() for xt in x])


@pytest.mark.parametrize("theta, leak", [(0.7, 0.9), (1.3, 1.0), (0.37, 0.55)])
def test_lif_forward_equals_reference(theta, leak):
    x = np.random.default_rng(0).normal(0.4, 0.8, (6, 3, 50)).astype(np.float32)
    got = _steps(LIF(theta, leak), x)
    np.testing.assert_array_equal(got, lif_reference(x, theta, leak))


def test_lif_worked_example_and_strict_threshold():
    # §3.4: leak 0.9, θ = 1, constant 0.6 -> spikes 0, 1, 0; a membrane exactly at θ does not fire
    assert _steps(LIF(1.0, 0.9), np.full((3, 1), 0.6, np.float32))[:, 0].tolist() == [0, 1, 0]
    assert _steps(LIF(1.0, 1.0), np.array([[1.0], [0.5]], np.float32))[:, 0].tolist() == [0, 1]


def test_lif_matches_registered_reference_when_available():
    from snncc.errors import OptionError
    from snncc.neurons.registry import get_neuron

    try:
        spec = get_neuron("lif")
    except OptionError:
        pytest.skip("lif neuron not registered yet")
    x = np.random.default_rng(1).normal(0.4, 0.8, (5, 2, 7)).astype(np.float32)
    attrs = {"T": 5, "const_input": 0, "theta": [0.8], "leak": 0.875, "amplitude": 1.0, "v_init": 0.0}
    y, _ = spec.reference(x.reshape(10, 7), attrs)
    np.testing.assert_array_equal(_steps(LIF(0.8, 0.875), x).reshape(10, 7), y)


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
@pytest.mark.parametrize("n", [1, 3, 4])
def test_mt_forward_equals_reference(mode, n):
    x = np.random.default_rng(n).normal(0.5, 1.0, (5, 2, 40)).astype(np.float32)
    neuron = MTNeuron(mode, n, 1.1)
    np.testing.assert_array_equal(_steps(neuron, x), mt_reference(x, 1.1, neuron.fractions, mode))


@pytest.mark.parametrize("theta", [1.0, 2.0, 0.75])
def test_surrogate_derivative(theta):
    """d spike / d(u/θ − 1) = 0.3·max(0, 1 − |u/θ − 1|); chain rule through u/θ for u and θ."""
    u = torch.tensor([-1.0, 0.0, 0.25, 0.5, 0.9, 1.0, 1.2, 1.9, 2.5]) * theta
    u.requires_grad_(True)
    th = torch.tensor(theta, requires_grad=True)
    s = SpikeFn.apply(u, th, True)
    s.sum().backward()
    x = u.detach() / theta - 1.0
    sg = 0.3 * torch.clamp(1.0 - x.abs(), min=0.0)
    torch.testing.assert_close(u.grad, sg / theta)
    torch.testing.assert_close(th.grad, -(sg * u.detach()).sum() / theta**2)
    np.testing.assert_array_equal(s.detach().numpy(), (u.detach() > theta).numpy().astype(np.float32))


def _tiny_cnn(bn=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("n", [1, 2, 7, 1001])
@pytest.mark.parametrize("p", [0.0, 50.0, 90.0, 99.9, 100.0])
def test_percentile_matches_numpy(n, p):
    from snncc.train.finetune import percentile

    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    assert percentile(torch.from_numpy(x), p) == pytest.approx(float(np.percentile(x, p)), rel=1e-6, abs=1e-6)


def test_threshold_init_is_layerwise_percentile():
    net = _tiny_cnn()
    convert_to_snn(net, LIF)
    x = torch.randn(16, 1, 6, 6)
    found = init_thresholds(net, x, steps=3, pct=90.0)
    first = np.percentile(net[0](x).detach().numpy(), 90)  # constant input current: same every step
    assert found["2"] == pytest.approx(first, rel=1e-5)
    assert net[2].threshold.item() == pytest.approx(first, rel=1e-5)
    assert found["6"] > 0 and net[6].leak.item() == 1.0


def test_run_snn_sums_over_time_and_rejects_reused_neurons():
    net = _tiny_cnn()
    convert_to_snn(net, LIF)
    x = torch.randn(2, 1, 6, 6)
    out3 = run_snn(net, x, 3)
    net.apply(lambda m: m.reset_state() if isinstance(m, LIF) else None)
    steps = [net(x) for _ in range(3)]
    torch.testing.assert_close(out3, steps[0] + steps[1] + steps[2], rtol=0, atol=0)

    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    convert_to_snn(shared, LIF)
    shared[3] = shared[1]
    with pytest.raises(ModelInputError) as err:
        run_snn(shared, torch.randn(2, 4), 2)
    assert err.value.code == "SNN-E806"


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 6, 6)).astype(np.float32)
    x[:, 0, :2, :] += (y == 0)[:, None, None]
    x[:, 0, 2:4, :] += (y == 1)[:, None, None]
    x[:, 0, 4:, :] += (y == 2)[:, None, None]
    return x, y


@pytest.mark.parametrize("mt", [None, "cascade"])
def test_each_stage_starts_from_the_previous_one(mt):
    starts, ends = {}, {}

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    res = train_snn(_tiny_cnn(bn=True), _data(48, 0), _data(24, 1), timesteps=(3, 2, 1), epochs=1, mt=mt, mt_thresholds=2,
                    lr=1e-2, batch_size=16, threshold_steps=2, progress=False,
                    on_stage_start=lambda T, m: starts.__setitem__(T, snapshot(m)),
                    on_stage_end=lambda st, m: ends.__setitem__(st.T, snapshot(m)))
    assert [s.T for s in res.stages] == [3, 2, 1]
    for prev, nxt in [(3, 2), (2, 1)]:
        for k in ends[prev]:
            torch.testing.assert_close(starts[nxt][k], ends[prev][k], rtol=0, atol=0)
    # training changed something in the first stage, thresholds start from the §3.2 search
    assert any(not torch.equal(starts[3][k], ends[3][k]) for k in ends[3])
    assert {k: v.item() for k, v in starts[3].items() if k.endswith("threshold")} == \
        {f"{k}.threshold": v for k, v in res.initial_thresholds.items()}
    neurons = spiking_neurons(res.module)
    assert all(isinstance(n, MTNeuron if mt else LIF) for n in neurons.values())
    if not mt:
        assert all(n.leak.item() <= 1.0 for n in neurons.values())
    # BatchNorm statistics stay frozen (the IIR network is BN-folded); γ, β train
    assert torch.equal(res.module[1].running_var.cpu(), torch.ones(4)) and \
        res.module[1].num_batches_tracked == 0   # (.cpu(): the default device is cuda on a GPU)
