"""Turn raw rows into items: detect the format from the keys and check every value.

Accepted shapes (after optional column renaming):

- behaviour items ``{question, answer_matching_behavior, answer_not_matching_behavior}``: the
  A/B, full-sentence and Yes/No variants all share these keys; list-valued answers (as in some
  model-written-evals files) use the first entry and keep the rest in ``meta``;
- preference rows as TRL takes them: ``{prompt, chosen, rejected}`` with strings or message
  lists, or ``{chosen, rejected}`` with an implicit prompt shared by both.
"""

from __future__ import annotations

import re

from steerft.data.items import BehaviourItem, Messages, Statement
from steerft.data.sources import Record

BEHAVIOUR_FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
STATEMENT_FIELDS = ("statement", "label")

_ASSISTANT_MARKER = "Assistant:"
_TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant):")

UNPARSEABLE_DIALOGUE = "dialogue that does not split into alternating Human/Assistant turns"
EMPTY_REPLY = "empty chosen or rejected reply"


class SkippedRow(Exception):
    """A row that real preference data contains but no method can use; the loader drops and counts it.

    Quoting such a row as one user message, or keeping an empty reply, would give nonsense items
    without a word; a malformed row of any other kind is still a BehaviourDataError.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def rename(record: Record, fields: dict[str, str] | None, canonical: tuple[str, ...]) -> Record:
    """Apply ``fields={canonical: column}`` so the rest of the code sees canonical names."""
    if not fields:
        return record
    unknown = sorted(set(fields) - set(canonical))
    if unknown:
        raise record.error(f"fields= has unknown names {unknown}; the names to map are {list(canonical)}")
    missing = {name: col for name, col in fields.items() if col not in record.data}
    if missing:
        raise record.error(f"fields= maps {missing} but the row has no such column "
                           f"(fields present: {sorted(record.data)})")
    data = {k: v for k, v in record.data.items() if k not in fields.values()}
    data.update({name: record.data[col] for name, col in fields.items()})
    return Record(data=data, source=record.source, line=record.line, unit=record.unit)


def behaviour_item(record: Record, default_id: str) -> BehaviourItem:
    """The item in ``record``, whatever supported shape it has.

    Raises SkippedRow (with its reason) for preference rows with an empty reply or a dialogue
    that does not split into turns.
    """
    keys = record.data.keys()
    if any(k in keys for k in BEHAVIOUR_FIELDS):
        return _behaviour_row(record, default_id)
    if "chosen" in keys or "rejected" in keys:
        return _preference_row(record, default_id)
    raise record.error(
        f"cannot tell the format from the fields present {sorted(keys)}: expected "
        f"{list(BEHAVIOUR_FIELDS)} or ['chosen', 'rejected'] (with an optional 'prompt'). "
        f"If your columns are named differently, pass e.g. fields={{'question': '<your column>', ...}}"
    )


def statement(record: Record, default_id: str) -> Statement:
    """A true/false statement; labels may be JSON booleans or 0/1 as in many hub datasets."""
    text = _text(record, "statement")
    label = _field(record, "label")
    if isinstance(label, bool) or label in (0, 1):
        return Statement(id=_item_id(record, default_id), text=text, label=bool(label))
    raise record.error(f"field 'label' must be true/false (or 0/1), got {label!r}")


def _behaviour_row(record: Record, default_id: str) -> BehaviourItem:
    question = _text(record, "question")
    matching, more_matching = _answer(record, "answer_matching_behavior")
    not_matching, more_not_matching = _answer(record, "answer_not_matching_behavior")
    meta = _rest(record, BEHAVIOUR_FIELDS)
    if more_matching:
        meta["other_matching"] = more_matching
    if more_not_matching:
        meta["other_not_matching"] = more_not_matching
    return _item(record, default_id, question, matching, not_matching, meta)


def _preference_row(record: Record, default_id: str) -> BehaviourItem:
    chosen, rejected = _field(record, "chosen"), _field(record, "rejected")
    meta = _rest(record, PREFERENCE_FIELDS)
    if "prompt" in record.data:
        prompt = _field(record, "prompt")
        if isinstance(prompt, str):
            return _item(record, default_id, prompt, *_replies(_text_or_empty(record, "chosen"),
                                                               _text_or_empty(record, "rejected")), meta)
        prompt = _messages(record, "prompt")
        return _item(record, default_id, prompt, *_replies(_reply(record, "chosen"), _reply(record, "rejected")), meta)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _implicit_text(record, default_id, *_replies(chosen, rejected), meta)
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _implicit_messages(record, default_id, meta)
    raise record.error("'chosen' and 'rejected' must both be strings or both be message lists, got "
                       f"{type(chosen).__name__} and {type(rejected).__name__}")


def _implicit_text(record: Record, default_id: str, chosen: str, rejected: str, meta: dict) -> BehaviourItem:
    """Split two full transcripts into their shared prompt and the two completions."""
    _check_different(record, chosen, rejected)
    if any(side.rstrip().endswith(_ASSISTANT_MARKER) for side in (chosen, rejected)):
        raise SkippedRow(EMPTY_REPLY)
    cut = prompt_boundary(chosen, rejected)
    prompt = chosen[:cut]
    if not prompt.strip():
        raise record.error("'chosen' and 'rejected' share no prompt to split off; add a 'prompt' field")
    messages = transcript_messages(prompt)
    if messages is not None:
        meta["transcript"] = prompt
    elif _TRANSCRIPT_TURN.search("\n\n" + prompt.lstrip("\n")):
        raise SkippedRow(UNPARSEABLE_DIALOGUE)
    return _item(record, default_id, messages or prompt, chosen[cut:], rejected[cut:], meta)


def prompt_boundary(chosen: str, rejected: str) -> int:
    """Where the shared prompt of two texts ends, so that completions start somewhere sensible.

    After the last "Assistant:" of the shared prefix when there is one (hh-rlhf transcripts),
    otherwise never inside a word, with both completions non-empty and the whitespace before
    them moved into the completions (the " (A)" convention of model-written-evals).
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    marker = chosen.rfind(_ASSISTANT_MARKER, 0, shared)
    cut = marker + len(_ASSISTANT_MARKER) if marker >= 0 else shared

    def splits_word(i: int) -> bool:
        return i > 0 and chosen[i - 1].isalnum() and (chosen[i:i + 1].isalnum() or rejected[i:i + 1].isalnum())

    while cut > 0 and (splits_word(cut) or not chosen[cut:].strip() or not rejected[cut:].strip()):
        cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    return cut


