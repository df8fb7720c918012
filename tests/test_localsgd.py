"""LocalSGD (strategies/localsgd.py): J = 1 with K workers is mini-batch SGD with batch K*B; optimizer
state carried between rounds (momentum_mode keep/average) equals uninterrupted training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.optim import load_optimizer_state, make_optimizer, optimizer_state
from clients.train import Normalizer, batches, train
from fedlab_app.config import ModelCfg, OptimizerCfg
from fedlab_app.models import build_model
from strategies.fedavg import weighted_average
from strategies.localsgd import split_prefix

K, B, N, LR = 3, 8, 40, 0.05
NORM = Normalizer.from_stats([0.3], [0.3])


def shards():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=g) for _ in range(K)]
    ys = [torch.randint(0, 10, (N,), generator=g) for _ in range(K)]
    return xs, ys


def state_np(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_one_step_k_workers_equals_batch_k_times_b():
    """3 rounds: K workers each run J = 1 step of plain SGD (batch B) from x_t, then the average
    == one SGD step on the union of their K batches (batch K*B, mean loss)."""
    torch.set_num_threads(1)
    xs, ys = shards()
    opt_cfg = OptimizerCfg(momentum=0.0)
    global_model = build_model(ModelCfg(), (1, 28, 28), 10, seed=0)
    ref = copy.deepcopy(global_model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR)
    for rnd in range(1, 4):
        first = (rnd - 1) << 20  # as the ClientApp does in steps mode
        models = []
        for k in range(K):
            m = copy.deepcopy(global_model)
            train(m, xs[k], ys[k], NORM, make_optimizer(m, opt_cfg, LR), batch_size=B, seed=0, stream=k,
                  first_epoch=first, steps=1)
            models.append(state_np(m))
        global_model.load_state_dict({k: torch.from_numpy(v) for k, v in weighted_average(models, [1] * K).items()})
        idx = [next(iter(batches(N, B, 0, k, first, steps=1)))[1] for k in range(K)]
        xb = torch.cat([xs[k][i] for k, i in enumerate(idx)])
        yb = torch.cat([ys[k][i] for k, i in enumerate(idx)])
        ref_opt.zero_grad()
        F.cross_entropy(ref(NORM(xb)), yb).backward()
        ref_opt.step()
        for name, v in ref.state_dict().items():
            np.testing.assert_allclose(global_model.state_dict()[name].numpy(), v.numpy(), rtol=0, atol=2e-6,
                                       err_msg=f"round {rnd} {name}")


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars", "lamb"])
def test_optimizer_state_round_trip_continues_training_exactly(name):
    """2 steps with one optimizer == 1 step, state saved as arrays, a fresh optimizer loaded, 1 more step."""
    xs, ys = shards()
    cfg = OptimizerCfg(name=name, momentum=0.9)
    a = build_model(ModelCfg(), (1, 28, 28), 10, seed=1)
    b = copy.deepcopy(a)
    kw = dict(batch_size=B, seed=0, stream=0, first_epoch=0)
    opt_a = make_optimizer(a, cfg, LR)
    train(a, xs[0], ys[0], NORM, opt_a, steps=1, **kw)
    train(a, xs[0], ys[0], NORM, opt_a, steps=1, **{**kw, "first_epoch": 1})
    opt_b = make_optimizer(b, cfg, LR)
    train(b, xs[0], ys[0], NORM, opt_b, steps=1, **kw)
    saved = optimizer_state(opt_b)
    assert saved and all(isinstance(v, np.ndarray) for v in saved.values())
    opt_b2 = make_optimizer(b, cfg, LR)
    load_optimizer_state(opt_b2, saved)
    train(b, xs[0], ys[0], NORM, opt_b2, steps=1, **{**kw, "first_epoch": 1})
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_split_prefix():
    rest, opt = split_prefix({"w": 1, "optimizer/0.momentum_buffer": 2}, "optimizer/")
    assert rest == {"w": 1} and opt == {"0.momentum_buffer": 2}
