"""Flower's ``flwr.simulation`` package in a Ray worker without what only the server needs.

A worker needs one class of that package: ``flwr.simulation.ray_transport.ray_actor.ClientAppActor``. But
importing any submodule first runs the package's ``__init__``, which imports the simulation engine and, through
the SuperLink's state, SQLAlchemy, Alembic and FastAPI: 0.8-1.1 s of a worker's start on this machine
(``tests/test_actor_package.py`` checks which modules load; 1.5-1.9 against 0.65-0.83 s to import the actor module
here, three runs each). A simulated run's private Ray workers import this module first
(``ray_start.WORKER_PRELOAD``): it puts an empty ``flwr.simulation`` package in ``sys.modules``, with the real
package's path, so its submodules import as usual. Should anything ask the package for one of its own names
(``from flwr.simulation import run_simulation``), the real ``__init__`` runs then, once, in the same module.

This module imports only the standard library: it runs before anything else in a worker.
"""

from __future__ import annotations

import importlib.util
import sys
import types

NAME = "flwr.simulation"


def install() -> bool:
    """Put the empty ``flwr.simulation`` package in ``sys.modules``; False where it is already imported."""
    if NAME in sys.modules:
        return False
    spec = importlib.util.find_spec(NAME)
    pkg = types.ModuleType(NAME)
    pkg.__spec__, pkg.__file__, pkg.__package__ = spec, spec.origin, NAME
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__loader__ = spec.loader

    def __getattr__(name: str):  # PEP 562: only for names the module does not have yet
        if name.startswith("__"):
            raise AttributeError(name)
        del pkg.__getattr__
        spec.loader.exec_module(pkg)  # the real __init__, in this module object
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__
    sys.modules[NAME] = pkg
    return True


install()
