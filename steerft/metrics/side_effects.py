"""Side effects of a method: drift from the base model on neutral prompts, and general-text loss.

Effects only mean something next to their cost (Stickland et al. 2024): a method that moves the
behaviour but also changes what the model says everywhere else is not a targeted edit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, batches, collate, encode
from ..batching import text_ids
from ._forward import as_base, check_base_model, inference, log_distributions, pad_id
from .generation import greedy_ids
from .logprobs import summed_logprobs


def reference_continuations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> list[str]:
    """The base model's greedy continuations, made once per base model and reused for every method.

    A PEFT model generates with its adapter disabled. An end-of-sequence token the model produced
    is kept in the text, so the KL also covers the model's choice to stop.
    """
    with as_base(model) as base:
        generated = greedy_ids(base, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids in generated]


def kl_to_base(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base_prompts: Sequence[str],
    method_prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    base_model: nn.Module | None = None,
    batch_size: int = 16,
) -> float:
    """Mean KL(base || method) between next-token distributions along fixed continuations.

    Item i is scored as `base_prompts[i] + continuations[i]` under the base and as
    `method_prompts[i] + continuations[i]` under `model`; the prompts differ for prompting methods
    (system prompt, demonstrations), and the continuation tokens, and so the compared positions, are
    the same. Positions are those predicting each continuation token. The KL is averaged over an
    item's tokens, then over items, so every prompt weighs the same. The base is `base_model` if
    given, else `model` with its PEFT adapter disabled, else `model` itself.
    """
    if not len(base_prompts) == len(method_prompts) == len(continuations) or not continuations:
        raise ValueError(f"Need as many base prompts, method prompts and continuations, at least one; got "
                         f"{len(base_prompts)}, {len(method_prompts)} and {len(continuations)}.")
    check_base_model(model, base_model)
    base_rows = [encode(tokenizer, p, c) for p, c in zip(base_prompts, continuations)]
    method_rows = [encode(tokenizer, p, c) for p, c in zip(method_prompts, continuations)]
    per_item = torch.zeros(len(base_rows), dtype=torch.float64)
    pad = pad_id(tokenizer)
    with inference(model), inference(base_model if base_model is not None else model):
        for base_batch in batches(base_rows, batch_size, pad):
            method_batch = collate([method_rows[i] for i in base_batch.index], base_batch.index, pad)
            with as_base(model, base_model) as base:
                base_logp, rows = log_distributions(base, base_batch)
            method_logp, _ = log_distributions(model, method_batch)
            base_logp, method_logp = base_logp.double().cpu(), method_logp.double().cpu()
            kl = (base_logp.exp() * (base_logp - method_logp)).sum(-1)
            rows = rows.cpu()
            tokens = torch.bincount(rows, minlength=len(base_batch.index))
            item_kl = torch.zeros(len(base_batch.index), dtype=torch.float64).index_add_(0, rows, kl) / tokens
            per_item[base_batch.index] = item_kl
    return per_item.mean().item()


def cross_entropy(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 16
) -> float:
    """Token-averaged next-token cross-entropy (nats) on plain texts; report adapted minus base.

    Texts get the tokenizer's own BOS handling; every token after the first is scored (and counts
    as completion, so a positions="completion" adapter steers the text it is scored on).
    """
    if not texts:
        raise ValueError("cross_entropy needs at least one text.")
    rows = [EncodedRow(text_ids(tokenizer, text), 1) for text in texts]
    short = [i for i, row in enumerate(rows) if len(row.ids) < 2]
    if short:
        raise ValueError(f"Text {short[0]} has fewer than two tokens: nothing to score.")
    sums, counts = summed_logprobs(model, rows, batch_size=batch_size, pad=pad_id(tokenizer))
    return (-sums.sum() / counts.sum()).item()
