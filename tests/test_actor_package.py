"""``fedlab_app/actor_package.py``: a Ray worker imports Flower's actor module without the simulation engine."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import fedlab_app.actor_package
from flwr.simulation.ray_transport.ray_actor import ClientAppActor
import fedlab_app.client_app
light = {m: m in sys.modules for m in ("sqlalchemy", "alembic", "fastapi", "flwr.simulation.run_simulation")}
from flwr.simulation import run_simulation  # a name of the package itself: the real __init__ runs now
print(json.dumps({"light": light, "actor": ClientAppActor.__module__, "run_simulation": run_simulation.__module__,
                  "sqlalchemy_after": "sqlalchemy" in sys.modules}))
"""


def test_the_actor_module_loads_without_the_engine_and_the_package_fills_in_on_demand():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                                    timeout=120).stdout.strip().splitlines()[-1])
    assert out["light"] == {"sqlalchemy": False, "alembic": False, "fastapi": False,
                            "flwr.simulation.run_simulation": False}
    assert out["actor"] == "flwr.simulation.ray_transport.ray_actor"
    assert out["run_simulation"] == "flwr.simulation.run_simulation" and out["sqlalchemy_after"]


def test_install_leaves_an_imported_package_alone():
    probe = ("import flwr.simulation, sys; from fedlab_app import actor_package; "
             "print(actor_package.install(), sys.modules['flwr.simulation'] is flwr.simulation)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "True"]
