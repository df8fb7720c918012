"""How fedlab scales with the number of virtual clients: peak memory and seconds per round against a
zero-overhead fused loop doing the same training.

Each workload is launched as `fedlab run` (a fresh process, Ray, 2 single-threaded workers, the
default packing: each worker holds half of the clients and trains them fused; the server evaluates
the global model on the 10,000 test images after every round). Steady round = median of the
``wall_time_s`` differences of rounds 2..R (round 1 holds the workers' start and data load).

The reference ("zero-overhead fused loop") does only the work: two processes of one thread each,
started together per round (a barrier), each running ``clients.fused.iter_fused`` over the clients
of one worker exactly as that worker does (same shards, steps, batch size, optimizer, group size),
then the same test-set evaluation (fedlab's evaluator, 2 threads) in one of them; no Flower, Ray,
messages, serialization or aggregation. Its round time is the slower half's training plus the
evaluation. Overhead = fedlab's steady round / reference round - 1. For gossip (D-PSGD) the loop's process 0 also
times the server's mixing step on M models of the same shapes (``gossip_stacked.mix``, float64, 2 threads, the
round's matrix) after the evaluation, reported apart: ``reference_with_mixing_round_s`` and the overhead over it
(the mixing is the algorithm's own work, which any D-PSGD implementation does; the plain overhead counts it as
overhead). Runs are interleaved (reference,
fedlab) per workload; medians over the repeats. ``reference_cpu_s_per_round``: the loop's CPU seconds a round, all
its processes (against a `fedlab run`'s whole CPU, ``bench_round_cpu.py``). D-PSGD skips its per-node evaluations
(``strategy.node_eval_samples=0``): the consensus model is evaluated as in FedAvg.

    python bench/bench_scale.py --repeats 2 --rounds 5          # -> results/bench/scale.json
    python bench/bench_scale.py --only fedavg_100 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_round import fedlab_run  # noqa: E402

WORKLOADS = {  # name -> fedlab run overrides (Fashion-MNIST, LeNet-5, B = 32, all clients every round)
    "fedavg_10": ["num_clients=10"],  # the default experiment: 10 x 6,000 samples, 1 epoch
    "fedavg_100": ["num_clients=100"],  # 100 x 600 samples, 1 epoch
    "fedavg_1000": ["num_clients=1000"],  # 1,000 x 60 samples, 1 epoch
    "fedavg_1000_c0.1": ["num_clients=1000", "strategy.fraction_train=0.1"],  # 100 of 1,000 per round
    "dpsgd_256": ["strategy=dpsgd", "strategy.matrix=exponential", "num_clients=256", "client.local_steps=5",
                  "strategy.node_eval_samples=0"],  # 256 nodes x 5 steps
}


def _reference_worker(overrides: list[str], rounds: int, worker: int, workers: int, barrier, out) -> None:
    """One of the reference's processes: worker ``worker``'s clients, trained fused, ``rounds`` times."""
    import numpy as np
    import torch

    from clients.fused import ClientJob, iter_fused
    from clients.train import round_first_epoch
    from fedlab_app.compose import compose
    from fedlab_app.driver import initial_arrays
    from fedlab_app.local import Node
    from fedlab_app.recorder import CentralEvaluator
    from fedlab_app.simulate import clients_per_worker
    from strategies import gossip
    from strategies import gossip_stacked as stacked
    from strategies.fedavg import sample_clients

    torch.set_num_threads(1)
    cfg = compose(overrides)
    p = clients_per_worker(cfg)
    n_nodes = math.ceil(cfg.num_clients / p)
    mine = [b for b in range(n_nodes) if b % workers == worker]  # nodes this worker holds
    start = {k: torch.from_numpy(v) for k, v in initial_arrays(cfg).items()}
    nodes = {pid: Node(cfg, pid, cfg.num_clients, {}) for b in mine
             for pid in range(b * p, min((b + 1) * p, cfg.num_clients))}
    template = next(iter(nodes.values())).model
    frac = getattr(cfg.strategy.params, "fraction_train", 1.0)
    evaluator = CentralEvaluator(cfg) if worker == 0 else None
    arrays = initial_arrays(cfg)
    times = []
    for rnd in range(1, rounds + 1):
        sampled = set(sample_clients(range(cfg.num_clients), frac, 1, cfg.seed, rnd))
        epochs, steps = cfg.client.local_epochs, cfg.client.local_steps
        blocks = [[ClientJob(start, nodes[pid].local.x, nodes[pid].local.y, pid, cfg.seed,
                             round_first_epoch(rnd, epochs, steps), steps, epochs)
                   for pid in range(b * p, min((b + 1) * p, cfg.num_clients)) if pid in sampled] for b in mine]
        n0 = next(iter(nodes.values()))
        barrier.wait()
        t0, c0 = time.perf_counter(), time.process_time()
        for jobs in blocks:  # one message per node, as the worker gets them
            for _, r in iter_fused(template, jobs, n0.local.norm, cfg.optimizer, batch_size=cfg.client.batch_size,
                                   lr=cfg.client.lr):
                {k: v.detach().numpy() for k, v in r.state.items()}
        t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
        barrier.wait()  # both halves trained
        t0, c0 = time.perf_counter(), time.process_time()
        if evaluator is not None:  # the server's evaluation, 2 threads as in the server process
            torch.set_num_threads(2)
            evaluator(arrays)
            torch.set_num_threads(1)
        t_eval, c_eval = time.perf_counter() - t0, time.process_time() - c0
        t_mix, c_mix = 0.0, 0.0
        if evaluator is not None and cfg.strategy.name in gossip.METHODS:  # the server's mixing of all M models
            torch.set_num_threads(2)  # as the server while the workers wait
            ys = {k: np.repeat(v[None], cfg.num_clients, axis=0) + np.float32(1e-3) * rnd for k, v in arrays.items()}
            A = gossip.matrix_at(cfg.strategy.params, cfg.num_clients, rnd, cfg.seed)
            t0, c0 = time.perf_counter(), time.process_time()
            stacked.mix(A, ys, [1.0] * cfg.num_clients)
            t_mix, c_mix = time.perf_counter() - t0, time.process_time() - c0
            torch.set_num_threads(1)
        times.append((t_train, t_eval, t_mix, c_train + c_eval, c_mix))  # seconds, then CPU seconds
    out.put((worker, times))


def reference(overrides: list[str], rounds: int,
              workers: int = 2) -> tuple[list[float], list[float], list[list[float]]]:
    """Per-round seconds of the zero-overhead fused loop (the slower of ``workers`` processes' training, plus the
    evaluation), the same plus the gossip mixing of all M models (gossip workloads; else equal), and per round the
    CPU seconds of all its processes: the training and the evaluation, and the mixing."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_reference_worker, args=(overrides, rounds, w, workers, barrier, out))
             for w in range(workers)]
    for p in procs:
        p.start()
    got = {}
    while len(got) < workers:
        try:
            w, times = out.get(timeout=5)
            got[w] = times
        except Exception:  # queue.Empty: is every process still alive?
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError("a reference process failed (its traceback is above)") from None
    for p in procs:
        p.join()
    base = [max(got[w][r][0] for w in got) + got[0][r][1] for r in range(rounds)]
    cpu = [[sum(got[w][r][3] for w in got), sum(got[w][r][4] for w in got)] for r in range(rounds)]
    return base, [b + got[0][r][2] for r, b in enumerate(base)], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "scale.json"))
    args = ap.parse_args()
    names = [n for n in WORKLOADS if not args.only or n in args.only.split(",")]
    rows = {}
    for name in names:
        over = WORKLOADS[name]
        ref, ref_mix, ref_cpu, runs = [], [], [], []
        for _ in range(args.repeats):
            base, with_mix, cpu = reference(over, args.rounds)
            ref, ref_mix, ref_cpu = ref + base[1:], ref_mix + with_mix[1:], ref_cpu + cpu[1:]
            runs.append(fedlab_run(args.rounds, *over))
        steady = [t for r in runs for t in r["steady_rounds_s"]]
        fed_s, ref_s, mix_s = statistics.median(steady), statistics.median(ref), statistics.median(ref_mix)
        mixing = {"reference_with_mixing_round_s": mix_s, "overhead_over_reference_with_mixing": fed_s / mix_s - 1,
                  "reference_with_mixing_rounds_s": ref_mix} if mix_s != ref_s else {}
        rows[name] = {"overrides": over, "fedlab_round_s": fed_s, "reference_round_s": ref_s,
                      "overhead": fed_s / ref_s - 1, **mixing, "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
                      "launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in runs),
                      "fedlab_steady_rounds_s": steady, "reference_rounds_s": ref,
                      "reference_cpu_s_per_round": {"training and evaluation": statistics.median(c[0] for c in ref_cpu),
                                                    "mixing": statistics.median(c[1] for c in ref_cpu)},
                      "runs": runs}
        print(f"{name}: fedlab {fed_s:.2f} s/round, reference {ref_s:.2f} s, overhead {fed_s / ref_s - 1:+.0%}, "
              + (f"reference with the mixing {mix_s:.2f} s, overhead {fed_s / mix_s - 1:+.0%}, " if mixing else "")
              + f"peak PSS {rows[name]['peak_pss_mb']:.0f} MB", flush=True)
    out = Path(args.out)
    old = json.loads(out.read_text())["workloads"] if out.exists() and args.only else {}
    res = {"what": "peak PSS and steady seconds per round of `fedlab run` against a zero-overhead fused loop "
                   "(2 processes x 1 thread, the same fused training, then the same test-set evaluation)",
           "command": "python bench/bench_scale.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
           "rounds": args.rounds, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "load_average_end": os.getloadavg(), "workloads": {**old, **rows}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
