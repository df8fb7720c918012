"""Sequential vs fused local training of K clients (clients/fused.py), one thread.

Workload: K clients, each with its own Fashion-MNIST-shaped shard (uint8 1x28x28, random pixels and
labels, ``--shard`` samples) and its own initial LeNet-5 weights, train J steps of batch B with SGD
(momentum 0.9), as a client does in one round. "sequential" is the path a client runs today, one
client after another (``make_optimizer`` + ``clients.train.train``, channels_last); "fused" is one
``train_fused`` call over all K. Repeats are interleaved (seq, fused, seq, fused, ...) so drift in
the machine's load hits both alike; we report medians and the median of the paired ratios. The
process is tuned as a simulation worker is (``clients.perf.tune_process(1)``: one torch thread,
glibc mallopt). ``max_abs_weight_diff`` compares the two paths' final weights: float32 rounding,
amplified in a few clients (random labels, lr 0.02) exactly as much as by switching the sequential
path itself from channels_last to NCHW.

    .venv/bin/python bench/bench_fused.py                 # K in 4 10 32, J=20, B=32, 5 repeats
    .venv/bin/python bench/bench_fused.py --ks 4 --repeats 2 --out /tmp/f.json   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.fused import ClientJob, train_fused  # noqa: E402
from clients.optim import OptimizerCfg, make_optimizer  # noqa: E402
from clients.perf import tune_process  # noqa: E402
from clients.train import Normalizer, train  # noqa: E402
from fedlab_app.models import LeNet5  # noqa: E402

NORM = Normalizer.from_stats([0.286], [0.353], channels_last=True)
CFG = OptimizerCfg(name="sgd", momentum=0.9)


def workload(k: int, shard: int):
    """K shards (uint8 images, labels) and K initial LeNet-5 state_dicts."""
    g = torch.Generator().manual_seed(k)
    data = [(torch.randint(0, 256, (shard, 1, 28, 28), generator=g, dtype=torch.uint8),
             torch.randint(0, 10, (shard,), generator=g)) for _ in range(k)]
    states = []
    for i in range(k):
        torch.manual_seed(i)
        states.append(LeNet5(1, 28, 10).state_dict())
    return data, states


def run_sequential(data, states, steps: int, batch: int, lr: float):
    """Every client alone, one after another; returns (seconds, final state_dicts)."""
    t0, out = time.perf_counter(), []
    for k, ((x, y), sd) in enumerate(zip(data, states)):
        model = LeNet5(1, 28, 10)
        model.load_state_dict(sd)
        opt = make_optimizer(model, CFG, lr)
        train(model, x, y, NORM, opt, batch_size=batch, seed=0, stream=k, first_epoch=0, steps=steps)
        out.append(model.state_dict())
    return time.perf_counter() - t0, out


def run_fused(data, states, steps: int, batch: int, lr: float):
    """All K clients in one ``train_fused`` call; returns (seconds, final state_dicts)."""
    t0 = time.perf_counter()
    jobs = [ClientJob(sd, x, y, stream=k, seed=0, first_epoch=0, steps=steps)
            for k, ((x, y), sd) in enumerate(zip(data, states))]
    res = train_fused(LeNet5(1, 28, 10), jobs, NORM, CFG, batch_size=batch, lr=lr)
    return time.perf_counter() - t0, [r.state for r in res]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 10, 32])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--shard", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results/bench/fused.json"))
    args = ap.parse_args()
    tune_process(1)  # 1 thread + glibc mallopt, as a simulation worker runs
    load_before = os.getloadavg()
    rows = []
    for k in args.ks:
        data, states = workload(k, args.shard)
        run_sequential(data, states, 2, args.batch, args.lr)  # warm-up: kernels, allocator, imports
        run_fused(data, states, 2, args.batch, args.lr)
        seq, fus, diff = [], [], 0.0
        for _ in range(args.repeats):
            ts, out_s = run_sequential(data, states, args.steps, args.batch, args.lr)
            tf, out_f = run_fused(data, states, args.steps, args.batch, args.lr)
            seq.append(ts)
            fus.append(tf)
            diff = max(diff, max(float((a[n] - b[n]).abs().max()) for a, b in zip(out_s, out_f) for n in a))
        row = {"K": k, "J": args.steps, "B": args.batch, "seq_s_median": statistics.median(seq),
               "fused_s_median": statistics.median(fus),
               "speedup_median_paired": statistics.median(s / f for s, f in zip(seq, fus)),
               "seq_ms_per_client_step": 1e3 * statistics.median(seq) / (k * args.steps),
               "fused_ms_per_client_step": 1e3 * statistics.median(fus) / (k * args.steps),
               "seq_s": seq, "fused_s": fus, "max_abs_weight_diff": diff, "loadavg_after": os.getloadavg()}
        rows.append(row)
        print(f"K={k:3d} J={args.steps} seq {row['seq_s_median']:.3f} s  fused {row['fused_s_median']:.3f} s  "
              f"speedup x{row['speedup_median_paired']:.2f}  max|dw| {diff:.1e}  load {os.getloadavg()[0]:.2f}")
    result = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "threads": 1,
              "tuned": "clients.perf.tune_process(1)",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
              "model": "LeNet-5 28x28 (Fashion-MNIST shaped random uint8 data)", "optimizer": "sgd momentum 0.9",
              "shard": args.shard, "repeats": args.repeats, "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
