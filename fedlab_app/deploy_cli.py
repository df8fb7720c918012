"""``fedlab deploy ...`` sub-commands (see :mod:`fedlab_app.deploy`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from fedlab_app import config, deploy, flower_waits, report
from fedlab_app.compose import compose
from fedlab_app.server_app import resolve_run_dir
from fedlab_app.simulate import APP_DIR, PreflightError, preflight

HELP = """fedlab deploy: run the app on a real SuperLink and SuperNodes

  fedlab deploy up --nodes 3 [--dir D] [--host 127.0.0.1] [--port 9300] [--insecure] [--no-auth] [--cold]
                   [--node-poll 0.2] [--superlink-state memory|sqlite]
        a local federation: certificates, node keys (registered), SuperLink + SuperNodes in the background;
        their ClientApp processes start warm (fedlab_app/prefork.py) unless --cold; idle SuperNodes ask for
        work every --node-poll seconds (fedlab_app/flower_waits.py; 3 is Flower's own wait); the SuperLink
        keeps its state in memory (faster) or in SQLite in D (node ids survive its restart)
  fedlab deploy warm [--dir D]                  on a device: the prefork server for SuperNodes started
                                                with D/prefork-bin first on their PATH
  fedlab deploy run [--dir D] [key=value ...]   the experiment (Hydra overrides) on that federation
  fedlab deploy status [--dir D]                processes and SuperNodes
  fedlab deploy restart [--dir D]               start again what has stopped (e.g. a killed SuperLink);
                                                then `fedlab deploy run out_dir=<run> resume=true` continues
  fedlab deploy down [--dir D]                  stop every process `up` started, by PID
  fedlab deploy certs --out DIR --host HOST...  a CA and a SuperLink certificate for real machines
  fedlab deploy key --out PATH                  a SuperNode key pair (PATH, PATH.pub) to register
  fedlab deploy connect --dir D --superlink HOST:PORT [--ca ca.crt]   point `run` at an existing SuperLink
"""


def main(argv: list[str]) -> int:
    """Entry point of ``fedlab deploy``."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    ap = argparse.ArgumentParser(prog=f"fedlab deploy {cmd}")
    ap.add_argument("--dir", type=Path, default=deploy.DEFAULT_DIR, help="deployment directory")
    if cmd == "up":
        ap.add_argument("--nodes", type=int, required=True)
        ap.add_argument("--host", default="127.0.0.1")
        ap.add_argument("--port", type=int, default=9300)
        ap.add_argument("--insecure", action="store_true", help="no TLS")
        ap.add_argument("--no-auth", action="store_true", help="no SuperNode authentication")
        ap.add_argument("--cold", action="store_true", help="a fresh Python per ClientApp message (Flower's own)")
        ap.add_argument("--node-poll", type=float, default=deploy.NODE_POLL_S,
                        help="longest wait of an idle SuperNode before it asks for work again, in seconds "
                             "(0 < S <= 3; 3 is Flower's own)")
        ap.add_argument("--superlink-state", choices=deploy.SUPERLINK_STATES, default="memory",
                        help="where the SuperLink keeps nodes, runs and messages: in memory (default, faster) or "
                             "in SQLite in --dir (registered node ids survive a SuperLink restart)")
        a = ap.parse_args(rest)
        if a.nodes < 1:
            ap.error(f"--nodes={a.nodes} is invalid; allowed: an integer >= 1")
        if not 0 < a.node_poll <= flower_waits.LONGEST_DEFAULT_S:
            ap.error(f"--node-poll={a.node_poll:g} is invalid; allowed: seconds > 0 and <= 3 (Flower's own)")
        try:
            state = deploy.up(a.dir, a.nodes, a.host, a.port, tls=not a.insecure, auth=not a.no_auth,
                              warm=not a.cold, poll=a.node_poll, superlink_state=a.superlink_state)
        except deploy.AlreadyRunning as exc:  # leave the running federation alone
            print(f"fedlab deploy up: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - leave nothing half-started behind
            deploy.down(a.dir)
            print(f"fedlab deploy up: {exc}", file=sys.stderr)
            return 1
        print(f"SuperLink {state['address']} ({'TLS' if state['tls'] else 'insecure'}, "
              f"{'node authentication' if state['auth'] else 'no authentication'}), {a.nodes} SuperNodes; "
              f"logs in {a.dir / 'logs'}; stop with `fedlab deploy down --dir {a.dir}`")
        return 0
    if cmd == "warm":
        a = ap.parse_args(rest)
        a.dir.mkdir(parents=True, exist_ok=True)
        proc = deploy.start_prefork(a.dir)
        print(f"prefork server pid {proc.pid}; start SuperNodes with PATH={(a.dir / deploy.PREFORK_BIN).resolve()}"
              f":$PATH (their ClientApps then start warm); stop it with `fedlab deploy down --dir {a.dir}`")
        return 0
    if cmd == "down":
        a = ap.parse_args(rest)
        print(f"stopped {len(deploy.down(a.dir))} processes")
        return 0
    if cmd == "restart":
        a = ap.parse_args(rest)
        names = deploy.restart(a.dir)
        print(f"restarted: {', '.join(names) or 'nothing (every process runs)'}")
        return 0
    if cmd == "status":
        a = ap.parse_args(rest)
        state = deploy.load_state(a.dir)
        for p in state["processes"]:
            print(f"{p['name']:>12}  pid {p['pid']:>7}  {'running' if deploy._alive(p['pid']) else 'stopped'}")
        if state["processes"]:
            print(deploy.superlink_report(a.dir))
        res = deploy.flwr(a.dir, "supernode", "ls", deploy.CONNECTION, "--format", "json", timeout=30)
        print(res.stdout.strip() or res.stderr.strip())
        return 0
    if cmd == "run":
        a, overrides = ap.parse_known_args(rest)
        return _run(a.dir, overrides)
    if cmd == "certs":
        ap.add_argument("--out", type=Path, required=True)
        ap.add_argument("--host", nargs="+", required=True, help="the SuperLink's IP addresses / host names")
        a = ap.parse_args(rest)
        for name, path in deploy.make_certs(a.out, a.host).items():
            print(f"{name}: {path}")
        return 0
    if cmd == "key":
        ap.add_argument("--out", type=Path, required=True)
        a = ap.parse_args(rest)
        priv, pub = deploy.make_node_key(a.out)
        print(f"private key: {priv} (stays on the device)\npublic key:  {pub} (register it on the SuperLink)")
        return 0
    if cmd == "connect":
        ap.add_argument("--superlink", required=True, help="HOST:PORT")
        ap.add_argument("--ca", type=Path, help="the CA certificate (omit for an insecure SuperLink)")
        ap.add_argument("--nodes", type=int, required=True, help="how many SuperNodes the federation has")
        a = ap.parse_args(rest)
        a.dir.mkdir(parents=True, exist_ok=True)
        deploy.write_connection(a.dir, a.superlink, a.ca)
        deploy.save_state(a.dir, {**deploy.load_state(a.dir), "nodes": a.nodes, "address": a.superlink})
        print(f"`fedlab deploy run --dir {a.dir} ...` now runs on {a.superlink}")
        return 0
    print(f"fedlab deploy: unknown command {cmd!r}\n{HELP}", file=sys.stderr)
    return 2


def _run(d: Path, overrides: list[str]) -> int:
    state = deploy.load_state(d)
    if "address" not in state:
        print(f"fedlab deploy run: {d} has no federation; `fedlab deploy up` or `fedlab deploy connect` first",
              file=sys.stderr)
        return 2
    try:
        cfg = compose([f"num_clients={state['nodes']}", *overrides])
        if cfg.num_clients != state["nodes"]:
            raise config.ConfigError(f"num_clients={cfg.num_clients} is invalid; allowed: {state['nodes']}, the "
                                     f"number of SuperNodes of {d}")
        preflight(cfg)  # the server's own copy of the data (test set) must load
    except (config.ConfigError, PreflightError) as exc:
        print(f"fedlab deploy run: configuration error: {exc}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(cfg, out_dir=str(resolve_run_dir(cfg).path.resolve()))
    summary = deploy.run(d, config.to_run_config(cfg), APP_DIR)
    report.print_summary(summary)
    print(json.dumps({"status": summary.get("status"), "out_dir": summary.get("out_dir"),
                      "deploy_wall_s": round(summary["deploy_wall_s"], 1)}))
    return 0 if summary.get("status") == "finished" else 1
