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

from transformers import PreTrainedTokenizerBase

from ..batching import encode
from ..data import BehaviourItem, ContrastPair, answer_key
from ..metrics import ab_probability, answer_letter, competence_check, generate_samples, kl_to_base, preference
from ..metrics.site_cache import shared_prompt_logprobs
from .context import GENERAL_TEXT_REQUEST, StudyContext, prompt_format
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
    if baseline and _letter_answers(pairs):
        ab = ab_probability(model, tokenizer, pairs, batch_size=batch_size)
        result = ab.preference
        record |= {"letter_bias": ab.letter_bias, "a_matching_share": ab.a_matching_share}
    else:
        result = preference(model, tokenizer, pairs, batch_size=batch_size)
    if baseline:
        answers = matching_answers(ctx.data.test)
        verdict = competence_check(result, answers, metric_name=TEST_METRIC)
        record |= {"matching_answers": answers, "competence": verdict.as_dict(),
                   "competence_warning": None if verdict.passed else verdict.message,
                   "data": {**ctx.data.hygiene, "chat_template": prompt_format(ctx.config, ctx.tokenizer)}}
    base_prompts = [ctx.fmt.prompt(p) for p in ctx.neutral_prompts]
    method_prompts = [scorable.prompt(p) for p in ctx.neutral_prompts]
    return {
        "accuracy": result.accuracy,
        "mean_margin": result.mean_margin,
        "margins": result.margins.tolist(),
        "kl": kl_to_base(model, tokenizer, base_prompts, method_prompts, ctx.references, base_model=ctx.model,
                         batch_size=batch_size),
        "ce": reply_cross_entropy(scorable, tokenizer, ctx.general_texts, batch_size=batch_size),
        "params": scorable.params,
        "choice": scorable.choice,
        "generations": generate_samples(model, tokenizer, [scorable.prompt(p) for p in ctx.generation_prompts],
                                        max_new_tokens=ctx.config.eval.generation_tokens, batch_size=batch_size),
        **record,
    }


def reply_cross_entropy(scorable: Scorable, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                        batch_size: int) -> float:
    """Token-averaged cross-entropy (nats) of each text as the reply to GENERAL_TEXT_REQUEST, run once a batch."""
    prompt = scorable.prompt(GENERAL_TEXT_REQUEST)
    rows = [encode(tokenizer, prompt, scorable.fmt.completion(text)) for text in texts]
    sums = shared_prompt_logprobs(scorable.model, rows, batch_size=batch_size, pad=tokenizer.pad_token_id)
    return (-sums.sum() / sum(row.completion_length for row in rows)).item()


def matching_answers(items: Sequence[BehaviourItem]) -> list[str | None]:
    """Each item's matching answer ("A"/"B", "Yes"/"No"), None for free completions."""
    return [answer_key(item.matching, item.not_matching) for item in items]


def _letter_answers(pairs: Sequence[ContrastPair]) -> bool:
    """A/B items: report the base model's own letter preference next to its behaviour."""
    return all(answer_letter(p.positive) is not None and answer_letter(p.negative) is not None for p in pairs)
