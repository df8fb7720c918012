"""The one-screen summary printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Print a run's summary.json content as a short table."""
    console = console or Console(stderr=False)
    status = summary.get("status", "?")
    color = {"finished": "green", "diverged": "yellow"}.get(status, "red")
    t = Table(title=f"fedlab run [{color}]{status}[/{color}]", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    final = summary.get("final", {})
    comm = summary.get("comm", {})
    rows = [
        ("run directory", summary.get("out_dir", "")),
        ("strategy / dataset", f"{summary.get('strategy', '?')} / {summary.get('dataset', '?')}, "
                               f"{summary.get('num_clients', '?')} clients"),
        ("rounds", f"{summary.get('rounds', '?')} of {summary.get('rounds_planned', '?')}"),
        ("test accuracy", f"{final['test_acc']:.4f}" if "test_acc" in final else "-"),
        ("test loss", f"{final['test_loss']:.4f}" if "test_loss" in final else "-"),
        ("validation accuracy", f"{final['val_acc']:.4f}" if "val_acc" in final else "-"),
        ("messages (down / up / node-to-node)", f"{comm.get('messages', 0)} ({comm.get('messages_down', 0)} / "
         f"{comm.get('messages_up', 0)} / {comm.get('messages_p2p', 0)})"),
        ("bytes (down / up / node-to-node)", f"{_mb(comm.get('bytes', 0))} ({_mb(comm.get('bytes_down', 0))} / "
         f"{_mb(comm.get('bytes_up', 0))} / {_mb(comm.get('bytes_p2p', 0))})"),
        ("max messages per node", str(comm.get("max_node_messages", "-"))),
        ("wall time / simulated time", f"{summary.get('wall_time_s', 0):.1f} s / {summary.get('sim_time_s', 0):.1f} s"),
        ("client failures", str(summary.get("failures", 0))),
    ]
    if "error" in summary:
        rows.append(("error", summary["error"]))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"plots: {summary.get('out_dir', '')}/plots/")
