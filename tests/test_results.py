"""Results files and communication ledger."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedlab_app.comm import Ledger, message_bytes
from fedlab_app.results import METRIC_COLUMNS, RunDir


def test_metrics_append_read_truncate(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.create()
    for r in range(1, 5):
        rd.append_metrics({"round": r, "test_acc": 0.1 * r, "messages": 20 * r})
    rows = rd.read_metrics()
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and abs(rows[2]["test_acc"] - 0.3) < 1e-9
    assert np.isnan(rows[0]["val_acc"])
    rd.truncate_metrics(2)
    assert [r["round"] for r in rd.read_metrics()] == [1, 2]
    assert rd.metrics_path.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)


def test_checkpoint_round_trip_and_last(tmp_path):
    rd = RunDir(tmp_path)
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    rd.save_checkpoint(2, arrays, {"x": 1})
    rd.save_checkpoint(10, {k: v + 1 for k, v in arrays.items()}, {"x": 2})
    assert rd.last_checkpoint().name == "round_0010.pt"
    rnd, back, state, extra = RunDir.load_checkpoint(rd.last_checkpoint())
    assert extra == {}
    assert rnd == 10 and state == {"x": 2}
    np.testing.assert_array_equal(back["w"], arrays["w"] + 1)
    assert back["n"].dtype == np.int64


def test_ledger_counts_and_state_round_trip():
    led = Ledger()
    led.record("down", 0, 100)
    led.record("down", 1, 100)
    led.record("up", 0, 90)
    assert led.total_messages == 3 and led.total_bytes == 290
    assert led.per_node["0"] == {"messages": 2, "bytes": 190}
    again = Ledger.from_state(led.state())
    assert again.state() == led.state()


def test_message_bytes_counts_array_payload(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # a Message outside a run needs an identity
        monkeypatch.setattr(TaskIdentity, attr, 1)
    arr = np.zeros((10, 10), np.float32)  # 400 bytes of data
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(arr)}), "config": ConfigRecord({"lr": 0.1})}),
                  dst_node_id=1, message_type="train")
    n = message_bytes(msg)
    assert n == ArrayRecord({"w": Array(arr)}).count_bytes() and 400 <= n < 400 + 200


def test_label_counts_round_trip_and_plot_without_metrics(tmp_path):
    """A run writes its label counts at the start; the plot is drawn from them at the end or by `fedlab plot`,
    also for a run that stopped before its first metrics row."""
    from fedlab_app.plots import plot_run

    rd = RunDir(tmp_path / "run")
    rd.create()
    assert rd.read_label_counts() is None
    counts = np.array([[3, 0, 1], [0, 5, 2]])
    rd.write_label_counts(counts)
    assert (rd.path / "label_counts.csv").read_text() == "client,0,1,2\n0,3,0,1\n1,0,5,2\n"
    np.testing.assert_array_equal(rd.read_label_counts(), counts)
    assert plot_run(rd) == [rd.plots_dir / "label_distribution.png"]
    assert (rd.plots_dir / "label_distribution.png").stat().st_size > 1000
