"""Public loaders: one call from a bundled name, a local file or a hub name to checked items."""

from __future__ import annotations

import os
from collections import Counter

from steerft.data.hygiene import DUPLICATE, content_key, report_drops
from steerft.data.items import BehaviourDataError, BehaviourDataset, BehaviourItem, Statement, StatementDataset
from steerft.data.parse import (
    BEHAVIOUR_FIELDS,
    PREFERENCE_FIELDS,
    STATEMENT_FIELDS,
    SkippedRow,
    behaviour_item,
    rename,
    statement,
)
from steerft.data.sources import Record, read_source

BUNDLED_BEHAVIOURS = ["sentiment", "formality", "french"]
"""Behaviour datasets shipped in ``eval/data`` (made by ``scripts/make_datasets.py``)."""


def load_behaviour(source: str | os.PathLike, *, fields: dict[str, str] | None = None,
                   split: str = "train", name: str | None = None) -> BehaviourDataset:
    """Load behaviour items from a bundled name, a ``.jsonl``/``.json`` (``.gz``) file or a hub name.

    ``fields`` maps canonical names (question, answer_matching_behavior,
    answer_not_matching_behavior, prompt, chosen, rejected) to your column names. ``split``
    only applies to hub datasets. Description and system prompt come from a sidecar
    ``<name>.meta.json`` next to the file when there is one.

    Repeated items (same prompt and completions), preference rows with an empty reply and
    dialogues that do not split into turns are dropped; the counts are printed once and kept in
    the dataset's ``dropped``.
    """
    data = read_source(source, split)
    dataset_name = name or data.meta.get("name") or data.name
    canonical = BEHAVIOUR_FIELDS + PREFERENCE_FIELDS
    kept: list[tuple[Record, BehaviourItem]] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for i, record in enumerate(data.records):
        try:
            item = behaviour_item(rename(record, fields, canonical), f"{dataset_name}-{i}")
        except SkippedRow as skipped:
            dropped[skipped.reason] += 1
            continue
        key = content_key(item)
        if key in seen:
            dropped[DUPLICATE] += 1
            continue
        seen.add(key)
        kept.append((record, item))
    if not kept:
        raise BehaviourDataError(f"no usable rows: all {len(data.records)} were dropped ({dict(dropped)})",
                                 source=data.origin)
    _check_unique_ids([record for record, _ in kept], [item.id for _, item in kept])
    report_drops(dataset_name, len(data.records), dropped)
    items = [item for _, item in kept]
    system_prompt = data.meta.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise BehaviourDataError("'system_prompt' in the .meta.json sidecar must be a string", source=data.origin)
    return BehaviourDataset(name=dataset_name, items=items, system_prompt=system_prompt,
                            description=data.meta.get("description", ""), dropped=dict(dropped))


def load_statements(source: str | os.PathLike, *, fields: dict[str, str] | None = None,
                    split: str = "train", name: str | None = None) -> StatementDataset:
    """Load ``{"statement": str, "label": bool}`` rows (e.g. the bundled ``"truth"``).

    A repeated statement (same text and label) is dropped, with a printed count, like a repeated item.
    """
    data = read_source(source, split)
    dataset_name = name or data.meta.get("name") or data.name
    kept: dict[tuple[str, bool], tuple[Record, Statement]] = {}
    for i, record in enumerate(data.records):
        item = statement(rename(record, fields, STATEMENT_FIELDS), f"{dataset_name}-{i}")
        kept.setdefault((item.text.strip(), item.label), (record, item))
    dropped = {DUPLICATE: len(data.records) - len(kept)} if len(kept) < len(data.records) else {}
    _check_unique_ids([record for record, _ in kept.values()], [item.id for _, item in kept.values()])
    report_drops(dataset_name, len(data.records), dropped)
    return StatementDataset(name=dataset_name, items=[item for _, item in kept.values()],
                            description=data.meta.get("description", ""), dropped=dropped)


def load_texts(source: str | os.PathLike, field: str = "text", *, split: str = "train") -> list[str]:
    """One string column, e.g. ``load_texts("neutral_prompts", "prompt")`` or ``load_texts("general_text")``."""
    return [_column(record, field) for record in read_source(source, split).records]


def _column(record: Record, field: str) -> str:
    if field not in record.data:
        raise record.error(f"missing field {field!r} (fields present: {sorted(record.data)}); "
                           "pass the column name as the field argument")
    value = record.data[field]
    if not isinstance(value, str) or not value.strip():
        raise record.error(f"field {field!r} must be a non-empty string, got {value!r}")
    return value


def _check_unique_ids(records: list[Record], ids: list[str]) -> None:
    """Splits and results are keyed by id, so two rows with one id would silently merge."""
    first_seen: dict[str, Record] = {}
    for record, item_id in zip(records, ids):
        if item_id in first_seen:
            raise record.error(f"duplicate id {item_id!r} (first used at {first_seen[item_id].unit} "
                               f"{first_seen[item_id].line})")
        first_seen[item_id] = record
