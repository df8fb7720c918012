"""`fedlab compare` on hand-made run directories: groups over seeds, CIs, short labels, pivots."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import compose
from rich.console import Console

from fedlab_app.compare import compare, group_runs, load_runs, short_names, varying_keys
from fedlab_app.compare_plots import mean_curve
from fedlab_app.results import RunDir


def make_run(path, acc, status="finished", accs=None, **over):
    """A run directory with ``over`` as Hydra overrides (``client__lr`` -> ``client.lr``); metrics rows
    ``accs`` (default ``[acc]``) at rounds 1, 2, ... with 2 messages and 1000 bytes per round."""
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in over.items()]
    rd = RunDir(path)
    rd.create()
    rd.write_config(compose(*overrides))
    accs = accs or [acc]
    for i, a in enumerate(accs, 1):
        rd.append_metrics({"round": i, "test_acc": a, "bytes": 1000 * i, "messages": 2 * i, "sim_time_s": 1.5 * i})
    rd.write_summary({"status": status, "rounds": len(accs), "final": {"test_acc": acc}, "sim_time_s": 1.5 * len(accs),
                      "comm": {"messages": 2 * len(accs), "bytes": 1000 * len(accs)}})


def quiet(tmp_path):
    return Console(file=open(tmp_path / "out.txt", "w"), width=250)


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
    out = compare([str(sweep)], console=quiet(tmp_path))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0] == ["B \\ optimizer", "lamb", "sgd"]  # 3 batch sizes > 2 optimizers; short names
    assert rows[1:] == [["64", "0.8800", "0.9000"], ["1024", "0.8600", "0.8000"],
                        ["8192", "0.8500", "diverged at round 1"]]  # every cell n=1: said in the title
    assert "seeds per group: 1;" in " ".join(open(tmp_path / "out.txt").read().split())
    for name in ("compare.png", "curves.png"):
        assert (out / name).stat().st_size > 5000


def test_flat_table_for_one_varying_key(tmp_path):
    for a in (0.3, 0.7):
        make_run(tmp_path / f"a{a}", 0.8, partition="dirichlet", partition__alpha=a)
    out = compare([str(tmp_path / "a0.3"), str(tmp_path / "a0.7")], out=str(tmp_path / "cmp"), console=quiet(tmp_path))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0][:4] == ["alpha", "n", "final.test_acc", "best.test_acc"]
    assert [r[:3] for r in rows[1:]] == [["0.3", "1", "0.8000"], ["0.7", "1", "0.8000"]]


def test_flat_table_with_target_accuracy(tmp_path):
    """Run a reaches 0.5 at round 2 (4 messages, 2000 bytes), run b never does."""
    make_run(tmp_path / "a", 0.6, accs=[0.3, 0.6], num_clients=2)
    make_run(tmp_path / "b", 0.4, accs=[0.2, 0.4], num_clients=3)
    out = compare([str(tmp_path)], out=str(tmp_path / "cmp"), flat=True, target=0.5, console=quiet(tmp_path))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0][0] == "K" and rows[0][-3:] == ["round@0.5", "messages@0.5", "MB@0.5"]
    assert rows[1][0] == "2" and rows[1][-3:] == ["2", "4", "0.00"]
    assert rows[2][0] == "3" and rows[2][-3:] == ["-", "-", "-"]


def test_a_key_that_varies_within_a_value_of_another_is_kept(tmp_path):
    """Three strategies at J=4 and one at J=32: strategy.name is not a function of client.local_steps."""
    for i, (strategy, j) in enumerate((("localsgd", 4), ("step_weighted", 4), ("fednova", 4), ("localsgd", 32))):
        make_run(tmp_path / str(i), 0.8, strategy=strategy, client__local_steps=j)
    assert sorted(varying_keys(load_runs([tmp_path]))) == ["client.local_steps", "strategy.name"]


def test_seeds_form_groups_with_confidence_intervals(tmp_path):
    """J=4: seeds 0,1,2 with final accuracies 0.80, 0.82, 0.84: mean 0.82, std 0.02,
    half = t_{0.975,2} * 0.02 / sqrt(3) = 4.303 * 0.011547 = 0.049687 -> "0.8200 ± 0.0497".
    J=8: seed 0 finished at 0.7, seed 1 diverged at round 2 -> "0.7000 (1 of 2: diverged at round 2)".
    Best accuracies of J=4: 0.85, 0.82, 0.84 (the first run peaked before its end) -> mean 0.8367."""
    for s, (acc, curve) in enumerate(((0.80, [0.5, 0.85, 0.80]), (0.82, [0.5, 0.82]), (0.84, [0.5, 0.84]))):
        make_run(tmp_path / f"j4_s{s}", acc, accs=curve, seed=s, client__local_steps=4)
    make_run(tmp_path / "j8_s0", 0.7, accs=[0.4, 0.7], seed=0, client__local_steps=8)
    make_run(tmp_path / "j8_s1", math.nan, status="diverged", accs=[0.3, 0.1], seed=1, client__local_steps=8)
    runs = load_runs([tmp_path])
    assert varying_keys(runs) == ["client.local_steps"]  # the seed is the replicate axis, not a label
    groups = group_runs(runs, ["client.local_steps"])
    assert [(g.values["client.local_steps"], len(g.runs)) for g in groups] == [(4, 3), (8, 2)]
    out = compare([str(tmp_path)], out=str(tmp_path / "cmp"), console=quiet(tmp_path))
    rows = list(csv.reader(open(out / "compare.csv")))
    assert rows[0][:4] == ["J", "n", "final.test_acc", "best.test_acc"]
    assert rows[1][:4] == ["4", "3", "0.8200 ± 0.0497", f"0.8367 ± {4.303 * (0.015275252 / math.sqrt(3)):.4f}"]
    assert rows[2][:3] == ["8", "2", "0.7000 (1 of 2: diverged at round 2)"]
    assert rows[2][-1] == "1 finished, 1 diverged at round 2"
    num = list(csv.DictReader(open(out / "groups.csv")))
    assert float(num[0]["final.test_acc_std"]) == pytest.approx(0.02)
    assert float(num[0]["final.test_acc_ci95"]) == pytest.approx(0.049687, abs=1e-5)
    assert num[1]["n"] == "2" and num[1]["n_ok"] == "1" and num[1]["final.test_acc_ci95"] == "nan"
    assert float(num[0]["rounds_mean"]) == pytest.approx(7 / 3, abs=1e-5)  # rounds run (3, 2, 2), not the configured 5
    assert (out / "curves.png").stat().st_size > 20000


def test_mean_curve_over_common_rounds():
    """Run 1: acc 0.5, 0.7, 0.9 at rounds 1-3; run 2: 0.6, 0.8 at rounds 1-2 -> rounds [1, 2], means
    0.55, 0.75, half-widths 12.706 * 0.0707107 / sqrt(2) = 0.6353 at both."""
    rows = lambda accs: [{"round": i, "test_acc": a, "messages": 2 * i, "bytes": 10 * i, "sim_time_s": i}  # noqa: E731
                         for i, a in enumerate(accs, 1)]
    c = mean_curve([rows([0.5, 0.7, 0.9]), rows([0.6, 0.8])])
    assert list(c["round"]) == [1, 2] and list(c["messages"]) == [2, 4]
    assert c["mean"] == pytest.approx([0.55, 0.75]) and c["half"] == pytest.approx([0.6353, 0.6353], abs=1e-3)
    single = mean_curve([rows([0.5, 0.7])])
    assert int(single["n"]) == 1 and all(math.isnan(h) for h in single["half"])


def test_short_names():
    assert short_names(["client.local_steps", "strategy.matrix", "strategy.name", "client.lr"]) == {
        "client.local_steps": "J", "strategy.matrix": "matrix", "strategy.name": "strategy", "client.lr": "lr"}
    assert short_names(["strategy.alpha", "partition.alpha"]) == {"strategy.alpha": "strategy.alpha",
                                                                 "partition.alpha": "partition.alpha"}
