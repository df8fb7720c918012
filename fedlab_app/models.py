"""Models: LeNet-5 variants and the small CNN of the gossip study.

Shapes (batch first):
- ``lenet5`` on 1x28x28 (Fashion-MNIST, MNIST), the classic layout with padding 2 on conv1:
  conv 6@5x5 -> 6x28x28 -> maxpool -> 6x14x14 -> conv 16@5x5 -> 16x10x10 -> maxpool -> 16x5x5
  -> fc 400->120 -> fc 120->84 -> fc 84->classes (ReLU between layers).
- ``lenet5`` on 3x32x32 (CIFAR): the same without padding (32 -> 28 -> 14 -> 10 -> 5), optionally
  with BatchNorm after each conv and dropout after fc1 and fc2.
- ``cnn64``: three 3x3 conv layers with 64, 128 and 64 filters (padding 1), each followed by ReLU
  and 2x2 max-pooling, then fc 64*(S/8)^2 -> 256 -> classes. The gossip study (Blot et al.) names
  only the filter counts; the kernel sizes and the hidden width here are our choice.
"""

from __future__ import annotations

import torch
from torch import nn

from fedlab_app.config import ModelCfg


class LeNet5(nn.Module):
    """LeNet-5 for ``in_channels x size x size`` inputs (size 28 or 32)."""

    def __init__(self, in_channels: int, size: int, num_classes: int, batchnorm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        pad = 2 if size == 28 else 0
        spatial = (size + 2 * pad - 4) // 2  # after conv1 (5x5) and pool
        spatial = (spatial - 4) // 2  # after conv2 (5x5) and pool
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), norm(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), norm(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * spatial * spatial, 120), nn.ReLU(), drop,
            nn.Linear(120, 84), nn.ReLU(), drop,
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, S, S) -> (N, classes)
        return self.classifier(self.features(x))


class CNN64(nn.Module):
    """The 64/128/64-filter CNN (see module docstring)."""

    def __init__(self, in_channels: int, size: int, num_classes: int, batchnorm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 64), (64, 128), (128, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1)]
            layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        spatial = size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * spatial * spatial, 256), nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS = {"lenet5": LeNet5, "cnn64": CNN64}


def build_model(cfg: ModelCfg, in_shape: tuple[int, int, int], num_classes: int, seed: int | None = None) -> nn.Module:
    """Build the configured model for inputs of shape ``(C, H, W)``.

    Parameters
    ----------
    cfg : ModelCfg
        ``name`` (lenet5 | cnn64), ``batchnorm``, ``dropout``.
    in_shape : tuple
        ``(channels, height, width)``; height must equal width (28 or 32 for lenet5).
    num_classes : int
        Size of the output layer.
    seed : int, optional
        Seed for the initial weights (the global model's initialization is reproducible).
    """
    c, h, w = in_shape
    if h != w or (cfg.name == "lenet5" and h not in (28, 32)):
        raise ValueError(f"model.name={cfg.name!r} needs square 28x28 or 32x32 inputs, got {h}x{w}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MODELS[cfg.name](c, h, num_classes, cfg.batchnorm, cfg.dropout)
    return MODELS[cfg.name](c, h, num_classes, cfg.batchnorm, cfg.dropout)


def use_channels_last(cfg: ModelCfg) -> bool:
    """channels_last speeds up these convs 1.1-1.7x without BatchNorm but slows them with it (PERF-NOTES)."""
    return not cfg.batchnorm
