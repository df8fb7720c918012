"""Everything a run records, shared by the federated round loop and the centralized baseline.

:class:`Recorder` owns the run directory: it resumes from the last checkpoint, evaluates the
global model centrally when due, appends the metrics row, logs one progress line, checkpoints,
detects divergence, and writes the summary and the plots at the end.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from clients.train import Normalizer, classification_report, confusion_matrix, evaluate
from fedlab_app import heap, plots
from fedlab_app.comm import Ledger
from fedlab_app.config import Config, flatten, to_nested
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.overlap import Overlap
from fedlab_app.results import RunDir
from fedlab_app.splits import make_splits

log = logging.getLogger("fedlab")
COMMON_COLUMNS = ("round", "wall_time_s", "sim_time_s", "lr", "clients", "local_steps", "failures", "train_loss",
                  "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "weight_norm", "messages", "bytes",
                  "messages_down", "messages_up", "bytes_down", "bytes_up", "messages_p2p", "bytes_p2p",
                  "transport_messages", "transport_bytes")
DIVERGE_FACTOR = 100.0  # a loss above DIVERGE_FACTOR * ln(num_classes) (chance level) has exploded


def is_diverged(loss: float, num_classes: int) -> bool:
    """True when ``loss`` is NaN/inf or exploded past ``DIVERGE_FACTOR`` times the chance-level loss."""
    return not math.isfinite(loss) or loss > DIVERGE_FACTOR * math.log(max(num_classes, 2))


@dataclass
class LoopState:
    """Everything a checkpoint must hold to continue a run exactly."""

    server_round: int = 0
    wall_time_s: float = 0.0
    sim_time_s: float = 0.0
    failures: int = 0
    ledger: Ledger = field(default_factory=Ledger)
    failure_events: list = field(default_factory=list)  # {"round", "node", "reason"} of every failed reply

    def to_json(self) -> dict:
        return {"server_round": self.server_round, "wall_time_s": self.wall_time_s, "sim_time_s": self.sim_time_s,
                "failures": self.failures, "ledger": self.ledger.state(), "failure_events": self.failure_events}

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        return cls(d["server_round"], d["wall_time_s"], d["sim_time_s"], d["failures"], Ledger.from_state(d["ledger"]),
                   d.get("failure_events", []))


def weight_norm(arrays: dict[str, np.ndarray]) -> float:
    """The Euclidean norm of all floating-point entries of a model (float64 sum of squares)."""
    return math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in arrays.values()
                         if np.issubdtype(np.asarray(v).dtype, np.floating)))


class CentralEvaluator:
    """Evaluates the global model on the test set (and the validation split, if any) in the server process."""

    def __init__(self, cfg: Config) -> None:
        s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
        self.data, self.batch = s.data, cfg.eval.batch_size
        self.model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes)
        # the modes' own evaluations (gossip's nodes) run in the driver's thread while the round record may be
        # evaluating in its thread (fedlab_app/overlap.py): each needs its own module to load weights into
        self.subset_model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes)
        self.norm = Normalizer.from_stats(s.data.mean, s.data.std, use_channels_last(cfg.model))
        self.test = (torch.from_numpy(s.data.x_test.copy()), torch.from_numpy(s.data.y_test.astype(np.int64)))
        self.val = (torch.from_numpy(s.data.x_train[s.val_idx]), torch.from_numpy(s.data.y_train[s.val_idx].astype(np.int64)))

    def subset_accuracies(self, models: list[dict[str, np.ndarray]], samples: int, seed: int) -> list[float]:
        """Test accuracy of each model on ``samples`` test images: a seeded random subset, the same every
        round (test sets may be sorted by class)."""
        idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(self.test[1]))[:samples]))
        x, y = self.test[0][idx], self.test[1][idx]
        accs = []
        for arrays in models:
            self.subset_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
            accs.append(evaluate(self.subset_model, x, y, self.norm, self.batch)[1])
        return accs

    def per_class(self, arrays: dict[str, np.ndarray]) -> dict[str, list[float]]:
        """Per-class precision/recall/F1/support of ``arrays`` on the test set (the studies' classification report)."""
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        conf = confusion_matrix(self.model, *self.test, self.norm, self.data.num_classes, self.batch)
        return classification_report(conf)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        out = {}
        for name, (x, y) in (("test", self.test), ("val", self.val)):
            if len(y):
                out[f"{name}_loss"], out[f"{name}_acc"] = evaluate(self.model, x, y, self.norm, self.batch)
        return out




class Recorder:
    """Records one run (``unit`` = "round" or "epoch") into ``run_dir``."""

    def __init__(self, cfg: Config, run_dir: RunDir, total: int, unit: str = "round",
                 columns: tuple[str, ...] = ()) -> None:
        self.cfg, self.run_dir, self.total, self.unit = cfg, run_dir, total, unit
        self.columns = [*COMMON_COLUMNS, *columns]  # metrics.csv's header: the common columns, then the mode's
        self.state = LoopState()
        self.last_eval: dict[str, float] = {}
        self.status = "finished"
        self.evaluator: CentralEvaluator | None = None
        self.t_start = time.perf_counter()
        self.final_arrays: dict[str, np.ndarray] | None = None  # the last round's model
        self.extra_summary: dict = {}  # more summary.json fields from the loop (e.g. staleness)
        self.stopped_at: dict | None = None  # the loop state of the round whose evaluation diverged

    def start(self) -> tuple[dict[str, np.ndarray] | None, dict]:
        """Create the run directory, or resume it: returns the checkpointed ``(arrays, extra)`` or ``(None, {})``."""
        cfg, rd = self.cfg, self.run_dir
        arrays, extra = None, {}
        if cfg.resume_requested and (ckpt := rd.last_checkpoint()) is not None:
            rnd, arrays, saved, extra = RunDir.load_checkpoint(ckpt)
            self.state = LoopState.from_json(saved)
            check_resume_config(cfg, rd)
            rd.truncate_metrics(rnd)
            log.info("resuming %s from %s %d (%s)", rd.path, self.unit, rnd, ckpt.name)
        elif cfg.resume_requested:
            log.warning("resume requested but %s has no checkpoint: starting from %s 1", rd.path, self.unit)
        rd.create()
        rd.write_config(to_nested(cfg))
        self.evaluator = CentralEvaluator(cfg)
        self.t_start = time.perf_counter() - self.state.wall_time_s
        return arrays, extra

    def eval_due(self, rnd: int) -> bool:
        """Whether round ``rnd`` is evaluated (every ``eval.every`` rounds and the last)."""
        return rnd % self.cfg.eval.every == 0 or rnd == self.total

    def end_of_round(self, rnd: int, arrays: dict[str, np.ndarray], lr: float, clients: int, train_loss: float,
                     train_acc: float, extra: dict | None = None, row: dict | None = None,
                     overlap: Overlap | None = None) -> bool:
        """Evaluate (when due), record and checkpoint round ``rnd``; True when the run must stop (diverged, stop_after).

        ``extra``: tensors the checkpoint must hold besides the model; ``row``: more metrics.csv columns.

        ``overlap``: the round's record (evaluation, metrics row, checkpoint) is deferred there, to be made beside
        the next round's server step (``fedlab_app/overlap.py``). The round's numbers (wall time, counts, the loop
        state) are taken now and the model is copied; ``extra``'s tensors must not change in place afterwards (the
        modes that offer it promise so, ``strategies/modes.py``). A round that ends the run (the last, stop_after,
        a training loss that exploded) is recorded at once, after the deferred ones; True then also when one of
        those found the run diverged (this round is not recorded).
        """
        cfg, st = self.cfg, self.state
        st.server_round = rnd
        self.final_arrays = arrays
        st.wall_time_s = time.perf_counter() - self.t_start
        diverged = is_diverged(train_loss, self.evaluator.data.num_classes)
        stop = cfg.stop_after > 0 and rnd >= cfg.stop_after and rnd < self.total
        last = rnd == self.total or diverged or stop
        evaluate = self.eval_due(rnd) or diverged
        checkpoint = rnd % cfg.checkpoint_every == 0 or last
        if not (evaluate or checkpoint):
            return False
        led = st.ledger
        numbers = {  # the row as of now, but for the evaluation
            "round": rnd, "wall_time_s": st.wall_time_s, "sim_time_s": st.sim_time_s, "lr": lr,
            "clients": clients, **(row or {}), "failures": st.failures, "train_loss": train_loss,
            "train_acc": train_acc, "messages": led.total_messages, "bytes": led.total_bytes,
            "messages_down": led.messages["down"], "messages_up": led.messages["up"],
            "bytes_down": led.bytes["down"], "bytes_up": led.bytes["up"], "messages_p2p": led.messages["p2p"],
            "bytes_p2p": led.bytes["p2p"], "transport_messages": led.transport["messages"],
            "transport_bytes": led.transport["bytes"]}
        saved = copy.deepcopy(st.to_json())  # its counts change with the next round's replies
        if overlap is None or last:
            if overlap is not None and overlap.settle():  # the rounds before first
                return True
            return self._complete_round(rnd, arrays, saved, extra, numbers, evaluate, checkpoint, last, diverged,
                                        stop)
        arrays = {k: np.array(v) for k, v in arrays.items()}  # the next round may reuse the model's buffers
        extra = dict(extra or {})
        overlap.defer(lambda: self._complete_round(rnd, arrays, saved, extra, numbers, evaluate, checkpoint, False,
                                                   False, False))
        return False

    def _complete_round(self, rnd: int, arrays: dict[str, np.ndarray], saved: dict, extra: dict | None,
                        numbers: dict, evaluate: bool, checkpoint: bool, last: bool, diverged: bool,
                        stop: bool) -> bool:
        """The work of :meth:`end_of_round` on its snapshot: evaluate, append the row, log, checkpoint; True when the
        run must stop."""
        num_classes = self.evaluator.data.num_classes
        if evaluate:
            self.last_eval = self.evaluator(arrays)
            heap.trim()  # unless heap.keep(): the evaluation's freed activations back (fedlab_app/heap.py)
            if is_diverged(self.last_eval.get("test_loss", 0.0), num_classes) and not diverged:
                diverged, last, checkpoint = True, True, True
                self.stopped_at = saved  # a deferred record: the rounds after it ran, but end here
            self.run_dir.append_metrics({**numbers, **self.last_eval, "weight_norm": weight_norm(arrays)},
                                        columns=self.columns)
            log.info("[%s %d/%d] test_acc=%.4f test_loss=%.4f train_loss=%.4f lr=%.4g | %d msgs %.2f MB | %.1fs",
                     self.unit, rnd, self.total, self.last_eval.get("test_acc", math.nan),
                     self.last_eval.get("test_loss", math.nan), numbers["train_loss"], numbers["lr"],
                     numbers["messages"], numbers["bytes"] / 1e6, numbers["wall_time_s"])
        if checkpoint:  # written while the next round trains, unless it is the last
            self.run_dir.save_checkpoint(rnd, arrays, saved, extra, background=not last)
        if diverged:
            log.warning("%s %d: the loss is not finite or exploded; stopping the run as diverged", self.unit, rnd)
            self.status = "diverged"
        elif stop:
            log.info("%s %d: stop_after=%d reached; continue later with resume=true", self.unit, rnd,
                     self.cfg.stop_after)
            self.status = "stopped"
        return diverged or stop

    def finish(self) -> dict:
        """Write summary.json (with the final model's per-class report) and the plots; return the summary."""
        self.run_dir.wait_for_checkpoint()
        if self.stopped_at is not None:  # the summary is that of the last round recorded
            self.state = LoopState.from_json(self.stopped_at)
        summary = {"out_dir": str(self.run_dir.path), **make_summary(self.cfg, self.state, self.last_eval, self.status)}
        summary["rounds_planned"] = self.total
        summary.update(self.extra_summary)
        if self.final_arrays is not None and self.status != "diverged":
            summary["per_class"] = self.evaluator.per_class(self.final_arrays)
        self.run_dir.write_summary(summary)
        plots.plot_run(self.run_dir)
        return summary


RESUMABLE_CHANGES = {"rounds", "strategy.epochs", "resume", "out_dir", "verbose", "checkpoint_every", "stop_after",
                     "eval.every", "eval.batch_size", "sim.cpus_per_client", "sim.threads_per_client", "strategy.threads",
                     "sim.clients_per_worker"}


def check_resume_config(cfg: Config, run_dir: RunDir) -> None:
    """Refuse to resume a run under a config that would change its results (rounds may grow)."""
    if not (run_dir.path / "config.yaml").exists():
        return
    old, new = flatten(run_dir.read_config()), flatten(to_nested(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {run_dir.path}: the config differs from the checkpointed run ({diff})")


def make_summary(cfg: Config, state: LoopState, last_eval: dict, status: str) -> dict:
    """The summary.json content for a run in ``state``."""
    led = state.ledger
    per_node = {k: v for k, v in sorted(led.per_node.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)}
    return {
        "status": status, "rounds": state.server_round, "rounds_planned": cfg.rounds,
        "final": {"round": state.server_round, **last_eval},
        "comm": {"messages": led.total_messages, "bytes": led.total_bytes, "messages_down": led.messages["down"],
                 "messages_up": led.messages["up"], "bytes_down": led.bytes["down"], "bytes_up": led.bytes["up"],
                 "messages_p2p": led.messages["p2p"], "bytes_p2p": led.bytes["p2p"],
                 "transport_messages": led.transport["messages"], "transport_bytes": led.transport["bytes"],
                 "max_node_messages": max((v["messages"] for v in per_node.values()), default=0),
                 "per_node": per_node},
        "wall_time_s": state.wall_time_s, "sim_time_s": state.sim_time_s, "failures": state.failures,
        "failure_events": state.failure_events,
        "strategy": cfg.strategy.name, "dataset": cfg.dataset.name, "num_clients": cfg.num_clients,
    }
