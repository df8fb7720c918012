"""Fused training of K clients (clients/fused.py) == training them one by one with clients.train.train.

Fixture: K=3 clients with unequal shards (50, 11, 37 samples: the second is smaller than the batch,
so its batches are padded) and unequal step counts J = (5, 2, 7), each starting from its own
weights (seeds 1, 2, 3). The reference is the sequential path a client runs today:
``make_optimizer`` (+ ``load_optimizer_state`` for a carried state) then ``train``.

AdamW and LAMB run with ``eps=1e-6`` in float32: an Adam step is ~lr*sign(g) wherever ``|g|`` is
far below ``eps``'s scale, so a weight whose gradient cancels to rounding level (~1e-10) moves by
+-lr on noise alone. With the default ``eps=1e-8`` the sequential path disagrees with itself by
1.35e-4 on 3 weights when only its memory format changes (channels_last vs NCHW), exactly as much
as fused vs sequential: see :func:`test_adamw_default_eps_within_sequential_noise`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from clients.augment import Augmenter
from clients.fused import ClientJob, fused_plan, train_fused
from clients.optim import OptimizerCfg, load_optimizer_state, make_optimizer, optimizer_state
from clients.train import Normalizer, train
from fedlab_app.models import CNN64, LeNet5

SIZES, STEPS, B = (50, 11, 37), (5, 2, 7), 16
OPTS = {
    "sgd": OptimizerCfg(name="sgd", momentum=0.0),
    "momentum": OptimizerCfg(name="sgd", momentum=0.9, weight_decay=5e-4),
    "nesterov": OptimizerCfg(name="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adamw": OptimizerCfg(name="adamw", weight_decay=0.01, eps=1e-6),
    "lars": OptimizerCfg(name="lars", momentum=0.9, weight_decay=5e-4, trust_coef=0.02),
    "lamb": OptimizerCfg(name="lamb", weight_decay=0.01, eps=1e-6),
}
LR = {"sgd": 0.05, "momentum": 0.05, "nesterov": 0.05, "adamw": 2e-3, "lars": 1.0, "lamb": 5e-3}


class F64(nn.Module):
    """Runs ``net`` in float64 on the Normalizer's float32 input (the sequential float64 reference)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())


def shards(c=1, s=28, sizes=SIZES, floats=False):
    """Per client (x, y); with ``floats`` each sample's pixels hold ``1000*client + index``."""
    out = []
    for k, n in enumerate(sizes):
        g = torch.Generator().manual_seed(100 + k)
        if floats:
            x = (1000.0 * k + torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1).expand(n, c, s, s).clone()
        else:
            x = torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)
        out.append((x, torch.randint(0, 10, (n,), generator=g)))
    return out


def states(make, k=3, dtype=torch.float32):
    """K different initial state_dicts of ``make()``."""
    res = []
    for i in range(k):
        torch.manual_seed(i + 1)
        res.append({n: v.to(dtype) for n, v in make().state_dict().items()})
    return res


def sequential(make, init, data, norm, cfg, lr, steps=STEPS, epochs=0, carried=None, augment=None, f64=False,
               lr_fn=None):
    """Each client alone, as the client app trains it: returns [(state_dict, optimizer_state, TrainResult)]."""
    out = []
    for k, ((x, y), sd) in enumerate(zip(data, init)):
        model = make()
        model.load_state_dict({n: v.float() for n, v in sd.items()})
        model = F64(model) if f64 else model
        inner = model.net if f64 else model
        inner.load_state_dict(sd)
        opt = make_optimizer(inner, cfg, lr)
        if carried is not None:
            load_optimizer_state(opt, carried[k])
        res = train(model, x, y, norm, opt, batch_size=B, seed=7, stream=k, first_epoch=3, epochs=epochs,
                    steps=steps[k] if steps else 0, augment=augment, lr_fn=lr_fn)
        out.append(({n: v.detach().clone() for n, v in inner.state_dict().items()}, optimizer_state(opt), res))
    return out


def fused(make, init, data, norm, cfg, lr, steps=STEPS, epochs=0, carried=None, augment=None, group_size=8,
          lr_fn=None):
    jobs = [ClientJob(sd, x, y, stream=k, seed=7, first_epoch=3, steps=steps[k] if steps else 0, epochs=epochs,
                      opt_state=None if carried is None else carried[k])
            for k, ((x, y), sd) in enumerate(zip(data, init))]
    return train_fused(make(), jobs, norm, cfg, batch_size=B, lr=lr, augment=augment, return_opt_state=True,
                       group_size=group_size, lr_fn=lr_fn)


