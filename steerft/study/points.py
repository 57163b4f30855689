"""The grid of points, the work units ranks take, and the append-only log that makes a study resumable.

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


def work_units(points: list[Point]) -> list[list[Point]]:
    """Points that must run on one rank: those of one (n, seed) whose methods share memoised work
    (`Method.memo`, transitively); every other point is a unit of its own.

    In the order every rank walks them: units with a method that trains first, then the rest, grid
    order within each. Trained points cost several times an extracted one, so starting with them is
    the longest-first rule that lets ranks taking units as they come free finish close together."""
    units: list[tuple[set[str], list[Point]]] = []
    for point in points:
        work = {point.method, *METHOD_SPECS[point.method].memo}
        linked = [u for u in units if point.group is not None and u[1][0].group == point.group and u[0] & work]
        merged = (work.union(*(u[0] for u in linked)), [p for u in linked for p in u[1]] + [point])
        units = [u for u in units if not any(u is v for v in linked)] + [merged]
    order = {p: i for i, p in enumerate(points)}
    in_grid_order = (sorted(unit, key=order.__getitem__) for _, unit in units)
    return sorted(in_grid_order, key=lambda unit: (not _trains(unit), order[unit[0]]))


def _trains(unit: list[Point]) -> bool:
    return any(METHOD_SPECS[p.method].trains for p in unit)


def unit_name(unit: list[Point]) -> str:
    """A file name for a work unit, the same in every rank: its (n, seed) and methods."""
    where = "shared" if unit[0].n is None else f"n{unit[0].n}.seed{unit[0].seed}"
    return f"{where}.{','.join(p.method for p in unit)}"


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


def finished_points(out: Path) -> dict[str, dict[str, Any]]:
    """Every finished point of a study folder, read while other ranks may be writing it.

    Rank 0 merges the rank files into points.jsonl and then removes them while other ranks may
    still be reading; a file gone between listing and reading means the merged file (written
    first) now holds its points, so the folder is read again."""
    while True:
        try:
            return read_points(log_paths(out))
        except FileNotFoundError:
            continue


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
