"""The synchronous mode: the FedAvg family (FedAvg, LocalSGD, SlowMo, step-weighted, FedNova, FedOpt).

Each round the Flower strategy (``strategies/fedavg.py`` and the modules built on it) samples the
clients and builds their messages (``configure_train``), every sampled client trains from the
global model, and the strategy's pure maths turns the replies into the next global model
(``aggregate_train``). Failure policy: a node that fails (dies, or its ClientApp raises) is logged,
counted and skipped; the round goes on with the others and fails only when none replied.

On the node (:func:`client_fit`): a fresh optimizer each round, or (``momentum_mode``) the node's
own optimizer state kept in its ``context.state`` (keep), or the server's average sent with the
model and returned with the reply's arrays under ``optimizer/`` (average).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from clients.fused import ClientJob, FusedResult, fused_plan, iter_fused
from clients.optim import load_optimizer_state, optimizer_state
from clients.train import round_first_epoch
from strategies.blocks import Block, BlockSum, reply_weight
from strategies.fedavg import array_numpy, to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan

OPT_KEY = "optimizer"  # the optimizer state's ArrayRecord: in context.state (keep), from the server (average)
OPT_PREFIX = "optimizer/"  # ... and back to the server inside the reply's ArrayRecord (average)
STACKED = "arrays/stacked"  # every client of a node its own model, as one (K, ...) array per name (gossip)


def tree_torch(tree: dict) -> dict:
    """Nested ``{name: ndarray | dict}`` -> torch tensors (checkpoints load with ``weights_only=True``)."""
    return {k: tree_torch(v) if isinstance(v, dict) else torch.from_numpy(np.array(v)) for k, v in tree.items()}


def tree_numpy(tree: dict) -> dict:
    """Inverse of :func:`tree_torch`."""
    return {k: tree_numpy(v) if isinstance(v, dict) else v.numpy() for k, v in tree.items()}


def pack(msgs: list, pids: list[int], own_arrays: bool = False,
         own_config: tuple[str, ...] = ()) -> list[tuple[Message, list[int]]]:
    """Virtual clients' messages packed into one transport message per node: ``[(message, its pids)]``, nodes in
    the order their first client comes in ``pids``, each node's clients in ``pids`` order.

    A node holds several virtual clients (``sim.clients_per_worker``). Its transport message carries
    the records of its clients' messages once (they are equal: model, config, server state), with
    the list of its clients (``pids``); with ``own_arrays`` each client's ``arrays`` differ (asynchronous
    SGD: every client trains from its own model) and travel as ``arrays/<pid>``; each config key in
    ``own_config`` differs per client too and travels as the list ``<key>-each``, in ``pids`` order.
    The node replies with ``arrays/<pid>`` and ``metrics/<pid>`` per client (or block sums).
    """
    by_node: dict[int, list[int]] = {}
    msg_of = dict(zip(pids, msgs))
    for pid, m in zip(pids, msgs):
        by_node.setdefault(m.metadata.dst_node_id, []).append(pid)
    transport = []
    for node, node_pids in by_node.items():
        first = msg_of[node_pids[0]].content
        content = RecordDict({k: v for k, v in first.items() if not (own_arrays and k == "arrays")})
        if own_arrays:
            for pid in node_pids:
                content[f"arrays/{pid}"] = msg_of[pid].content["arrays"]
        each = {f"{key}-each": [msg_of[pid].content["config"][key] for pid in node_pids] for key in own_config}
        content["config"] = ConfigRecord({**dict(content["config"]), "pids": node_pids, **each})
        transport.append((Message(content, dst_node_id=node, message_type="train"), node_pids))
    return transport


def send_packed(msgs: list, pids: list[int], grid: Any,
                count: str | None = "both") -> tuple[list, list[int], list[Block]]:
    """Send virtual clients' messages packed, one per node (:func:`pack`), and wait; return one reply per virtual
    client, its name, and the nodes' block sums (``strategies/blocks.py``) in node order when the nodes sent sums.

    Each client's part of its node's reply becomes the reply that client would have sent (with block sums:
    its metrics only, the sums go to the strategy's ``aggregate_blocks``). Counted as the unpacked exchange
    would be (``count``: "both", "down" or None, one logical message per virtual client and direction), plus
    the transport messages that crossed Flower.
    """
    packed = pack(msgs, pids)
    by_node = {m.metadata.dst_node_id: node_pids for m, node_pids in packed}
    transport = [m for m, _ in packed]
    replies = grid.send_and_receive(transport, count=None)
    rep_of = {grid.replier(r): r for r in replies}  # node id -> its reply
    out = {pid: rep_of.get(node) for node, node_pids in by_node.items() for pid in node_pids}
    blocks = [_block(rep_of[node]) for node in by_node
              if node in rep_of and not rep_of[node].has_error() and "block" in rep_of[node].content]
    virtual, names = [], []
    for pid, m in zip(pids, msgs):
        rep, nbytes = out[pid], None
        if rep is None or rep.has_error():
            reason = rep.error.reason if rep is not None else "no reply"
            v = Message(Error(code=0, reason=f"node of client {pid}: {reason}"), reply_to=m)
        elif "block" in rep.content:  # its model is in the node's sums; counted as the model it would have sent
            v = Message(RecordDict({"metrics": rep.content[f"metrics/{pid}"]}), reply_to=m)
            nbytes = int(rep.content["block"]["client-bytes"])
        else:
            v = Message(RecordDict({"arrays": rep.content[f"arrays/{pid}"],
                                    "metrics": rep.content[f"metrics/{pid}"]}), reply_to=m)
        if count in ("both", "down"):
            grid.count_virtual("down", pid, m)
        if count == "both":
            grid.count_virtual("up", pid, v, nbytes)
        virtual.append(v)
        names.append(pid)
    return virtual, names, blocks


def _block(rep: Message) -> Block:
    c = rep.content
    return Block(to_numpy(c["block/sum"]), float(c["block"]["weight"]), int(c["block"]["count"]),
                 to_numpy(c["block/opt-sum"]) if "block/opt-sum" in c else None,
                 {k: str(v) for k, v in c["block/dtypes"].items()})


class SyncMode:
    """Rounds of a Flower strategy (``configure_train`` -> send/receive -> ``aggregate_train``)."""

    name: ClassVar[str] = "sync"
    columns: ClassVar[tuple[str, ...]] = ()
    tolerates_failures: ClassVar[bool] = True
    uses_nodes: ClassVar[bool] = True
    overlaps_end_of_round: ClassVar[bool] = True  # state() copies the strategy's arrays

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        self.run, self.arrays = run, arrays
        self.strategy.load_state(tree_numpy(state.get("strategy", {})))
        self.strategy.partition_nodes = run.node_of  # seeded sampling over partition ids, not random node ids

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        rnd, s = plan.rnd, self.strategy
        conf = ConfigRecord({k: v for k, v in plan.train_config(self.name).items() if k != "server-round"})
        rule = s.block_rule() if self.run.packing > 1 and all(
            np.issubdtype(v.dtype, np.floating) for v in self.arrays.values()) else None
        if rule:  # nodes send the weighted sums of their clients' models (strategies/blocks.py)
            conf.update(rule)
        msgs = list(s.configure_train(rnd, to_record(self.arrays), conf, grid))
        if self.run.packing > 1:
            replies, names, blocks = send_packed(msgs, list(s.sampled_pids), grid)
            ok = self.run.keep_ok(rnd, replies, grid, names)
        else:
            replies = grid.send_and_receive(msgs)
            ok = self.run.keep_ok(rnd, replies, grid)
        if rule:
            new, _ = s.aggregate_blocks(rnd, ok, blocks) if blocks else (None, None)
        else:
            new, _ = s.aggregate_train(rnd, replies)
        if new is None:
            raise RuntimeError(f"round {rnd}: no client returned a result ({len(replies)} errors)")
        self.arrays = to_numpy(new)
        bytes_by_node = dict(grid.round_bytes)  # the training exchange only: federated evaluation is not timed
        if self.run.cfg.eval.fraction_clients > 0:
            msgs = list(s.configure_evaluate(rnd, to_record(self.arrays), ConfigRecord(), grid))
            if self.run.packing > 1:  # a node holds several clients: say which one evaluates
                for pid, m in zip(s.sampled_pids, msgs):
                    m.content["config"]["pid"] = pid
            fed = s.aggregate_evaluate(rnd, grid.send_and_receive(msgs))
            self.run.log.info("round %d federated evaluation: %s", rnd, dict(fed or {}))
        return RoundOut(self.arrays, [dict(r.content["metrics"]) for r in ok], len(ok), bytes_by_node=bytes_by_node)

    def state(self) -> dict:
        return {"strategy": tree_torch(self.strategy.state())}

    def finish(self) -> dict:
        return {}


def client_fit(msg: Any, node: Any) -> Any:
    """Train the received model on this node's shard; reply with it (and the optimizer state, average)."""
    conf = msg.content["config"]
    mode = str(conf.get("momentum-mode", "reset"))
    opt = node.optimizer(float(conf["lr"]))
    carried = node.state.get(OPT_KEY) if mode == "keep" else msg.content.get(OPT_KEY) if mode == "average" else None
    if carried is not None:
        load_optimizer_state(opt, {k: v.numpy() for k, v in carried.items()})
    res = node.fit(opt, conf)
    state = {k: Array(v.contiguous().numpy()) for k, v in node.model.state_dict().items()}
    if mode != "reset":
        opt_state = {k: Array(v) for k, v in optimizer_state(opt).items()}
        if mode == "keep":
            node.state[OPT_KEY] = ArrayRecord(opt_state)
        else:  # Flower's strategies expect one ArrayRecord per reply: the state travels in it, prefixed
            state.update({OPT_PREFIX + k: v for k, v in opt_state.items()})
    return node.reply(msg, ArrayRecord(state), res)


def client_fit_block(msg: Any, nodes: list) -> Any:
    """Train several virtual clients of one node from the received model, fused into one computation
    when the model allows (``clients/fused.py``; else one after the other through ``node.fit``).

    Each client keeps its own data order, step count, seed stream and optimizer state (keep: in the
    node's ``context.state`` under its partition id); the reply holds ``arrays/<pid>`` and
    ``metrics/<pid>`` for each, as :func:`client_fit` would have replied for it alone, or, when the
    message asks for block sums (``agg-weight``), the clients' metrics and the weighted sum of their
    models (``strategies/blocks.py``). A message whose clients' models come stacked (``STACKED``: row i is
    client ``pids[i]``'s, gossip) gets the trained models back so, beside ``metrics/<pid>``.
    """
    conf = msg.content["config"]
    mode, lr = str(conf.get("momentum-mode", "reset")), float(conf["lr"])
    rnd, epochs = int(conf["server-round"]), int(conf["local-epochs"])
    shared = msg.content["arrays"].to_torch_state_dict() if "arrays" in msg.content else None
    stacked = STACKED in msg.content  # row i of each array: client pids[i]'s model, and so in the reply
    rows = {k: torch.from_numpy(array_numpy(a)) for k, a in msg.content[STACKED].items()} if stacked else {}
    row_of = {node.pid: i for i, node in enumerate(nodes)}  # nodes come in pids order

    def start(pid: int) -> dict:  # the model client pid trains from: the round's, or its own (gossip)
        if shared is not None:
            return shared
        if stacked:
            return {k: v[row_of[pid]] for k, v in rows.items()}
        return msg.content[f"arrays/{pid}"].to_torch_state_dict()

    state = nodes[0].state

    def carried(pid: int):
        rec = state.get(f"{OPT_KEY}/{pid}") if mode == "keep" else msg.content.get(OPT_KEY) if mode == "average" else None
        return None if rec is None else {k: v.numpy() for k, v in rec.items()}

    def one_by_one():  # BatchNorm or dropout: one client after the other, the same maths as client_fit
        for i, node in enumerate(nodes):
            node.model.load_state_dict(start(node.pid))
            opt = node.optimizer(lr)
            if (c := carried(node.pid)) is not None:
                load_optimizer_state(opt, c)
            res = node.fit(opt, conf)
            yield i, FusedResult(dict(node.model.state_dict()), res, optimizer_state(opt) if mode != "reset" else None)
            node.drop_model()

    try:
        fused_plan(nodes[0].model)
    except ValueError:
        results = one_by_one()
    else:
        jobs = []
        for node in nodes:
            steps = int(conf["local-steps"][node.pid])
            jobs.append(ClientJob(start(node.pid), node.local.x, node.local.y, node.pid, node.cfg.seed,
                                  round_first_epoch(rnd, epochs, steps), steps, epochs, carried(node.pid)))
        n0 = nodes[0]
        results = iter_fused(n0.model, jobs, n0.local.norm, n0.cfg.optimizer, batch_size=n0.cfg.client.batch_size,
                             lr=lr, augment=n0.local.augment, return_opt_state=mode != "reset")
    if "agg-weight" in conf:  # the strategy's weighted average, summed here (strategies/blocks.py)
        rule, momentum = str(conf["agg-weight"]), float(conf.get("agg-momentum", 0.0))
        nesterov, models, opts = bool(conf.get("agg-nesterov", False)), BlockSum(), BlockSum()
    content, client_bytes, out = {}, 0, {}
    for i, r in results:  # each result packed or summed as it comes, its tensors dropped before the next group
        node = nodes[i]
        metrics = content[f"metrics/{node.pid}"] = node.metrics(r.result)
        if mode == "keep":
            state[f"{OPT_KEY}/{node.pid}"] = ArrayRecord({k: Array(v) for k, v in r.opt_state.items()})
        if stacked:
            for k, v in r.state.items():
                v = v.detach().numpy()
                if k not in out:
                    out[k] = np.empty((len(nodes), *v.shape), v.dtype)
                out[k][i] = v
            continue
        if "agg-weight" not in conf:
            content[f"arrays/{node.pid}"] = ArrayRecord(_reply_arrays(r, mode))
            continue
        models.add({k: v.detach().numpy() for k, v in r.state.items()}, reply_weight(rule, metrics, momentum, nesterov))
        if mode == "average":
            opts.add(r.opt_state, 1.0)
        client_bytes = client_bytes or ArrayRecord(_reply_arrays(r, mode)).count_bytes()  # its own reply's size
    if "agg-weight" in conf:
        content.update(_block_content(models, opts if mode == "average" else None, client_bytes))
    if stacked:
        content[STACKED] = ArrayRecord({k: Array(v) for k, v in out.items()})
    return Message(RecordDict(content), reply_to=msg)


def _reply_arrays(r: FusedResult, mode: str) -> dict[str, Array]:
    """What a client's own reply carries: its model, and with ``momentum_mode=average`` its optimizer state."""
    arrays = {k: Array(v.detach().contiguous().numpy()) for k, v in r.state.items()}
    if mode == "average":
        arrays.update({OPT_PREFIX + k: Array(v) for k, v in r.opt_state.items()})
    return arrays


def _block_content(models: BlockSum, opts: BlockSum | None, client_bytes: int) -> dict:
    """A block's records: the weighted sums of its clients' models (and the plain sums of their optimizer
    states, ``momentum_mode=average``) instead of the models; ``block`` holds C = sum c_i, the client count
    and the bytes one client's reply would have had (the logical count: every client's arrays have the same
    keys, shapes and dtypes); ``block/dtypes`` the dtypes to cast the averages back to."""
    content = {"block/sum": ArrayRecord({k: Array(v) for k, v in models.sums.items()})}
    dtypes = dict(models.dtypes)
    if opts is not None:
        content["block/opt-sum"] = ArrayRecord({k: Array(v) for k, v in opts.sums.items()})
        dtypes.update({OPT_PREFIX + k: v for k, v in opts.dtypes.items()})
    content["block"] = MetricRecord({"weight": models.weight, "count": models.count, "client-bytes": client_bytes})
    content["block/dtypes"] = ConfigRecord(dtypes)
    return content
