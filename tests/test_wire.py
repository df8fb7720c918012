"""Arrays cross Flower flat (fedlab_app/wire.py): every Array comes back byte for byte, a LeNet-5 message shrinks
to a few objects, broken layouts are refused, the server's counting grid sends flat but counts and keeps the
messages as built, and a ClientApp handler answers a flat message in kind."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose

from fedlab_app import config, wire
from fedlab_app.comm import CountingGrid, Ledger
from fedlab_app.driver import initial_arrays
from strategies.fedavg import to_record


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # a Message outside a run needs an identity
        monkeypatch.setattr(TaskIdentity, attr, 1)


def same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a.keys()) == list(b.keys()) and all(
        (x.dtype, tuple(x.shape), x.stype, x.data) == (y.dtype, tuple(y.shape), y.stype, y.data)
        for x, y in zip(a.values(), b.values()))


ARRAYS = st.lists(st.tuples(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
                            st.lists(st.integers(0, 4), max_size=3)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(ARRAYS, st.integers(0, 2**31))
def test_every_array_comes_back_byte_for_byte(specs, seed):
    rng = np.random.default_rng(seed)
    record = ArrayRecord({f"layer{i}.w": Array(np.asarray(rng.standard_normal(shape) * 100).astype(dtype))
                          for i, (dtype, shape) in enumerate(specs)})
    content = RecordDict({"arrays": record, "config": ConfigRecord({"lr": 0.1, "mode": "sgd"}),
                          "metrics": MetricRecord({"n": 3})})
    enc = wire.encode(content)
    if len(record) < 2:  # nothing to flatten: the same content, untouched
        assert enc is content
        return
    assert len(enc["arrays"]) == 1 and "arrays.flat-layout" in enc.config_records
    dec = wire.decode(enc)
    assert list(dec.keys()) == ["arrays", "config", "metrics"]
    assert same_arrays(dec["arrays"], record) and dec["arrays"].object_id == record.object_id
    assert dec["config"] is content["config"] and dec["metrics"] is content["metrics"]


def test_a_lenet_message_shrinks_to_a_few_objects():
    cfg = config.parse(config.flatten(compose()))
    content = RecordDict({"arrays": to_record(initial_arrays(cfg)), "config": ConfigRecord({"lr": 0.1})})
    before, after = len(get_all_nested_objects(content)), len(get_all_nested_objects(wire.encode(content)))
    assert len(content["arrays"]) == 10 and before >= 22 and after <= 6, (before, after)


def test_a_broken_layout_is_refused():
    content = wire.encode(RecordDict({"arrays": ArrayRecord([np.zeros(3, np.float32), np.ones(2, np.float32)])}))
    layout = content["arrays.flat-layout"]
    layout["lengths"] = [int(x) + 1 for x in layout["lengths"]]
    with pytest.raises(ValueError, match="layout covers"):
        wire.decode(content)


class EchoGrid:
    """Records the content each message had while it was sent; replies with that content (as a node would)."""

    def __init__(self):
        self.seen = []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            self.seen.append(m.content)
            replies.append(Message(m.content, reply_to=m))
        return replies


@pytest.mark.parametrize("flat", [True, False])
def test_counting_grid_sends_flat_and_counts_as_built(flat):
    model = to_record({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float32)})
    msgs = [Message(RecordDict({"arrays": model}), dst_node_id=n, message_type="train") for n in (1, 2)]
    grid, ledger = EchoGrid(), Ledger()
    replies = CountingGrid(grid, ledger, flat=flat).send_and_receive(msgs)
    assert all(("arrays.flat-layout" in c.config_records) == flat for c in grid.seen)  # on the wire
    assert all(m.content["arrays"] is model for m in msgs)  # the caller's messages as built
    assert all(same_arrays(r.content["arrays"], model) and list(r.content.keys()) == ["arrays"] for r in replies)
    logical = 2 * model.count_bytes()
    assert ledger.bytes["down"] == ledger.bytes["up"] == logical  # the same either way
    assert ledger.transport == {"messages": 4, "bytes": 2 * logical}


def test_a_client_handler_answers_in_kind():
    model = to_record({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float32)})
    seen = []

    @wire.flat_wire
    def handler(msg, context):
        seen.append(list(msg.content.keys()))
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    flat_in = Message(wire.encode(RecordDict({"arrays": model})), dst_node_id=1, message_type="train")
    plain_in = Message(RecordDict({"arrays": model}), dst_node_id=1, message_type="train")
    flat_out, plain_out = handler(flat_in, None), handler(plain_in, None)
    assert seen == [["arrays"], ["arrays"]]  # the handler never sees the wire format
    assert wire.is_encoded(flat_out) and not wire.is_encoded(plain_out)
    assert same_arrays(wire.decode(flat_out.content)["arrays"], model)


def test_flat_where_messages_cross_a_superlink_unless_the_environment_says(monkeypatch):
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    class HttpGrid:  # stands for a deployed run's grid: any grid but Flower's in-memory one
        pass

    simulated = InMemoryGrid.__new__(InMemoryGrid)
    monkeypatch.delenv("FEDLAB_FLAT_WIRE", raising=False)
    assert wire.flat_for(HttpGrid()) and not wire.flat_for(simulated)
    monkeypatch.setenv("FEDLAB_FLAT_WIRE", "1")
    assert wire.flat_for(simulated) and wire.flat_for(HttpGrid())
    monkeypatch.setenv("FEDLAB_FLAT_WIRE", "0")
    assert not wire.flat_for(simulated) and not wire.flat_for(HttpGrid())
