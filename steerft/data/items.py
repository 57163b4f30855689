"""The records every steerft method is derived from, and the one error type for bad data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

Messages = list[dict]
"""A conversation as chat templates take it: ``[{"role": ..., "content": ...}, ...]``."""


class BehaviourDataError(ValueError):
    """Data steerft cannot use, reported with where it is (file and 1-based line) so it can be fixed.

    ``source`` and ``line`` are kept as attributes for callers that want to point at the place
    themselves; ``line`` is a row number for hub datasets.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 unit: str = "line") -> None:
        self.source = source
        self.line = line
        self.reason = message
        if source is not None and line is not None:
            message = f"{source}, {unit} {line}: {message}"
        elif source is not None:
            message = f"{source}: {message}"
        super().__init__(message)


@dataclass(frozen=True)
class BehaviourItem:
    """One question with a completion that shows the behaviour and one that does not.

    Both completions answer the same prompt, so their difference isolates the behaviour; every
    method's training data (contrast pairs, SFT rows, preference pairs, demonstrations) comes
    from these two fields.
    """

    id: str
    prompt: str | Messages
    matching: str
    not_matching: str
    meta: dict = field(default_factory=dict)


class _ItemList(Generic[T]):
    """len, indexing and iteration over `self.items`, shared by both dataset kinds."""

    items: list[T]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self.items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


@dataclass
class BehaviourDataset(_ItemList[BehaviourItem]):
    """Items plus what the prompting baselines need: a system prompt asking for the behaviour.

    ``dropped`` counts the rows the loader left out, by reason (duplicates, unparseable
    dialogues, empty replies), so a report can say how the data was cleaned.
    """

    name: str
    items: list[BehaviourItem]
    system_prompt: str | None = None
    description: str = ""
    dropped: dict[str, int] = field(default_factory=dict)


_LETTER_ANSWER = re.compile(r"\s*\(?([A-Z])\)?\s*")
_YES_NO = {"yes": "Yes", "no": "No"}


def answer_key(matching: str, not_matching: str) -> str | None:
    """Which answer matches, for two-answer items: the letter ("A", "B") or "Yes"/"No"; else None.

    A model can prefer one answer whatever the question; knowing which answer matches on each
    item lets splits balance it and metrics remove it. Takes an item's two completions (raw or
    formatted, e.g. " (A)" or "Yes.").
    """
    letters = [_LETTER_ANSWER.fullmatch(text) for text in (matching, not_matching)]
    if all(letters) and letters[0].group(1) != letters[1].group(1):
        return letters[0].group(1)
    words = [_YES_NO.get(text.strip().rstrip(".!").lower()) for text in (matching, not_matching)]
    if None not in words and words[0] != words[1]:
        return words[0]
    return None


@dataclass(frozen=True)
class Statement:
    """A factual claim and whether it is true, for truth-direction and CCS experiments."""

    id: str
    text: str
    label: bool


@dataclass
class StatementDataset(_ItemList[Statement]):
    """Labelled statements; labels are only used for evaluation by unsupervised methods.

    ``dropped`` counts the rows the loader left out, by reason (repeated statements).
    """

    name: str
    items: list[Statement]
    description: str = ""
    dropped: dict[str, int] = field(default_factory=dict)
