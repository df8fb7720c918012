"""A strategy with its own loop, defined in tests/plugins/, runs through the registry alone: one
REGISTRY entry, no change to the driver, the other modes, results.py or plots.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import compose, needs_fmnist
from plugins.shrink import Params, ShrinkMode

import strategies
from fedlab_app import config, driver
from fedlab_app.results import RunDir

pytestmark = needs_fmnist


def test_a_new_loop_owning_strategy_plugs_in_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.REGISTRY, "shrink", strategies.Spec(Params, mode=ShrinkMode))
    nested = compose("dataset.limit_train=300", "num_clients=1", "rounds=3", f"out_dir={tmp_path}")
    nested["strategy"] = {"name": "shrink", "shrink": 0.5}
    cfg = config.parse(config.flatten(nested))
    x0 = driver.initial_arrays(cfg)
    summary = driver.run(cfg, None, RunDir(tmp_path))
    assert summary["status"] == "finished" and summary["rounds"] == 3 and summary["toy_rounds"] == 3
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["toy_scale"]) for r in rows] == [0.5, 0.25, 0.125]  # its own column, in its own header
    _, arrays, _, extra = RunDir.load_checkpoint(RunDir(tmp_path).last_checkpoint())
    np.testing.assert_allclose(arrays["fc3.weight"] if "fc3.weight" in arrays else next(iter(arrays.values())),
                               0.125 * (x0["fc3.weight"] if "fc3.weight" in x0 else next(iter(x0.values()))),
                               rtol=1e-6)
    assert int(extra["mode"]["t"]) == 3


def test_its_params_are_validated_like_any_strategy(monkeypatch):
    monkeypatch.setitem(strategies.REGISTRY, "shrink", strategies.Spec(Params, mode=ShrinkMode))
    nested = compose()
    nested["strategy"] = {"name": "shrink", "shrink": 1.5}
    with pytest.raises(config.ConfigError, match=r"strategy.shrink=1.5 is invalid; allowed: 0 <= shrink < 1"):
        config.parse(config.flatten(nested))
