"""`fedlab compare` on hand-made run directories."""

from __future__ import annotations

import csv

from conftest import compose
from rich.console import Console

from fedlab_app import config
from fedlab_app.compare import compare, load_runs, varying_keys
from fedlab_app.config import to_nested
from fedlab_app.results import RunDir


def make_run(path, acc, status="finished", **over):
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in over.items()]
    cfg = config.parse(config.flatten(compose(*overrides)))
    rd = RunDir(path)
    rd.create()
    rd.write_config(to_nested(cfg))
    rd.append_metrics({"round": 1, "test_acc": acc, "bytes": 1000, "messages": 2})
    rd.write_summary({"status": status, "rounds": 1, "final": {"test_acc": acc}, "comm": {"messages": 2, "bytes": 1000}})


def test_pivot_batch_by_optimizer_with_implied_keys_and_diverged(tmp_path):
    sweep = tmp_path / "sweep"
    lrs = {"sgd": 0.05, "lamb": 0.005}
    accs = {("sgd", 64): 0.9, ("sgd", 1024): 0.8, ("sgd", 8192): 0.1,
            ("lamb", 64): 0.88, ("lamb", 1024): 0.86, ("lamb", 8192): 0.85}
    for i, ((opt, b), acc) in enumerate(accs.items()):
        make_run(sweep / f"{i}", acc, status="diverged" if acc < 0.2 else "finished",
                 optimizer=opt, client__batch_size=b, client__lr=lrs[opt])
    runs = load_runs([sweep])
    assert len(runs) == 6
    assert varying_keys(runs) == ["optimizer.name", "client.batch_size"]  # weight decay and lr are implied
    out = compare([str(sweep)], console=Console(file=open(tmp_path / "out.txt", "w")))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0] == ["client.batch_size \\ optimizer.name", "lamb", "sgd"]  # 3 batch sizes > 2 optimizers
    assert rows[1:] == [["64", "0.8800", "0.9000"], ["1024", "0.8600", "0.8000"], ["8192", "0.8500", "diverged"]]
    for name in ("compare.png", "curves.png"):
        assert (out / name).stat().st_size > 5000


def test_flat_table_for_one_varying_key(tmp_path):
    for a in (0.3, 0.7):
        make_run(tmp_path / f"a{a}", 0.8, partition="dirichlet", partition__alpha=a)
    out = compare([str(tmp_path / "a0.3"), str(tmp_path / "a0.7")], out=str(tmp_path / "cmp"),
                  console=Console(file=open(tmp_path / "out.txt", "w")))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0][:2] == ["partition.alpha", "final.test_acc"] and [r[0] for r in rows[1:]] == ["0.3", "0.7"]


def test_flat_table_with_target_accuracy(tmp_path):
    """Run a reaches 0.5 at round 2 (4 messages, 2000 bytes), run b never does."""
    for name, accs in (("a", [0.3, 0.6]), ("b", [0.2, 0.4])):
        make_run(tmp_path / name, accs[-1], num_clients=2 if name == "a" else 3)
        rd = RunDir(tmp_path / name)
        rd.metrics_path.unlink()
        for i, acc in enumerate(accs, 1):
            rd.append_metrics({"round": i, "test_acc": acc, "bytes": 1000 * i, "messages": 2 * i})
    out = compare([str(tmp_path)], out=str(tmp_path / "cmp"), flat=True, target=0.5,
                  console=Console(file=open(tmp_path / "out.txt", "w")))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0][-3:] == ["round@0.5", "messages@0.5", "MB@0.5"]
    assert rows[1][0] == "2" and rows[1][-3:] == ["2", "4", "0.00"]
    assert rows[2][0] == "3" and rows[2][-3:] == ["-", "-", "-"]


def test_a_key_that_varies_within_a_value_of_another_is_kept(tmp_path):
    """Three strategies at J=4 and one at J=32: strategy.name is not a function of client.local_steps."""
    for i, (strategy, j) in enumerate((("localsgd", 4), ("step_weighted", 4), ("fednova", 4), ("localsgd", 32))):
        make_run(tmp_path / str(i), 0.8, strategy=strategy, client__local_steps=j)
    assert varying_keys(load_runs([tmp_path])) == ["client.local_steps", "strategy.name"]