def transcript_messages(prompt: str) -> Messages | None:
    """Messages for an hh-rlhf style "\\n\\nHuman: ...\\n\\nAssistant:" prompt, else None.

    Chat models should see such a prompt as the conversation it is, not as one user message
    quoting a transcript.
    """
    parts = _TRANSCRIPT_TURN.split("\n\n" + prompt.lstrip("\n"))
    head, turns = parts[0], list(zip(parts[1::2], parts[2::2]))
    if head.strip() or not turns or turns[-1] != ("Assistant", "") or len(turns) % 2:
        return None
    expected = ["Human", "Assistant"] * (len(turns) // 2)
    if [speaker for speaker, _ in turns] != expected:
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": text.strip()} for speaker, text in turns[:-1]]


def _implicit_messages(record: Record, default_id: str, meta: dict) -> BehaviourItem:
    """Shared leading messages are the prompt; each side must end in one assistant reply."""
    chosen, rejected = _messages(record, "chosen"), _messages(record, "rejected")
    _check_different(record, chosen, rejected)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise record.error("'chosen' and 'rejected' share no leading messages to use as the prompt; "
                           "add a 'prompt' field")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        rest = messages[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise record.error(f"'{name}' must end in exactly one assistant message after the shared "
                               f"prompt, found roles {[m['role'] for m in rest]}")
    return _item(record, default_id, chosen[:shared], *_replies(chosen[-1]["content"], rejected[-1]["content"]), meta)


def _item(record: Record, default_id: str, prompt: str | Messages, matching: str, not_matching: str,
          meta: dict) -> BehaviourItem:
    _check_different(record, matching, not_matching)
    for name, value in (("matching", matching), ("not matching", not_matching)):
        if not value.strip():
            raise record.error(f"the {name} completion is empty")
    return BehaviourItem(id=_item_id(record, default_id), prompt=prompt, matching=matching,
                         not_matching=not_matching, meta=meta)


def _replies(chosen: str, rejected: str) -> tuple[str, str]:
    """Both replies of a preference row, or SkippedRow when either is empty."""
    if not chosen.strip() or not rejected.strip():
        raise SkippedRow(EMPTY_REPLY)
    return chosen, rejected


def _check_different(record: Record, matching: object, not_matching: object) -> None:
    if matching == not_matching or (isinstance(matching, str) and matching.strip() == not_matching.strip()):
        raise record.error(f"the two completions are identical ({matching!r}); a pair must differ")


def _item_id(record: Record, default_id: str) -> str:
    value = record.data.get("id")
    if value is None:
        return default_id
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise record.error(f"field 'id' must be a string or integer, got {type(value).__name__}")


def _field(record: Record, name: str) -> object:
    if name not in record.data:
        raise record.error(
            f"missing field {name!r} (fields present: {sorted(record.data)}). If your data names it "
            f"differently, pass fields={{{name!r}: '<your column>'}}")
    return record.data[name]


def _text(record: Record, name: str) -> str:
    value = _field(record, name)
    if not isinstance(value, str):
        raise record.error(f"field {name!r} must be a string, got {type(value).__name__}: {value!r}")
    if not value.strip():
        raise record.error(f"field {name!r} is empty")
    return value


def _text_or_empty(record: Record, name: str) -> str:
    """A string field that may be empty (the caller decides what an empty one means)."""
    value = _field(record, name)
    if not isinstance(value, str):
        raise record.error(f"field {name!r} must be a string, got {type(value).__name__}: {value!r}")
    return value


def _answer(record: Record, name: str) -> tuple[str, list[str]]:
    """An answer that may be a list of equally valid strings: the first, and the others."""
    value = _field(record, name)
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise record.error(f"field {name!r} must be a string or a non-empty list of strings, got {value!r}")
        return value[0], value[1:]
    return _text(record, name), []


def _messages(record: Record, name: str) -> Messages:
    value = _field(record, name)
    if not isinstance(value, list) or not value:
        raise record.error(f"field {name!r} must be a non-empty list of messages, got {type(value).__name__}")
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise record.error(f"field {name!r} holds a message that is not "
                               f"{{'role': str, 'content': str}}: {message!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(record: Record, name: str) -> str:
    """The text of a conversational completion: exactly one assistant message (TRL's shape)."""
    messages = _messages(record, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise record.error(f"field {name!r} must be a list with one assistant message, found roles "
                           f"{[m['role'] for m in messages]}")
    return messages[0]["content"]


def _rest(record: Record, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in record.data.items() if k not in used and k != "id"}
