"""Per-client optimizers over stacked parameters: K clients' states updated as one (pure torch).

Every parameter is held as one tensor ``(K, *shape)``, row k = client k. Each rule is the one of
``clients/optim.py`` (``torch.optim.SGD``/``AdamW`` single-tensor paths on CPU, our LARS/LAMB),
written with the same elementwise ops in the same order, so client k's row follows exactly the
iterates it would follow alone. Per parameter ``w`` (decayed group: ``ndim > 1``, weight decay
``wd`` and, for LARS/LAMB, the trust ratio; other group: ``wd = 0``, no trust ratio):

- sgd:    ``d = g + wd*w ; v <- mu*v + d ; w <- w - lr*(d + mu*v if nesterov else v)``
  (``v`` starts at 0, which gives torch's first step ``v = d`` exactly; no ``v`` when ``mu = 0``);
- adamw:  ``w <- w*(1 - lr*wd) ; m <- lerp(m, g, 1-b1) ; s <- b2*s + (1-b2)*g^2 ;
  w <- w - lr/(1-b1^t) * m / (sqrt(s)/sqrt(1-b2^t) + eps)`` with ``t`` client k's own step count;
- lars, lamb: as in ``clients/optim.py``; the layer norms ``||w||``, ``||g||``, ``||r||`` are taken
  per client, over all axes but the first: ``(K, 1, ..., 1)``.

Where clients' step counts differ (states carried from earlier rounds with unequal J_i), the bias
corrections become ``(K, 1, ..., 1)`` tensors: same maths, float rounding may differ by an ulp.
State travels in the format of ``clients.optim.optimizer_state``: ``{"<index>.<name>": ndarray}``,
index = position in ``param_groups`` order (decayed parameters first, then the others).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

SUPPORTED = ("sgd", "adamw", "lars", "lamb")


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Per-client L2 norm of a stacked tensor ``(K, ...)`` -> ``(K, 1, ..., 1)``."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


def _ratio(num: torch.Tensor, den: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``num/den``, or 1 where norm ``a`` or ``b`` is zero (as ``clients.optim._ratio``)."""
    ok = (a > 0) & (b > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(num))


