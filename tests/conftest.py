"""Shared test setup: temporary caches and homes, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = Path(os.environ.get("FEDLAB_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Keep Flower's home and the results root out of the user's folders; share one dataset cache."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.getbasetemp() / "flwr_home"))
    monkeypatch.setenv("FEDLAB_RESULTS_DIR", str(tmp_path_factory.getbasetemp() / "runs"))
    monkeypatch.setenv("FEDLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def compose(*overrides: str) -> dict:
    """The Hydra config for ``overrides`` as a nested dict (as ``fedlab run`` composes it)."""
    from fedlab_app.compose import compose_nested

    return compose_nested(overrides)


needs_fmnist = pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
