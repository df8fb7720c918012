"""One source of defaults: the schema's dataclasses (``fedlab_base/schema.py``) and each strategy's
``Params``. ``conf/*.yaml`` and ``[tool.flwr.app.config]`` must agree with them key by key."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import yaml
from conftest import ROOT, compose
from flwr.common.config import flatten_dict

import strategies
from fedlab_app import config
from fedlab_base.schema import SECTIONS, Config


def dataclass_defaults(cls: type, prefix: str = "") -> dict:
    return {f"{prefix}{f.name}": f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def schema_defaults() -> dict:
    out = dataclass_defaults(Config)
    for name, cls in SECTIONS.items():
        out.update(dataclass_defaults(cls, f"{name}."))
    return out


def pyproject_run_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return flatten_dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def test_default_composition_equals_the_dataclasses():
    """`fedlab run` with no override = the dataclasses' defaults, key by key (schedule auto resolved later)."""
    composed = config.flatten(compose())
    for key, want in schema_defaults().items():
        assert key in composed, f"{key} missing from conf/"
        assert composed[key] == want, f"{key}: conf/ says {composed[key]!r}, the dataclass {want!r}"
    assert composed["strategy.name"] == StrategyDefault.name


class StrategyDefault:
    name = dataclasses.fields(config.StrategyCfg)[0].default


def test_pyproject_run_config_equals_the_dataclasses():
    declared = pyproject_run_config()
    for key, want in schema_defaults().items():
        if key in ("out_dir",):
            continue
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"
        assert declared[key] == want, f"{key}: pyproject says {declared[key]!r}, the dataclass {want!r}"


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_strategy_yaml_and_pyproject_equal_its_params(name):
    """conf/strategy/<name>.yaml sets exactly its Params' defaults; pyproject declares each key, with the
    default strategy's value where that one has the key (and a default of some strategy otherwise)."""
    params = dataclass_defaults(strategies.REGISTRY[name].Params)
    yaml_values = yaml.safe_load((ROOT / "conf" / "strategy" / f"{name}.yaml").read_text())
    yaml_values.pop("name", None)
    assert yaml_values == params, f"conf/strategy/{name}.yaml differs from {name}'s Params"
    declared = pyproject_run_config()
    default = dataclass_defaults(strategies.REGISTRY[StrategyDefault.name].Params)
    for key, value in params.items():
        assert f"strategy.{key}" in declared, f"strategy.{key} missing from [tool.flwr.app.config]"
        if key in default:
            assert declared[f"strategy.{key}"] == default[key]
        else:
            assert any(dataclass_defaults(s.Params).get(key) == declared[f"strategy.{key}"]
                       for s in strategies.REGISTRY.values()), f"strategy.{key}"
