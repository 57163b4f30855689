"""Side effects of a method: drift from the base model on neutral prompts, and general-text loss.

Effects only mean something next to their cost (Stickland et al. 2024): a method that moves the
behaviour but also changes what the model says everywhere else is not a targeted edit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, encode, text_ids
from ._forward import as_base, check_base_model, device_of, inference, pad_id
from .generation import greedy_ids
from .logprobs import summed_logprobs
from .site_cache import SharedBatch, completion_log_distributions, shared_batches, shared_prompt_logprobs


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


def base_log_distributions(
    base_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base_prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Per item, the base's float32 (tokens, vocab) log-probabilities predicting each continuation token.

    What `kl_to_base` compares against; it depends on the base alone, so a study computes it once
    and passes it to every method's `kl_to_base(..., reference=...)`.
    """
    _check_lengths(base_prompts, base_prompts, continuations)
    rows = [encode(tokenizer, p, c) for p, c in zip(base_prompts, continuations)]
    reference: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    with inference(base_model):
        for batch in shared_batches(rows, batch_size, pad_id(tokenizer)):
            logp = completion_log_distributions(base_model, batch.to(device_of(base_model))).cpu()
            for r, i in enumerate(batch.index):
                reference[i] = logp[r, : rows[i].completion_length].clone()
    return reference


def kl_to_base(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base_prompts: Sequence[str],
    method_prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    base_model: nn.Module | None = None,
    batch_size: int = 16,
    reference: Sequence[torch.Tensor] | None = None,
) -> float:
    """Mean KL(base || method) between next-token distributions along fixed continuations.

    Item i is scored as `base_prompts[i] + continuations[i]` under the base and as
    `method_prompts[i] + continuations[i]` under `model`; the prompts differ for prompting methods
    (system prompt, demonstrations), and the continuation tokens, and so the compared positions, are
    the same. Positions are those predicting each continuation token. The KL is averaged over an
    item's tokens, then over items, so every prompt weighs the same. The base is `base_model` if
    given, else `model` with its PEFT adapter disabled, else `model` itself; `reference` (from
    `base_log_distributions`) replaces the base's pass. Each prompt runs once and logits are computed
    only at the continuation positions, in length-sorted batches.
    """
    _check_lengths(base_prompts, method_prompts, continuations)
    check_base_model(model, base_model)
    if reference is None:
        with as_base(model, base_model) as base:
            reference = base_log_distributions(base, tokenizer, base_prompts, continuations, batch_size=batch_size)
    rows = [encode(tokenizer, p, c) for p, c in zip(method_prompts, continuations)]
    if len(reference) != len(rows) or any(len(ref) != row.completion_length for ref, row in zip(reference, rows)):
        raise ValueError("reference does not match these continuations: make it with base_log_distributions from "
                         "the same continuations and tokenizer.")
    per_item = torch.zeros(len(rows), dtype=torch.float64)
    with inference(model):
        for batch in shared_batches(rows, batch_size, pad_id(tokenizer)):
            per_item[batch.index] = batch_kl(reference, batch, completion_log_distributions(model, batch.to(
                device_of(model))))
    return per_item.mean().item()


def batch_kl(reference: Sequence[torch.Tensor], batch: SharedBatch, method_logp: torch.Tensor) -> torch.Tensor:
    """Per row of `batch`, KL(base || method) averaged over its continuation tokens, from the base's
    `reference` (by row index) and the method's (R, C, V) log-distributions over the batch's completion columns."""
    method_logp = method_logp.double().cpu()
    base_logp = pad_sequence([reference[i] for i in batch.index], batch_first=True).double()
    kl = (base_logp.exp() * (base_logp - method_logp[:, : base_logp.shape[1]])).sum(-1)
    mask = batch.completion_mask[:, : base_logp.shape[1]].bool().cpu()
    return (kl * mask).sum(-1) / mask.sum(-1)


def _check_lengths(base_prompts: Sequence[str], method_prompts: Sequence[str], continuations: Sequence[str]) -> None:
    if not len(base_prompts) == len(method_prompts) == len(continuations) or not continuations:
        raise ValueError(f"Need as many base prompts, method prompts and continuations, at least one; got "
                         f"{len(base_prompts)}, {len(method_prompts)} and {len(continuations)}.")


def cross_entropy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    prompt: str | None = None,
    batch_size: int = 16,
) -> float:
    """Token-averaged next-token cross-entropy (nats) of `texts`; report adapted minus base.

    Without `prompt`, plain texts: the tokenizer's own BOS handling, every token after the first
    scored. With it, each text is scored as the reply to `prompt` (one shared pass over the prompt),
    so a system prompt or demonstrations act on it as they would in use. Scored tokens count as
    completion, so a positions="completion" adapter steers the text it is scored on.
    """
    if not texts:
        raise ValueError("cross_entropy needs at least one text.")
    if prompt is not None:
        rows = [encode(tokenizer, prompt, text) for text in texts]
        sums = shared_prompt_logprobs(model, rows, batch_size=batch_size, pad=pad_id(tokenizer))
        return (-sums.sum() / sum(row.completion_length for row in rows)).item()
    rows = [EncodedRow(text_ids(tokenizer, text), 1) for text in texts]
    short = [i for i, row in enumerate(rows) if len(row.ids) < 2]
    if short:
        raise ValueError(f"Text {short[0]} has fewer than two tokens: nothing to score.")
    sums, counts = summed_logprobs(model, rows, batch_size=batch_size, pad=pad_id(tokenizer))
    return (-sums.sum() / counts.sum()).item()
