"""Dynamic local steps: the number of local steps J_t of round t (1-based) of R, by a rule.

``steps.rule`` (J_0 = ``client.local_steps``, J_R = ``steps.final``):

    fixed       J_t = J_0
    linear      J_t = round(J_0 + (J_R - J_0) (t - 1)/(R - 1))
    exp         J_t = round(J_0 (J_R/J_0)^((t - 1)/(R - 1)))          (geometric increase or decrease)
    lr          J_t = ceil(J_0 (lr_t/lr_0)^p)                         p = ``steps.lr_power``
                (p = 1 keeps lr_t * J_t constant: fewer local steps as the lr decays; the AdaComm error-
                 runtime bound, tau* ~ sqrt(F/lr^3), corresponds to p = -1.5)
    adacomm     J_t = ceil(sqrt(F_t/F_0) J_0)                         (Wang & Joshi, "Adaptive Communication
                Strategies to Achieve the Best Error-Runtime Trade-off in Local-Update SGD", SysML 2019;
                F_t = the clients' mean training loss of round t-1, F_0 = that of round 1, J_1 = J_0)
    post_local  J_t = 1 for t < ``steps.switch_round``, J_0 from then on   (Lin et al., "Don't Use Large
                Mini-Batches, Use Local SGD", ICLR 2020)

Every rule is clipped to ``[1, steps.max]`` (``max`` = 0: no upper bound).
"""

from __future__ import annotations

import math

from fedlab_base.schema import STEP_RULES as RULES


def steps_at(rule: str, t: int, rounds: int, j0: int, *, final: int = 0, lr: float = 1.0, lr0: float = 1.0,
             lr_power: float = 1.0, loss: float = math.nan, loss0: float = math.nan, switch_round: int = 0,
             max_steps: int = 0) -> int:
    """Local steps for round ``t`` (1-based) of ``rounds`` under ``rule`` (see the module docstring).

    ``loss``/``loss0`` feed ``adacomm``; while either is unknown (round 1, or a NaN loss) it returns ``j0``.
    """
    frac = (t - 1) / (rounds - 1) if rounds > 1 else 1.0
    if rule == "fixed":
        j = j0
    elif rule == "linear":
        j = round(j0 + (final - j0) * frac)
    elif rule == "exp":
        j = round(j0 * (final / j0) ** frac)
    elif rule == "lr":
        j = math.ceil(j0 * (lr / lr0) ** lr_power - 1e-9)
    elif rule == "adacomm":
        ok = math.isfinite(loss) and math.isfinite(loss0) and loss0 > 0
        j = math.ceil(math.sqrt(max(loss, 0.0) / loss0) * j0 - 1e-9) if ok else j0
    elif rule == "post_local":
        j = 1 if t < switch_round else j0
    else:
        raise ValueError(f"unknown steps.rule {rule!r}; allowed: {', '.join(RULES)}")
    j = max(1, int(j))
    return min(j, max_steps) if max_steps > 0 else j
