"""Server strategies: the maths as pure functions, with thin Flower strategy classes and modes around them.

``REGISTRY`` maps ``strategy.name`` to a :class:`Spec`: the strategy's ``Params`` dataclass
(validated by ``fedlab_app/config.py``) and its mode (``strategies/modes.py``): the synchronous
mode around a Flower strategy that ``build(cfg)`` makes (the FedAvg family), or a mode class of its
own (gossip, async, centralized). The round driver (``fedlab_app/driver.py``) runs any of them; the
ClientApp dispatches a message on its ``mode`` value to the mode's ``client_fit``.

Adding a strategy means adding its module, its ``conf/strategy/*.yaml``, one entry here, and its
tests; one that owns its loop brings its mode class (and, when its nodes do something new, its
``client_fit``) in its module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strategies import async_mode, async_sgd, centralized, fedavg, fednova, fedopt, gossip, gossip_mode, localsgd
from strategies import slowmo, step_weighted, sync


@dataclass(frozen=True)
class Spec:
    Params: type
    build: Callable[[Any], Any] | None = None  # a Flower strategy for the synchronous mode
    mode: Callable[[], Any] | None = None  # a mode of its own (a class; default: the synchronous mode)
    client_fit: Callable[[Any, Any], Any] | None = None  # what its nodes do with a train message
    schedule: str = "constant"  # what schedule.name=auto (the default) resolves to for this strategy
    needs_steps: bool = False  # clients run J steps (client.local_steps >= 1 or system.budget > 0), not epochs
    check: Callable[[Any], None] | None = None  # more checks of the whole config before anything starts
    resolve: Callable[[Any], Any] | None = None  # Params -> Params with "auto" values resolved (recorded as run)
    prepare: Callable[[Any], Any] | None = None  # Config -> the Config the run records (e.g. one client)
    total: Callable[[Any], int] | None = None  # the run's number of rounds (default cfg.rounds)
    packs: bool | Callable[[Any], bool] = True  # a node may hold several virtual clients (sim.clients_per_worker
    # > 1), trained fused; or a function of the strategy's Params that says so
    client_fit_block: Callable[[Any, list], Any] = sync.client_fit_block  # several virtual clients of one node


def _gossip_check(method: str) -> Callable[[Any], None]:
    return lambda cfg: gossip.check_setup(method, cfg.strategy.params, cfg.num_clients, cfg.seed)


def _gossip_resolve(method: str) -> Callable[[Any], Any]:
    return lambda params: gossip.resolved(method, params)


REGISTRY: dict[str, Spec] = {
    "fedavg": Spec(fedavg.Params, build=fedavg.build),
    "centralized": Spec(centralized.Params, mode=centralized.CentralizedMode, schedule="cosine",
                        prepare=centralized.prepare, total=centralized.total, packs=False),
    "localsgd": Spec(localsgd.Params, build=localsgd.build, needs_steps=True),
    "slowmo": Spec(slowmo.Params, build=slowmo.build, needs_steps=True),
    "step_weighted": Spec(step_weighted.Params, build=localsgd.build, needs_steps=True),
    "fednova": Spec(fednova.Params, build=localsgd.build, needs_steps=True),
    "fedavgm": Spec(fedopt.AvgMParams, build=fedopt.build_avgm),
    "fedadam": Spec(fedopt.OptParams, build=fedopt.build_adam),
    "fedyogi": Spec(fedopt.OptParams, build=fedopt.build_yogi),
    "async_sgd": Spec(async_sgd.Params, mode=async_mode.AsyncMode, client_fit=async_mode.client_fit,
                      client_fit_block=async_mode.client_fit_block,
                      check=lambda cfg: async_sgd.check_setup(cfg.strategy.params, cfg.num_clients),
                      packs=lambda params: params.clock == "virtual"),  # real clock: each worker on its own
    **{m: Spec(gossip.Params, mode=gossip_mode.GossipMode, client_fit=sync.client_fit,
               check=_gossip_check(m), resolve=_gossip_resolve(m)) for m in gossip.METHODS},
}


def make_mode(cfg: Any) -> Any:
    """The mode that runs ``cfg``: the strategy's own, or the synchronous mode around its Flower strategy."""
    spec = REGISTRY[cfg.strategy.name]
    return spec.mode() if spec.mode is not None else sync.SyncMode(spec.build(cfg))


def packs(cfg: Any) -> bool:
    """Whether a node may hold several of ``cfg``'s virtual clients (``sim.clients_per_worker`` > 1)."""
    p = REGISTRY[cfg.strategy.name].packs
    return p(cfg.strategy.params) if callable(p) else p


def client_fits(block: bool = False) -> dict[str, Callable[..., Any]]:
    """``{mode value: client_fit}`` for every registered strategy (what a node can be asked to do); ``block``:
    ``client_fit_block`` instead, what a node holding several virtual clients does with a train message."""
    attr = "client_fit_block" if block else "client_fit"
    fits = {sync.SyncMode.name: getattr(sync, attr)}
    for spec in REGISTRY.values():
        if spec.mode is not None and spec.client_fit is not None:
            fits[spec.mode.name] = getattr(spec, attr)
    return fits
