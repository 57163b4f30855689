"""Behaviour judged on what each point's model writes, with fluency beside it (study side).

Once per study process (`setup_judge`) the judge is made and checked: by default a probe on the
unsteered base model (`fit_judge`) fitted on the *validation* split's labeled completions. That
split is already held out from every method's training, its items are never test items, and
using it leaves the training pool (and so every training subset) unchanged; the probe only reads
base-model activations, so fitting it on the items that choose layers and learning rates gives
no method an advantage. `fit_judge` keeps part of those items out of fitting and reports the
judge's accuracy on them. A named classifier (`judge.kind: classifier`) is checked the same way
on the validation completions. A judge near chance is refused: the study then skips judging
with a loud line in its log and report, rather than reporting noise as behaviour.

For every point (`judged_metrics`, called by `evaluate.measure`) replies are sampled for the
first `eval.judge_prompts` *test* prompts under the method's own prompt, judged, and scored for
fluency by the base model. Per-prompt values are recorded so outputs can pair them across
methods by prompt. The length-normalised (per-token) margin of the fixed test completions is
recorded next to the summed one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data import BehaviourItem, ContrastPair, PromptFormatter
from ..jobs import startup
from ..metrics import (
    ClassifierJudge,
    HeldOutAccuracy,
    Judge,
    JudgeError,
    PreferenceResult,
    SamplingSettings,
    fit_judge,
    judge_generations,
    per_token_margins,
    reply_loglik,
    sample_replies,
    summarise_judged,
)
from .scorable import Scorable

REFUSE_ALPHA = 0.05  # a judge is used only if its held-out accuracy beats 0.5 at this level
GENERATION_METRICS = ("behaviour", "loglik_per_token", "repetition", "fluency", "aggregate")


@dataclass(frozen=True)
class StudyJudge:
    """The study's judge, or why there is none (`refused`), and the base model's reference fluency."""

    judge: Judge | None
    summary: dict[str, Any]
    refused: str | None = None
    reference_loglik: float = 0.0


def sampling(config) -> SamplingSettings:
    return SamplingSettings(samples_per_prompt=config.eval.judge_samples, max_new_tokens=config.eval.judge_tokens)


def judge_prompts(ctx) -> list[BehaviourItem]:
    return ctx.data.test[: ctx.config.eval.judge_prompts]


def setup_judge(config, model, tokenizer, test_items: Sequence[BehaviourItem]) -> StudyJudge:
    """Make and check the study's judge once; a refused judge is reported, not raised."""
    settings = config.judge
    if settings.kind == "none":
        return StudyJudge(None, {"judge": "none"}, refused="judging is off (judge.kind: none)")
    _, splits = startup.load_splits(config)
    try:
        if settings.kind == "fitted":
            judge = fit_judge(model, tokenizer, splits.val, layer=settings.layer, alpha=REFUSE_ALPHA,
                              batch_size=config.eval.batch_size)
        else:
            judge = ClassifierJudge(settings.name_or_path, behaviour_label=settings.label,
                                    batch_size=config.eval.batch_size)
            checked = _classifier_accuracy(judge, tokenizer, splits.val).summary()
    except JudgeError as err:
        print(f"steerft study {config.name}: JUDGE REFUSED, generations are not judged: {err}", flush=True)
        return StudyJudge(None, {"judge": settings.kind}, refused=str(err))
    summary = {**judge.summary(), **(checked if settings.kind == "classifier" else {}), "judge_fit_split": "validation"}
    print(f"steerft study {config.name}: judge {summary['judge']} held-out accuracy "
          f"{summary.get('judge_heldout_accuracy', float('nan')):.3f} on {summary.get('judge_heldout_n')} "
          "completions", flush=True)
    return StudyJudge(judge, summary, reference_loglik=_base_loglik(config, model, tokenizer, test_items))


def _classifier_accuracy(judge: ClassifierJudge, tokenizer, items: Sequence[BehaviourItem]) -> HeldOutAccuracy:
    """A named classifier's accuracy on the validation split's labeled completions; refused near chance."""
    fmt = PromptFormatter(tokenizer)
    prompts = [fmt.prompt(item) for item in items] * 2
    replies = [item.matching for item in items] + [item.not_matching for item in items]
    scores = judge.score(prompts, replies)
    labels = torch.cat([torch.ones(len(items)), torch.zeros(len(items))]).double()
    held_out = HeldOutAccuracy(int(((scores > 0.5).double() == labels).sum()), len(labels))
    if held_out.p_value >= REFUSE_ALPHA:
        raise JudgeError(f"classifier {judge.name} is near chance on the validation completions: accuracy "
                         f"{held_out.accuracy:.3f} on {held_out.n} (binomial p={held_out.p_value:.3g}); check "
                         "judge.label, or use judge.kind: fitted.")
    return held_out


def _base_loglik(config, model, tokenizer, items: Sequence[BehaviourItem]) -> float:
    """The base model's mean per-token log-likelihood of its own sampled replies: fluency 1 means 'as fluent'."""
    fmt = PromptFormatter(tokenizer)
    items = items[: config.eval.judge_prompts]
    prompts = [fmt.prompt(item) for item in items]
    generated = sample_replies(model, tokenizer, prompts, sampling(config), batch_size=config.eval.batch_size)
    replies = [ids for samples in generated for ids in samples]
    repeated = [p for p, samples in zip(prompts, generated) for _ in samples]
    loglik, counts = reply_loglik(model, tokenizer, repeated, replies, batch_size=config.eval.batch_size)
    return float((loglik * counts).sum() / counts.sum())


def judged_metrics(ctx, scorable: Scorable, result: PreferenceResult, pairs: Sequence[ContrastPair]) -> dict[str, Any]:
    """The point's per-token margins and, unless the judge was refused, its judged generations."""
    record: dict[str, Any] = {"per_token_margins": per_token_margins(result, ctx.tokenizer, pairs).tolist()}
    study_judge: StudyJudge = ctx.judge
    if study_judge.judge is None:
        return record | {"judged": {"skipped": study_judge.refused}}
    started = time.perf_counter()
    replies = judge_generations(scorable.model, ctx.tokenizer, judge_prompts(ctx), study_judge.judge,
                                formatter=scorable.fmt, demonstrations=scorable.demonstrations,
                                settings=sampling(ctx.config), base_model=ctx.model,
                                batch_size=ctx.config.eval.batch_size)
    scores = summarise_judged(replies, reference_loglik=study_judge.reference_loglik)
    per_prompt = {name: scores.per_prompt[name].tolist() for name in GENERATION_METRICS}
    return record | {"judged": {"prompt_ids": scores.prompt_ids, "per_prompt": per_prompt, **scores.summary(),
                                **study_judge.summary, "wall_time_s": time.perf_counter() - started}}
