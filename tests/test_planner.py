"""Round planning (fedlab_app/planner.py) and the config checks of the synchronous strategies' input."""

from __future__ import annotations

import logging

import pytest
from conftest import compose

from fedlab_app import config
from fedlab_app.planner import RoundPlanner


def parse(*over):
    return config.parse(config.flatten(compose(*over)))


@pytest.mark.parametrize("over, message", [
    (("system.profile=ratios", "system.ratios=1:2:4", "num_clients=4"),
     "system.ratios='1:2:4' is invalid; allowed: exactly num_clients=4 speeds (got 3)"),
    (("system.profile=ratios", "system.ratios=1:x"), "system.ratios='1:x' is invalid"),
    (("system.profile=fast",), "system.profile='fast' is invalid; allowed: one of uniform, ratios, lognormal"),
    (("strategy=localsgd", "client.local_steps=0"), "client.local_steps=0 is invalid; allowed: an integer J >= 1"),
    (("steps.rule=linear", "client.local_steps=4"), "steps.final=0 is invalid; allowed: an integer >= 1 with steps.rule=linear"),
    (("steps.rule=adacomm",), "client.local_steps=0 is invalid; allowed: J_0 >= 1 with steps.rule=adacomm"),
    (("steps.rule=exp", "steps.final=8", "client.local_steps=2", "system.budget=3"),
     "system.budget=3.0 is invalid; allowed: 0 with steps.rule=exp"),
    (("system.latency_ms=-1",), "system.latency_ms=-1.0 is invalid; allowed: a finite number >= 0"),
    (("strategy=slowmo", "client.local_steps=2", "strategy.beta=1.5"), "strategy.beta=1.5 is invalid"),
    (("strategy=localsgd", "client.local_steps=2", "strategy.momentum_mode=sometimes"), "strategy.momentum_mode='sometimes'"),
    (("strategy=fednova", "client.local_steps=2", "strategy.momentum_mode=keep"), "strategy.momentum_mode='keep' is invalid"),
    (("strategy=slowmo", "client.local_steps=2", "strategy.aggregation=fednova", "strategy.momentum_mode=average"),
     "reset with aggregation=fednova"),
    (("schedule.warmup=2", "schedule.warmup_start=0"), "schedule.warmup_start=0.0 is invalid; allowed: 0 < x <= 1"),
])
def test_bad_input_is_refused_before_training(over, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(*over)


def test_budget_that_gives_zero_steps_runs_one_step_with_a_warning(caplog):
    cfg = parse("strategy=step_weighted", "num_clients=3", "system.profile=ratios", "system.ratios=0.2:1:3",
                "system.budget=2")
    planner = RoundPlanner(cfg, base_lr=0.1)
    with caplog.at_level(logging.WARNING, logger="fedlab"):
        assert planner.steps(1, 0.1) == [1, 2, 6]  # floor(0.4) = 0 -> 1
    assert "gives clients [0] zero steps per round; they run 1 step" in caplog.text


def test_epochs_mode_and_rules():
    assert RoundPlanner(parse(), 0.02).steps(1, 0.02) == [0] * 10  # FedAvg default: epochs
    p = RoundPlanner(parse("num_clients=2", "client.local_steps=8", "steps.rule=adacomm"), 0.02)
    assert p.steps(1, 0.02) == [8, 8]
    p.observe(2.0)
    p.observe(0.5)
    assert p.steps(3, 0.02) == [4, 4]  # ceil(sqrt(0.5/2) * 8)
