"""Where a deployed message's time goes: timestamps from every process it passes, in one file.

With ``FEDLAB_TRACE=<file>`` in a federation's environment (``bench/bench_deploy.py --trace`` sets it before
``fedlab deploy up``), each process appends JSON lines ``{"t": unix time, "pid", "who", "what", "round", ...}``
to that file (one ``write`` per line, opened for appending: lines from concurrent processes do not mix):

- the ServerApp (``fedlab_app/comm.py``, ``fedlab_app/driver.py``): ``send`` before it pushes a round's
  messages, ``pushed`` when they and their objects are on the SuperLink, ``replies`` when the last reply is
  in;
- each SuperNode (``fedlab_app/flower_waits.py``, around Flower's loop): ``received`` when it has pulled a
  message and its objects from the SuperLink, ``reply seen`` when its loop finds its ClientApp's reply and
  starts sending it, ``reply sent`` when the reply and its objects are on the SuperLink (or the send failed:
  Flower logs that and goes on);
- the ``flwr-clientapp`` launcher (``fedlab_app/prefork.py``): its process start (``launched``: the SuperExec
  started it), and the forked child, when it takes the launcher's request: ``started``, then around Flower's
  ``run_clientapp``: ``task pulled`` (message, context, run and FAB), ``fab installed``, ``app loaded``,
  ``reply pushed``;
- the ClientApp's handler (``fedlab_app/client_app.py``): ``handler``, ``trained``.

:func:`journeys` puts the lines of one run together per round and node; without ``FEDLAB_TRACE`` nothing
is written and :func:`mark` costs one dictionary lookup. Standard library only: the launcher imports it
without site-packages.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "FEDLAB_TRACE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(who: str, what: str, t: float | None = None, **fields) -> None:
    """Append one event (``t``: when it happened, Unix time; default now) if ``FEDLAB_TRACE`` names a file."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": time.time() if t is None else t, "pid": os.getpid(), "who": who, "what": what,
                       **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def about(msg) -> dict:
    """A Flower message's run, round (its ``group_id``) and type, as the events carry them."""
    group = str(msg.metadata.group_id)
    return {"run": msg.metadata.run_id, "round": int(group) if group.isdigit() else group,
            "type": msg.metadata.message_type}


def tag_rounds(msgs) -> None:
    """Give each message without a ``group_id`` its round (its config's ``server-round``) as Flower's
    ``group_id``, which its reply keeps, so that every process on its way can tell the round."""
    for m in msgs:
        if not m.metadata.group_id and "config" in m.content:
            rnd = m.content["config"].get("server-round")
            if rnd is not None:
                m.metadata.group_id = str(rnd)


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_start(pid: int | str = "self") -> float | None:
    """When process ``pid`` started (Unix time; Linux ``/proc``, to a clock tick), or None where that cannot be
    read. The boot time is ``time.time()`` less the time since boot, not ``/proc/stat``'s whole-second ``btime``
    (up to 1 s early)."""
    try:
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        return boot + int(_stat(pid)[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def parent(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux ``/proc``), or None."""
    try:
        return int(_stat(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


def read(path: Path) -> list[dict]:
    """The events in ``path`` (a line cut short by a process killed mid-write is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# A training message's journey, in order: (label, who, what). The server's ``send`` of round r starts it; the
# server's ``replies`` ends it. Per round, the per-node events are matched by round and by the node's pid chain.
STAGES = (
    ("server sends", "server", "send"),
    ("server pushed", "server", "pushed"),
    ("node has message", "node", "received"),
    ("launcher started", "launcher", "launched"),
    ("child started", "clientapp", "started"),
    ("task pulled", "clientapp", "task pulled"),
    ("FAB installed", "clientapp", "fab installed"),
    ("app loaded", "clientapp", "app loaded"),
    ("handler", "clientapp", "handler"),
    ("trained", "clientapp", "trained"),
    ("reply pushed to node", "clientapp", "reply pushed"),
    ("node has reply", "node", "reply seen"),
    ("reply on SuperLink", "node", "reply sent"),
    ("server has replies", "server", "replies"),
)


def journeys(events: list[dict], message_type: str = "train") -> list[dict]:
    """Per run, round (an integer ``group_id``) and node: each stage's time after the round's first ``send``
    (seconds; None where the event is missing), for ``message_type`` messages. A ClientApp's events are tied to
    its node through its launcher (a child of the node's SuperExec, itself a child of the SuperNode), and its
    launch and fork to the round of the message it then pulled."""
    server: dict[tuple, float] = {}
    per_node: dict[tuple, dict] = {}  # (run, round, node) -> {event: time}
    launcher_node = {e["pid"]: e["node"] for e in events if e["who"] == "launcher"}
    launched = {e["pid"]: e["t"] for e in events if e["who"] == "launcher"}
    child = {e["pid"]: e for e in events if e["who"] == "clientapp" and e["what"] == "started"}
    for e in events:
        if e.get("type") != message_type or not isinstance(e.get("round"), int):
            continue
        run = e.get("run")
        if e["who"] == "server":
            server.setdefault((run, e["round"], e["what"]), e["t"])
        elif e["who"] == "node":
            per_node.setdefault((run, e["round"], e["node"]), {})[e["what"]] = e["t"]
        elif e["who"] == "clientapp" and e["pid"] in child:
            fork = child[e["pid"]]
            got = per_node.setdefault((run, e["round"], launcher_node.get(fork.get("launcher"))), {})
            got.update({e["what"]: e["t"], "started": fork["t"]})
            if fork.get("launcher") in launched:
                got["launched"] = launched[fork["launcher"]]
    out = []
    order = sorted(per_node.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], str(kv[0][2])))
    for (run, rnd, node), got in order:
        if (run, rnd, "send") not in server:
            continue
        t0 = server[(run, rnd, "send")]
        row = {"run": run, "round": rnd, "node": node}
        for label, who, what in STAGES:
            t = server.get((run, rnd, what)) if who == "server" else got.get(what)
            row[label] = None if t is None else round(t - t0, 4)
        out.append(row)
    return out
