"""Log-probabilities of completions given prompts: the quantity every behaviour metric is built on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, batches, encode
from ._forward import inference, pad_id, token_logprobs


def completion_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> torch.Tensor:
    """Float64 (n,) sums of log p(completion tokens | prompt), one per (prompt, completion).

    Prompts are used as given: a prompting method passes its own prompts (system prompt,
    demonstrations) and is scored on the same completion tokens as every other method. Scores do
    not depend on `padding_side` or `batch_size` beyond float rounding.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"Need one completion per prompt; got {len(prompts)} prompts and {len(completions)} completions.")
    rows = [encode(tokenizer, prompt, completion) for prompt, completion in zip(prompts, completions)]
    empty = [i for i, row in enumerate(rows) if row.prompt_length == 0]
    if empty:
        raise ValueError(f"Prompt {empty[0]} tokenises to nothing: its first completion token would have no context.")
    return summed_logprobs(model, rows, batch_size=batch_size, pad=pad_id(tokenizer), padding_side=padding_side)[0]


def summed_logprobs(
    model: nn.Module, rows: Sequence[EncodedRow], *, batch_size: int, pad: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row float64 sums of completion-token log-probabilities, and the number of tokens summed."""
    sums = torch.zeros(len(rows), dtype=torch.float64)
    counts = torch.zeros(len(rows), dtype=torch.long)
    with inference(model):
        for batch in batches(rows, batch_size, pad, padding_side):
            logprobs, in_batch = token_logprobs(model, batch)
            index = torch.tensor(batch.index)[in_batch.cpu()]
            sums.index_add_(0, index, logprobs.cpu())
            counts.index_add_(0, index, torch.ones_like(index))
    return sums, counts
