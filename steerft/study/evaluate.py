"""Scoring one point on the fixed held-out data: behaviour, side effects, samples.

Only raw measurements are recorded here (per-item test margins, KL, cross-entropy); everything
relative to the `none` baseline (effect, anti-steerable fraction, delta cross-entropy) is derived
from the saved records when the outputs are written, so no point depends on another having run.

Cross-entropy on general text is scored the same way for every method: the text is the reply to
a fixed request (`GENERAL_TEXT_REQUEST`) under the method's own prompt. A system prompt or
demonstrations thus act on it as they would in use, and weight and vector methods are scored on
the very same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data import BehaviourItem, ContrastPair, answer_key
from ..metrics import (
    PreferenceResult,
    Steering,
    ab_result,
    batch_kl,
    answer_letter,
    competence_check,
    cross_entropy,
    generate_samples,
    kl_to_base,
    pair_rows,
    preference,
    preference_results,
)
from .context import (
    GENERAL_TEXT_REQUEST,
    StudyContext,
    base_kl_reference,
    base_pairs,
    base_preference,
    general_rows,
    neutral_rows,
    prompt_format,
    replayed_logprobs,
    replaying,
    single_vector,
)
from .judging import judged_metrics
from .scorable import Scorable

TEST_METRIC = "test completion preference"


def measure(ctx: StudyContext, scorable: Scorable, *, baseline: bool = False) -> dict[str, Any]:
    """Every metric of one point; `baseline` adds the base model's competence verdict and answer bias.

    The verdict judges two-answer formats (A/B, Yes/No) with the answer bias removed: each test
    item's matching answer (`matching_answers`, also recorded, so answer shifts can be found in
    every method's saved margins later) goes into `competence_check`.
    """
    batch_size = ctx.config.eval.batch_size
    model, tokenizer = scorable.model, ctx.tokenizer
    pairs = scorable.pairs(ctx.data.test)
    record: dict[str, Any] = {}
    is_base = model is ctx.model and pairs == base_pairs(ctx, "test")
    result = base_preference(ctx, "test") if is_base else replayed_preference(ctx, model, "test", pairs) or \
        preference(model, tokenizer, pairs, batch_size=batch_size)
    if baseline and _letter_answers(pairs):
        ab = ab_result(result, pairs)
        record |= {"letter_bias": ab.letter_bias, "a_matching_share": ab.a_matching_share}
    if baseline:
        answers = matching_answers(ctx.data.test)
        verdict = competence_check(result, answers, metric_name=TEST_METRIC)
        record |= {"matching_answers": answers, "competence": verdict.as_dict(),
                   "competence_warning": None if verdict.passed or not verdict.gating else verdict.message,
                   "data": {**ctx.data.hygiene, "chat_template": prompt_format(ctx.config, ctx.tokenizer)}}
    return {
        "accuracy": result.accuracy,
        "mean_margin": result.mean_margin,
        "margins": result.margins.tolist(),
        "kl": study_kl(ctx, scorable),
        "ce": study_cross_entropy(ctx, scorable),
        "params": scorable.params,
        "choice": scorable.choice,
        "generations": generate_samples(model, tokenizer, [scorable.prompt(p) for p in ctx.generation_prompts],
                                        max_new_tokens=ctx.config.eval.generation_tokens, batch_size=batch_size),
        **record,
        **judged_metrics(ctx, scorable, result, pairs),  # steerft.study.judging: judged generations, per-token margins
    }


def replayed_preference(ctx: StudyContext, model: nn.Module, split: str,
                        pairs: Sequence[ContrastPair]) -> PreferenceResult | None:
    """`model`'s preference on `split` replayed from the study's kept base record, when `model` is the base
    model's weights steered by one added vector (`single_vector`) under the base prompts; else None."""
    steering = single_vector(model)
    logprobs = None if steering is None else replayed_logprobs(ctx, model, split, pair_rows(ctx.tokenizer, pairs),
                                                                [steering])
    return None if logprobs is None else preference_results(pairs, logprobs)[0]


def study_kl(ctx: StudyContext, scorable: Scorable) -> float:
    """KL(base || method) along the base model's continuations of the neutral prompts (`kl_to_base`), the base
    side from `base_kl_reference`; replayed from the study's kept record when `scorable` is the base weights
    steered by one added vector under the base prompts."""
    replayed = replayed_kl(ctx, scorable)
    if replayed is not None:
        return replayed
    return kl_to_base(scorable.model, ctx.tokenizer, [ctx.fmt.prompt(p) for p in ctx.neutral_prompts],
                      [scorable.prompt(p) for p in ctx.neutral_prompts], ctx.references, base_model=ctx.model,
                      batch_size=ctx.config.eval.batch_size, reference=base_kl_reference(ctx))


def replayed_kl(ctx: StudyContext, scorable: Scorable, steering: Steering | None = None) -> float | None:
    """`study_kl` by replay from the study's kept record of the neutral rows, when `scorable` is the base weights
    steered by one added vector (`steering` added to them, if given) under the base prompts (the unsteered
    model is then the base); else None."""
    steering = steering or single_vector(scorable.model)
    if steering is None:
        return None
    rows = neutral_rows(ctx, scorable)
    with replaying(ctx, scorable.model, "neutral", rows, [steering]) as record:
        if record is None:
            return None
        reference = base_kl_reference(ctx)
        per_item = torch.zeros(len(rows), dtype=torch.float64)
        for batch, logp in record.log_distributions(steering):
            per_item[batch.index] = batch_kl(reference, batch, logp)
        return per_item.mean().item()


def study_cross_entropy(ctx: StudyContext, scorable: Scorable) -> float:
    """`reply_cross_entropy` on the study's general texts; replayed from the study's kept record of them when
    `scorable` is the base model, or its weights steered by one added vector, under the base prompt."""
    replayed = replayed_cross_entropy(ctx, scorable)
    if replayed is not None:
        return replayed
    return reply_cross_entropy(scorable, ctx.tokenizer, ctx.general_texts, batch_size=ctx.config.eval.batch_size)


def replayed_cross_entropy(ctx: StudyContext, scorable: Scorable, steering: Steering | None = None) -> float | None:
    """`study_cross_entropy` by replay of `steering` (else the model's single vector, or nothing on the base model)
    from the study's kept record of the general texts; None where it does not apply."""
    model = scorable.model
    steering = steering or (None if model is ctx.model else single_vector(model))
    if steering is None and model is not ctx.model:
        return None
    rows = general_rows(ctx, scorable)
    logprobs = replayed_logprobs(ctx, model, "general", rows, [steering])
    return None if logprobs is None else (-logprobs.sum() / sum(row.completion_length for row in rows)).item()


def reply_cross_entropy(scorable: Scorable, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                        batch_size: int) -> float:
    """Token-averaged cross-entropy (nats) of each text as the reply to GENERAL_TEXT_REQUEST under the method's
    own prompt, so a system prompt or demonstrations act on it and every method is scored on the same tokens."""
    return cross_entropy(scorable.model, tokenizer, [scorable.fmt.completion(text) for text in texts],
                         prompt=scorable.prompt(GENERAL_TEXT_REQUEST), batch_size=batch_size)


def matching_answers(items: Sequence[BehaviourItem]) -> list[str | None]:
    """Each item's matching answer ("A"/"B", "Yes"/"No"), None for free completions."""
    return [answer_key(item.matching, item.not_matching) for item in items]


def _letter_answers(pairs: Sequence[ContrastPair]) -> bool:
    """A/B items: report the base model's own letter preference next to its behaviour."""
    return all(answer_letter(p.positive) is not None and answer_letter(p.negative) is not None for p in pairs)
