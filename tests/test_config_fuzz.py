"""Property test: any value of any type at any config key either validates or is refused with one line
that names the key; nothing else escapes (validation only: nothing trains)."""

from __future__ import annotations

import copy
import functools

import hypothesis.strategies as st
from conftest import compose
from hypothesis import HealthCheck, given, settings

import strategies
from fedlab_app import config

NAMES = sorted(strategies.REGISTRY)


@functools.cache
def base(name: str) -> dict:
    extra = ("client.local_steps=2",) if strategies.REGISTRY[name].needs_steps or name in ("dpsgd", "sgp", "gosgd") else ()
    return compose(f"strategy={name}", *extra)


def keys_of(name: str) -> list[str]:
    return sorted(k for k in config.flatten(base(name)) if k != "strategy.name")


VALUES = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.booleans(), st.text(max_size=12), st.sampled_from(["", "auto", "1:2", "true", "0-1", "a,b;c"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.data(), value=VALUES)
def test_any_value_at_any_key_runs_or_is_refused_naming_the_key(name, data, value):
    key = data.draw(st.sampled_from(keys_of(name)))
    nested = copy.deepcopy(base(name))
    node = nested
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    try:
        config.parse(config.flatten(nested))
    except config.ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert key in msg or key.split(".")[-1] in msg, f"{key}={value!r}: {msg}"


def test_unknown_section_or_key_is_refused_with_a_suggestion():
    nested = compose()
    nested["clientt"] = {"lr": 0.1}
    try:
        config.parse(config.flatten(nested))
    except config.ConfigError as exc:
        assert "unknown config key 'clientt'" in str(exc) and "did you mean 'client'" in str(exc)
    else:
        raise AssertionError("an unknown section was accepted")
    nested = compose()
    nested["client"]["lrr"] = 0.1
    try:
        config.parse(config.flatten(nested))
    except config.ConfigError as exc:
        assert "'client.lrr'" in str(exc) and "did you mean 'lr'" in str(exc)
    else:
        raise AssertionError("an unknown key was accepted")


def test_seed_and_floats_are_bounded():
    for key, value in (("seed", 10**30), ("seed", -1), ("schedule.warmup", float("inf")),
                       ("optimizer.eps", float("inf")), ("client.lr", float("nan"))):
        nested = compose()
        section, _, leaf = key.rpartition(".")
        (nested[section] if section else nested)[leaf] = value
        try:
            config.parse(config.flatten(nested))
        except config.ConfigError as exc:
            assert str(exc).startswith(f"{key}=")
        else:
            raise AssertionError(f"{key}={value!r} was accepted")
