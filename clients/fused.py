"""Train K virtual clients' models together as one fused computation (pure torch, no flwr import).

The K models share one architecture, a feed-forward stack of Conv2d, ReLU, MaxPool2d, Flatten,
Linear (Identity and Dropout(p=0) are skipped): the no-BatchNorm LeNet-5 variants (28x28, 32x32)
and cnn64. Their parameters are stacked on a leading client axis and run as ONE network:

    input    x[j, k*C + c] = sample j of client k's batch, channel c   (b, K*C, H, W) channels_last
    conv     grouped convolution, groups=K, weights W_k stacked        (K*C_out, C_in, kh, kw)
    relu, maxpool   per channel, hence per client (relu moved after the pool: max(relu) = relu(max))
    flatten  (b, K*C, H, W) -> (K, b, C*H*W), nn.Flatten's order per client
    linear   y_k = x_k @ W_k^T + b_k for all k in one torch.baddbmm      (K, b, out)
    loss     L = sum_k sum_j a_kj * CE(out[k, j], y[k, j]),   a_kj = 1/b_k (real sample) or 0 (padding)

Client k's parameters touch only client k's activations, so dL/dW_k is the gradient of client k's
own mean batch loss: the gradient of sequential training, up to the kernels' float rounding
(~1e-7 relative in float32, ~1e-16 in float64). The optimizer then updates every client's row of
the stacked state with the rules of clients/optim.py (see clients/fused_optim.py).

Data order and unequal work: client k draws its index batches from ``clients.train.batches`` with
its own ``(seed, stream, first_epoch)`` and J_k steps or E_k epochs -- the sequence
``clients.train.train`` draws -- and its augmentation generator is re-seeded per epoch the same way.
At fused step s every running client takes its s-th batch. A batch shorter than the longest
(``n_k < B``, an epoch's partial tail) is zero-padded with weight ``a = 0`` (no gradient). A client
whose batches are exhausted, or that diverged (non-finite loss at a 50-step check, as in ``train``),
is retired: its weights, metrics and optimizer state are copied out and the stacks shrink to the
clients still running, so finished clients cost nothing and their state never moves again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.fused_optim import StackedOptimizer
from clients.train import Normalizer, TrainResult, _epoch_seed, batches


@dataclass(frozen=True)
class ClientJob:
    """One virtual client's work: initial weights, shard, data-order stream and length.

    ``x`` is ``(n, C, H, W)`` (uint8 or float), ``y`` int64 ``(n,)``; ``steps`` > 0 gives exactly
    that many full batches, else ``epochs`` passes (as ``clients.train.train``). ``opt_state`` is a
    carried optimizer state in ``clients.optim.optimizer_state`` format (momentum keep/average).
    """

    state: Mapping[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    stream: int
    seed: int = 0
    first_epoch: int = 0
    steps: int = 0
    epochs: int = 0
    opt_state: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True)
class FusedResult:
    """A client's trained weights, its metrics as ``train`` reports them, and its optimizer state."""

    state: dict[str, torch.Tensor]
    result: TrainResult
    opt_state: dict[str, np.ndarray] | None


