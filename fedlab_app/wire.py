"""How a message's arrays cross Flower: each ArrayRecord of several arrays travels as one flat Array.

Flower 1.41 moves a message as a tree of objects (the message, its RecordDict, each record, each Array and its
chunks), and its SuperLink stores, looks up and serves every object with its own request and SQL statements
(py-spy: most of a deployed SuperLink's CPU). LeNet-5's ten tensors make about 25 objects per message, each
pulled and pushed one by one by the ServerApp, the SuperLink and every SuperNode and ClientApp. Here every
ArrayRecord of two or more arrays is sent as an ArrayRecord of one Array holding their bytes one after the
other (``FLAT_KEY``), and a ConfigRecord ``<name>.flat-layout`` naming each array's key, dtype, shape, stype
and length: about 6 objects per message. Decoding gives back every Array byte for byte (the same ``dtype``,
``shape``, ``stype`` and ``data``), so results do not change; identical models still share one object.

The ServerApp's :class:`fedlab_app.comm.CountingGrid` sends every message flat (:func:`flat_while_sent`) and
decodes the replies (:func:`decoded`); the ClientApp's handlers take :func:`flat_wire`: they decode what they
receive and answer in kind. What a run counts (``messages``, ``bytes``, ``transport_*``) is counted on the
messages as built, before and after the wire.

Where: a deployed run sends flat (9.77 -> 6.01 s a round, ``results/bench/deploy_fast.json``); a simulation does
not (:func:`flat_for`): Flower's simulation hands messages over in memory and through Ray, with no object store
to spare requests to, and the copies into and out of one buffer made a D-PSGD round of 256 nodes (256 records
a message) 4.86 s against 4.03 s, with the default experiment 3.15 against 3.37 s (``bench/bench_env_ab.py
--var FEDLAB_FLAT_WIRE``, ``results/bench/flat_wire_sim*.json``). ``FEDLAB_FLAT_WIRE=1`` or ``0`` in the
ServerApp's environment decides for any run (``bench/bench_deploy.py --per-array`` sends arrays as Flower does).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

FLAT_KEY = "flat"  # the one Array of an encoded ArrayRecord
LAYOUT_SUFFIX = ".flat-layout"  # <record name> + this: the ConfigRecord that says how to split it
FLAT_STYPE = "fedlab.flat"
ENABLED = os.environ.get("FEDLAB_FLAT_WIRE", "1") != "0"  # the default of flat_while_sent


def flat_for(grid: Any) -> bool:
    """Whether a run over Flower's ``grid`` sends arrays flat: as ``FEDLAB_FLAT_WIRE`` (1 or 0) says when it is
    set, else where messages cross a SuperLink (a deployed run) and not in a simulation (Flower's
    ``InMemoryGrid``)."""
    env = os.environ.get("FEDLAB_FLAT_WIRE")
    if env is not None:
        return env != "0"
    return type(grid).__name__ != "InMemoryGrid"


def encode(content: RecordDict) -> RecordDict:
    """``content`` with every ArrayRecord of >= 2 arrays flattened (others, and config/metric records, as they
    are); returns ``content`` itself when there is nothing to flatten."""
    todo = [name for name, rec in content.array_records.items() if len(rec) >= 2]
    if not todo:
        return content
    out = RecordDict()
    for name, rec in content.items():
        if name not in todo:
            out[name] = rec
            continue
        arrays = list(rec.items())
        layout = {"keys": [k for k, _ in arrays], "dtypes": [a.dtype for _, a in arrays],
                  "stypes": [a.stype for _, a in arrays], "lengths": [len(a.data) for _, a in arrays],
                  "shapes": json.dumps([list(a.shape) for _, a in arrays])}
        data = b"".join(a.data for _, a in arrays)
        out[name] = ArrayRecord({FLAT_KEY: Array(dtype="uint8", shape=(len(data),), stype=FLAT_STYPE, data=data)})
        out[name + LAYOUT_SUFFIX] = ConfigRecord(layout)
    return out


def decode(content: RecordDict) -> RecordDict:
    """The inverse of :func:`encode`; content that was not encoded comes back as it is."""
    names = [k[: -len(LAYOUT_SUFFIX)] for k in content.config_records if k.endswith(LAYOUT_SUFFIX)]
    if not names:
        return content
    out = RecordDict()
    for name, rec in content.items():
        if name.endswith(LAYOUT_SUFFIX) and name[: -len(LAYOUT_SUFFIX)] in names:
            continue
        if name not in names:
            out[name] = rec
            continue
        flat, layout = rec[FLAT_KEY], content[name + LAYOUT_SUFFIX]
        if flat.stype != FLAT_STYPE or len(rec) != 1:
            raise ValueError(f"record {name!r} has a flat layout but is not a flat array record")
        data, start, arrays = memoryview(flat.data), 0, {}
        shapes = json.loads(str(layout["shapes"]))
        for key, dtype, stype, length, shape in zip(layout["keys"], layout["dtypes"], layout["stypes"],
                                                    layout["lengths"], shapes, strict=True):
            arrays[str(key)] = Array(dtype=str(dtype), shape=tuple(int(s) for s in shape), stype=str(stype),
                                     data=bytes(data[start:start + int(length)]))
            start += int(length)
        if start != len(data):
            raise ValueError(f"record {name!r}: its layout covers {start} of {len(data)} bytes")
        out[name] = ArrayRecord(arrays)
    return out


def is_encoded(msg: Message) -> bool:
    return msg.has_content() and any(k.endswith(LAYOUT_SUFFIX) for k in msg.content.config_records)


@contextlib.contextmanager
def flat_while_sent(messages: list[Message], enabled: bool = ENABLED) -> Iterator[list[Message]]:
    """``messages`` with their content encoded while the ``with`` block sends them, and given back their own
    content afterwards (what the caller holds, counts and reads stays as it built it)."""
    originals = [m.content if enabled and m.has_content() else None for m in messages]
    try:
        for m, content in zip(messages, originals):
            if content is not None and (new := encode(content)) is not content:
                m.content = new
        yield messages
    finally:
        for m, content in zip(messages, originals):
            if content is not None:
                m.content = content


def decoded(replies: Iterable[Message]) -> list[Message]:
    """``replies`` with flat content decoded (in place)."""
    out = list(replies)
    for r in out:
        if is_encoded(r):
            r.content = decode(r.content)
    return out


def flat_wire(handler: Callable[[Message, Any], Message]) -> Callable[[Message, Any], Message]:
    """A ClientApp handler that reads flat messages and answers a flat message with a flat reply."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Any) -> Message:
        flat = is_encoded(msg)
        if flat:
            msg.content = decode(msg.content)
        reply = handler(msg, context)
        if flat and reply.has_content():
            new = encode(reply.content)
            if new is not reply.content:
                reply.content = new
        return reply

    return wrapped
