"""Golden runs: short seeded runs of every mode, recorded before the round-driver refactor (issue 12).

``python tests/golden/cases.py record`` writes ``tests/golden/<name>.json`` (final model hash and
per-array statistics, the metrics.csv rows without wall times, the summary's communication counts, and
the recording machine's :func:`fingerprint`); ``tests/test_golden.py`` re-runs each case and asserts
equality, bit for bit on a machine with the same fingerprint. Simulated time comes from
``system.step_time_s`` so that it does not depend on the machine.

Recorded on the commit before the refactor (issue 12), and equal after it on that machine. The same code
rounds differently on another CPU (a new machine on 2026-12-01 gave the same metrics rows but test losses
different in the 8th digit), so the cases were re-recorded there from commit 0061659, which had passed
them bit for bit on the recording machine.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = ("dataset.limit_train=600", "num_clients=3", "rounds=2", "client.batch_size=32", "system.step_time_s=0.01",
        "seed=1", "sim.clients_per_worker=1")  # one client per message: the fused path is equal only to 1e-5
CASES: dict[str, tuple[str, ...]] = {
    "fedavg": ("strategy=fedavg",),
    "fedadam": ("strategy=fedadam",),
    "slowmo": ("strategy=slowmo", "client.local_steps=3", "strategy.beta=0.5", "strategy.momentum_mode=average",
               "strategy.aggregation=steps"),
    "localsgd_keep": ("strategy=localsgd", "client.local_steps=3", "strategy.momentum_mode=keep", "steps.rule=linear",
                      "steps.final=5"),
    "fednova": ("strategy=fednova", "system.profile=ratios", "system.ratios=1:2:4", "system.budget=2"),
    "step_weighted": ("strategy=step_weighted", "system.profile=ratios", "system.ratios=1:2:4", "system.budget=2",
                      "system.bandwidth_mbps=100", "system.latency_ms=5"),
    "dpsgd": ("strategy=dpsgd", "client.local_steps=3", "strategy.matrix=ring", "strategy.node_eval_samples=200",
              "strategy.noise_std=0.01"),
    "gosgd": ("strategy=gosgd", "client.local_steps=3", "strategy.p=0.5", "strategy.node_eval_samples=200"),
    "async_sgd": ("strategy=async_sgd", "client.local_steps=1", "strategy.delay=one", "strategy.delay_ms=90",
                  "strategy.dc=adaptive", "strategy.dc_lambda=2"),
    "async_sync": ("strategy=async_sgd", "client.local_steps=2", "strategy.sync=true", "strategy.momentum=0.5"),
    "centralized": ("strategy=centralized", "strategy.epochs=2"),
}


def model_hash(arrays: dict) -> str:
    """sha256 over the arrays in key order (names, dtypes, shapes and bytes)."""
    import numpy as np

    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_stats(arrays: dict) -> dict[str, list[float]]:
    """Per array (float64): sum, sum of squares and the first 4 values: what a machine whose float kernels
    round differently must still reproduce to a tolerance."""
    import numpy as np

    out = {}
    for k in sorted(arrays):
        a = np.asarray(arrays[k], dtype=np.float64).ravel()
        out[k] = [float(a.sum()), float((a * a).sum()), *(float(v) for v in a[:4])]
    return out


def fingerprint() -> dict[str, str]:
    """What decides a run's float rounding besides the code: the CPU (model and instruction-set flags), the
    kernel level torch dispatches to, and the torch and numpy versions. Runs are bit for bit equal only
    between equal fingerprints: the same code on another CPU rounds differently in the 8th digit."""
    import platform

    import numpy as np
    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = " ".join(sorted(info.get("flags", "").split()))
    return {"machine": platform.machine(), "cpu": info.get("model name", platform.processor()),
            "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "numpy": np.__version__}


def run_case(name: str, out_dir: Path) -> dict:
    """Run one golden case; return what is compared."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import compose

    from fedlab_app import config
    from fedlab_app.results import RunDir
    from fedlab_app.simulate import simulate

    summary = simulate(config.parse(config.flatten(compose(*BASE, *CASES[name], f"out_dir={out_dir}"))))
    rd = RunDir(out_dir)
    arrays = RunDir.load_checkpoint(rd.last_checkpoint())[1]
    with open(rd.metrics_path, newline="") as f:
        rows = [{k: v for k, v in r.items() if k != "wall_time_s" and v != ""} for r in csv.DictReader(f)]
    comm = {k: v for k, v in summary["comm"].items()}
    return {"status": summary["status"], "model": model_hash(arrays), "model_stats": model_stats(arrays),
            "rows": rows, "comm": comm, "sim_time_s": round(summary["sim_time_s"], 9), "final": summary["final"]}


if __name__ == "__main__" and sys.argv[1:2] == ["record"]:
    import os

    for k, v in {"FEDLAB_CACHE_DIR": "/tmp/fedlab-golden-cache", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                 "FLWR_HOME": tempfile.mkdtemp()}.items():
        os.environ.setdefault(k, v)
    for name in sys.argv[2:] or CASES:
        out = {**run_case(name, Path(tempfile.mkdtemp()) / name), "fingerprint": fingerprint()}
        (HERE / f"{name}.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(name, out["status"], out["model"][:12], flush=True)
