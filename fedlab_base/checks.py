"""Validation helpers shared by every layer: one error type, one message shape.

Every refused value reads ``<key>=<value> is invalid; allowed: <what is allowed>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``"<key>=<value> is invalid; allowed: <allowed>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid; allowed: {allowed}")


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    check(value in choices, key, value, "one of " + ", ".join(choices))


def parse_ratios(text: str) -> list[float]:
    """``"1:2:4:8"`` (or commas) -> ``[1.0, 2.0, 4.0, 8.0]``; raises ValueError on a bad entry."""
    parts = [p for p in text.replace(",", ":").replace(" ", "").split(":") if p]
    values = [float(p) for p in parts]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"speed ratios must be positive numbers separated by ':', got {text!r}")
    return values
