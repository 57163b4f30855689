"""Fluency of generated replies, and the AxBench-style aggregate of behaviour and fluency.

A steering method that moves behaviour by breaking the text is not a good method; these scores
sit next to every behaviour score on generations so such a method is visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, text_ids
from ._forward import as_base, check_base_model, pad_id
from .logprobs import summed_logprobs


def reply_loglik(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    replies: Sequence[Sequence[int]],
    *,
    base_model: nn.Module | None = None,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean log-likelihood (float64) of each reply under the base model, and its token count.

    Replies are token ids as generated (so no re-tokenisation changes them). The base model is the
    adapter-disabled `model` (or `base_model`): fluency is judged by the model before any
    intervention, the same judge for every method.
    """
    if len(prompts) != len(replies):
        raise ValueError(f"Need one reply per prompt; got {len(prompts)} prompts and {len(replies)} replies.")
    empty = [i for i, reply in enumerate(replies) if not reply]
    if empty:
        raise ValueError(f"Reply {empty[0]} has no tokens; a generated reply has at least one.")
    check_base_model(model, base_model)
    rows = []
    for prompt, reply in zip(prompts, replies):
        prompt_ids = text_ids(tokenizer, prompt)
        rows.append(EncodedRow(prompt_ids + list(reply), len(prompt_ids)))
    with as_base(model, base_model) as base:
        sums, counts = summed_logprobs(base, rows, batch_size=batch_size, pad=pad_id(tokenizer))
    return sums / counts, counts


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that repeat an earlier n-gram in it (0 when it has none).

    Words are whitespace-separated, so the rate does not depend on a tokenizer; a degenerate loop
    ("the cat the cat the cat") scores near 1, ordinary prose near 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def fluency_score(loglik_per_token: float, repetition: float, *, reference_loglik: float = 0.0) -> float:
    """Fluency in [0, 1]: exp(min(0, loglik - reference_loglik)) * (1 - repetition).

    With the default reference 0 the first factor is the geometric-mean probability the base model
    gives each reply token; pass the base model's own mean per-token log-likelihood on its replies
    as `reference_loglik` to make 1 mean "as fluent as the unsteered model". The repetition factor
    keeps degenerate loops, which a language model finds very likely, from scoring as fluent.
    """
    if not 0 <= repetition <= 1:
        raise ValueError(f"repetition must be in [0, 1], got {repetition}.")
    return math.exp(min(0.0, loglik_per_token - reference_loglik)) * (1 - repetition)


def harmonic_mean(behaviour: float, fluency: float) -> float:
    """AxBench-style aggregate of two scores in [0, 1]: 2bf / (b + f), 0 when either is 0.

    Low on either side pulls it down, so neither behaviour without fluency nor fluent text
    without behaviour scores well.
    """
    for name, value in (("behaviour", behaviour), ("fluency", fluency)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} score must be in [0, 1], got {value}.")
    return 0.0 if behaviour == 0 or fluency == 0 else 2 * behaviour * fluency / (behaviour + fluency)
