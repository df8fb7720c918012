"""Composing a config with Hydra, as ``fedlab run`` does: ``conf/`` defaults + overrides -> a Config.

Used by ``fedlab deploy run``, the benchmarks and the tests; ``fedlab run`` composes through
``@hydra.main`` (for sweeps) and then takes the same path (:func:`fedlab_app.flat.from_hydra`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from fedlab_app import config
from fedlab_app.flat import from_hydra

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def register_resolvers() -> None:
    """OmegaConf resolvers for experiment configs: ``${div:a,b}`` = a // b (at least 1), e.g. rounds = T // J."""
    OmegaConf.register_new_resolver("div", lambda a, b: max(1, int(a) // int(b)), replace=True)


def compose_nested(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The composed config for ``overrides`` as a plain nested dict."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return from_hydra(hydra_compose(config_name="config", overrides=list(overrides)))


def compose(overrides: list[str] | tuple[str, ...] = ()) -> config.Config:
    """Compose and validate the config as ``fedlab run`` does (Hydra defaults + overrides)."""
    return config.parse(config.flatten(compose_nested(overrides)))