def _per_client(values: Sequence[float], like: torch.Tensor) -> float | torch.Tensor:
    """One Python float when all clients share the value (exactly torch's scalar path), else ``(K, 1, ...)``."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=like.dtype).view(-1, *[1] * (like.ndim - 1))


class StackedOptimizer:
    """The configured optimizer for K clients at once, over stacked parameters.

    Parameters
    ----------
    cfg : object
        Optimizer settings with attributes ``name`` (sgd | adamw | lars | lamb), ``momentum``,
        ``nesterov``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``, ``trust_coef``
        (``clients.optim.OptimizerCfg`` has them).
    params : dict of str to torch.Tensor
        Stacked parameters ``(K, *shape)`` in ``model.parameters()`` order.
    states : sequence of mapping or None
        Per client, a carried state in ``optimizer_state`` format, or None for a fresh one.
    """

    def __init__(self, cfg, params: Mapping[str, torch.Tensor], states: Sequence[Mapping | None]):
        if cfg.name not in SUPPORTED:
            raise ValueError(f"optimizer.name={cfg.name!r} is not supported by fused training; allowed: {SUPPORTED}")
        self.cfg, self.names = cfg, list(params)
        self.decay = {n: params[n].ndim > 2 for n in self.names}  # the parameter itself has ndim > 1
        order = [n for n in self.names if self.decay[n]] + [n for n in self.names if not self.decay[n]]
        self.index = {n: i for i, n in enumerate(order)}
        if cfg.name in ("adamw", "lamb"):
            self.slots = ("exp_avg", "exp_avg_sq")
        else:
            self.slots = ("momentum_buffer",) if cfg.name == "lars" or cfg.momentum > 0 else ()
        self.state = {n: {s: torch.zeros_like(params[n]) for s in self.slots} for n in self.names}  # (K, ...)
        self.steps = [0] * len(states)  # per-client step counts (adamw, lamb)
        for k, carried in enumerate(states):
            if carried:
                self._load(k, carried)

    def _load(self, k: int, carried: Mapping) -> None:
        for n in self.names:
            for s in self.slots:
                key = f"{self.index[n]}.{s}"
                if key in carried:
                    self.state[n][s][k] = torch.as_tensor(np.asarray(carried[key])).reshape(self.state[n][s].shape[1:])
            key = f"{self.index[n]}.step"
            if key in carried:
                self.steps[k] = int(np.asarray(carried[key]))

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the clients ``rows`` (int64 indices into the current stack), in that order."""
        self.state = {n: {s: v[rows] for s, v in st.items()} for n, st in self.state.items()}
        self.steps = [self.steps[i] for i in rows.tolist()]

    def export(self, k: int) -> dict[str, np.ndarray]:
        """Client ``k``'s state (row k of the stack) as ``clients.optim.optimizer_state`` would give it."""
        out = {}
        for n in self.names:
            i = self.index[n]
            if self.cfg.name == "adamw":
                out[f"{i}.step"] = np.array(float(self.steps[k]), dtype=np.float32)
            elif self.cfg.name == "lamb":
                out[f"{i}.step"] = np.array(self.steps[k], dtype=np.int64)
            for s in self.slots:
                out[f"{i}.{s}"] = self.state[n][s][k].numpy().copy()
        return out

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], lr: float) -> None:
        """One update of every client's parameters (in place) from their ``.grad``."""
        self.steps = [t + 1 for t in self.steps]
        c = self.cfg
        for n in self.names:
            p, g, st = params[n], params[n].grad, self.state[n]  # (K, ...)
            wd = c.weight_decay if self.decay[n] else 0.0
            if c.name == "sgd":
                self._sgd(p, g, st, lr, wd)
            elif c.name == "adamw":
                self._adamw(p, g, st, lr, wd)
            elif c.name == "lars":
                self._lars(p, g, st, lr, wd, self.decay[n])
            else:
                self._lamb(p, g, st, lr, wd, self.decay[n])

    def _sgd(self, p, g, st, lr, wd) -> None:
        mu = self.cfg.momentum
        d = g.add(p, alpha=wd) if wd != 0 else g
        if mu != 0:
            v = st["momentum_buffer"].mul_(mu).add_(d)
            d = d.add(v, alpha=mu) if self.cfg.nesterov else v
        p.add_(d, alpha=-lr)

    def _adamw(self, p, g, st, lr, wd) -> None:
        b1, b2, eps = self.cfg.beta1, self.cfg.beta2, self.cfg.eps
        if wd != 0:
            p.mul_(1 - lr * wd)
        m, s = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        s.mul_(b2).addcmul_(g, g, value=1 - b2)
        size = _per_client([lr / (1 - b1 ** float(t)) for t in self.steps], p)
        bc2 = _per_client([(1 - b2 ** float(t)) ** 0.5 for t in self.steps], p)
        denom = (s.sqrt() / bc2).add_(eps)
        if isinstance(size, float):
            p.addcdiv_(m, denom, value=-size)
        else:
            p.addcdiv_(m * size, denom, value=-1.0)

    def _lars(self, p, g, st, lr, wd, trust) -> None:
        d = g.add(p, alpha=wd) if wd else g.clone()  # g + wd*w
        if trust:
            w_norm, g_norm = _norm(p), _norm(g)  # (K, 1, ...)
            den = g_norm + wd * w_norm + self.cfg.eps
            d.mul_(_ratio(self.cfg.trust_coef * w_norm, den, w_norm, g_norm))  # local_lr
        v = st["momentum_buffer"]
        v.mul_(self.cfg.momentum).add_(d, alpha=lr)
        p.sub_(v)

    def _lamb(self, p, g, st, lr, wd, trust) -> None:
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = m / _per_client([1 - b1**t for t in self.steps], p)
        v_hat = v / _per_client([1 - b2**t for t in self.steps], p)
        r = m_hat.div_(v_hat.sqrt_().add_(self.cfg.eps))
        if wd:
            r.add_(p, alpha=wd)
        if trust:
            w_norm, r_norm = _norm(p), _norm(r)
            r.mul_(_ratio(w_norm, r_norm, w_norm, r_norm))
        p.sub_(r, alpha=lr)
