"""Local training and evaluation on one client's shard (pure torch, no flwr import).

The shard stays a uint8 tensor ``(n, C, H, W)`` in memory; each mini-batch is sliced with a
seeded permutation and normalized on the fly (``x/255`` then per-channel ``(x - mean)/std``, one
fused multiply-subtract). No DataLoader, no per-sample Python.

Data order is a pure function of ``(seed, stream, epoch)``: the same seed gives the same batches,
which is what makes resumed runs and the FedAvg-with-one-client == centralized test exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn



@dataclass(frozen=True)
class Normalizer:
    """Per-channel ``(x/255 - mean)/std`` as ``x*scale - shift`` with ``(1, C, 1, 1)`` tensors."""

    scale: torch.Tensor
    shift: torch.Tensor
    channels_last: bool = False

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float], channels_last: bool = False) -> Normalizer:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(1.0 / (255.0 * s), m / s, channels_last)

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.to(torch.float32).mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class TrainResult:
    steps: int
    num_examples: int  # samples processed (steps * batch, counting a last partial batch as its size)
    loss: float  # mean training loss over the processed samples (nan if diverged)
    acc: float  # training accuracy over the processed samples
    seconds: float  # measured compute time of the loop
    diverged: bool


def epoch_permutation(n: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of ``range(n)`` for ``(seed, stream, epoch)``; ``stream`` = client id."""
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=g)


def batches(n: int, batch_size: int, seed: int, stream: int, first_epoch: int, *, epochs: int = 0,
            steps: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(epoch, index batch)``: ``epochs`` full passes (last batch may be partial) or exactly ``steps`` full batches.

    In step mode, batches run through consecutive epoch permutations starting at ``first_epoch``,
    skipping each epoch's incomplete tail so every step has exactly ``min(batch_size, n)`` samples.
    """
    b = min(batch_size, n)
    if steps > 0:
        done, epoch = 0, first_epoch
        while done < steps:
            perm = epoch_permutation(n, seed, stream, epoch)
            for i in range(0, n - b + 1, b):
                if done == steps:
                    return
                yield epoch, perm[i:i + b]
                done += 1
            epoch += 1
        return
    for epoch in range(first_epoch, first_epoch + epochs):
        perm = epoch_permutation(n, seed, stream, epoch)
        for i in range(0, n, b):
            yield epoch, perm[i:i + b]


def round_first_epoch(rnd: int, epochs: int, steps: int) -> int:
    """Where round ``rnd``'s data order starts: epochs mode continues the epoch sequence round after
    round (one client with E epochs per round sees what centralized training sees); steps mode starts
    each round on its own block of 2^20 permutations, so rounds with different step counts never share one."""
    return (rnd - 1) * epochs if steps == 0 else (rnd - 1) << 20


def _epoch_seed(seed: int, stream: int, epoch: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, stream, epoch, salt]).generate_state(1)[0])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer, opt: torch.optim.Optimizer, *,
          batch_size: int, seed: int, stream: int, first_epoch: int, epochs: int = 0, steps: int = 0,
          lr: float | None = None, lr_fn: Callable[[int], float] | None = None,
          augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` for ``epochs`` epochs or ``steps`` steps with optimizer ``opt``.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    x, y : torch.Tensor
        uint8 images ``(n, C, H, W)`` and int64 labels ``(n,)``.
    norm : Normalizer
        Turns uint8 batches into normalized float32 inputs.
    opt : torch.optim.Optimizer
        Built by the caller over ``model``'s parameters (a client makes a fresh one each round;
        centralized training keeps one across epochs, momentum included).
    batch_size : int
        Mini-batch size B.
    seed, stream, first_epoch : int
        Data order: batches come from ``epoch_permutation(n, seed, stream, first_epoch + e)``;
        augmentation and dropout are re-seeded at each epoch from the same triple, so one call of E
        epochs equals E calls of one epoch.
    epochs, steps : int
        Exactly one of them > 0 (steps wins when both are).
    lr : float, optional
        Learning rate for every parameter group during this call.
    lr_fn : callable, optional
        ``lr_fn(i)`` gives the learning rate of the i-th step of this call (per-step schedules).
    augment : callable, optional
        ``augment(uint8 batch, generator) -> uint8 batch``, applied before normalization.
    """
    model.train()
    if norm.channels_last:
        model.to(memory_format=torch.channels_last)
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen, n_steps, diverged, epoch_now = 0, 0, False, None
    gen = torch.Generator()
    t0 = time.perf_counter()
    for epoch, idx in batches(len(y), batch_size, seed, stream, first_epoch, epochs=epochs, steps=steps):
        if epoch != epoch_now:  # per-epoch seeds for dropout and augmentation
            epoch_now = epoch
            torch.manual_seed(_epoch_seed(seed, stream, epoch, 7))
            gen.manual_seed(_epoch_seed(seed, stream, epoch, 11))
        if lr_fn is not None:
            for group in opt.param_groups:
                group["lr"] = lr_fn(n_steps)
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, gen)
        out = model(norm(xb))
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (out.detach().argmax(1) == yb).sum()
        seen += len(yb)
        n_steps += 1
        if n_steps % 50 == 0 and not math.isfinite(float(loss_sum)):
            diverged = True
            break
    seconds = time.perf_counter() - t0
    mean_loss = float(loss_sum) / max(seen, 1)
    diverged = diverged or not math.isfinite(mean_loss)
    return TrainResult(n_steps, seen, mean_loss if not diverged else math.nan, float(correct) / max(seen, 1),
                       seconds, diverged)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer,
             batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (a fraction in [0, 1]) of ``model`` on ``(x, y)``."""
    model.eval()
    if norm.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = model(norm(x[i:i + batch_size]))
        yb = y[i:i + batch_size]
        loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return loss_sum / n, correct / n


@torch.no_grad()
def confusion_matrix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer, num_classes: int,
                     batch_size: int = 1024) -> np.ndarray:
    """``C[true, predicted]`` counts of ``model`` on ``(x, y)``, shape (num_classes, num_classes)."""
    model.eval()
    conf = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for i in range(0, len(y), batch_size):
        pred = model(norm(x[i:i + batch_size])).argmax(1)
        conf += torch.bincount(y[i:i + batch_size] * num_classes + pred, minlength=num_classes * num_classes)
    return conf.view(num_classes, num_classes).numpy()


def classification_report(conf: np.ndarray) -> dict[str, list[float]]:
    """Per-class precision, recall, F1 and support from a confusion matrix (0 where undefined)."""
    tp = np.diag(conf).astype(np.float64)
    predicted, actual = conf.sum(0).astype(np.float64), conf.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    s = precision + recall
    f1 = np.divide(2 * precision * recall, s, out=np.zeros_like(tp), where=s > 0)
    return {"precision": precision.round(4).tolist(), "recall": recall.round(4).tolist(), "f1": f1.round(4).tolist(),
            "support": actual.astype(int).tolist()}
