"""Learning-rate schedules and large-batch scaling against hand-computed values."""

from __future__ import annotations

import math

import pytest

from clients.schedule import lr_at, scaled_lr
from fedlab_app.config import ConfigError, ScheduleCfg, build


def sched(**kw) -> ScheduleCfg:
    return build(ScheduleCfg, {"name": "constant", **kw}, "schedule")


def test_auto_resolves_per_strategy():
    """schedule=auto (the default) is cosine for the centralized baseline and constant for federated runs."""
    from conftest import compose

    from fedlab_app.config import flatten, parse
    assert parse(flatten(compose())).schedule.name == "constant"
    assert parse(flatten(compose("strategy=centralized"))).schedule.name == "cosine"
    assert parse(flatten(compose("strategy=centralized", "schedule=step", "schedule.milestones=5"))).schedule.name == "step"


def test_constant():
    assert [lr_at(t, 10, 0.1, sched()) for t in (0, 5, 9)] == [0.1, 0.1, 0.1]


def test_linear_warmup_then_constant():
    """W=4, s=0.1: lr_t = 0.1*(0.1 + 0.9*t/4) -> t=0: 0.01, t=2: 0.055, t>=4: 0.1."""
    s = sched(warmup=4.0, warmup_start=0.1)
    assert lr_at(0, 10, 0.1, s) == pytest.approx(0.01)
    assert lr_at(2, 10, 0.1, s) == pytest.approx(0.055)
    assert lr_at(3.5, 10, 0.1, s) == pytest.approx(0.1 * (0.1 + 0.9 * 3.5 / 4))
    assert lr_at(4, 10, 0.1, s) == pytest.approx(0.1)


def test_step_milestones():
    """milestones 3,6, gamma 0.5: 1.0 for t<3, 0.5 for 3<=t<6, 0.25 after."""
    s = sched(name="step", milestones="3,6", gamma=0.5)
    assert [lr_at(t, 10, 1.0, s) for t in (0, 2.99, 3, 5, 6, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_with_warmup_and_floor():
    """W=2, T=10, lr_min=0.01: t=2 -> peak 1.0; t=6 (halfway) -> 0.01 + 0.99/2 = 0.505; t->10 -> 0.01."""
    s = sched(name="cosine", warmup=2.0, lr_min=0.01)
    assert lr_at(2, 10, 1.0, s) == pytest.approx(1.0)
    assert lr_at(6, 10, 1.0, s) == pytest.approx(0.505)
    assert lr_at(8, 10, 1.0, s) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(10, 10, 1.0, s) == pytest.approx(0.01)
    lrs = [lr_at(t, 10, 1.0, s) for t in range(2, 10)]
    assert lrs == sorted(lrs, reverse=True)


def test_large_batch_scaling():
    """B=1024 from B_ref=256: linear x4, sqrt x2."""
    assert scaled_lr(0.1, 1024, sched(scaling="linear")) == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, sched(scaling="sqrt")) == pytest.approx(0.2)
    assert scaled_lr(0.1, 64, sched(scaling="sqrt", ref_batch_size=256)) == pytest.approx(0.05)
    assert scaled_lr(0.1, 1024, sched()) == 0.1


@pytest.mark.parametrize("kw, key", [
    ({"name": "linear"}, "schedule.name"), ({"milestones": "6,3"}, "schedule.milestones"),
    ({"milestones": "a,b"}, "schedule.milestones"), ({"name": "step"}, "schedule.milestones"),
    ({"gamma": 0.0}, "schedule.gamma"), ({"warmup": -1.0}, "schedule.warmup"),
    ({"scaling": "cubic"}, "schedule.scaling"),
])
def test_bad_schedules(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "="):
        sched(**kw)
