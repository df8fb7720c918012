"""Optimizer factory for local training: SGD (+Nesterov), AdamW, LARS, LAMB (pure torch, no flwr).

Parameters are split in two groups (:func:`param_groups`): the *decayed* group (conv/linear
weights, ``ndim > 1``) gets ``weight_decay`` and, for LARS/LAMB, the layer-wise trust ratio
(``trust=True``); the other group (biases, norm parameters, ``ndim <= 1``) gets neither
(``weight_decay=0``, ``trust=False``). Per step, per parameter tensor ``w`` with gradient ``g``:

- ``sgd`` (``torch.optim.SGD``): ``v <- mu*v + (g + wd*w) ; w <- w - lr*v``;
  Nesterov: ``w <- w - lr*((g + wd*w) + mu*v)``.
- ``adamw`` (``torch.optim.AdamW``, decoupled decay): ``w <- w - lr*wd*w`` then Adam with bias
  correction, ``betas=(beta1, beta2)``, ``eps``.
- ``lars`` (:class:`LARS`; You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
  Networks", Algorithm 1)::

      trust group:  local_lr = eta*||w|| / (||g|| + wd*||w|| + eps)   (1 if ||w|| or ||g|| is 0)
                    v <- mu*v + lr*local_lr*(g + wd*w) ; w <- w - v
      other group:  v <- mu*v + lr*g ; w <- w - v                      (SGD with momentum)

  ``eta`` is ``trust_coef``. As in the paper, ``lr`` sits *inside* the momentum buffer: a change
  of ``lr`` (schedule, warm-up) scales only new contributions, while ``torch.optim.SGD`` multiplies
  the whole buffer by the current ``lr``. With a constant ``lr`` both forms give the same iterates.
- ``lamb`` (:class:`LAMB`; You et al. 2020, "Large Batch Optimization for Deep Learning: Training
  BERT in 76 minutes", Algorithm 2, with Adam's bias correction; ``t`` counts this tensor's steps)::

      m <- b1*m + (1-b1)*g ; v <- b2*v + (1-b2)*g^2
      m_hat = m/(1-b1^t) ; v_hat = v/(1-b2^t) ; r = m_hat/(sqrt(v_hat) + eps) + wd*w
      trust group:  w <- w - lr*(||w||/||r||)*r     (ratio 1 if ||w|| or ||r|| is 0)
      other group:  w <- w - lr*r                   (wd = 0: Adam with bias correction)

Why our own LARS/LAMB rather than the ``pytorch-optimizer`` package (checked: version 4.1.0)?
Its ``LARS`` chooses which tensors get the trust ratio by ``p.ndim > 1`` inside the step (not per
group), so 1-D parameters are always skipped whatever the caller asks, and it keeps lr *outside*
the momentum buffer (torch SGD form), not the paper's form. Its ``Lamb`` applies the trust ratio to
every tensor of a group (biases and norm scales included) unless a group turns it off entirely
(``adam=True``), has no bias correction of ``v`` (it follows v3 of the paper; ``adam_debias``
corrects only the step size by ``1-b1^t``), clamps ``||w||`` at 10 and by default decays
``w`` before the Adam step instead of inside ``r``. Each rule here is ~20 lines, matches the papers
exactly, is pinned by hand-computed tests (``tests/test_optim.py``) and adds no dependency.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedlab_base.schema import OptimizerCfg


def param_groups(model: nn.Module, weight_decay: float, trust: bool = False) -> list[dict]:
    """Split parameters into a decayed group (weights, ndim > 1) and a non-decayed group (biases, norms).

    Parameters
    ----------
    model : nn.Module
        Its parameters with ``requires_grad``, in ``model.parameters()`` order.
    weight_decay : float
        Weight decay of the decayed group; the other group gets 0.
    trust : bool
        Add the ``trust`` key (True for the decayed group, False for the other) read by
        :class:`LARS` and :class:`LAMB`.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if trust:
        groups[0]["trust"], groups[1]["trust"] = True, False
    return groups


