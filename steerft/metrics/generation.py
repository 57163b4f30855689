"""Greedy generations for side-by-side reading and as fixed reference continuations.

Prompts are batched with left padding, so every row's next token sits in the last column;
greedy decoding makes samples deterministic and comparable across methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, batches
from ..batching import text_ids
from ._forward import device_of, inference, pad_id


def generate_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of formatted prompts, decoded without special tokens, in prompt order."""
    generated = greedy_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]


def greedy_ids(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[list[int]]:
    """Generated token ids per prompt, up to and including the first end-of-sequence token."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    rows = [_prompt_row(tokenizer, prompt) for prompt in prompts]
    empty = [i for i, row in enumerate(rows) if not row.ids]
    if empty:
        raise ValueError(f"Prompt {empty[0]} tokenises to nothing; generation needs a prompt.")
    stop = _stop_ids(model, tokenizer)
    out: list[list[int]] = [[] for _ in rows]
    with inference(model):
        for batch in batches(rows, batch_size, pad_id(tokenizer), padding_side="left"):
            batch = batch.to(device_of(model))
            sequences = model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, pad_token_id=pad_id(tokenizer),
            )
            for i, ids in zip(batch.index, sequences[:, batch.input_ids.shape[1]:].tolist()):
                out[i] = _until_stop(ids, stop)
    return out


def _prompt_row(tokenizer: PreTrainedTokenizerBase, prompt: str) -> EncodedRow:
    ids = text_ids(tokenizer, prompt)
    return EncodedRow(ids, len(ids))


def _stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured, tokenizer.eos_token_id]
    return {i for i in ids if i is not None}


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    """Cut after the first stop token: later columns are padding added for rows still generating."""
    for position, token in enumerate(ids):
        if token in stop:
            return ids[: position + 1]
    return ids
