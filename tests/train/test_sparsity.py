"""Spike-count regulariser (neurons.md §2.6): exact bit counts forward, ∂R/∂q = 1 backward."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.train.qcfs import QCFS  # noqa: E402
from snncc.train.sparsity import BitDecompose, SpikeCountRegularizer, bits_for_levels, level_bits  # noqa: E402


@pytest.mark.parametrize("L, bits", [(1, 1), (3, 2), (4, 3), (7, 3), (15, 4), (255, 8)])
def test_bits_for_levels(L, bits):
    assert bits_for_levels(L) == bits


def test_bit_planes_are_exact():
    q = torch.arange(16, dtype=torch.float32)
    planes = BitDecompose.apply(q, 4)
    want = (np.arange(16)[:, None] >> np.arange(4)) & 1
    np.testing.assert_array_equal(planes.numpy(), want)
    assert float(planes.sum()) == sum(bin(i).count("1") for i in range(16))


def test_surrogate_gradient_is_one_per_element():
    q = torch.tensor([0.0, 1.0, 5.0, 7.0, 15.0, 3.0], requires_grad=True)
    BitDecompose.apply(q, 4).sum().backward()
    np.testing.assert_array_equal(q.grad.numpy(), np.ones(6, np.float32))


@pytest.mark.parametrize("L, lam", [(15, 1.7), (7, 3.3), (4, 2.0)])
def test_level_bits_count_the_qcfs_levels(L, lam):
    m = QCFS(L, lam)
    z = torch.from_numpy(np.random.default_rng(L).normal(lam / 2, lam, 4000).astype(np.float32))
    a = m(z)
    levels = np.clip(np.floor(z.numpy() / np.float32(lam) * np.float32(L) + np.float32(0.5)), 0, L).astype(int)
    want = sum(bin(int(v)).count("1") for v in levels)
    assert float(level_bits(a, m).sum().detach()) == want


def test_regularizer_backpropagates_like_l1_on_q():
    """κ·R with ∂R/∂q = 1 gives z.grad = κ·L/λ inside the QCFS window (q = a·L/λ, ∂a/∂z = 1)."""
    L, lam, kappa = 4, 2.0, 0.5
    m = QCFS(L, lam)
    reg = SpikeCountRegularizer({"act": m}, kappa)
    z = torch.tensor([0.3, 0.9, 1.6, -1.0, 4.0], requires_grad=True)
    m(z)
    loss, per_neuron = reg()
    loss.backward()
    np.testing.assert_allclose(z.grad.numpy(), [kappa * L / lam] * 3 + [0.0, 0.0], rtol=1e-6)
    assert m.lam.grad is not None and float(m.lam.grad) != 0.0
    # levels 1, 2 (0b10), 3 (0b11), 0, 4 (0b100) -> 1 + 1 + 2 + 0 + 1 bits over 5 neurons
    assert per_neuron == {"act": pytest.approx(5 / 5)}
    assert float(loss.detach()) == kappa * 5
    reg.close()
    assert not m.record and m.last_output is None
