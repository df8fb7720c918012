"""Optimizer factory for local training (pure torch, no flwr).

SGD with optional (Nesterov) momentum and weight decay:
``v <- mu*v + (g + wd*w) ; w <- w - lr*v`` (``w <- w - lr*(g + wd*w + mu*v)`` with Nesterov), as
``torch.optim.SGD``. Weight decay applies to the decayed group only (conv/linear weights); biases
and normalization parameters (1-D tensors) are not decayed.
"""

from __future__ import annotations

import torch
from torch import nn

from fedlab_app.config import OptimizerCfg


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (weights, ndim > 1) and a non-decayed group (biases, norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: OptimizerCfg, lr: float) -> torch.optim.Optimizer:
    """Create the configured optimizer for ``model`` with learning rate ``lr``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov)
    raise ValueError(f"optimizer.name={cfg.name!r} is not supported")
