"""metrics.csv rows on disk: formatting, the header, and a scan that trusts only complete, numeric rows.

A row counts once its line end is written (a crash mid-row leaves a row without one, which is never
trusted); each row is checked for its column count and for numbers. Used by ``fedlab_app/results.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        return first.decode().strip().split(",")
    except UnicodeDecodeError:
        raise ValueError(f"{path}, line 1: the header is not text") from None


def ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def last_round(path: Path) -> int | None:
    """The round of the last row of a metrics file that ends with a line end (None if unknown)."""
    lines = path.read_bytes().rstrip(b"\r\n").rsplit(b"\n", 1)
    if len(lines) < 2:
        return None
    try:
        return int(float(lines[-1].split(b",", 1)[0]))
    except ValueError:
        return None


def is_number(cell: Any) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return cell == ""
    return True


def scan_metrics(path: Path) -> tuple[list[str], list[tuple[int, list[str] | None, str]], tuple | None]:
    """(header, [(line number, cells, error or "")], (line number, cells or None) of a half-written last
    line, or None)."""
    lines = path.read_bytes().split(b"\n")
    partial = None
    if lines[-1]:  # no line end after the last line: cut by a crash; its round is known if a comma follows
        text = lines[-1].decode(errors="replace")
        partial = (len(lines), text.split(",") if "," in text else None)
    lines = lines[:-1]
    if not lines:
        raise ValueError(f"{path}, line 1: no header")
    header = read_header(path)
    rows = []
    for i, raw in enumerate(lines[1:], start=2):
        try:
            cells = raw.decode().rstrip("\r").split(",")
        except UnicodeDecodeError:
            rows.append((i, None, "not text (garbage bytes)"))
            continue
        bad = next((f"{k}={c!r} is not a number" for k, c in zip(header, cells) if not is_number(c)), "")
        if len(cells) != len(header):
            bad = f"{len(cells)} cells for {len(header)} columns"
        rows.append((i, cells, bad))
    return header, rows, partial


def round_of(cells: list[str] | None, header: list[str]) -> int | None:
    try:
        return int(float(cells[header.index("round")]))
    except (TypeError, ValueError, IndexError):
        return None


def fmt_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return v
