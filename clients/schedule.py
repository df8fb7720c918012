"""Learning-rate schedules and large-batch scaling (pure functions).

The schedule runs over *units*: rounds in federated runs (the server sends each round's lr, so a
cosine over R rounds means the same thing in every mode) and epochs in centralized runs (or steps
within epochs with ``schedule.per_step=true``). ``t`` is the progress at the start of the update,
in units: round r -> ``t = r - 1``; centralized step j of epoch e -> ``t = e + j/steps_per_epoch``.

    base  = scaled_lr(lr, B)            none: lr;  linear: lr*B/B_ref;  sqrt: lr*sqrt(B/B_ref)
    warm-up (t < W):   lr_t = base * (s + (1 - s) * t/W)          s = warmup_start
    constant:          lr_t = base
    step:              lr_t = base * gamma^(number of milestones m <= t)
    cosine:            lr_t = lr_min + (base - lr_min) * (1 + cos(pi * (t - W)/(T - W))) / 2
"""

from __future__ import annotations

import math

from fedlab_base.schema import ScheduleCfg


def scaled_lr(lr: float, batch_size: int, cfg: ScheduleCfg) -> float:
    """Large-batch lr scaling from the reference batch ``cfg.ref_batch_size``: none, linear or sqrt."""
    ratio = batch_size / cfg.ref_batch_size
    return {"none": lr, "linear": lr * ratio, "sqrt": lr * math.sqrt(ratio)}[cfg.scaling]


def lr_at(t: float, total: float, base: float, cfg: ScheduleCfg) -> float:
    """The learning rate at progress ``t`` (units, 0-based) of a schedule ``total`` units long.

    Parameters
    ----------
    t : float
        Progress at the start of the update, ``0 <= t < total``.
    total : float
        Schedule length in units (rounds, or epochs).
    base : float
        Peak learning rate (already scaled with :func:`scaled_lr`).
    cfg : ScheduleCfg
        Schedule name, warm-up, milestones, gamma, lr_min.
    """
    w = cfg.warmup
    if t < w:
        return base * (cfg.warmup_start + (1.0 - cfg.warmup_start) * t / w)
    if cfg.name == "constant":
        return base
    if cfg.name == "step":
        return base * cfg.gamma ** sum(1 for m in cfg.milestone_list if m <= t)
    if cfg.name == "cosine":
        span = max(total - w, 1e-12)
        p = min(max((t - w) / span, 0.0), 1.0)
        return cfg.lr_min + (base - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"schedule.name={cfg.name!r} is not supported")
