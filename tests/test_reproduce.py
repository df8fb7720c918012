"""``fedlab reproduce``: the job plan of a study, skipping done runs, resuming the rest (fake runner), every
study's jobs composing to valid configs, and (slow) a tiny study stopped midway and restarted: no run twice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose, needs_fmnist

from fedlab_app import config, reproduce
from fedlab_app.cells import cell_stats, write_cells
from fedlab_app.reproduce import Job, job_status, load_study, main, plan_jobs, run_jobs

TESTS_CONF = ROOT / "tests" / "conf"
STUDIES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if "_reproduce:" in p.read_text())


def _plan(tmp_path: Path) -> list[Job]:
    return plan_jobs("tiny_repro", load_study("tiny_repro", TESTS_CONF), 2, tmp_path, TESTS_CONF)


def _write_summary(job: Job, status: str) -> None:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    (job.out_dir / "summary.json").write_text(json.dumps({"status": status, "final": {"test_acc": 0.5}}))


def test_plan_has_every_cell_and_seed_with_its_own_run_dir(tmp_path):
    jobs = _plan(tmp_path)
    assert [j.name for j in jobs] == ["mean_seed0", "mean_seed1", "slowmo_seed0", "slowmo_seed1"]
    slowmo1 = jobs[3]
    assert slowmo1.out_dir == tmp_path / "runs" / "slowmo_seed1"
    assert slowmo1.overrides[0] == f"hydra.searchpath=[file://{TESTS_CONF.resolve()}]"
    assert slowmo1.overrides[1:] == ("+experiment=tiny_repro", "strategy=slowmo", "seed=1",
                                     f"out_dir={tmp_path / 'runs' / 'slowmo_seed1'}", "resume=true")
    cfg = config.parse(config.flatten(compose(*slowmo1.overrides)))  # the job's config, as `fedlab run` sees it
    assert (cfg.strategy.name, cfg.seed, cfg.num_clients, cfg.rounds, cfg.dataset.limit_train) == ("slowmo", 1, 2, 3, 600)


def test_cells_option_keeps_the_matching_cells(tmp_path):
    block = load_study("tiny_repro", TESTS_CONF)
    jobs = plan_jobs("tiny_repro", block, 3, tmp_path, TESTS_CONF, cells="slow*")
    assert [j.name for j in jobs] == ["slowmo_seed0", "slowmo_seed1", "slowmo_seed2"]
    assert plan_jobs("tiny_repro", block, 1, tmp_path, TESTS_CONF, cells="none*") == []


def test_done_runs_are_skipped_and_the_others_continued(tmp_path):
    """finished and diverged: skipped; stopped and never started: run (resume=true), each once."""
    jobs = _plan(tmp_path)
    _write_summary(jobs[0], "finished")
    _write_summary(jobs[1], "diverged")
    _write_summary(jobs[2], "stopped")
    calls, lines = [], []

    def fake_runner(job: Job, log: Path) -> int:
        calls.append(job.name)
        assert "resume=true" in job.overrides
        _write_summary(job, "finished")
        return 0

    ran, left = run_jobs(jobs, tmp_path, max_jobs=1, runner=fake_runner, echo=lines.append)
    assert calls == ["slowmo_seed0"] and [j.name for j in left] == ["slowmo_seed1"]
    assert "[1/4] skip mean_seed0 (finished)" in lines and "[2/4] skip mean_seed1 (diverged)" in lines
    assert any("slowmo_seed0 is stopped: continuing" in line for line in lines)
    ran, left = run_jobs(jobs, tmp_path, parallel=2, runner=fake_runner, echo=lines.append)
    assert calls == ["slowmo_seed0", "slowmo_seed1"] and left == [] and [j.name for j in ran] == ["slowmo_seed1"]
    ran, left = run_jobs(jobs, tmp_path, runner=fake_runner, echo=lines.append)
    assert ran == [] and left == [] and len(calls) == 2
    assert job_status(jobs[3]) == "finished"


def test_a_failed_run_is_run_again_and_reported(tmp_path, capsys):
    jobs = _plan(tmp_path)
    for job in jobs[1:]:
        _write_summary(job, "finished")
    _write_summary(jobs[0], "failed")

    def failing(job: Job, log: Path) -> int:
        _write_summary(job, "failed")
        return 1

    ran, left = run_jobs(jobs, tmp_path, runner=failing, echo=lambda s: None)
    assert [j.name for j in ran] == [j.name for j in left] == ["mean_seed0"]


def test_unknown_study_and_study_without_block_exit_2(tmp_path, capsys):
    assert main(["no_such_study", "--conf", str(TESTS_CONF)]) == 2
    assert "no study 'no_such_study'" in capsys.readouterr().err
    assert main(["localsgd_grid"]) == 2  # an experiment without a _reproduce block
    assert "_reproduce.cells" in capsys.readouterr().err


def test_dry_run_lists_jobs_and_runs_nothing(tmp_path, capsys):
    assert main(["tiny_repro", "--conf", str(TESTS_CONF), "--out", str(tmp_path), "--seeds", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells x 3 seeds = 6 jobs" in out and "[6/6] slowmo_seed2 (not started)" in out
    assert not (tmp_path / "runs").exists()


def test_the_six_studies_have_reproduce_blocks():
    assert set(STUDIES) >= {"large_batch", "localsgd_slowmo", "unequal_steps", "dynamic_steps", "async_sgd",
                            "gossip_fedavg"}


@pytest.mark.parametrize("study", STUDIES)
def test_every_job_of_the_committed_studies_is_a_valid_config(study, tmp_path):
    block = load_study(study)
    jobs = plan_jobs(study, block, 1, tmp_path)
    assert len(jobs) == len(block["cells"]) >= 6
    for job in jobs:
        cfg = config.parse(config.flatten(compose(*job.overrides)))
        assert cfg.seed == 0 and cfg.out_dir == str(job.out_dir)


def _reproduce(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from fedlab_app.cli import main; main()", "reproduce", "tiny_repro",
           "--conf", str(TESTS_CONF), "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@needs_fmnist
def test_stopped_midway_and_restarted_no_run_done_twice(tmp_path):
    """Two of four jobs run and stop after round 1 (--max-jobs 2 stop_after=1); the restart continues them
    from their checkpoint (their round-1 row is kept, not recomputed) and runs the other two; a third call
    runs nothing (no file of a run changes) and writes the table, plots and report."""
    first = _reproduce(tmp_path, "--max-jobs", "2", "stop_after=1")
    assert first.returncode == 3, first.stdout + first.stderr
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["mean_seed0", "mean_seed1"]
    round1 = {}
    for name in ("mean_seed0", "mean_seed1"):
        assert json.loads((runs / name / "summary.json").read_text())["status"] == "stopped"
        round1[name] = _rows(runs / name)
        assert [r["round"] for r in round1[name]] == ["1"]
    second = _reproduce(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "mean_seed0 is stopped: continuing it from its last checkpoint" in second.stdout
    assert "[4/4] start slowmo_seed1" in second.stdout
    mtimes = {}
    for name in ("mean_seed0", "mean_seed1", "slowmo_seed0", "slowmo_seed1"):
        rows = _rows(runs / name)
        assert [r["round"] for r in rows] == ["1", "2", "3"], name
        if name in round1:  # resumed, not redone: the round-1 row (its wall time included) is untouched
            assert rows[0] == round1[name][0]
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds"] == 3
        mtimes[name] = [(p, p.stat().st_mtime_ns) for p in (runs / name).rglob("*") if p.is_file()]
    third = _reproduce(tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert third.stdout.count(" skip ") == 4 and " start " not in third.stdout
    for name, files in mtimes.items():
        assert [(p, p.stat().st_mtime_ns) for p, _ in files] == files, f"{name} was touched again"
    for name in ("compare.csv", "groups.csv", "curves.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "groups.csv") as f:
        groups = list(csv.DictReader(f))
    assert len(groups) == 2 and all(g["n"] == "2" for g in groups)


def test_cell_table_pools_seeds_by_cell_with_hand_computed_intervals(tmp_path):
    jobs = plan_jobs("tiny_repro", load_study("tiny_repro", TESTS_CONF), 3, tmp_path, TESTS_CONF)
    accs = {"mean_seed0": 0.5, "mean_seed1": 0.7, "mean_seed2": 0.6, "slowmo_seed0": 0.8, "slowmo_seed1": 0.4}
    for job in jobs:
        if job.name == "slowmo_seed2":
            continue  # no summary: counted as failed
        job.out_dir.mkdir(parents=True)
        status = "diverged" if job.name == "slowmo_seed1" else "finished"
        (job.out_dir / "summary.json").write_text(json.dumps({
            "status": status, "final": {"test_acc": accs[job.name]}, "sim_time_s": 0.0,
            "comm": {"messages": 10, "bytes": 3_000_000}}))
    paths = write_cells(jobs, tmp_path)
    rows = {r["cell"]: r for r in cell_stats(jobs)}
    mean = rows["mean"]
    assert (mean["n"], mean["diverged"], mean["failed"]) == (3, 0, 0)
    # 0.5, 0.7, 0.6: mean 0.6, sample std 0.1, half width t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735
    assert mean["test_acc"].mean == pytest.approx(0.6) and mean["test_acc"].std == pytest.approx(0.1)
    assert mean["test_acc"].half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-4)  # t table: 4.303
    assert mean["MB"].mean == pytest.approx(3.0) and mean["val_acc"].n == 0
    slow = rows["slowmo"]
    assert (slow["n"], slow["diverged"], slow["failed"]) == (3, 1, 1)
    assert slow["test_acc"].n == 1 and slow["test_acc"].mean == pytest.approx(0.8)  # the diverged run left out
    md = (tmp_path / "cells.md").read_text().splitlines()
    assert md[0] == "| cell | runs | diverged | test_acc | messages | MB |"  # no val_acc, sim_s all 0
    assert md[2] == "| mean | 3 | 0 | 0.6000 ± 0.2484 | 10 ± 0 | 3.00 ± 0.00 |"
    assert md[3] == "| slowmo | 3 | 1 (+1 failed) | 0.8000 (n=1) | 10 (n=1) | 3.00 (n=1) |"
    with open(paths[0]) as f:
        table = list(csv.DictReader(f))
    assert [r["cell"] for r in table] == ["mean", "slowmo"] and float(table[0]["test_acc_mean"]) == pytest.approx(0.6)


def test_a_ctrl_c_in_a_job_starts_no_further_job(tmp_path):
    ran = []

    def runner(job, log):
        ran.append(job.name)
        return 130  # the job was interrupted

    with pytest.raises(KeyboardInterrupt):
        run_jobs(_plan(tmp_path), tmp_path, runner=runner, echo=lambda *_: None)
    assert ran == ["mean_seed0"]


def test_ctrl_c_of_the_reproduction_gives_each_running_job_one_sigint_and_starts_no_other(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "RUN_CMD", (sys.executable, str(ROOT / "tests" / "plugins" / "fake_job.py")))
    jobs = _plan(tmp_path)  # 4 jobs, 2 at a time
    started = [j.out_dir / "started" for j in jobs[:2]]

    def interrupt_when_started():
        deadline = time.monotonic() + 30
        while not all(p.exists() for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C (the jobs run in sessions of their own)

    # Python's own Ctrl-C handler, whatever this process inherited: a shell that starts a command in the
    # background (`cmd &` without job control, nohup in a script) makes it ignore SIGINT, and then no test of
    # a Ctrl-C can pass
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_jobs(jobs, tmp_path, parallel=2, echo=lambda *_: None)
    finally:
        signal.signal(signal.SIGINT, old)
    assert time.monotonic() - t0 < 30
    assert [(j.out_dir / "sigints").read_text() for j in jobs[:2]] == ["1", "1"]  # each stopped, once
    assert not any(j.out_dir.exists() for j in jobs[2:])  # none started after the Ctrl-C
