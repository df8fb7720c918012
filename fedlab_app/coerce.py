"""Type coercion: raw config values (Hydra, run_config, YAML) -> the schema's frozen dataclasses.

Hydra and Flower hand over loosely typed scalars (``resume=true`` is a bool, ``milestones=5`` an
int, ``lr=1`` an int); :func:`build` normalizes them to the field's annotation, refuses anything
else naming the key, refuses non-finite floats (no float key admits inf or NaN), refuses unknown
keys with the nearest known one, then calls the dataclass's ``validate``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from fedlab_base.checks import ConfigError, check


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotation ``typ`` (int accepted for float; bool/int normalized for str)."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is str and isinstance(value, bool):  # Hydra parses resume=true as a bool
        return str(value).lower()
    if typ is str and isinstance(value, (int, float)):  # Hydra parses schedule.milestones=5 as an int
        return str(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    check(ok, key, value, f"a value of type {typ.__name__}")
    if typ is float:
        check(math.isfinite(value), key, value, "a finite number")
    return value


def unknown_key_error(key: str, known: Iterable[str], where: str) -> ConfigError:
    """The error for an unknown key, suggesting the nearest known one (difflib)."""
    known = sorted(known)
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint} (known keys under {where}: {', '.join(known)})")


def build(cls: type, raw: Mapping[str, Any], prefix: str, strict: bool = True) -> Any:
    """Build the frozen dataclass ``cls`` from ``raw``, checking types and calling ``validate(prefix)``.

    Parameters
    ----------
    cls : type
        A dataclass whose fields have plain ``bool/int/float/str`` annotations.
    raw : Mapping
        Values by field name. Missing fields take the dataclass default.
    prefix : str
        Dotted key prefix used in error messages (``"client"`` -> ``client.lr=...``).
    strict : bool
        Refuse keys that are not fields (typos) when True; ignore them when False.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if strict:
        unknown = sorted(set(raw) - names)
        if unknown:
            key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
            raise unknown_key_error(key, names, prefix or "the top level")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            key = f"{prefix}.{f.name}" if prefix else f.name
            values[f.name] = _coerce(key, raw[f.name], hints[f.name])
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    return obj
