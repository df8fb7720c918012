"""Config: Hydra defaults == pyproject run_config, round trips, and clear errors for bad values."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from conftest import ROOT, compose
from flwr.common.config import flatten_dict

from fedlab_app import config
from strategies import REGISTRY


def pyproject_run_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return flatten_dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def test_hydra_defaults_equal_pyproject_run_config():
    """`flwr run .` (pyproject defaults) and `fedlab run` (Hydra defaults) run the same experiment."""
    hydra_flat = config.flatten(compose())
    declared = pyproject_run_config()
    for key, value in hydra_flat.items():
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"
        assert declared[key] == value and type(declared[key]) is type(value), key


def test_every_group_key_is_declared_in_pyproject():
    declared = pyproject_run_config()
    for path in (ROOT / "conf").glob("*/*.yaml"):
        group = path.parent.name
        if group == "experiment":
            continue
        for key in config.flatten({group: yaml.safe_load(path.read_text())}):
            assert key in declared, f"{key} (from {path.relative_to(ROOT)}) missing from [tool.flwr.app.config]"


def test_every_group_option_composes_and_validates():
    for path in (ROOT / "conf").glob("*/*.yaml"):
        if path.parent.name == "experiment":
            continue
        over = [f"{path.parent.name}={path.stem}"]
        if path.parent.name == "strategy" and REGISTRY[path.stem].needs_steps:
            with pytest.raises(config.ConfigError, match=f"client.local_steps=0 is invalid; allowed: an integer J >= 1 with strategy={path.stem}"):
                config.parse(config.flatten(compose(*over)))
            over.append("client.local_steps=4")
        cfg = config.parse(config.flatten(compose(*over)))
        assert isinstance(cfg, config.Config)


def test_parse_round_trip_and_overrides():
    cfg = config.parse(config.flatten(compose("num_clients=20", "partition=dirichlet", "partition.alpha=0.3",
                                              "client.local_epochs=2", "client.lr=1", "resume=true")))
    assert cfg.num_clients == 20 and cfg.partition.name == "dirichlet" and cfg.partition.alpha == 0.3
    assert cfg.client.local_epochs == 2 and cfg.client.lr == 1.0 and isinstance(cfg.client.lr, float)
    assert cfg.resume == "true" and cfg.resume_requested
    assert config.parse(config.to_run_config(cfg)) == cfg


def test_flower_run_config_with_union_keys_parses_non_strict():
    flat = {**pyproject_run_config(), "strategy.some_other_strategy_key": 1.0}
    assert config.parse(flat, strict=False).strategy.name == "fedavg"
    with pytest.raises(config.ConfigError, match=r"unknown config key 'strategy\."):
        config.parse(flat, strict=True)


@pytest.mark.parametrize("override, key, fragment", [
    ("dataset.name=imagenet", "dataset.name", "fashion_mnist"),
    ("strategy.name=fedfoo", "strategy.name", "fedavg"),
    ("partition.name=random", "partition.name", "dirichlet"),
    ("num_clients=0", "num_clients", ">= 1"),
    ("client.lr=0", "client.lr", "> 0"),
    ("client.lr=-0.1", "client.lr", "> 0"),
    ("partition.alpha=0", "partition.alpha", "> 0"),
    ("strategy.fraction_train=0", "strategy.fraction_train", "0 < C <= 1"),
    ("strategy.fraction_train=1.5", "strategy.fraction_train", "0 < C <= 1"),
    ("rounds=0", "rounds", ">= 1"),
    ("client.batch_size=0", "client.batch_size", ">= 1"),
    ("optimizer.momentum=1.0", "optimizer.momentum", "momentum < 1"),
    ("client.lr=fast", "client.lr", "float"),
    ("dataset.val_fraction=1.0", "dataset.val_fraction", "0 <= x < 1"),
])
def test_bad_values_name_key_value_and_allowed(override, key, fragment):
    with pytest.raises(config.ConfigError) as err:
        config.parse(config.flatten(compose(override)))
    msg = str(err.value)
    assert msg.startswith(key + "=") and override.split("=", 1)[1] in msg and fragment in msg, msg


def test_label_split_needs_no_more_clients_than_classes():
    with pytest.raises(config.ConfigError, match="num_clients=20"):
        config.parse(config.flatten(compose("partition=label_split", "num_clients=20")))


def test_flatten_rejects_none_and_lists():
    with pytest.raises(config.ConfigError, match="a.b"):
        config.flatten({"a": {"b": None}})
    with pytest.raises(config.ConfigError, match="c"):
        config.flatten({"c": [1, 2]})
    assert config.unflatten(config.flatten({"a": {"b": 1, "c": {"d": "x"}}})) == {"a": {"b": 1, "c": {"d": "x"}}}


def test_auto_packing_spreads_clients_over_the_cores_with_a_cap(monkeypatch):
    from fedlab_app import simulate

    monkeypatch.setattr(simulate.os, "cpu_count", lambda: 2)

    def packing(*overrides):
        return simulate.clients_per_worker(config.parse(config.flatten(compose(*overrides))))

    assert packing() == 5  # the default experiment: 10 clients over 2 workers
    assert packing("num_clients=100") == 50
    assert packing("num_clients=1000") == 500  # block sums: a node's reply is one model's sums whatever the count
    assert packing("num_clients=1000", "strategy=fedadam") == simulate.MAX_AUTO_PACKING == 64  # a model per client
    assert packing("strategy=dpsgd", "num_clients=256", "client.local_steps=5") == 64  # gossip packs too
    assert packing("strategy=async_sgd", "num_clients=6", "client.local_steps=1") == 3  # virtual clock: packs
    assert packing("strategy=async_sgd", "num_clients=6", "strategy.clock=real") == 1  # each worker on its own clock
    assert packing("num_clients=1000", "sim.clients_per_worker=500") == 500  # an explicit value wins
    assert packing("num_clients=1000", "sim.ray_address=auto") == 1  # a cluster: this machine's cores say nothing


def test_packing_async_sgd_needs_the_virtual_clock():
    with pytest.raises(config.ConfigError, match=r"sim.clients_per_worker.*0 or 1 with strategy=async_sgd and "
                                                 r"strategy.clock=real"):
        config.parse(config.flatten(compose("strategy=async_sgd", "strategy.clock=real", "sim.clients_per_worker=2")))
    with pytest.raises(config.ConfigError, match=r"0 or 1 with strategy=centralized \(each of its nodes"):
        config.parse(config.flatten(compose("strategy=centralized", "sim.clients_per_worker=2")))
    cfg = config.parse(config.flatten(compose("strategy=async_sgd", "sim.clients_per_worker=2")))
    assert cfg.sim.clients_per_worker == 2


@pytest.mark.parametrize("name", ["dpsgd", "sgp", "gosgd"])
def test_gossip_refuses_more_nodes_than_its_dense_matrix_allows(name):
    """num_clients=10**9 once built a 10**9 x 10**9 mixing matrix while validating (the config fuzz test drew
    such values and ran out of memory); now it is refused at once, naming the key and the bound."""
    with pytest.raises(config.ConfigError, match=r"num_clients=1000000000 is invalid.*at most 4096 nodes"):
        config.parse(config.flatten(compose(f"strategy={name}", "client.local_steps=2", "num_clients=1000000000")))