def _ratio(num: torch.Tensor, den: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``num/den``, or 1 where ``a`` or ``b`` (two norms) is zero; no NaN when both are zero."""
    ok = (a > 0) & (b > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(num))


def _closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017); update rule in the module docstring.

    Parameters
    ----------
    params : iterable
        Tensors or param-group dicts; a group's ``trust`` key (default True) turns the trust ratio on.
    lr, momentum, weight_decay : float
        Global learning rate, momentum ``mu`` and weight decay ``wd`` (group keys override them).
    trust_coef, eps : float
        ``eta`` and the ``eps`` added to the trust-ratio denominator.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coef: float = 0.001, eps: float = 1e-8, trust: bool = True):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or trust_coef <= 0 or eps < 0:
            raise ValueError(f"invalid LARS settings: lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay}, trust_coef={trust_coef}, eps={eps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coef=trust_coef, eps=eps, trust=trust))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One LARS step on every parameter that has a gradient; returns ``closure()`` if given."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=wd) if wd else p.grad.clone()  # g + wd*w
                if group["trust"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    den = g_norm + wd * w_norm + group["eps"]
                    d.mul_(_ratio(group["trust_coef"] * w_norm, den, w_norm, g_norm))  # local_lr
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = state["momentum_buffer"]
                v.mul_(mu).add_(d, alpha=lr)  # v <- mu*v + lr*local_lr*(g + wd*w)
                p.sub_(v)
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments for Batch training (You et al. 2020); rule in the module docstring.

    Parameters
    ----------
    params : iterable
        Tensors or param-group dicts; a group's ``trust`` key (default True) turns the trust ratio on.
    lr, weight_decay, eps : float
        Learning rate, weight decay ``wd`` (inside ``r``) and the Adam denominator's ``eps``.
    betas : tuple of float
        ``(b1, b2)``, decay rates of the first and second moment estimates.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, trust: bool = True):
        if lr < 0 or not all(0.0 <= b < 1.0 for b in betas) or eps < 0 or weight_decay < 0:
            raise ValueError(f"invalid LAMB settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, trust=trust))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One LAMB step on every parameter that has a gradient; returns ``closure()`` if given."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            (b1, b2), wd = group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v = int(state["step"]), state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                r = m_hat.div_(v_hat.sqrt_().add_(group["eps"]))
                if wd:
                    r.add_(p, alpha=wd)  # r = m_hat/(sqrt(v_hat) + eps) + wd*w
                if group["trust"]:
                    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                    r.mul_(_ratio(w_norm, r_norm, w_norm, r_norm))
                p.sub_(r, alpha=group["lr"])
        return loss


def make_optimizer(model: nn.Module, cfg: OptimizerCfg, lr: float) -> torch.optim.Optimizer:
    """Create the configured optimizer for ``model`` with learning rate ``lr``.

    Parameters
    ----------
    model : nn.Module
        Model whose parameters are split by :func:`param_groups` (decay/trust on ``ndim > 1`` only).
    cfg : OptimizerCfg
        ``name`` in sgd | adamw | lars | lamb and its settings (``momentum``, ``nesterov``,
        ``weight_decay``, ``beta1``, ``beta2``, ``eps``, ``trust_coef``).
    lr : float
        Learning rate (after any schedule/scaling rule).
    """
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups(model, wd), lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.name == "lars":
        return LARS(param_groups(model, wd, trust=True), lr=lr, momentum=cfg.momentum,
                    trust_coef=cfg.trust_coef, eps=cfg.eps)
    if cfg.name == "lamb":
        return LAMB(param_groups(model, wd, trust=True), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    raise ValueError(f"optimizer.name={cfg.name!r} is not supported; allowed: sgd, adamw, lars, lamb")


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state (momentum buffers, Adam moments, step counts) as
    ``{"<param index>.<name>": ndarray}``, for sending or keeping between rounds."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            if v is not None:
                out[f"{idx}.{name}"] = torch.as_tensor(v).detach().cpu().numpy().copy()
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`optimizer_state`: load the arrays into ``opt`` (hyper-parameters unchanged)."""
    state: dict[int, dict] = {}
    for key, arr in arrays.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = torch.from_numpy(np.array(arr))
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