def assert_same(seq, fus, tol):
    for (sd, opt_state, res), f in zip(seq, fus):
        assert sd.keys() == f.state.keys()
        for n in sd:
            assert f.state[n].dtype == sd[n].dtype
            assert torch.allclose(f.state[n], sd[n], rtol=0, atol=tol), (n, (f.state[n] - sd[n]).abs().max())
        assert opt_state.keys() == f.opt_state.keys()
        for key, v in opt_state.items():
            np.testing.assert_allclose(f.opt_state[key].reshape(v.shape), v, rtol=0, atol=tol, err_msg=key)
        assert (f.result.steps, f.result.num_examples, f.result.diverged) == (res.steps, res.num_examples, res.diverged)
        assert f.result.loss == pytest.approx(res.loss, rel=1e-5)
        assert f.result.acc == pytest.approx(res.acc, abs=1e-9)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as a simulation worker runs (and steadier on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


NORM1 = Normalizer.from_stats([0.286], [0.353], channels_last=True)
NORM3 = Normalizer.from_stats([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], channels_last=True)


@pytest.mark.parametrize("opt", list(OPTS))
def test_fused_equals_sequential_float32(opt):
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(), states(make)
    seq = sequential(make, init, data, NORM1, OPTS[opt], LR[opt])
    fus = fused(make, init, data, NORM1, OPTS[opt], LR[opt])
    assert [f.result.steps for f in fus] == list(STEPS)
    assert all(not torch.equal(f.state["features.0.weight"], sd["features.0.weight"]) for f, sd in zip(fus, init))
    assert_same(seq, fus, 1e-5)


@pytest.mark.parametrize("opt", ["nesterov", "adamw", "lamb"])
def test_fused_equals_sequential_float64(opt):
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(), states(make, dtype=torch.float64)
    seq = sequential(make, init, data, NORM1, OPTS[opt], LR[opt], f64=True)
    assert_same(seq, fused(make, init, data, NORM1, OPTS[opt], LR[opt]), 1e-12)


@pytest.mark.parametrize("group_size", [1, 2])
def test_groups_of_clients(group_size):
    """K=3 split into 3 groups of 1, or groups {J=2} and {J=5, J=7}: same results, in jobs order."""
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(), states(make)
    seq = sequential(make, init, data, NORM1, OPTS["nesterov"], 0.05)
    assert_same(seq, fused(make, init, data, NORM1, OPTS["nesterov"], 0.05, group_size=group_size), 1e-5)


def test_per_step_learning_rate():
    """lr_fn(i) sets the i-th step's lr of every client, as in train()."""
    make, lr_fn = (lambda: LeNet5(1, 28, 10)), (lambda i: 0.1 / (1 + i))  # noqa: E731
    data, init = shards(), states(make)
    seq = sequential(make, init, data, NORM1, OPTS["momentum"], 0.05, lr_fn=lr_fn)
    assert_same(seq, fused(make, init, data, NORM1, OPTS["momentum"], 0.05, lr_fn=lr_fn), 1e-5)


def test_adamw_default_eps_within_sequential_noise():
    """eps=1e-8, float32: fused is as close to sequential as sequential is to itself in NCHW layout."""
    make, cfg = (lambda: LeNet5(1, 28, 10)), OptimizerCfg(name="adamw", weight_decay=0.01)  # noqa: E731
    data, init = shards(), states(make)
    seq = sequential(make, init, data, NORM1, cfg, 2e-3)
    nchw = sequential(make, init, data, Normalizer(NORM1.scale, NORM1.shift, False), cfg, 2e-3)
    fus = fused(make, init, data, NORM1, cfg, 2e-3)
    for (sd, _, _), (sd2, _, _), f in zip(seq, nchw, fus):
        noise = max(float((sd[n] - sd2[n]).abs().max()) for n in sd)
        gap = max(float((sd[n] - f.state[n]).abs().max()) for n in sd)
        assert gap <= max(1e-5, 3 * noise), (gap, noise)


@pytest.mark.parametrize("make", [lambda: LeNet5(3, 32, 10), lambda: CNN64(3, 32, 10)], ids=["lenet5-32", "cnn64"])
def test_other_models(make):
    data, init = shards(c=3, s=32, sizes=(20, 9, 17)), states(make)
    cfg = OPTS["momentum"]
    seq = sequential(make, init, data, NORM3, cfg, 0.05, steps=(2, 1, 3))
    assert_same(seq, fused(make, init, data, NORM3, cfg, 0.05, steps=(2, 1, 3)), 1e-5)


def test_epochs_with_partial_batches_and_augmentation():
    """2 epochs: 50 samples -> batches 16, 16, 16, 2 (padded to the others), 11 -> one batch of 11."""
    make, aug = (lambda: LeNet5(1, 28, 10)), Augmenter(pad=2, flip=True)  # noqa: E731
    data, init = shards(), states(make)
    seq = sequential(make, init, data, NORM1, OPTS["momentum"], 0.05, steps=None, epochs=2, augment=aug)
    fus = fused(make, init, data, NORM1, OPTS["momentum"], 0.05, steps=None, epochs=2, augment=aug)
    assert [f.result.steps for f in fus] == [8, 2, 6]
    assert [f.result.num_examples for f in fus] == [100, 22, 74]
    assert_same(seq, fus, 1e-5)


@pytest.mark.parametrize("opt", ["nesterov", "adamw"])
def test_carried_optimizer_state(opt):
    """Round 2 of momentum_mode=keep: each client resumes its own state (AdamW step counts 5, 2, 7 differ)."""
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(), states(make)
    first = sequential(make, init, data, NORM1, OPTS[opt], LR[opt])
    init2, carried = [sd for sd, _, _ in first], [st for _, st, _ in first]
    seq = sequential(make, init2, data, NORM1, OPTS[opt], LR[opt], steps=(3, 4, 1), carried=carried)
    assert_same(seq, fused(make, init2, data, NORM1, OPTS[opt], LR[opt], steps=(3, 4, 1), carried=carried), 1e-5)


def test_data_order_identical():
    """Every client sees the same sample indices, in the same order, as in its sequential run."""
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(floats=True), states(make)
    seen = {"seq": [[], [], []], "fused": [[], [], []]}

    def recorder(path):
        def record(xb, gen):
            for v in xb[:, 0, 0, 0].tolist():
                seen[path][int(v) // 1000].append(int(v) % 1000)
            return xb
        return record

    norm = Normalizer.from_stats([0.0], [1e6], channels_last=True)  # tiny inputs: training stays finite
    sequential(make, init, data, norm, OPTS["sgd"], 0.01, augment=recorder("seq"))
    fused(make, init, data, norm, OPTS["sgd"], 0.01, augment=recorder("fused"))
    assert [len(s) for s in seen["seq"]] == [5 * 16, 2 * 11, 7 * 16]
    assert seen["fused"] == seen["seq"]


def test_finished_and_diverged_clients_are_masked():
    """lr=1e4 diverges: train() stops clients at the 50-step check; the J=20 client ends at 20 steps."""
    make = lambda: LeNet5(1, 28, 10)  # noqa: E731
    data, init = shards(sizes=(4, 4, 4)), states(make)
    steps, cfg = (60, 60, 20), OPTS["sgd"]
    seq = [r for _, _, r in sequential(make, init, data, NORM1, cfg, 1e4, steps=steps)]
    fus = [f.result for f in fused(make, init, data, NORM1, cfg, 1e4, steps=steps)]
    assert [r.steps for r in seq] == [50, 50, 20] and all(r.diverged for r in seq)
    assert [(r.steps, r.diverged, r.num_examples) for r in fus] == [(r.steps, r.diverged, r.num_examples) for r in seq]


def test_refuses_what_it_cannot_fuse():
    data, norm, cfg = shards(c=3, s=32), NORM3, OPTS["sgd"]
    with pytest.raises(ValueError, match="BatchNorm"):
        fused(lambda: LeNet5(3, 32, 10, batchnorm=True), states(lambda: LeNet5(3, 32, 10, batchnorm=True)),
              data, norm, cfg, 0.1)
    with pytest.raises(ValueError, match="dropout > 0"):
        fused_plan(LeNet5(3, 32, 10, dropout=0.5))
    make = lambda: LeNet5(3, 32, 10)  # noqa: E731
    with pytest.raises(ValueError, match="not supported by fused"):
        fused(make, states(make), data, norm, dataclasses.replace(cfg, name="rmsprop"), 0.1)
