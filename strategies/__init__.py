"""Server strategies: the maths as pure functions, with thin Flower strategy classes around them.

``REGISTRY`` maps ``strategy.name`` to a :class:`Spec`: the strategy's ``Params`` dataclass
(validated by ``fedlab_app.config``) and either ``build(cfg)`` (a Flower strategy for the round
loop) or ``run(cfg, run_dir)`` (a mode that runs without Flower, such as the centralized baseline). Adding a strategy means adding
its module, its ``conf/strategy/*.yaml``, one entry here, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strategies import centralized, fedavg


@dataclass(frozen=True)
class Spec:
    Params: type
    build: Callable[[Any], Any] | None = None
    run: Callable[[Any, Any], dict] | None = None
    schedule: str = "constant"  # what schedule.name=auto (the default) resolves to for this strategy


REGISTRY: dict[str, Spec] = {
    "fedavg": Spec(fedavg.Params, build=fedavg.build),
    "centralized": Spec(centralized.Params, run=centralized.run, schedule="cosine"),
}


def build(cfg) -> Any:
    """Build the configured strategy from a validated config."""
    spec = REGISTRY[cfg.strategy.name]
    if spec.build is None:
        raise ValueError(f"strategy.name={cfg.strategy.name!r} runs without Flower: start it with "
                         f"`fedlab run strategy={cfg.strategy.name}`, not through a ServerApp")
    return spec.build(cfg)