def fused_plan(template: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """The ``(kind, name, module)`` layer list of ``template`` in forward order; refuses what it cannot fuse.

    Leaves are taken in registration order (the order of ``forward`` for the LeNet-5 and cnn64
    models; :func:`train_fused` checks it numerically). A ReLU right before a MaxPool2d moves after it.
    """
    plan, flat = [], False
    for name, m in template.named_modules():
        if list(m.children()) or isinstance(m, nn.Identity) or (isinstance(m, nn.Dropout) and m.p == 0):
            continue
        if isinstance(m, nn.Conv2d) and not flat and m.groups == 1 and m.dilation == (1, 1) \
                and m.padding_mode == "zeros":
            plan.append(("conv", name, m))
        elif isinstance(m, nn.MaxPool2d) and not flat and not m.return_indices:
            plan.append(("pool", name, m))
        elif isinstance(m, nn.ReLU):
            plan.append(("relu", name, m))
        elif isinstance(m, nn.Flatten) and not flat and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten", name, m))
            flat = True
        elif isinstance(m, nn.Linear) and flat:
            plan.append(("linear", name, m))
        else:
            raise ValueError(f"fused training cannot fuse layer {name!r} ({m}): supported are Conv2d (groups=1, "
                             "no dilation, zero padding), MaxPool2d, ReLU, Flatten, Linear after Flatten, Identity and "
                             "Dropout(p=0); BatchNorm and dropout > 0 (random per client) are not")
    if not flat:
        raise ValueError("fused training needs a model ending in Flatten + Linear layers")
    for i in range(len(plan) - 1):
        if plan[i][0] == "relu" and plan[i + 1][0] == "pool":
            plan[i], plan[i + 1] = plan[i + 1], plan[i]
    return plan


def fused_forward(plan: Sequence[tuple[str, str, nn.Module]], params: Mapping[str, torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    """Run the K stacked models: ``x`` ``(b, K*C, H, W)`` -> logits ``(K, b, classes)``; ``params`` are ``(K, ...)``."""
    k = next(iter(params.values())).shape[0]
    h = x
    for kind, name, m in plan:
        if kind == "conv":
            w = params[name + ".weight"]  # (K, C_out, C_in, kh, kw)
            w = w.reshape(-1, *w.shape[2:]).contiguous(memory_format=torch.channels_last)
            b = params[name + ".bias"].reshape(-1) if m.bias is not None else None  # (K*C_out,)
            h = F.conv2d(h, w, b, m.stride, m.padding, 1, k)
        elif kind == "pool":
            h = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        elif kind == "relu":
            h = F.relu(h)
        elif kind == "flatten":
            h = h.reshape(h.shape[0], k, -1).transpose(0, 1)  # (K, b, C*H*W)
        else:
            w = params[name + ".weight"].transpose(1, 2)  # (K, in, out)
            h = torch.baddbmm(params[name + ".bias"].unsqueeze(1), h, w) if m.bias is not None else torch.bmm(h, w)
    return h


def _stack(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([s[n].detach() for s in states]).contiguous().requires_grad_() for n in names}


def _check_plan(template: nn.Module, plan, names, shape: tuple[int, ...]) -> None:
    """The fused forward with K=1 must reproduce ``template(x)``: guards a custom ``forward``."""
    with torch.no_grad():
        dtype = next(template.parameters()).dtype
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        params = {n: p.unsqueeze(0) for n, p in template.named_parameters()}
        ok = torch.allclose(fused_forward(plan, params, x)[0], template(x), rtol=1e-4, atol=1e-5)
    used = {f"{name}.{a}" for kind, name, m in plan if kind in ("conv", "linear") for a in ("weight", "bias")
            if getattr(m, a) is not None}
    if not ok or used != set(names):
        raise ValueError(f"fused training: {type(template).__name__}.forward is not its layers in registration order")


def train_fused(template: nn.Module, jobs: Sequence[ClientJob], norm: Normalizer, opt_cfg, *, batch_size: int,
                lr: float, lr_fn: Callable[[int], float] | None = None,
                augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                return_opt_state: bool = False, group_size: int = 8) -> list[FusedResult]:
    """Train every job's model at once; client k ends as ``clients.train.train`` would leave it.

    Parameters
    ----------
    template : nn.Module
        The architecture (its own weights are only used to check the layer order); no buffers.
    jobs : sequence of ClientJob
        K clients: initial state_dicts (same keys, shapes and dtype: float32 or float64), shards
        with equal ``(C, H, W)``, data order and step counts J_k (or epochs).
    norm : Normalizer
        uint8 -> normalized float32 input, as in ``train``, then cast to the weights' dtype; its
        ``channels_last`` flag is not read (the fused computation always runs channels_last).
    opt_cfg : object
        Optimizer settings (``clients.optim.OptimizerCfg`` or any object with its attributes);
        every client gets the optimizer ``clients.optim.make_optimizer(model, opt_cfg, lr)`` makes.
    batch_size : int
        B; client k's batches have ``min(B, n_k)`` samples (epochs: the tail may be shorter).
    lr : float
        Learning rate; ``lr_fn(s)``, if given, sets it at step s (the same step index for every client).
    augment : callable, optional
        ``augment(batch, generator)`` per client, generator seeded per epoch as in ``train``.
    return_opt_state : bool
        Also return each client's optimizer state (``optimizer_state`` format).
    group_size : int
        At most this many clients per fused computation: the jobs, sorted by their number of
        steps, are split into ceil(K/group_size) equal groups trained one after another; the
        results do not depend on the grouping. Groups bound the memory of a step (LeNet-5 conv1
        output: 4.8 MB at K=8). Measured here, 1 thread, ms per client step: 4.7 at K=1, 2.7 at
        K=2, ~2.2 from K=4 to 24 (sequential: 3.5); one group of 24 was no faster than groups of 8.

    Returns
    -------
    list of FusedResult
        In ``jobs`` order. ``result.seconds`` is the fused wall time shared out by examples processed.
    """
    out: list[FusedResult | None] = [None] * len(jobs)
    for i, r in iter_fused(template, jobs, norm, opt_cfg, batch_size=batch_size, lr=lr, lr_fn=lr_fn,
                           augment=augment, return_opt_state=return_opt_state, group_size=group_size):
        out[i] = r
    return out


def iter_fused(template: nn.Module, jobs: Sequence[ClientJob], norm: Normalizer, opt_cfg, *, batch_size: int,
               lr: float, lr_fn: Callable[[int], float] | None = None,
               augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               return_opt_state: bool = False, group_size: int = 8) -> Iterator[tuple[int, FusedResult]]:
    """:func:`train_fused`, yielding ``(job index, result)`` group by group as each group finishes, so
    that a caller can pack and drop each result before the next group trains (a node with hundreds
    of virtual clients then never holds all their trained models as tensors at once)."""
    if not jobs:
        return
    names = [n for n, _ in template.named_parameters()]
    if list(template.state_dict()) != names:
        raise ValueError("fused training needs a model without buffers (BatchNorm is not supported)")
    for i, j in enumerate(jobs):
        if set(j.state) != set(names) or j.x.shape[1:] != jobs[0].x.shape[1:] or len(j.x) != len(j.y) or len(j.y) == 0:
            raise ValueError(f"fused training: job {i} has other state keys, another sample shape or an empty shard")
    plan = fused_plan(template)
    _check_plan(template, plan, names, tuple(jobs[0].x.shape[1:]))
    work = [j.steps if j.steps > 0 else j.epochs * -(-len(j.y) // min(batch_size, len(j.y))) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: work[i])
    n_groups = -(-len(jobs) // max(group_size, 1))
    for g in range(n_groups):
        part = order[g * len(jobs) // n_groups:(g + 1) * len(jobs) // n_groups]
        res = _train_group(plan, names, [jobs[i] for i in part], norm, opt_cfg, batch_size, lr, lr_fn, augment,
                           return_opt_state)
        yield from zip(part, res)


def _train_group(plan, names, jobs, norm, opt_cfg, batch_size, lr, lr_fn, augment, return_opt_state):
    """:func:`train_fused` on one group of clients, all stacked in one computation."""
    kk, c = len(jobs), jobs[0].x.shape[1]
    params = _stack([j.state for j in jobs], names)  # name -> (K, ...)
    dtype = params[names[0]].dtype
    opt = StackedOptimizer(opt_cfg, params, [j.opt_state for j in jobs])
    iters = [batches(len(j.y), batch_size, j.seed, j.stream, j.first_epoch, epochs=j.epochs, steps=j.steps)
             for j in jobs]
    gens, epoch_now = [torch.Generator() for _ in jobs], [None] * kk
    loss_sum = torch.zeros(kk, dtype=torch.float64)
    correct = torch.zeros(kk, dtype=torch.int64)
    seen, n_steps, diverged = [0] * kk, [0] * kk, set()
    out_state, out_opt = [None] * kk, [None] * kk  # per client, filled in when it retires
    ids = list(range(kk))  # ids[r] = client held in row r of the stacks
    t0, s = time.perf_counter(), 0

    def retire(rows_done: list[int]) -> None:
        nonlocal params, ids
        if not rows_done:
            return
        for r in rows_done:
            out_state[ids[r]] = {n: params[n][r].detach().clone() for n in names}
            out_opt[ids[r]] = opt.export(r) if return_opt_state else None
        keep = [r for r in range(len(ids)) if r not in rows_done]
        rows = torch.tensor(keep, dtype=torch.int64)
        params = {n: p.detach()[rows].requires_grad_() for n, p in params.items()}
        opt.select(rows)
        ids = [ids[r] for r in keep]

    while ids:
        drawn, done = [], []
        for r, i in enumerate(ids):
            nxt = next(iters[i], None)
            if nxt is None:
                done.append(r)
                continue
            epoch, idx = nxt
            xb = jobs[i].x[idx]  # (b_i, C, H, W)
            if augment is not None:
                if epoch != epoch_now[i]:
                    epoch_now[i] = epoch
                    gens[i].manual_seed(_epoch_seed(jobs[i].seed, jobs[i].stream, epoch, 11))
                xb = augment(xb, gens[i])
            drawn.append((xb, jobs[i].y[idx]))
        retire(done)
        if not ids:
            break
        k = len(ids)
        sizes = [len(yb) for _, yb in drawn]
        bmax = max(sizes)
        xs = drawn[0][0].new_zeros((bmax, k) + tuple(drawn[0][0].shape[1:]))  # (b, K, C, H, W)
        ys = torch.zeros(k, bmax, dtype=torch.int64)  # (K, b)
        wts = torch.zeros(k, bmax, dtype=dtype)  # (K, b): 1/b_k on real samples, 0 on padding
        for r, (xb, yb) in enumerate(drawn):
            xs[:sizes[r], r], ys[r, :sizes[r]], wts[r, :sizes[r]] = xb, yb, 1.0 / sizes[r]
        x = xs.view(bmax, k * c, *xs.shape[3:]).to(torch.float32)
        x = x.mul_(norm.scale.repeat(1, k, 1, 1)).sub_(norm.shift.repeat(1, k, 1, 1))  # as Normalizer, tiled K times
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        out = fused_forward(plan, params, x)  # (K, b, classes)
        ce = F.cross_entropy(out.reshape(k * bmax, -1), ys.view(-1), reduction="none").view(k, bmax)
        per_client = (ce * wts).sum(1)  # (K,) mean loss of each client's batch
        for p in params.values():
            p.grad = None
        per_client.sum().backward()
        opt.step(params, lr_fn(s) if lr_fn is not None else lr)
        rows_t = torch.tensor(ids, dtype=torch.int64)
        b_t = torch.tensor(sizes, dtype=torch.float64)
        loss_sum.index_add_(0, rows_t, per_client.detach().to(torch.float64) * b_t)
        hits = ((out.detach().argmax(-1) == ys) & (wts > 0)).sum(1)  # (K,)
        correct.index_add_(0, rows_t, hits)
        s += 1
        for r, i in enumerate(ids):
            seen[i] += sizes[r]
            n_steps[i] += 1
        if s % 50 == 0:
            bad = [r for r, i in enumerate(ids) if not math.isfinite(float(loss_sum[i]))]
            diverged.update(ids[r] for r in bad)
            retire(bad)
    seconds = time.perf_counter() - t0
    total = max(sum(seen), 1)
    results = []
    for i in range(kk):
        mean_loss = float(loss_sum[i]) / max(seen[i], 1)
        div = i in diverged or not math.isfinite(mean_loss)
        res = TrainResult(n_steps[i], seen[i], math.nan if div else mean_loss, float(correct[i]) / max(seen[i], 1),
                          seconds * seen[i] / total, div)
        results.append(FusedResult(out_state[i], res, out_opt[i]))
    return results
