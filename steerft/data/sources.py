"""Raw rows from a bundled name, a local JSON/JSONL file (optionally gzipped), a `datasets` object or
folder, or a hub dataset.

Every row keeps its origin (file and 1-based line, or hub row) so that the checks made later,
far from the file, can still say exactly where a problem is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def bundled_path(*parts: str) -> Path:
    """A file shipped with steerft: ``steerft/bundled/...`` (in a checkout, links into ``eval/``)."""
    return Path(__file__).resolve().parents[1].joinpath("bundled", *parts)


def data_dir() -> Path:
    """Where bundled datasets live: ``eval/data`` shipped in the package, or ``$STEERFT_DATA_DIR``."""
    override = os.environ.get("STEERFT_DATA_DIR")
    return Path(override) if override else bundled_path("data")


def bundled_config(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else the bundled study config it names.

    So ``--config eval/studies/quick.yaml`` (or ``quick.yaml``, or ``quick``) works from any
    directory, with a non-editable install too.
    """
    path = Path(path).expanduser()
    if path.exists():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    shipped = bundled_path("studies", name)
    is_bundled_name = len(path.parts) == 1 or path.parts[-2:-1] == ("studies",)
    return shipped if is_bundled_name and shipped.is_file() else path


HUB_OPTIONS = ("path", "config", "split", "data_files", "revision")
"""Keys of a hub dataset given as a mapping, e.g. ``{"path": "org/name", "config": "x", "split": "test"}``."""


def read_source(source: str | os.PathLike | Mapping | Any, split: str = "train") -> Source:
    """Read all rows of ``source``: a bundled name, a JSON/JSONL file, a folder written by
    ``Dataset.save_to_disk``, a hub name (or a mapping of :data:`HUB_OPTIONS`), or a
    ``datasets.Dataset`` / ``DatasetDict``. ``split`` applies to everything but single files."""
    if _is_datasets_object(source):
        rows = _pick_split(source, split, "the given DatasetDict")
        return _from_dataset(rows, "datasets.Dataset object", rows.info.dataset_name or "dataset")
    if isinstance(source, Mapping):
        return _read_hub(**_hub_options(source, split))
    saved = Path(source).expanduser()
    if saved.is_dir() and any((saved / name).is_file() for name in _SAVED_MARKERS):
        return _read_saved(saved, split)
    path = _local_path(source)
    if path is None:
        return _read_hub(str(source), split=split)
    records = _read_file(path)
    if not records:
        raise BehaviourDataError("the dataset is empty (no rows)", source=str(path))
    return Source(name=_stem(path), origin=str(path), records=records, meta=_read_sidecar(path))


_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def _is_datasets_object(source: object) -> bool:
    datasets = sys.modules.get("datasets")  # not imported means it cannot be one of its objects
    return datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict))


def _pick_split(data: Any, split: str, origin: str) -> Any:
    """A Dataset as is; the named split of a DatasetDict, with the splits it has if that one is missing."""
    if not isinstance(data, Mapping):
        return data
    if split not in data:
        raise BehaviourDataError(f"has no split {split!r}; splits: {', '.join(data)} (choose one with split=)",
                                 source=origin)
    return data[split]


def _from_dataset(rows: Any, origin: str, name: str) -> Source:
    records = [Record(data=dict(row), source=origin, line=i, unit="row") for i, row in enumerate(rows, start=1)]
    if not records:
        raise BehaviourDataError("the dataset is empty (no rows)", source=origin)
    return Source(name=name, origin=origin, records=records)


def _read_saved(path: Path, split: str) -> Source:
    import datasets  # imported here: it is slow to import and only these sources need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a damaged folder
        raise BehaviourDataError(f"could not be read with datasets.load_from_disk: {err}", source=str(path)) from err
    origin = f"{path} (split {split!r})" if isinstance(loaded, Mapping) else str(path)
    return _from_dataset(_pick_split(loaded, split, str(path)), origin, path.name)


def _hub_options(spec: Mapping, split: str) -> dict[str, Any]:
    unknown = sorted(set(spec) - set(HUB_OPTIONS))
    if unknown or "path" not in spec:
        raise BehaviourDataError(
            f"a hub dataset given as a mapping takes the keys {', '.join(HUB_OPTIONS)} with 'path' required; "
            f"got {sorted(spec)}")
    return {"split": split, **spec}


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


def _read_hub(path: str, split: str = "train", config: str | None = None, data_files: Any = None,
              revision: str | None = None) -> Source:
    import datasets  # imported here: it is slow to import and only hub names need it

    options = {"name": config, "data_files": data_files, "revision": revision}
    options = {key: value for key, value in options.items() if value is not None}
    described = ", ".join([f"split {split!r}"] + [f"{key} {value!r}" for key, value in options.items()])
    origin = f"hub dataset {path!r} ({described})"
    try:
        rows = datasets.load_dataset(path, split=split, **options)
    except Exception as err:  # the hub raises many types; all mean "could not get it"
        raise BehaviourDataError(
            f"{path!r} is neither a bundled dataset ({', '.join(bundled_names())}) nor a local "
            f"file, and loading it from the Hugging Face hub ({described}) failed: {type(err).__name__}: {err}"
        ) from err
    return _from_dataset(rows, origin, path.rstrip("/").rsplit("/", 1)[-1])
