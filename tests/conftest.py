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
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from fedlab_app.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=list(overrides))
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("hydra", None)
    return d


needs_fmnist = pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
