"""Config conversion: nested dicts (Hydra, config.yaml) <-> Flower's flat run_config, and back from Config.

Flower's run_config is flat (dotted keys) with scalar values; lists travel as strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedlab_base.checks import ConfigError, Scalar


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Flatten a nested mapping into Flower's run_config form: ``{"client.lr": 0.05, ...}``."""
    flat: dict[str, Scalar] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif value is None:
            raise ConfigError(f"{name}=None is invalid; run-config values must be bool, int, float or str")
        elif isinstance(value, Scalar):
            flat[name] = value
        else:
            raise ConfigError(f"{name}={value!r} is invalid; run-config values must be scalars (lists travel as strings)")
    return flat


def unflatten(flat: Mapping[str, Scalar]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def from_hydra(dcfg: Any) -> dict[str, Any]:
    """A composed Hydra/OmegaConf config as a plain nested dict of what fedlab reads.

    Drops Hydra's own ``hydra`` node and experiment-local helper values (keys starting with ``_``).
    """
    from omegaconf import OmegaConf  # only the CLI composes with Hydra; the apps never do

    nested = OmegaConf.to_container(dcfg, resolve=True)
    nested.pop("hydra", None)
    return {k: v for k, v in nested.items() if not str(k).startswith("_")}


def to_nested(cfg: Any) -> dict[str, Any]:
    """A :class:`~fedlab_base.schema.Config` as a nested dict of scalars (what ``config.yaml`` holds)."""
    out = dataclasses.asdict(cfg)
    out["strategy"] = {"name": cfg.strategy.name, **dataclasses.asdict(cfg.strategy.params)}
    return out


def to_run_config(cfg: Any) -> dict[str, Scalar]:
    """A :class:`~fedlab_base.schema.Config` as Flower's flat run_config."""
    return flatten(to_nested(cfg))
