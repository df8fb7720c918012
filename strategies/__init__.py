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

from strategies import async_sgd, centralized, fedavg, fednova, fedopt, gossip, localsgd, slowmo, step_weighted


@dataclass(frozen=True)
class Spec:
    Params: type
    build: Callable[[Any], Any] | None = None
    run: Callable[[Any, Any], dict] | None = None
    schedule: str = "constant"  # what schedule.name=auto (the default) resolves to for this strategy
    needs_steps: bool = False  # clients run J steps (client.local_steps >= 1 or system.budget > 0), not epochs
    loop: Callable[[Any, Any, Any], dict] | None = None  # its own round loop over the Flower grid (gossip)
    check: Callable[[Any], None] | None = None  # more checks of the whole config before anything starts
    resolve: Callable[[Any], Any] | None = None  # Params -> Params with "auto" values resolved (recorded as run)


def _gossip_loop(cfg, grid, run_dir) -> dict:
    from fedlab_app.gossip_loop import run  # the loop needs the app's results machinery

    return run(cfg, grid, run_dir)


def _async_loop(cfg, grid, run_dir) -> dict:
    from fedlab_app.async_loop import run

    return run(cfg, grid, run_dir)


def _gossip_check(method: str) -> Callable[[Any], None]:
    return lambda cfg: gossip.check_setup(method, cfg.strategy.params, cfg.num_clients, cfg.seed)


def _gossip_resolve(method: str) -> Callable[[Any], Any]:
    return lambda params: gossip.resolved(method, params)


REGISTRY: dict[str, Spec] = {
    "fedavg": Spec(fedavg.Params, build=fedavg.build),
    "centralized": Spec(centralized.Params, run=centralized.run, schedule="cosine"),
    "localsgd": Spec(localsgd.Params, build=localsgd.build, needs_steps=True),
    "slowmo": Spec(slowmo.Params, build=slowmo.build, needs_steps=True),
    "step_weighted": Spec(step_weighted.Params, build=step_weighted.build, needs_steps=True),
    "fednova": Spec(fednova.Params, build=fednova.build, needs_steps=True),
    "fedavgm": Spec(fedopt.AvgMParams, build=fedopt.build_avgm),
    "fedadam": Spec(fedopt.OptParams, build=fedopt.build_adam),
    "fedyogi": Spec(fedopt.OptParams, build=fedopt.build_yogi),
    "async_sgd": Spec(async_sgd.Params, loop=_async_loop,
                      check=lambda cfg: async_sgd.check_setup(cfg.strategy.params, cfg.num_clients)),
    **{m: Spec(gossip.Params, loop=_gossip_loop, check=_gossip_check(m),
                 resolve=_gossip_resolve(m)) for m in gossip.METHODS},
}


def build(cfg) -> Any:
    """Build the configured strategy from a validated config."""
    spec = REGISTRY[cfg.strategy.name]
    if spec.build is None:
        raise ValueError(f"strategy.name={cfg.strategy.name!r} runs without Flower: start it with "
                         f"`fedlab run strategy={cfg.strategy.name}`, not through a ServerApp")
    return spec.build(cfg)


def run_on_grid(cfg, grid, run_dir) -> dict:
    """Run the configured strategy over a Flower grid: its own loop (gossip) or the synchronous round loop."""
    spec = REGISTRY[cfg.strategy.name]
    if spec.loop is not None:
        return spec.loop(cfg, grid, run_dir)
    from fedlab_app import server_loop

    return server_loop.run(cfg, grid, build(cfg), run_dir)
