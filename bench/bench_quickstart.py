"""Flower's quickstart-pytorch pattern against `fedlab run` on the same work, whole processes, interleaved.

The quickstart pattern (flwr 1.41's Message API, as in Flower's ``quickstart-pytorch`` example): a
``ClientApp`` whose ``train`` handler builds the model, loads the message's arrays, wraps its shard in a
``Dataset`` with a per-sample transform (``ToTensor`` + ``Normalize``, written as tensor ops because
torchvision does not import beside this torch) and a ``DataLoader(batch_size=32, shuffle=True)``, trains
one epoch and replies; a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` with a central
``evaluate_fn`` on the test set. It runs on Flower's simulation engine (Ray, one CPU per client) with
fedlab's shards (10 IID Fashion-MNIST clients, the default experiment's seed), LeNet-5 and the same
optimizer as fedlab's default (SGD lr 0.02, momentum 0.9), so both do the same SGD steps per round.

    python bench/bench_quickstart.py --repeats 2 --rounds 5
    # -> results/bench/quickstart.json: steady round, launch to end of round 1, whole process, ratios

Steady rounds: the time between successive central evaluations from round 2 on (training, aggregation,
evaluation), medians over the repeats; fedlab's from ``metrics.csv`` (``bench/bench_round.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_round import fedlab_run

ROOT = Path(__file__).resolve().parent.parent
LR, MOMENTUM, BATCH = 0.02, 0.9, 32


class ShardDataset(Dataset):
    """A client's shard with the quickstart's per-sample transform: uint8 -> float in [0, 1] -> normalized."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: float, std: float) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean, std

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.asarray(self.x[i], dtype=np.float32) / 255.0)  # ToTensor
        return (img - self.mean) / self.std, int(self.y[i])  # Normalize


def _setup():
    """The default experiment's config, shards and a model builder (cached per process)."""
    from fedlab_app.compose import compose
    from fedlab_app.models import build_model
    from fedlab_app.splits import make_splits

    cfg = compose()
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    return cfg, s, (lambda: build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes))


def child(rounds: int, out: Path) -> None:
    """Run the quickstart-pattern app on Flower's simulation engine; write the evaluation timestamps."""
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        _, s, make = _setup()
        model = make()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        idx = s.parts[int(context.node_config["partition-id"])]
        loader = DataLoader(ShardDataset(s.data.x_train[idx], s.data.y_train[idx], s.data.mean[0], s.data.std[0]),
                            batch_size=BATCH, shuffle=True)
        opt = torch.optim.SGD(model.parameters(), lr=msg.content["config"]["lr"], momentum=MOMENTUM)
        loss_fn, total = nn.CrossEntropyLoss(), 0.0
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss)
        metrics = MetricRecord({"train_loss": total / len(loader), "num-examples": len(idx)})
        return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                       reply_to=msg)

    server, stamps, accs = ServerApp(), [], []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, s, make = _setup()
        x_test = (torch.from_numpy(np.asarray(s.data.x_test, dtype=np.float32) / 255.0) - s.data.mean[0]) / s.data.std[0]
        y_test = torch.from_numpy(np.asarray(s.data.y_test))

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = make()
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            with torch.no_grad():
                acc = sum(int((model(x_test[i:i + 1024]).argmax(1) == y_test[i:i + 1024]).sum())
                          for i in range(0, len(y_test), 1024)) / len(y_test)
            stamps.append(time.time())
            accs.append(acc)
            return MetricRecord({"accuracy": acc})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=cfg.num_clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(make().state_dict()), num_rounds=rounds,
                       train_config=ConfigRecord({"lr": LR}), evaluate_fn=evaluate)
        out.write_text(json.dumps({"eval_stamps": stamps, "accs": accs}))

    cfg, _, _ = _setup()
    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "address": "local",
                                                 "num_cpus": os.cpu_count() or 1}})


def quickstart_run(rounds: int) -> dict:
    """Launch the quickstart pattern as its own process; whole time, launch to round 1, steady rounds."""
    out = Path(tempfile.mkdtemp(prefix="bench-quickstart-")) / "stamps.json"
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", str(out), "--rounds", str(rounds)], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.time() - t0
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"quickstart run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    d = json.loads(out.read_text())
    stamps = d["eval_stamps"]  # round 0 (initial model), then after each round
    rounds_s = [b - a for a, b in zip(stamps, stamps[1:])]
    print(f"quickstart pattern: whole process {wall:.1f} s, launch to end of round 1 {stamps[1] - t0:.1f} s, "
          f"round times {[round(t, 2) for t in rounds_s]} s, final acc {d['accs'][-1]:.4f}", flush=True)
    return {"process_s": wall, "launch_to_round1_s": stamps[1] - t0, "first_round_s": rounds_s[0],
            "steady_rounds_s": rounds_s[1:], "final_test_acc": d["accs"][-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "quickstart.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.rounds, Path(args.child))
        return
    quick, fed = [], []
    for _ in range(args.repeats):  # interleaved: the machine's load affects both alike
        quick.append(quickstart_run(args.rounds))
        fed.append(fedlab_run(args.rounds))
    q_round = statistics.median(t for r in quick for t in r["steady_rounds_s"])
    f_round = statistics.median(t for r in fed for t in r["steady_rounds_s"])
    q_proc = statistics.median(r["process_s"] for r in quick)
    f_proc = statistics.median(r["process_s"] for r in fed)
    res = {"what": "Flower quickstart-pytorch pattern (per-sample Dataset transform + DataLoader per client, "
                   "flwr FedAvg, central eval) vs fedlab run, default experiment: 10 IID Fashion-MNIST clients "
                   "x 1 epoch, B=32, LeNet-5, SGD lr 0.02 momentum 0.9",
           "command": "python bench/bench_quickstart.py " + " ".join(sys.argv[1:]),
           "cpus": os.cpu_count(), "rounds": args.rounds,
           "quickstart_round_s": q_round, "fedlab_round_s": f_round, "round_ratio_quickstart_over_fedlab": q_round / f_round,
           "quickstart_process_s": q_proc, "fedlab_process_s": f_proc, "process_ratio_quickstart_over_fedlab": q_proc / f_proc,
           "quickstart_launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in quick),
           "fedlab_launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in fed),
           "quickstart_runs": quick, "fedlab_runs": fed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"steady round: quickstart {q_round:.2f} s, fedlab {f_round:.2f} s ({q_round / f_round:.2f}x); whole "
          f"process {q_proc:.1f} s vs {f_proc:.1f} s ({q_proc / f_proc:.2f}x); written: {args.out}")


if __name__ == "__main__":
    main()
