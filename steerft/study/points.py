"""The grid of points, how ranks share it, and the append-only log that makes a study resumable.

Each finished point is one JSON line, flushed and fsynced before the next point starts, so a
killed study loses at most the point in progress. A torn last line (the process died mid-write)
is dropped on reading and cut off before the next append; a broken line anywhere else is an
error, since it means the file was edited or corrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runconfig import ConfigError
from .config import StudyConfig, effective_methods
from .method_specs import METHOD_SPECS

POINTS_FILE = "points.jsonl"


@dataclass(frozen=True)
class Point:
    """One method at one (n, seed); n and seed are None for methods measured once (`shared`)."""

    method: str
    n: int | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return f"{self.method}|shared" if self.n is None else f"{self.method}|n={self.n}|seed={self.seed}"

    @property
    def group(self) -> tuple[int, int] | None:
        """The (n, seed) whose memoised work (vectors, a trained LoRA) its methods may share; see `work_units`."""
        return None if self.n is None else (self.n, self.seed)

    def label(self) -> str:
        return self.method if self.n is None else f"{self.method} n={self.n} seed={self.seed}"


def grid(config: StudyConfig) -> list[Point]:
    """Shared points first (the `none` baseline leads), then every (n, seed) group's methods."""
    methods = effective_methods(config)
    shared = [Point(m) for m in methods if METHOD_SPECS[m].shared]
    return shared + [Point(m, n, seed) for n in config.n for seed in config.seeds
                     for m in methods if not METHOD_SPECS[m].shared]


def shard(points: list[Point], rank: int, world: int) -> list[Point]:
    """The points of rank `rank`, in grid order: work units (`work_units`) dealt round-robin.

    Dealing units rather than whole (n, seed) groups keeps both ranks busy when a grid has few
    groups (three n values on two workers), while methods that share memoised work stay together."""
    mine = {p for i, unit in enumerate(work_units(points)) if i % world == rank for p in unit}
    return [p for p in points if p in mine]


def work_units(points: list[Point]) -> list[list[Point]]:
    """Points that must run on one rank: those of one (n, seed) whose methods share memoised work
    (`Method.memo`, transitively); every other point is a unit of its own. In grid order."""
    units: list[tuple[set[str], list[Point]]] = []
    for point in points:
        work = {point.method, *METHOD_SPECS[point.method].memo}
        linked = [u for u in units if point.group is not None and u[1][0].group == point.group and u[0] & work]
        merged = (work.union(*(u[0] for u in linked)), [p for u in linked for p in u[1]] + [point])
        units = [u for u in units if not any(u is v for v in linked)] + [merged]
    order = {p: i for i, p in enumerate(points)}
    return sorted((sorted(unit, key=order.__getitem__) for _, unit in units), key=lambda unit: order[unit[0]])


def log_path(out: Path, rank: int, world: int) -> Path:
    """One writer per file: a single process appends to points.jsonl, rank r of several to its own file."""
    return out / (POINTS_FILE if world == 1 else f"points.rank{rank}.jsonl")


def log_paths(out: Path) -> list[Path]:
    """Every point file of a study folder, the merged one first."""
    return [p for p in [out / POINTS_FILE, *sorted(out.glob("points.rank*.jsonl"))] if p.is_file()]


def read_points(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Finished points by key (the first record of a key wins)."""
    records: dict[str, dict[str, Any]] = {}
    for path in paths:
        for record in _records(path):
            records.setdefault(record["key"], record)
    return records


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if number == len(lines):  # unterminated last line: a write cut short
                break
            raise _corrupt(path, number, getattr(err, "msg", "not UTF-8")) from None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise _corrupt(path, number, "no point key")
        records.append(record)
    return records


def _corrupt(path: Path, number: int, problem: str) -> ConfigError:
    return ConfigError(f"{path}, line {number}: not a point record ({problem}); the file was edited or corrupted. "
                       "Remove that line to recompute the point.")


class PointLog:
    """Appends finished points to one file, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as handle:
            handle.write(json.dumps(record).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def _repair_tail(path: Path) -> None:
    """End the file on a complete line: keep a whole last record that lacks its newline, drop a torn one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    head, _, tail = data.rpartition(b"\n")
    try:
        json.loads(tail)
        fixed = data + b"\n"
    except json.JSONDecodeError:
        fixed = head + b"\n" if head else b""
    with open(path, "r+b") as handle:
        handle.seek(0)
        handle.write(fixed)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())
