"""The config schema: one frozen dataclass per section, its defaults and its validation.

The dataclasses are the one source of defaults: ``conf/*.yaml`` and ``[tool.flwr.app.config]`` in
``pyproject.toml`` must agree with them key by key (``tests/test_defaults.py``). The names of every
choice live here too, so that validation needs nothing from the layers above; the modules that
implement the choices (``fedlab_app/data.py``, ``fedlab_app/partition.py``, ``clients/system.py``,
``strategies/local_steps.py``) import their names from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedlab_base.checks import check, check_choice, parse_ratios

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")
SOURCES = ("auto", "local", "hub")
PARTITIONS = ("iid", "dirichlet", "pathological", "label_split", "shard", "full")
MODELS = ("lenet5", "cnn64")
OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")
SCHEDULES = ("auto", "constant", "step", "cosine")  # auto: the strategy's default (strategies.Spec.schedule)
SCALINGS = ("none", "linear", "sqrt")
PROFILES = ("uniform", "ratios", "lognormal")
STEP_RULES = ("fixed", "linear", "exp", "lr", "adacomm", "post_local")


@dataclass(frozen=True)
class DatasetCfg:
    name: str = "fashion_mnist"
    source: str = "auto"
    data_dir: str = ""
    val_fraction: float = 0.0
    limit_train: int = 0
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip of training batches

    def validate(self, p: str) -> None:
        check_choice(f"{p}.name", self.name, DATASETS)
        check_choice(f"{p}.source", self.source, SOURCES)
        check(0.0 <= self.val_fraction < 1.0, f"{p}.val_fraction", self.val_fraction, "0 <= x < 1")
        check(self.limit_train >= 0, f"{p}.limit_train", self.limit_train, "0 (all) or a positive count")


@dataclass(frozen=True)
class PartitionCfg:
    name: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    shards_per_client: int = 2
    min_size: int = 1

    def validate(self, p: str) -> None:
        check_choice(f"{p}.name", self.name, PARTITIONS)
        check(self.alpha > 0 and math.isfinite(self.alpha), f"{p}.alpha", self.alpha, "a finite number > 0")
        check(self.classes_per_client >= 1, f"{p}.classes_per_client", self.classes_per_client, "an integer >= 1")
        check(self.shards_per_client >= 1, f"{p}.shards_per_client", self.shards_per_client, "an integer >= 1")
        check(self.min_size >= 0, f"{p}.min_size", self.min_size, "an integer >= 0")


@dataclass(frozen=True)
class ModelCfg:
    name: str = "lenet5"
    batchnorm: bool = False
    dropout: float = 0.0

    def validate(self, p: str) -> None:
        check_choice(f"{p}.name", self.name, MODELS)
        check(0.0 <= self.dropout < 1.0, f"{p}.dropout", self.dropout, "0 <= p < 1")


@dataclass(frozen=True)
class OptimizerCfg:
    name: str = "sgd"
    momentum: float = 0.9  # sgd, lars
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # all; decoupled for adamw and lamb, applied to weights (ndim > 1) only
    beta1: float = 0.9  # adamw, lamb
    beta2: float = 0.999  # adamw, lamb
    eps: float = 1e-8  # adamw, lamb (lars: added to the trust-ratio denominator)
    trust_coef: float = 0.001  # lars: eta in eta*||w|| / (||g|| + wd*||w||)

    def validate(self, p: str) -> None:
        check_choice(f"{p}.name", self.name, OPTIMIZERS)
        check(0.0 <= self.momentum < 1.0, f"{p}.momentum", self.momentum, "0 <= momentum < 1")
        check(not self.nesterov or self.momentum > 0, f"{p}.nesterov", self.nesterov, "false when momentum is 0")
        check(not self.nesterov or self.name == "sgd", f"{p}.nesterov", self.nesterov, "true only with optimizer=sgd")
        check(self.weight_decay >= 0.0, f"{p}.weight_decay", self.weight_decay, "a number >= 0")
        check(0.0 <= self.beta1 < 1.0, f"{p}.beta1", self.beta1, "0 <= beta1 < 1")
        check(0.0 <= self.beta2 < 1.0, f"{p}.beta2", self.beta2, "0 <= beta2 < 1")
        check(self.eps > 0, f"{p}.eps", self.eps, "a number > 0")
        check(self.trust_coef > 0, f"{p}.trust_coef", self.trust_coef, "a number > 0")


@dataclass(frozen=True)
class ScheduleCfg:
    name: str = "auto"
    warmup: float = 0.0  # linear warm-up length, in the schedule's unit (rounds, or epochs when centralized)
    warmup_start: float = 0.1  # warm-up starts at warmup_start * lr (0 would waste the first unit)
    milestones: str = ""  # step: comma-separated unit indices, e.g. "30,60"
    gamma: float = 0.1  # step: lr <- gamma * lr at each milestone
    lr_min: float = 0.0  # cosine: final lr
    scaling: str = "none"  # large-batch lr scaling from ref_batch_size: none | linear (B/Bref) | sqrt
    ref_batch_size: int = 256
    per_step: bool = False  # centralized only: update the lr every step instead of every epoch

    def validate(self, p: str) -> None:
        check_choice(f"{p}.name", self.name, SCHEDULES)
        check(self.warmup >= 0, f"{p}.warmup", self.warmup, "a number >= 0")
        check(0.0 < self.warmup_start <= 1.0, f"{p}.warmup_start", self.warmup_start,
              "0 < x <= 1 (an lr of 0 would waste the first unit and divide SlowMo's and async SGD's updates by 0)")
        try:
            ms = self.milestone_list
        except ValueError:
            ms = None
        check(ms is not None and ms == sorted(ms) and all(m > 0 for m in ms), f"{p}.milestones", self.milestones,
              'increasing positive integers separated by commas, e.g. "30,60"')
        check(self.name != "step" or bool(ms), f"{p}.milestones", self.milestones, "at least one milestone with schedule=step")
        check(0.0 < self.gamma <= 1.0, f"{p}.gamma", self.gamma, "0 < gamma <= 1")
        check(self.lr_min >= 0, f"{p}.lr_min", self.lr_min, "a number >= 0")
        check_choice(f"{p}.scaling", self.scaling, SCALINGS)
        check(self.ref_batch_size >= 1, f"{p}.ref_batch_size", self.ref_batch_size, "an integer >= 1")

    @property
    def milestone_list(self) -> list[int]:
        """``milestones`` parsed: ``"30, 60"`` -> ``[30, 60]``."""
        return [int(m) for m in self.milestones.replace(" ", "").split(",") if m]


@dataclass(frozen=True)
class ClientCfg:
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.02

    def validate(self, p: str) -> None:
        check(self.local_epochs >= 1, f"{p}.local_epochs", self.local_epochs, "an integer >= 1")
        check(self.local_steps >= 0, f"{p}.local_steps", self.local_steps, "0 (use epochs) or an integer >= 1")
        check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "an integer >= 1")
        check(self.lr > 0 and math.isfinite(self.lr), f"{p}.lr", self.lr, "a finite number > 0")


@dataclass(frozen=True)
class StrategyCfg:
    name: str = "fedavg"
    params: Any = None  # the strategy's own frozen Params dataclass, validated by its builder


@dataclass(frozen=True)
class EvalCfg:
    every: int = 1
    batch_size: int = 1024
    fraction_clients: float = 0.0

    def validate(self, p: str) -> None:
        check(self.every >= 1, f"{p}.every", self.every, "an integer >= 1")
        check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "an integer >= 1")
        check(0.0 <= self.fraction_clients <= 1.0, f"{p}.fraction_clients", self.fraction_clients, "0 <= x <= 1")


@dataclass(frozen=True)
class SimCfg:
    cpus_per_client: float = 1.0
    threads_per_client: int = 1
    clients_per_worker: int = 0  # virtual clients one simulated node trains together (fused); 0: auto
    ray_address: str = ""  # "": a private Ray instance; "auto" or "host:port": join that existing Ray cluster

    def validate(self, p: str) -> None:
        check(self.ray_address.strip() == self.ray_address and " " not in self.ray_address, f"{p}.ray_address",
              self.ray_address, '"" (a private Ray instance), "auto" or "host:port" of a running Ray cluster')
        check(self.clients_per_worker >= 0, f"{p}.clients_per_worker", self.clients_per_worker,
              "0 (auto: num_clients over the workers the cores allow) or an integer >= 1")
        check(self.cpus_per_client > 0, f"{p}.cpus_per_client", self.cpus_per_client, "a number > 0")
        check(self.threads_per_client >= 1, f"{p}.threads_per_client", self.threads_per_client, "an integer >= 1")


@dataclass(frozen=True)
class SystemCfg:
    """Simulated system heterogeneity (``clients/system.py``): speeds, fixed-time rounds, network."""

    profile: str = "uniform"  # uniform | ratios | lognormal
    ratios: str = ""  # profile=ratios: one relative speed per client, e.g. "1:2:4:8"
    sigma: float = 0.5  # profile=lognormal: std of log(speed)
    budget: float = 0.0  # > 0: fixed-time rounds of `budget` speed-1 steps; client i runs floor(budget*s_i) steps
    step_time_s: float = 0.0  # simulated seconds per step at speed 1 (0: use the measured compute time)
    bandwidth_mbps: float = 0.0  # link bandwidth for the simulated transfer time (0: infinite)
    latency_ms: float = 0.0  # one-way latency per message

    def validate(self, p: str) -> None:
        check_choice(f"{p}.profile", self.profile, PROFILES)
        if self.profile == "ratios":
            try:
                parse_ratios(self.ratios)
            except ValueError:
                check(False, f"{p}.ratios", self.ratios, 'positive numbers separated by ":", one per client, e.g. "1:2:4:8"')
        for key in ("sigma", "budget", "step_time_s", "bandwidth_mbps", "latency_ms"):
            v = getattr(self, key)
            check(v >= 0 and math.isfinite(v), f"{p}.{key}", v, "a finite number >= 0")


@dataclass(frozen=True)
class StepsCfg:
    """Dynamic local steps J_t (``strategies/local_steps.py``); J_0 = ``client.local_steps``."""

    rule: str = "fixed"  # fixed | linear | exp | lr | adacomm | post_local
    final: int = 0  # linear / exp: J at the last round
    lr_power: float = 1.0  # lr: J_t = ceil(J_0 (lr_t/lr_0)^lr_power)
    switch_round: int = 0  # post_local: J = 1 before this round, J_0 from it on
    max: int = 0  # upper bound on J_t (0: none)

    def validate(self, p: str) -> None:
        check_choice(f"{p}.rule", self.rule, STEP_RULES)
        check(self.rule not in ("linear", "exp") or self.final >= 1, f"{p}.final", self.final,
              f"an integer >= 1 with {p}.rule={self.rule}")
        check(math.isfinite(self.lr_power), f"{p}.lr_power", self.lr_power, "a finite number")
        check(self.rule != "post_local" or self.switch_round >= 1, f"{p}.switch_round", self.switch_round,
              f"an integer >= 1 with {p}.rule=post_local")
        check(self.max >= 0, f"{p}.max", self.max, "0 (no bound) or an integer >= 1")


@dataclass(frozen=True)
class Config:
    dataset: DatasetCfg
    partition: PartitionCfg
    model: ModelCfg
    optimizer: OptimizerCfg
    schedule: ScheduleCfg
    client: ClientCfg
    strategy: StrategyCfg
    eval: EvalCfg
    sim: SimCfg
    system: SystemCfg
    steps: StepsCfg
    seed: int = 0
    num_clients: int = 10
    rounds: int = 5
    out_dir: str = ""
    resume: str = "false"
    checkpoint_every: int = 1
    stop_after: int = 0
    verbose: bool = False

    def validate(self, p: str = "") -> None:
        check(self.num_clients >= 1, "num_clients", self.num_clients, "an integer >= 1")
        check(self.rounds >= 1, "rounds", self.rounds, "an integer >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "an integer >= 1")
        check(self.stop_after >= 0, "stop_after", self.stop_after, "0 (never) or an integer >= 1")
        check(0 <= self.seed < 2**32, "seed", self.seed, "an integer with 0 <= seed < 2**32")
        check(bool(self.resume), "resume", self.resume, '"false", "true" or the path of a run directory')
        if self.partition.name == "label_split":
            check(self.num_clients <= 10 or self.dataset.name == "cifar100", "num_clients", self.num_clients,
                  "at most the number of classes (10) with partition=label_split")
        if self.system.profile == "ratios":
            n = len(parse_ratios(self.system.ratios))
            check(n == self.num_clients, "system.ratios", self.system.ratios,
                  f"exactly num_clients={self.num_clients} speeds (got {n})")
        dynamic = self.steps.rule != "fixed"
        check(not dynamic or self.client.local_steps >= 1, "client.local_steps", self.client.local_steps,
              f"J_0 >= 1 with steps.rule={self.steps.rule}")
        check(not dynamic or self.system.budget == 0, "system.budget", self.system.budget,
              f"0 with steps.rule={self.steps.rule} (fixed-time rounds set the steps themselves)")

    @property
    def steps_mode(self) -> bool:
        """Whether clients run a number of steps (J, a budget or a rule) rather than epochs."""
        return self.client.local_steps > 0 or self.system.budget > 0

    @property
    def resume_requested(self) -> bool:
        """Whether the run should continue from a checkpoint."""
        return self.resume.lower() != "false"


SECTIONS = {"dataset": DatasetCfg, "partition": PartitionCfg, "model": ModelCfg, "optimizer": OptimizerCfg,
            "schedule": ScheduleCfg, "client": ClientCfg, "eval": EvalCfg, "sim": SimCfg, "system": SystemCfg,
            "steps": StepsCfg}
