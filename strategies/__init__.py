"""Server strategies: the maths as pure functions, with thin Flower strategy classes around them.

``REGISTRY`` maps ``strategy.name`` to a :class:`Spec`: the strategy's ``Params`` dataclass
(validated by ``fedlab_app.config``) and its ``build(cfg)`` function. Adding a strategy means adding
its module, its ``conf/strategy/*.yaml``, one entry here, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strategies import fedavg


@dataclass(frozen=True)
class Spec:
    Params: type
    build: Callable[[Any], Any]


REGISTRY: dict[str, Spec] = {
    "fedavg": Spec(fedavg.Params, fedavg.build),
}


def build(cfg) -> Any:
    """Build the configured strategy from a validated config."""
    return REGISTRY[cfg.strategy.name].build(cfg)
