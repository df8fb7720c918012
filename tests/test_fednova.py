"""FedNova (strategies/fednova.py): hand-computed two-client example, a_i against torch, FedAvg equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.fedavg import weighted_average
from strategies.fednova import fednova_a, fednova_aggregate


def test_two_clients_hand_computed():
    """x_t = [1, 2]; client 1: tau 2, n 1, x_1 = [0.6, 1.8]; client 2: tau 4, n 3, x_2 = [0.2, 2.4].

    d_1 = [0.4, 0.2], d_2 = [0.8, -0.4]; p = [1/4, 3/4]; tau_eff = 2/4 + 12/4 = 3.5
    sum p_i d_i / a_i = [0.05 + 0.15, 0.025 - 0.075] = [0.2, -0.05]
    x_{t+1} = [1, 2] - 3.5 [0.2, -0.05] = [0.3, 2.175]
    (Flower's baseline renormalizes w_i ~ p_i/a_i = [0.4, 0.6] and would give [0.36, 2.16].)
    """
    x_t = {"w": np.array([1.0, 2.0], np.float32)}
    models = [{"w": np.array([0.6, 1.8], np.float32)}, {"w": np.array([0.2, 2.4], np.float32)}]
    out = fednova_aggregate(x_t, models, a=[2.0, 4.0], sizes=[1, 3])
    np.testing.assert_allclose(out["w"], [0.3, 2.175], rtol=0, atol=1e-6)
    assert not np.allclose(out["w"], [0.36, 2.16], atol=1e-3)  # tau_eff is not cancelled


def test_equal_steps_and_data_is_fedavg():
    rng = np.random.default_rng(0)
    x_t = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    models = [{k: (v + rng.normal(scale=0.1, size=v.shape)).astype(np.float32) for k, v in x_t.items()} for _ in range(5)]
    nova = fednova_aggregate(x_t, models, a=[fednova_a(7, 0.9)] * 5, sizes=[100] * 5)
    avg = weighted_average(models, [1] * 5)
    for k in x_t:
        np.testing.assert_allclose(nova[k], avg[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rho, nesterov", [(0.0, False), (0.9, False), (0.5, True), (0.9, True)])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_a_i_is_the_gradient_weight_of_torch_sgd(steps, rho, nesterov):
    """With a constant gradient g (a linear loss), tau steps of torch SGD move w by exactly -lr * a_i * g."""
    g = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=rho, nesterov=nesterov)
    for _ in range(steps):
        opt.zero_grad()
        (w * g).sum().backward()
        opt.step()
    a = fednova_a(steps, rho, nesterov)
    torch.testing.assert_close(w.detach(), -0.1 * a * g, rtol=1e-12, atol=1e-12)
    assert fednova_a(steps, 0.0) == steps


def test_bad_input():
    x = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="one a_i and one n_i per model"):
        fednova_aggregate(x, [x, x], a=[1.0], sizes=[1, 1])
    with pytest.raises(ValueError, match="a_i must be > 0"):
        fednova_aggregate(x, [x], a=[0.0], sizes=[1])
