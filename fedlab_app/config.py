"""The one place that reads and validates configuration: run_config or nested dict -> frozen Config.

Config flows one way: Hydra composes ``conf/`` + overrides into a nested dict
(:func:`~fedlab_app.flat.from_hydra`) -> :func:`~fedlab_app.flat.flatten` turns it into Flower's flat
run_config (dotted keys, scalar values) -> :func:`parse` validates it into a frozen
:class:`~fedlab_base.schema.Config`. The ServerApp and the ClientApp call :func:`parse_cached` on
``context.run_config`` (once per run and process); nothing else reads raw keys.

The job is split by module: the schema and its defaults (``fedlab_base/schema.py``), coercion of
raw values (``fedlab_app/coerce.py``), flattening (``fedlab_app/flat.py``). Strategy-specific keys
(``strategy.*`` other than ``name``) are validated by the ``Params`` dataclass that the strategy
registers (``strategies/__init__.py``), so adding a strategy does not touch this file.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlab_app.coerce import build, unknown_key_error
from fedlab_app.flat import flatten, from_hydra, to_nested, to_run_config, unflatten
from fedlab_base.checks import ConfigError, Scalar, check, check_choice
from fedlab_base.schema import (SECTIONS, ClientCfg, Config, DatasetCfg, EvalCfg, ModelCfg, OptimizerCfg,
                                PartitionCfg, ScheduleCfg, SimCfg, StepsCfg, StrategyCfg, SystemCfg)
from strategies import REGISTRY
from strategies import packs as strategies_packs

__all__ = ["ConfigError", "Config", "Scalar", "check", "check_choice", "flatten", "unflatten", "from_hydra",
           "to_nested", "to_run_config", "parse", "parse_cached", "check_paths", "build", "SECTIONS", "ClientCfg",
           "DatasetCfg", "EvalCfg", "ModelCfg", "OptimizerCfg", "PartitionCfg", "ScheduleCfg", "SimCfg", "StepsCfg",
           "StrategyCfg", "SystemCfg"]


def parse(run_config: Mapping[str, Any], strict: bool = True) -> Config:
    """Validate a flat run_config (or a nested dict) into a :class:`Config`.

    ``strict=False`` ignores ``strategy.*`` keys the chosen strategy does not use: Flower's run_config
    declares the union of every strategy's keys (pyproject), while Hydra passes only the chosen
    group's. Unknown sections and unknown keys elsewhere are refused either way.
    """
    nested = unflatten(run_config) if any("." in k for k in run_config) else dict(run_config)
    top_fields = {f.name for f in dataclasses.fields(Config)} - set(SECTIONS) - {"strategy"}
    for key, value in nested.items():
        if key not in SECTIONS and key != "strategy" and key not in top_fields:
            raise unknown_key_error(key, [*SECTIONS, "strategy", *top_fields], "the top level")
        check(isinstance(value, Mapping) == (key in SECTIONS or key == "strategy"), key, value,
              "a section of keys" if key in SECTIONS or key == "strategy" else "a scalar value")
    sections = {name: build(cls, nested.get(name, {}), name) for name, cls in SECTIONS.items()}
    strat_raw = dict(nested.get("strategy", {}))
    name = strat_raw.pop("name", "fedavg")
    check_choice("strategy.name", name, sorted(REGISTRY))
    spec = REGISTRY[name]
    params = build(spec.Params, strat_raw, "strategy", strict=strict)
    if spec.resolve is not None:
        params = spec.resolve(params)
    check(not spec.needs_steps or sections["client"].local_steps >= 1 or sections["system"].budget > 0,
          "client.local_steps", sections["client"].local_steps,
          f"an integer J >= 1 with strategy={name} (or fixed-time rounds, system.budget > 0)")
    if sections["schedule"].name == "auto":  # resolved here so that config.yaml records what ran
        sections["schedule"] = dataclasses.replace(sections["schedule"], name=spec.schedule)
    top = {k: v for k, v in nested.items() if k in top_fields}
    cfg = build(Config, {**top, **sections, "strategy": StrategyCfg(name, params)}, "")
    check(strategies_packs(cfg) or cfg.sim.clients_per_worker <= 1, "sim.clients_per_worker",
          cfg.sim.clients_per_worker, f"0 or 1 with strategy={name}" + (
              " and strategy.clock=real (each worker runs on its own clock)" if spec.packs is not False
              else " (each of its nodes holds one client's state)"))
    if spec.check is not None:
        spec.check(cfg)
    return cfg


@functools.lru_cache(maxsize=8)
def _parse_items(items: tuple) -> Config:
    return parse(dict(items), strict=False)


def parse_cached(run_config: Mapping[str, Scalar]) -> Config:
    """:func:`parse` (non-strict) once per distinct run_config in this process (the ClientApp's per-message path)."""
    return _parse_items(tuple(sorted(run_config.items())))


def check_paths(cfg: Config) -> None:
    """Checks of the server's file system, before anything starts (not on clients: their disks differ).

    ``resume`` is ``true``, ``false`` or an existing run directory; ``out_dir`` is not a regular file.
    """
    if cfg.resume.lower() not in ("true", "false"):
        check(Path(cfg.resume).is_dir(), "resume", cfg.resume, "true, false or the path of an existing run directory")
    check(not (cfg.out_dir and Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir()), "out_dir",
          cfg.out_dir, "a directory (this path is an existing file)")
