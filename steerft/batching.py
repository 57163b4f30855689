"""Tokenising (prompt, completion) rows and batching them with padding on either side.

Every part of steerft that scores or reads completions (extraction, metrics, the study) goes
through here, so a completion always maps to the same tokens: the prompt and the completion are
tokenised separately and concatenated, which keeps the boundary exact even where a joint
tokenisation would merge tokens across it (this is also how TRL builds prompt-completion rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EncodedRow:
    ids: list[int]
    prompt_length: int

    @property
    def completion_length(self) -> int:
        return len(self.ids) - self.prompt_length


@dataclass
class Batch:
    """Padded tensors for rows `index` (positions into the original list)."""

    index: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        """-100 outside completions: what HF models and steer adapters read as "not completion"."""
        return self.input_ids.masked_fill(~self.completion_mask, -100)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device)  # noqa: E731
        return Batch(self.index, move(self.input_ids), move(self.attention_mask), move(self.completion_mask), move(self.position_ids))


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A prompt or plain text as a model sees it: with a BOS if the tokenizer adds one, never an EOS."""
    return list(tokenizer(text, add_special_tokens=_adds_bos_only(tokenizer))["input_ids"])


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> EncodedRow:
    """Prompt tokens (see `text_ids`) followed by completion tokens."""
    prompt_ids = text_ids(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids:
        raise ValueError(f"Completion {completion!r} tokenises to nothing; completions must be non-empty.")
    return EncodedRow(list(prompt_ids) + list(completion_ids), len(prompt_ids))


def _adds_bos_only(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Add special tokens to a prompt only if the chat template did not already (a BOS, never an EOS)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.eos_token_id not in ids[-1:]


def collate(rows: Sequence[EncodedRow], index: Sequence[int], pad_id: int, padding_side: str = "right") -> Batch:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    width = max(len(row.ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        start = width - len(row.ids) if padding_side == "left" else 0
        ids[i, start : start + len(row.ids)] = torch.tensor(row.ids)
        attention[i, start : start + len(row.ids)] = 1
        completion[i, start + row.prompt_length : start + len(row.ids)] = True
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(list(index), ids, attention, completion, positions)


def batches(
    rows: Sequence[EncodedRow], batch_size: int, pad_id: int, padding_side: str = "right"
) -> Iterator[Batch]:
    """Length-sorted batches (less padding, less compute); `Batch.index` restores the order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield collate([rows[i] for i in chunk], chunk, pad_id, padding_side)
