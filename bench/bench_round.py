"""Benchmark: steady-state FedAvg round of `fedlab run` against a plain PyTorch loop.

Both do the same work per round: 10 IID Fashion-MNIST clients x 1 local epoch of SGD (batch 32,
lr 0.02, momentum 0.9) on LeNet-5, the example-weighted average, and one evaluation of the global
model on the 10,000 test images. The plain loop runs it all in one process (no Flower, no Ray,
shards pre-normalized to float32 tensors, sliced with a permutation); `fedlab run` is launched as
the user launches it (a fresh process: Hydra, Ray, 2 client actors of 1 thread each), twice: with the
default packing (each actor trains its 5 clients together, fused: ``clients/fused.py``) and with
``sim.clients_per_worker=1`` (one client per message). Launch to the end of round 1 is the time until
round 1's metrics row is on disk; peak PSS is the whole process tree's, sampled every 0.25 s.

Steady-state round time of fedlab = median of the differences of ``wall_time_s`` between
consecutive rounds in metrics.csv, rounds 2..R (round 1 includes the actors' start and data load).
Fixed start-up cost = the process's whole wall time minus R steady-state rounds.
Runs are interleaved (plain, fedlab, plain, fedlab, ...) and medians reported, because absolute
speed on this shared machine drifts 15-25 % between runs.

    python bench/bench_round.py [--repeats 2] [--rounds 5] [--out results/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import processes  # noqa: E402
from fedlab_app import config  # noqa: E402
from fedlab_app.models import build_model  # noqa: E402
from fedlab_app.results import RunDir  # noqa: E402
from fedlab_app.splits import make_splits  # noqa: E402


def plain_loop(rounds: int, threads: int) -> list[float]:
    """Per-round seconds of a plain single-process FedAvg loop (same steps as `fedlab run`'s default)."""
    torch.set_num_threads(threads)
    cfg = config.parse(config.unflatten({}))  # the defaults: 10 clients, IID, B=32, lr 0.02, momentum 0.9
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    mean, std = s.data.mean[0], s.data.std[0]
    shards = [((torch.from_numpy(s.data.x_train[p]).float() / 255 - mean) / std, torch.from_numpy(s.data.y_train[p]))
              for p in s.parts]
    x_test = (torch.from_numpy(s.data.x_test.copy()).float() / 255 - mean) / std
    y_test = torch.from_numpy(s.data.y_test)
    model = build_model(cfg.model, (1, 28, 28), 10, seed=0)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        states, weights = [], []
        for x, y in shards:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.client.lr, momentum=cfg.optimizer.momentum)
            perm = torch.randperm(len(y))
            for i in range(0, len(y), cfg.client.batch_size):
                idx = perm[i:i + cfg.client.batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(y))
        total = sum(weights)
        global_state = {k: sum(w / total * st[k] for w, st in zip(weights, states)) for k in global_state}
        model.load_state_dict(global_state)
        with torch.no_grad():
            model.eval()
            acc = sum(int((model(x_test[i:i + 1024]).argmax(1) == y_test[i:i + 1024]).sum())
                      for i in range(0, len(y_test), 1024)) / len(y_test)
            model.train()
        times.append(time.perf_counter() - t0)
    print(f"plain loop ({threads} thread(s)): rounds {[round(t, 2) for t in times]} s, final acc {acc:.4f}", flush=True)
    return times


def tree_pss_mb(pid: int) -> float:
    """Proportional set size (MB) of process ``pid`` and all its descendants (/proc smaps_rollup)."""
    return sum(mb for _, mb in processes(pid).values())


def fedlab_run(rounds: int, *overrides: str) -> dict:
    """Launch `fedlab run rounds=R ...` as a user would; return whole wall time, per-round times, the time
    from launch to the end of round 1 (its metrics row on disk) and the process tree's peak PSS."""
    out = Path(tempfile.mkdtemp(prefix="bench-fedlab-"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("fedlab")), "run", f"rounds={rounds}",
                             f"out_dir={out}", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak, first_row = 0.0, None
    while proc.poll() is None:
        peak = max(peak, tree_pss_mb(proc.pid))
        if first_row is None and (out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().splitlines()) > 1:
            first_row = time.perf_counter() - t0
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fedlab run {' '.join(overrides)} exited {proc.returncode}")
    rows = RunDir(out).read_metrics()
    walls = [r["wall_time_s"] for r in rows]
    steady = [b - a for a, b in zip(walls, walls[1:])]
    summary = RunDir(out).read_summary()
    print(f"fedlab run {' '.join(overrides)}: whole process {wall:.1f} s, launch to end of round 1 {first_row} s, "
          f"round times {[round(t, 2) for t in [walls[0], *steady]]} s, peak PSS {peak:.0f} MB, "
          f"final acc {summary['final']['test_acc']:.4f}", flush=True)
    return {"overrides": list(overrides), "process_s": wall, "launch_to_round1_s": first_row,
            "first_round_s": walls[0], "steady_rounds_s": steady, "peak_pss_mb": peak,
            "final_test_acc": summary["final"]["test_acc"],
            "comm": {k: v for k, v in summary["comm"].items() if not isinstance(v, dict)}}  # totals, not per node


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    plain1, plain2, fed, unpacked = [], [], [], []
    for _ in range(args.repeats):
        plain2 += plain_loop(args.rounds, 2)[1:]
        fed.append(fedlab_run(args.rounds))  # default: clients packed per worker, trained fused
        plain1 += plain_loop(args.rounds, 1)[1:]
        unpacked.append(fedlab_run(args.rounds, "sim.clients_per_worker=1"))  # one client per message
    fed_round = statistics.median(t for f in fed for t in f["steady_rounds_s"])
    unpacked_round = statistics.median(t for f in unpacked for t in f["steady_rounds_s"])
    startup = statistics.median(f["process_s"] - args.rounds * fed_round for f in fed)
    res = {
        "what": "steady-state FedAvg round: 10 IID Fashion-MNIST clients x 1 epoch, B=32, LeNet-5, + test eval",
        "command": "python bench/bench_round.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "plain_round_s_2threads": statistics.median(plain2), "plain_round_s_1thread": statistics.median(plain1),
        "fedlab_round_s": fed_round, "fedlab_startup_s": startup,
        "fedlab_launch_to_round1_s": statistics.median(f["launch_to_round1_s"] for f in fed),
        "fedlab_peak_pss_mb": max(f["peak_pss_mb"] for f in fed),
        "ratio_vs_plain_2threads": fed_round / statistics.median(plain2),
        "ratio_vs_plain_1thread": fed_round / statistics.median(plain1),
        "unpacked_round_s": unpacked_round, "unpacked_ratio_vs_plain_2threads": unpacked_round / statistics.median(plain2),
        "unpacked_peak_pss_mb": max(f["peak_pss_mb"] for f in unpacked),
        "fedlab_runs": fed, "unpacked_runs": unpacked, "repeats": args.repeats, "rounds": args.rounds,
        "load_average_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_time.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "fedlab_runs"}, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
