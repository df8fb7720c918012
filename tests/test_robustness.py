"""Robustness (issue 13): run-directory lock, damaged files, disk full, hangs, Ctrl-C, exit codes.

The CLI runs as a subprocess with a timeout, so that a hang fails the test instead of CI; each test
asserts the exit code, the message and the files on disk. RunDir is tested directly where no
process is needed.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, needs_fmnist

from fedlab_app import cli
from fedlab_app.results import RunDir, RunDirBusy
from fedlab_app.simulate import _stop_threads

TINY = ("dataset.limit_train=1000", "num_clients=2")
HOLD = "import sys, time; from fedlab_app.results import RunDir\nwith RunDir(sys.argv[1]).lock():\n" \
       "    print('held', flush=True); time.sleep(120)"


def fedlab(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from fedlab_app.cli import main; main()", "run", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def start(*args: str) -> subprocess.Popen:
    """``fedlab run`` in its own process group (as a terminal's foreground job), stderr to a pipe."""
    return subprocess.Popen([sys.executable, "-c", "from fedlab_app.cli import main; main()", "run", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 150) -> str:
    """Read ``proc``'s stderr until a line contains ``text``; returns what was read."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if text in line:
            return "".join(seen)
        if not line and proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{text!r} never came:\n{''.join(seen)[-3000:]}")


def damaged(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------- two runs, one folder


def test_lock_refuses_a_second_holder_with_its_pid_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.lock(), rd.lock():  # re-entrant in one process (simulate, then its ServerApp thread)
        pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(rd.path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"{rd.path} is in use by another run \(PID {holder.pid}\)"):
            with rd.lock():
                pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock
        holder.wait()
    assert (rd.path / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there
    with rd.lock():
        assert (rd.path / ".lock").read_text().strip() == str(os.getpid())


def test_cli_second_run_on_a_locked_folder_is_refused_at_once(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.lock():
        t0 = time.monotonic()
        proc = fedlab(*TINY, "rounds=1", f"out_dir={rd.path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"PID {os.getpid()}" in proc.stderr and str(rd.path) in proc.stderr
    assert "Traceback" not in proc.stderr and "ray" not in proc.stderr.lower()
    assert not (rd.path / "config.yaml").exists() and time.monotonic() - t0 < 45


@needs_fmnist
@pytest.mark.slow
def test_stale_lock_of_a_killed_run_does_not_block_resume(tmp_path):
    out = tmp_path / "run"
    proc = start(*TINY, "rounds=6", f"out_dir={out}")
    wait_for(proc, "[round 1/6]")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert (out / ".lock").exists()
    again = fedlab(*TINY, "rounds=2", f"out_dir={out}", "resume=true", timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert RunDir(out).read_summary()["status"] == "finished"
    assert [r["round"] for r in RunDir(out).read_metrics()] == [1, 2]


# ---------------------------------------------------------------- broken files


def save_rounds(rd: RunDir, rounds) -> None:
    for r in rounds:
        rd.append_metrics({"round": r, "test_acc": 0.1 * r, "bytes": 1000 * r})
        rd.save_checkpoint(r, {"w": np.full(3, r, np.float32)}, {"round": r})


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped"])
def test_damaged_latest_checkpoint_falls_back_with_a_warning_and_metrics_follow(tmp_path, caplog, damage):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1, 2, 3])
    bad = rd.ckpt_dir / "round_0003.pt"
    if damage == "truncated":
        damaged(bad)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        data = bytearray(bad.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint .*round_0003\.pt is damaged"):
        RunDir.load_checkpoint(bad)
    with caplog.at_level("WARNING", logger="fedlab"):
        last = rd.last_checkpoint()
    assert last.name == "round_0002.pt" and "round_0003.pt" in caplog.text
    rnd, arrays, _, _ = RunDir.load_checkpoint(last)
    rd.truncate_metrics(rnd)  # what a resume does with the round it loaded
    assert rnd == 2 and arrays["w"].tolist() == [2, 2, 2]
    assert [r["round"] for r in rd.read_metrics()] == [1, 2]
    for p in rd.ckpt_dir.glob("round_000[12].pt"):
        damaged(p)
    with pytest.raises(ValueError, match="no intact checkpoint"):
        rd.last_checkpoint()


def test_checkpoint_without_digest_is_checked_by_loading_it(tmp_path):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1, 2])
    rd.digests_path.unlink()  # an older run, or a crash between the file and its digest
    assert rd.last_checkpoint().name == "round_0002.pt"
    damaged(rd.ckpt_dir / "round_0002.pt")
    assert rd.last_checkpoint().name == "round_0001.pt"


def metrics_lines(rd: RunDir) -> list[bytes]:
    return rd.metrics_path.read_bytes().split(b"\r\n")


@pytest.mark.parametrize("bad_row, why", [(b"\x00\xff\xfe garbage", "not text"),
                                          (b"2,abc" + b"," * 26, "'abc' is not a number"),
                                          (b"2,0.5,1", "3 cells for")])
def test_corrupt_metrics_row_up_to_the_checkpoint_refuses_resume_naming_file_and_line(tmp_path, bad_row, why):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1, 2, 3])
    lines = metrics_lines(rd)
    lines[2] = bad_row  # line 3 of the file: round 2
    rd.metrics_path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(ValueError, match=rf"metrics\.csv, line 3: .*{why}"):
        rd.read_metrics()
    with pytest.raises(ValueError, match=rf"metrics\.csv, line 3: .*{why}.*cannot resume exactly"):
        rd.truncate_metrics(3)
    rd.truncate_metrics(1)  # a damaged row after the checkpoint round is recomputed anyway
    assert [r["round"] for r in rd.read_metrics()] == [1]


def test_half_written_last_row_is_never_trusted(tmp_path, caplog):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1, 2])
    whole = rd.metrics_path.read_bytes()
    rd.metrics_path.write_bytes(whole[:-12])  # round 2's row cut, as by a crash in the middle of it
    with caplog.at_level("WARNING", logger="fedlab"):
        assert [r["round"] for r in rd.read_metrics()] == [1]
    assert "line 3: ignoring a half-written last line" in caplog.text
    with pytest.raises(ValueError, match="line 3: a half-written last line"):
        rd.truncate_metrics(2)  # the checkpoint of round 2 exists: its row cannot be rebuilt
    rd.truncate_metrics(1)
    assert rd.metrics_path.read_bytes() == b"\r\n".join(metrics_lines(rd)[:2]) + b"\r\n"
    rd.metrics_path.write_bytes(whole[:-12])
    rd.append_metrics({"round": 2, "test_acc": 0.5})  # appending never builds on a half row
    assert [r["round"] for r in rd.read_metrics()] == [1, 2]
    rd.append_metrics({"round": 2, "test_acc": 0.7})  # round 2 again (killed before its checkpoint, no resume
    rd.append_metrics({"round": 3, "test_acc": 0.8})  # point): the new row replaces the stale one
    assert [(r["round"], r["test_acc"]) for r in rd.read_metrics()] == [(1, 0.1), (2, 0.7), (3, 0.8)]


def test_metrics_header_is_the_given_columns_and_unknown_keys_are_refused(tmp_path):
    rd = RunDir(tmp_path)
    rd.append_metrics({"round": 1, "test_acc": 0.5}, columns=["round", "test_acc", "extra"])
    assert rd.metrics_path.read_text().splitlines()[0] == "round,test_acc,extra"
    with pytest.raises(ValueError, match="'staleness_max' is not a column"):
        rd.append_metrics({"round": 2, "staleness_max": 3}, columns=["round", "test_acc", "extra"])
    with pytest.raises(ValueError, match="test_acc='high' is not a number"):
        rd.append_metrics({"round": 2, "test_acc": "high"})
    assert [r["round"] for r in rd.read_metrics()] == [1]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_names_the_path_leaves_no_temporary_file_and_no_orphan_row(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1])
    rd.append_metrics({"round": 2, "test_acc": 0.2})
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=r"cannot write .*round_0002\.pt: No space left") as err:
        rd.save_checkpoint(2, {"w": np.zeros(3, np.float32)}, {})
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"cannot write .*summary\.json"):
        rd.write_summary({"status": "finished"})
    with pytest.raises(OSError, match=r"cannot write .*metrics\.csv"):
        rd.append_metrics({"round": 3, "test_acc": 0.3})
    monkeypatch.undo()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "checkpoints.sha256", "checkpoints/round_0001.pt", "metrics.csv"]  # no temporary file, no summary
    assert [r["round"] for r in rd.read_metrics()] == [1]  # round 2 has no checkpoint, so no row
    assert rd.last_checkpoint().name == "round_0001.pt"


def test_a_checkpoint_written_in_the_background_lands_before_the_next_save(tmp_path):
    rd = RunDir(tmp_path)
    rd.append_metrics({"round": 1, "test_acc": 0.1})
    rd.save_checkpoint(1, {"w": np.full(3, 1, np.float32)}, {"round": 1}, background=True)
    rd.append_metrics({"round": 2, "test_acc": 0.2})
    rd.save_checkpoint(2, {"w": np.full(3, 2, np.float32)}, {"round": 2}, background=True)  # waits for round 1's
    rd.wait_for_checkpoint()
    assert [p.name for p in sorted(rd.ckpt_dir.glob("*.pt"))] == ["round_0001.pt", "round_0002.pt"]
    rnd, arrays, state, _ = RunDir.load_checkpoint(rd.last_checkpoint())  # digest checked
    assert rnd == 2 and arrays["w"].tolist() == [2, 2, 2] and state == {"round": 2}
    assert [r["round"] for r in rd.read_metrics()] == [1, 2]


def test_a_failed_background_write_is_raised_at_the_next_save_and_takes_its_rows_back(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    save_rounds(rd, [1])
    rd.append_metrics({"round": 2, "test_acc": 0.2})
    monkeypatch.setattr(os, "fsync", no_space)  # round 2's checkpoint cannot be written
    rd.save_checkpoint(2, {"w": np.zeros(3, np.float32)}, {}, background=True)  # returns at once
    rd._writing[0].join()
    monkeypatch.undo()
    rd.append_metrics({"round": 3, "test_acc": 0.3})  # the next round went on meanwhile
    with pytest.raises(OSError, match=r"cannot write .*round_0002\.pt: No space left") as err:
        rd.save_checkpoint(3, {"w": np.zeros(3, np.float32)}, {})
    assert err.value.errno == errno.ENOSPC
    assert [r["round"] for r in rd.read_metrics()] == [1]  # rounds 2 and 3: no checkpoint, no row
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "checkpoints.sha256", "checkpoints/round_0001.pt", "metrics.csv"]  # no temporary file
    rd.wait_for_checkpoint()  # nothing left to wait for


def test_truncated_gz_idx_file_is_refused_naming_it(tmp_path):
    from test_data import make_idx_dir

    make_idx_dir(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bad.read_bytes() * 50)[:40])
    proc = fedlab("dataset.source=local", f"dataset.data_dir={tmp_path / 'd'}", "num_clients=2", "rounds=1",
                  f"out_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{bad}: truncated or corrupt gzip file" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- hangs


@pytest.mark.parametrize("value", ["64", "inf"])
def test_cpus_per_client_above_the_machine_is_refused_before_starting(tmp_path, value):
    proc = fedlab(*TINY, "rounds=1", f"sim.cpus_per_client={value}", f"out_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"sim.cpus_per_client={float(value):g}" in proc.stderr.replace(".0 ", " ")
    if value == "64":  # inf is already refused by the config check (not finite)
        assert f"{os.cpu_count()} cores (os.cpu_count())" in proc.stderr
    assert "ray" not in proc.stderr.lower() and not (tmp_path / "run" / "summary.json").exists()


def test_a_server_thread_left_waiting_is_stopped():
    before, stop = set(threading.enumerate()), []

    def waits_for_replies():  # what the ServerApp does once the simulation engine is gone
        try:
            while True:
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001
            stop.append(type(exc).__name__)

    t = threading.Thread(target=waits_for_replies)
    t.start()
    assert _stop_threads(before, grace_s=0.2, timeout_s=10) is True
    assert not t.is_alive() and stop == ["RunInterrupted"]
    assert _stop_threads(set(threading.enumerate())) is False


def test_interrupted_summary_is_as_of_the_last_checkpoint(tmp_path):
    from conftest import compose

    from fedlab_app import config
    from fedlab_app.recorder import LoopState
    from fedlab_app.simulate import _write_interrupted

    cfg = config.parse(config.flatten(compose(f"out_dir={tmp_path}", "rounds=5")))
    rd = RunDir(tmp_path)
    for r in (1, 2):
        rd.append_metrics({"round": r, "test_acc": 0.1 * r, "test_loss": 2.0 / r})
        rd.save_checkpoint(r, {"w": np.zeros(2, np.float32)}, LoopState(server_round=r, wall_time_s=r).to_json())
    rd.append_metrics({"round": 3, "test_acc": 0.3})  # evaluated, then interrupted before its checkpoint
    summary = _write_interrupted(rd, cfg)
    assert summary == rd.read_summary() and summary["status"] == "interrupted"
    assert summary["rounds"] == 2 and summary["final"] == {"round": 2, "test_acc": 0.2, "test_loss": 1.0}
    assert summary["rounds_planned"] == 5 and summary["wall_time_s"] == 2
    assert summary["resume"] == f"fedlab run out_dir={tmp_path} resume=true"


@needs_fmnist
@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_130_and_resume_stays_exact(tmp_path):
    out, ref = tmp_path / "run", tmp_path / "ref"
    proc = start(*TINY, "rounds=8", f"out_dir={out}")
    wait_for(proc, "[round 1/8]")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        err = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"fedlab run out_dir={out} resume=true" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds"] >= 1
    assert (out / "checkpoints" / f"round_{summary['rounds']:04d}.pt").exists()
    resumed = fedlab(*TINY, "rounds=3", f"out_dir={out}", "resume=true", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert fedlab(*TINY, "rounds=3", f"out_dir={ref}", timeout=240).returncode == 0
    a, b = (RunDir.load_checkpoint(RunDir(d).last_checkpoint())[1] for d in (out, ref))
    assert all(np.array_equal(a[k], b[k]) for k in b)


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize("outcomes, code", [(["finished"], 0), (["stopped"], 0), (["failed"], 1), (["diverged"], 3),
                                            (["finished", "diverged"], 3), (["diverged", "failed", "finished"], 1),
                                            ([2], 2), ([130], 130)])
def test_exit_code_of_each_outcome(monkeypatch, tmp_path, outcomes, code):
    """A status returned by a job, or the SystemExit it raises (config error, interrupt)."""
    monkeypatch.chdir(tmp_path)
    it = iter(outcomes)

    def job(dcfg):
        out = next(it)
        if isinstance(out, int):
            raise SystemExit(out)
        return out

    monkeypatch.setattr(cli, "_run_task", job)
    many = ["--multirun", "seed=" + ",".join(map(str, range(len(outcomes))))] if len(outcomes) > 1 else []
    assert cli._hydra_main(many) == code


def test_out_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    proc = fedlab(*TINY, "rounds=1", f"out_dir={f}")
    assert proc.returncode == 2 and f.read_text() == "mine"
    assert proc.stderr.strip().splitlines() == [f"fedlab: configuration error: out_dir='{f}' is invalid; "
                                                f"allowed: a directory (this path is an existing file)"]


def test_resume_that_is_neither_a_flag_nor_a_run_directory_is_refused(tmp_path):
    proc = fedlab(*TINY, "rounds=1", f"out_dir={tmp_path / 'run'}", "resume=maybe")
    assert proc.returncode == 2 and not (tmp_path / "run").exists() and not (tmp_path / "maybe").exists()
    assert proc.stderr.strip().splitlines() == ["fedlab: configuration error: resume='maybe' is invalid; allowed: "
                                                "true, false or the path of an existing run directory"]


@needs_fmnist
@pytest.mark.slow
def test_stopped_run_exits_0_and_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path):
    out = tmp_path / "run"
    proc = fedlab(*TINY, "rounds=3", "stop_after=2", f"out_dir={out}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RunDir(out).read_summary()["status"] == "stopped"
    damaged(out / "checkpoints" / "round_0002.pt")
    proc = fedlab(*TINY, "rounds=3", f"out_dir={out}", "resume=true", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round_0002.pt is damaged" in proc.stderr and "from round 1" in proc.stderr
    assert [r["round"] for r in RunDir(out).read_metrics()] == [1, 2, 3]
    assert RunDir(out).verify_checkpoint(out / "checkpoints" / "round_0002.pt") is None  # written again


@needs_fmnist
@pytest.mark.slow
def test_diverged_run_exits_3(tmp_path):
    proc = fedlab("strategy=centralized", "strategy.epochs=1", "dataset.limit_train=300", "client.lr=1e6",
                  "optimizer=sgd", f"out_dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert RunDir(tmp_path / "run").read_summary()["status"] == "diverged"
