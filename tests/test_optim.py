"""Optimizers (clients/optim.py) against hand-computed numbers.

Fixture used throughout: a 2x2 weight ``W = [[3, 0], [0, 4]]`` (``||W|| = 5``, decayed, trust group)
and a bias ``b = [1, -2]`` (not decayed, no trust ratio), with hand-set gradients. The numpy
references ``lars_ref``/``lamb_ref`` below are the papers' rules written out independently of torch.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from clients.optim import LAMB, LARS, make_optimizer, param_groups
from fedlab_app.config import OptimizerCfg

W0 = [[3.0, 0.0], [0.0, 4.0]]
B0 = [1.0, -2.0]


def params(w=W0, b=B0):
    """Fresh float32 parameters ``(W, b)``."""
    return (nn.Parameter(torch.tensor(w, dtype=torch.float32)), nn.Parameter(torch.tensor(b, dtype=torch.float32)))


def set_grads(w, b, gw, gb):
    w.grad = torch.tensor(gw, dtype=torch.float32)
    b.grad = torch.tensor(gb, dtype=torch.float32)


def groups(w, b, wd):
    """The two groups make_optimizer builds: decayed + trust, and neither."""
    return [{"params": [w], "weight_decay": wd, "trust": True}, {"params": [b], "weight_decay": 0.0, "trust": False}]


def close(t, expected, atol=1e-6):
    np.testing.assert_allclose(t.detach().numpy(), np.asarray(expected), rtol=1e-6, atol=atol)


def lars_ref(w, g, v, lr, mu, wd, eta, eps, trust):
    """numpy LARS (You et al. 2017): returns new (w, v)."""
    w, g = np.asarray(w, float), np.asarray(g, float)
    local = 1.0
    if trust and np.linalg.norm(w) > 0 and np.linalg.norm(g) > 0:
        local = eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w) + eps)
    v = mu * v + lr * local * (g + wd * w)
    return w - v, v


def lamb_ref(w, g, m, v, t, lr, b1, b2, wd, eps, trust):
    """numpy LAMB (You et al. 2020, Algorithm 2, bias-corrected): returns new (w, m, v)."""
    w, g = np.asarray(w, float), np.asarray(g, float)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
    r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w
    ratio = np.linalg.norm(w) / np.linalg.norm(r) if trust and np.linalg.norm(w) > 0 and np.linalg.norm(r) > 0 else 1.0
    return w - lr * ratio * r, m, v


# ----------------------------------------------------------------------------- LARS
def test_lars_two_steps_trust_ratio_on_weight_only_and_lr_inside_momentum():
    """lr=0.4 then 0.2, mu=0.9, wd=0.2, eta=0.1, gW = [[.6, 0], [0, .8]] (||gW|| = 1), gb = [.5, -1].

    step 1: local = 0.1*5/(1 + 0.2*5) = 0.25 ; v = 0.4*0.25*(gW + 0.2*W) = [[.12, 0], [0, .16]]
            W1 = [[2.88, 0], [0, 3.84]] (||W1|| = 4.8) ; bias: v = 0.4*gb = [.2, -.4] -> b1 = [.8, -1.6]
    step 2: local = 0.1*4.8/(1 + 0.96) = 12/49 ; gW + 0.2*W1 = [[1.176, 0], [0, 1.568]]
            v = 0.9*[[.12, 0], [0, .16]] + 0.2*(12/49)*that = [[.1656, 0], [0, .2208]]
            W2 = [[2.7144, 0], [0, 3.6192]] ; bias: v = 0.9*[.2, -.4] + 0.2*gb = [.28, -.56] -> b2 = [.52, -1.04]
    (torch-SGD form, lr outside the buffer, would give W2[0, 0] = 2.88 - 0.2*(0.9*0.3 + 0.288) = 2.7684.)
    """
    w, b = params()
    gw, gb = [[0.6, 0.0], [0.0, 0.8]], [0.5, -1.0]
    opt = LARS(groups(w, b, 0.2), lr=0.4, momentum=0.9, trust_coef=0.1, eps=1e-8)
    set_grads(w, b, gw, gb)
    opt.step()
    close(w, [[2.88, 0.0], [0.0, 3.84]])
    close(b, [0.8, -1.6])
    close(opt.state[w]["momentum_buffer"], [[0.12, 0.0], [0.0, 0.16]])
    for g in opt.param_groups:
        g["lr"] = 0.2
    opt.step()  # same gradients
    close(w, [[2.7144, 0.0], [0.0, 3.6192]])
    close(b, [0.52, -1.04])
    # and the numpy reference agrees
    rw, vw = lars_ref(W0, gw, 0.0, 0.4, 0.9, 0.2, 0.1, 1e-8, True)
    rw, _ = lars_ref(rw, gw, vw, 0.2, 0.9, 0.2, 0.1, 1e-8, True)
    close(w, rw)


def test_lars_without_trust_is_sgd_with_momentum_in_paper_form():
    """trust=False everywhere, wd=0, constant lr: the same iterates as torch.optim.SGD (lr outside)."""
    w1, b1 = params()
    w2, b2 = params()
    lars = LARS([w1, b1], lr=0.1, momentum=0.9, trust=False)
    sgd = torch.optim.SGD([w2, b2], lr=0.1, momentum=0.9)
    for k in range(3):
        gw, gb = [[0.5 * k, -1.0], [2.0, 0.1]], [1.0, -k]
        set_grads(w1, b1, gw, gb)
        set_grads(w2, b2, gw, gb)
        lars.step()
        sgd.step()
    close(w1, w2.detach().numpy())
    close(b1, b2.detach().numpy())


# ----------------------------------------------------------------------------- LAMB
def test_lamb_first_step_bias_corrected_trust_ratio_and_adam_on_bias():
    """lr=0.5, wd=0.1, eps=1e-8, gW = [[.6, -.3], [.1, -.8]], gb = [.5, -1].

    Step 1 with bias correction: m_hat = g, v_hat = g^2, so r = g/(|g| + eps) + wd*W ~ sign(g) + 0.1*W
    = [[1.3, -1], [1, -0.6]] ; ||r|| = sqrt(4.05) ; trust = 5/sqrt(4.05) ; W1 = W - 0.5*trust*r.
    Bias (Adam, no decay, no trust): b1 = b - 0.5*sign(gb) = [0.5, -1.5].
    """
    w, b = params()
    opt = LAMB(groups(w, b, 0.1), lr=0.5, eps=1e-8)
    set_grads(w, b, [[0.6, -0.3], [0.1, -0.8]], [0.5, -1.0])
    opt.step()
    r = np.array([[1.3, -1.0], [1.0, -0.6]])
    close(w, np.array(W0) - 0.5 * (5 / math.sqrt(4.05)) * r, atol=2e-6)
    close(b, [0.5, -1.5])
    assert opt.state[w]["step"] == 1 and set(opt.state[w]) == {"step", "exp_avg", "exp_avg_sq"}


def test_lamb_two_steps_match_reference():
    """Second step with a different gradient: moments carry over, bias correction uses t = 2."""
    w, b = params()
    lr, betas, wd, eps = 0.05, (0.9, 0.99), 0.1, 1e-8
    opt = LAMB(groups(w, b, wd), lr=lr, betas=betas, eps=eps)
    grads = [([[0.6, -0.3], [0.1, -0.8]], [0.5, -1.0]), ([[0.2, 0.1], [-0.4, 0.5]], [-0.25, 2.0])]
    rw, mw, vw, rb, mb, vb = np.array(W0), 0.0, 0.0, np.array(B0), 0.0, 0.0
    for t, (gw, gb) in enumerate(grads, start=1):
        set_grads(w, b, gw, gb)
        opt.step()
        rw, mw, vw = lamb_ref(rw, gw, mw, vw, t, lr, *betas, wd, eps, True)
        rb, mb, vb = lamb_ref(rb, gb, mb, vb, t, lr, *betas, 0.0, eps, False)
    close(w, rw)
    close(b, rb)
    close(opt.state[w]["exp_avg"], mw)
    assert not np.allclose(rb, np.array(B0) - lr * np.sign(grads[0][1]) - lr * np.sign(grads[1][1]))


# ----------------------------------------------------------------------------- torch's own: SGD, AdamW
@pytest.mark.parametrize("nesterov, expected", [(False, [[2.52, 0.0], [0.0, 3.36]]),
                                                (True, [[2.088, 0.0], [0.0, 2.784]])])
def test_sgd_decays_weight_only(nesterov, expected):
    """lr=0.4, mu=0.9, wd=0.2, gW = [[.6, 0], [0, .8]], gb = 0.

    d = gW + 0.2*W = [[1.2, 0], [0, 1.6]] ; buffer v = d on step 1.
    plain: W1 = W - 0.4*d = [[2.52, 0], [0, 3.36]] ; Nesterov: W1 = W - 0.4*(d + 0.9*v) = W - 0.76*d
    = [[2.088, 0], [0, 2.784]]. Bias: zero gradient and no decay -> unchanged.
    """
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0)), model.bias.copy_(torch.tensor(B0))
    cfg = OptimizerCfg(name="sgd", momentum=0.9, nesterov=nesterov, weight_decay=0.2)
    opt = make_optimizer(model, cfg, lr=0.4)
    set_grads(model.weight, model.bias, [[0.6, 0.0], [0.0, 0.8]], [0.0, 0.0])
    opt.step()
    close(model.weight, expected)
    close(model.bias, B0)


def test_adamw_decays_weight_only():
    """lr=0.1, wd=0.5, gW = [[.6, 0], [0, -.8]], gb = 0; step 1: m_hat/sqrt(v_hat) = sign(g).

    W1 = W*(1 - 0.1*0.5) - 0.1*sign(gW) = [[2.85 - 0.1, 0], [0, 3.8 + 0.1]] = [[2.75, 0], [0, 3.9]];
    bias: m = 0 and no decay -> unchanged.
    """
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0)), model.bias.copy_(torch.tensor(B0))
    opt = make_optimizer(model, OptimizerCfg(name="adamw", weight_decay=0.5, eps=1e-8), lr=0.1)
    set_grads(model.weight, model.bias, [[0.6, 0.0], [0.0, -0.8]], [0.0, 0.0])
    opt.step()
    close(model.weight, [[2.75, 0.0], [0.0, 3.9]])
    close(model.bias, B0)


# ----------------------------------------------------------------------------- factory
@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                                       ("lars", LARS), ("lamb", LAMB)])
def test_make_optimizer_classes_and_groups(name, cls):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    cfg = OptimizerCfg(name=name, momentum=0.8, nesterov=name == "sgd", weight_decay=0.3, beta1=0.7, beta2=0.9,
                       eps=1e-7, trust_coef=0.02)
    opt = make_optimizer(model, cfg, lr=0.25)
    assert type(opt) is cls
    decayed, other = opt.param_groups
    assert [id(p) for p in decayed["params"]] == [id(model[0].weight), id(model[2].weight)]
    assert [id(p) for p in other["params"]] == [id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                id(model[2].bias)]
    assert (decayed["weight_decay"], other["weight_decay"], decayed["lr"]) == (0.3, 0.0, 0.25)
    if name in ("lars", "lamb"):
        assert decayed["trust"] is True and other["trust"] is False
    else:
        assert "trust" not in decayed and "trust" not in other
    expected = {"sgd": {"momentum": 0.8, "nesterov": True}, "adamw": {"betas": (0.7, 0.9), "eps": 1e-7},
                "lars": {"momentum": 0.8, "trust_coef": 0.02, "eps": 1e-7}, "lamb": {"betas": (0.7, 0.9), "eps": 1e-7}}
    assert {k: decayed[k] for k in expected[name]} == expected[name]


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError, match="adam"):
        make_optimizer(nn.Linear(2, 2), dataclasses.replace(OptimizerCfg(), name="adam"), lr=0.1)


def test_param_groups_default_has_no_trust_key():
    decayed, other = param_groups(nn.Linear(2, 2), 0.1)
    assert decayed.keys() == other.keys() == {"params", "weight_decay"}


# ----------------------------------------------------------------------------- edge cases, closure, training
@pytest.mark.parametrize("make", [lambda g: LARS(g, lr=0.5, momentum=0.9, trust_coef=0.01),
                                  lambda g: LAMB(g, lr=0.5)])
def test_zero_weight_and_zero_gradient_give_no_nan(make):
    """W = 0 and g = 0: ratio falls back to 1 and the update is 0. W = 0, g != 0: ratio 1 (plain step)."""
    w, b = params([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    opt = make(groups(w, b, 0.1))
    set_grads(w, b, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    opt.step()
    close(w, np.zeros((2, 2)))
    close(b, np.zeros(2))
    w, b = params([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    opt = make(groups(w, b, 0.1))
    set_grads(w, b, [[1.0, -2.0], [0.0, 0.5]], [0.0, 0.0])
    opt.step()
    step = [[1.0, -2.0], [0.0, 0.5]] if isinstance(opt, LARS) else [[1.0, -1.0], [0.0, 1.0]]  # lr*g vs lr*sign(g)
    close(w, -0.5 * np.array(step))
    assert torch.isfinite(w).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("name, lr", [("sgd", 0.1), ("adamw", 0.05), ("lars", 1.0), ("lamb", 0.05)])
def test_closure_and_loss_decreases(name, lr):
    """Least squares on a fixed 32x3 problem: step(closure) returns the loss; 40 steps reduce it."""
    torch.manual_seed(0)
    x, model = torch.randn(32, 3), nn.Linear(3, 2)
    y = x @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 1.0]]) + 0.3
    cfg = OptimizerCfg(name=name, weight_decay=1e-4, trust_coef=0.02)
    opt = make_optimizer(model, cfg, lr)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss.detach()

    first = float(opt.step(closure))
    for _ in range(39):
        last = float(opt.step(closure))
    assert math.isfinite(last) and last < 0.5 * first
