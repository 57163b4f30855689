"""Load-time hygiene: decode files safely, drop duplicate items, and filter items by token length.

Every drop is counted and printed once, so a dataset never shrinks (or stays dirty) without a word.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from steerft.data.format import PromptFormatter
from steerft.data.items import BehaviourDataError, BehaviourItem

DUPLICATE = "duplicate item (same prompt and completions)"
PROMPT_TOO_LONG = "prompt longer than max_prompt_tokens"
COMPLETION_TOO_LONG = "completion longer than max_completion_tokens"


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (gzipped when its name ends in ``.gz``); a UTF-8 BOM is accepted.

    Anything else (UTF-16, Latin-1, a ``.gz`` that is not gzip or is cut short) is one
    BehaviourDataError naming the file (and the line, for encoding errors) and the fix.
    """
    raw = _read_bytes(path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
        line = raw.count(b"\n", 0, max(raw.find(b"\x00"), 0)) + 1
        raise BehaviourDataError("the file is UTF-16 or binary (it has a UTF-16 byte-order mark or NUL bytes); "
                                 "re-save it as UTF-8", source=str(path), line=line)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise BehaviourDataError(f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {column}); re-save the file "
                                 "as UTF-8", source=str(path), line=raw.count(b"\n", 0, err.start) + 1) from None


def _read_bytes(path: Path) -> bytes:
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except gzip.BadGzipFile:
        problem = "is not a gzip file although its name ends in .gz; rename it without .gz or gzip it"
    except (EOFError, zlib.error):
        problem = "is a truncated or corrupt gzip file; copy or download it again"
    raise BehaviourDataError(problem, source=str(path))


def content_key(item: BehaviourItem) -> str:
    """What makes two items the same item: prompt and both completions (not the id)."""
    return json.dumps([item.prompt, item.matching.strip(), item.not_matching.strip()], ensure_ascii=False)


def length_filter(items: Sequence[BehaviourItem], fmt: PromptFormatter, *, max_prompt_tokens: int | None = None,
                  max_completion_tokens: int | None = None) -> tuple[list[BehaviourItem], dict[str, int]]:
    """The items whose formatted prompt and both completions fit the limits, and drop counts by reason.

    Lengths are counted with ``fmt``'s tokenizer on the exact text the model sees, so long items
    are dropped here, with a printed count, instead of being cut silently by a trainer's
    ``max_length``. ``None`` means no limit.
    """
    for name, limit in (("max_prompt_tokens", max_prompt_tokens), ("max_completion_tokens", max_completion_tokens)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise BehaviourDataError(f"{name}={limit!r} must be a positive integer (or None for no limit)")
    if max_prompt_tokens is None and max_completion_tokens is None:
        return list(items), {}
    if fmt.tokenizer is None:
        raise BehaviourDataError("a token-length filter needs the model's tokenizer; pass a PromptFormatter "
                                 "built with it")
    kept: list[BehaviourItem] = []
    dropped = {PROMPT_TOO_LONG: 0, COMPLETION_TOO_LONG: 0}
    for item in items:
        if max_prompt_tokens is not None and _tokens(fmt, fmt.prompt(item)) > max_prompt_tokens:
            dropped[PROMPT_TOO_LONG] += 1
        elif max_completion_tokens is not None and max(_tokens(fmt, fmt.completion(text)) for text in (
                item.matching, item.not_matching)) > max_completion_tokens:
            dropped[COMPLETION_TOO_LONG] += 1
        else:
            kept.append(item)
    dropped = {reason: count for reason, count in dropped.items() if count}
    report_drops("length filter", len(items), dropped)
    return kept, dropped


def _tokens(fmt: PromptFormatter, text: str) -> int:
    return len(fmt.tokenizer(text, add_special_tokens=False)["input_ids"])


def report_drops(what: str, total: int, dropped: Mapping[str, int]) -> None:
    """Print one line saying what was dropped and why (nothing when nothing was)."""
    if dropped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in dropped.items())
        print(f"steerft data: {what}: dropped {sum(dropped.values())} of {total} rows ({reasons})", flush=True)
