"""Raw rows from a bundled name, a local JSON/JSONL file (optionally gzipped) or a hub dataset.

Every row keeps its origin (file and 1-based line, or hub row) so that the checks made later,
far from the file, can still say exactly where a problem is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from steerft.data.hygiene import read_text
from steerft.data.items import BehaviourDataError

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class Record:
    """One row as read, with its origin, so any later check can point at it."""

    data: dict
    source: str
    line: int
    unit: str = "line"

    def error(self, message: str) -> BehaviourDataError:
        return BehaviourDataError(message, source=self.source, line=self.line, unit=self.unit)


@dataclass
class Source:
    """The rows of one dataset, a default name for it, and its sidecar metadata (if any)."""

    name: str
    origin: str
    records: list[Record]
    meta: dict = field(default_factory=dict)


def data_dir() -> Path:
    """Where bundled datasets live: ``eval/data`` in the repository, or ``$STEERFT_DATA_DIR``."""
    override = os.environ.get("STEERFT_DATA_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "eval" / "data"


def read_source(source: str | os.PathLike, split: str = "train") -> Source:
    """Read all rows of ``source``; ``split`` only applies to hub datasets."""
    path = _local_path(source)
    if path is None:
        return _read_hub(str(source), split)
    records = _read_file(path)
    if not records:
        raise BehaviourDataError("the dataset is empty (no rows)", source=str(path))
    return Source(name=_stem(path), origin=str(path), records=records, meta=_read_sidecar(path))


def _local_path(source: str | os.PathLike) -> Path | None:
    """The file behind ``source``, or None when it can only be a hub name.

    Anything that looks like a file is never sent to the hub: a typo in a path should fail
    here, not as a confusing network error.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if not path.name.endswith(SUFFIXES):
            raise BehaviourDataError(
                f"unsupported file type; steerft reads {', '.join(SUFFIXES)}", source=str(path))
        return path
    text = os.fspath(source)
    bundled = data_dir() / f"{text}.jsonl"
    if "/" not in text and bundled.is_file():
        return bundled
    if isinstance(source, os.PathLike) or text.endswith(SUFFIXES) or text.startswith((".", "/", "~")):
        problem = "not a file" if path.exists() else "no such file"
        raise BehaviourDataError(
            f"{problem} (bundled datasets in {data_dir()}: {', '.join(bundled_names())})", source=str(path))
    return None


def bundled_names() -> list[str]:
    """Names of every bundled data file, for error messages that list the alternatives."""
    return sorted(p.name[: -len(".jsonl")] for p in data_dir().glob("*.jsonl"))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_sidecar(path: Path) -> dict:
    """``<name>.meta.json`` next to the data: description and system prompt of the dataset."""
    sidecar = path.with_name(f"{_stem(path)}.meta.json")
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BehaviourDataError(f"invalid JSON ({err.msg})", source=str(sidecar), line=err.lineno) from err
    if not isinstance(meta, dict):
        raise BehaviourDataError("expected a JSON object with name, description, system_prompt",
                                 source=str(sidecar))
    return meta


def _read_file(path: Path) -> list[Record]:
    text = read_text(path)
    rows = _json_array(text, str(path)) if text.lstrip().startswith("[") else _json_lines(text, str(path))
    return [_as_record(value, str(path), line) for line, value in rows]


def _as_record(value: object, source: str, line: int) -> Record:
    if not isinstance(value, dict):
        raise BehaviourDataError(f"expected a JSON object, got {type(value).__name__}", source=source, line=line)
    return Record(data=value, source=source, line=line)


def _json_lines(text: str, source: str) -> Iterator[tuple[int, object]]:
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and friends.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as err:
            raise BehaviourDataError(f"invalid JSON ({err.msg}, column {err.colno})",
                                     source=source, line=line) from err


def _json_array(text: str, source: str) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def fail(message: str, at: int) -> BehaviourDataError:
        return BehaviourDataError(message, source=source, line=text.count("\n", 0, at) + 1)

    pos = _skip_space(text, text.index("[") + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise fail(f"invalid JSON ({err.msg})", err.pos) from err
            yield text.count("\n", 0, pos) + 1, value
            pos = _skip_space(text, end)
            if text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise fail("invalid JSON (expected ',' or ']' after an array element)", pos)
    if text[pos:].strip():
        raise fail("invalid JSON (extra data after the top-level array)", _skip_space(text, pos))


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_hub(name: str, split: str) -> Source:
    import datasets  # imported here: it is slow to import and only hub names need it

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub raises many types; all mean "could not get it"
        raise BehaviourDataError(
            f"{name!r} is neither a bundled dataset ({', '.join(bundled_names())}) nor a local "
            f"file, and loading it from the Hugging Face hub failed: {type(err).__name__}: {err}"
        ) from err
    origin = f"hub dataset {name!r} (split {split!r})"
    records = [Record(data=dict(row), source=origin, line=i, unit="row") for i, row in enumerate(rows, start=1)]
    if not records:
        raise BehaviourDataError("the dataset is empty (no rows)", source=origin)
    return Source(name=name.rsplit("/", 1)[-1], origin=origin, records=records)
