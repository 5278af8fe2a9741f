"""Retention: removing finished conversations older than a cutoff, then their empty folders.

History that grows without bound is a bug (Mercure #74): `offloadd gc` and
`serve --retention` keep it bounded. A running conversation is never removed.
"""

from __future__ import annotations

import os
import re
import time
from calendar import timegm
from pathlib import Path

import orjson

from offloadd.storage.layout import SCOPES
from offloadd.storage.store import TERMINAL

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    return float(m[1]) * UNITS[m[2] or "s"]


def collect(
    data: Path, older_than: float, dry_run: bool = False, now: float | None = None
) -> list[Path]:
    """Remove (or with `dry_run` only list) finished conversations created before the cutoff;
    answers the `.json` paths concerned."""
    cutoff = (now or time.time()) - older_than
    removed: list[Path] = []
    for scope in SCOPES:
        root = data / scope
        if root.is_dir():
            _walk(root, [], cutoff, dry_run, removed)
    return removed


def _walk(folder: Path, parts: list[int], cutoff: float, dry_run: bool, out: list[Path]) -> None:
    if len(parts) == 6:
        _collect_second(folder, dry_run, out)
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or not entry.name.isdigit():
            continue
        here = [*parts, int(entry.name)]
        if _earliest(here) >= cutoff:
            break  # sorted: every later folder at this level is newer still
        _walk(Path(entry.path), here, cutoff, dry_run, out)
        if not dry_run and _latest(here) < cutoff:
            _remove_if_empty(Path(entry.path))


def _earliest(parts: list[int]) -> float:
    full = parts + [1 if i in (1, 2) else 0 for i in range(len(parts), 6)]
    return timegm((full[0], full[1], full[2], full[3], full[4], full[5]))


def _latest(parts: list[int]) -> float:
    """The last second a folder at this level can hold."""
    if len(parts) == 1:
        return _earliest([parts[0] + 1]) - 1
    if len(parts) == 2:
        year, month = (parts[0] + 1, 1) if parts[1] == 12 else (parts[0], parts[1] + 1)
        return _earliest([year, month]) - 1
    return _earliest(parts) + (86400, 3600, 60, 1)[len(parts) - 3] - 1


def _collect_second(folder: Path, dry_run: bool, out: list[Path]) -> None:
    for entry in os.scandir(folder):
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            status = orjson.loads(path.read_bytes()).get("status")
        except (OSError, orjson.JSONDecodeError):
            continue
        if status not in TERMINAL:
            continue  # running: never removed
        out.append(path)
        if not dry_run:
            path.with_suffix(".txt").unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
