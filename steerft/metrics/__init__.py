"""Method-agnostic evaluation: any causal LM (PEFT-wrapped or not) is scored the same way.

Prompting methods are expressed by the prompts they pass; adapters by the model. Behaviour metrics
(completion preference, A/B probability, anti-steerable fraction) sit next to side effects (KL to
the base on neutral prompts, cross-entropy on general text), greedy samples, and sampled replies judged
offline for behaviour with fluency beside them, plus the statistics
a study reports (t-intervals, a loud warning when the base model is at chance on a format).
"""

from .competence import AnswerShift, CompetenceVerdict, answer_shift, competence_check, competence_warning
from .fluency import fluency_score, harmonic_mean, reply_loglik, repetition_rate
from .generation import generate_samples
from .judge import (
    ClassifierJudge,
    FittedJudge,
    GenerationScores,
    HeldOutAccuracy,
    Judge,
    JudgedReply,
    JudgeError,
    SamplingSettings,
    fit_judge,
    judge_generations,
    per_token_margins,
    sample_replies,
    summarise_judged,
)
from .logprobs import completion_logprobs
from .preference import (
    ABResult,
    PreferenceResult,
    ab_probability,
    ab_result,
    answer_letter,
    anti_steerable_fraction,
    pair_rows,
    preference,
    preference_results,
    steerability,
)
from ._forward import as_base, pad_id
from .site_cache import (
    DEFAULT_RECORD_CAP,
    BaseRecord,
    Steering,
    record_base,
    shared_prompt_logprobs,
    site_logprobs,
    supports_site_cache,
)
from .side_effects import base_log_distributions, batch_kl, cross_entropy, kl_to_base, reference_continuations
from .stats import Interval, chance_band, distinguishable_from_zero, mean_ci95, paired_interval, t_critical

__all__ = [
    "ABResult",
    "AnswerShift",
    "BaseRecord",
    "ClassifierJudge",
    "CompetenceVerdict",
    "DEFAULT_RECORD_CAP",
    "FittedJudge",
    "GenerationScores",
    "HeldOutAccuracy",
    "Interval",
    "Judge",
    "JudgedReply",
    "JudgeError",
    "PreferenceResult",
    "SamplingSettings",
    "Steering",
    "ab_probability",
    "ab_result",
    "answer_letter",
    "answer_shift",
    "anti_steerable_fraction",
    "as_base",
    "base_log_distributions",
    "batch_kl",
    "chance_band",
    "competence_check",
    "competence_warning",
    "completion_logprobs",
    "cross_entropy",
    "distinguishable_from_zero",
    "fit_judge",
    "fluency_score",
    "generate_samples",
    "harmonic_mean",
    "judge_generations",
    "kl_to_base",
    "mean_ci95",
    "pad_id",
    "pair_rows",
    "paired_interval",
    "per_token_margins",
    "preference",
    "preference_results",
    "record_base",
    "reference_continuations",
    "repetition_rate",
    "reply_loglik",
    "sample_replies",
    "shared_prompt_logprobs",
    "site_logprobs",
    "steerability",
    "summarise_judged",
    "supports_site_cache",
    "t_critical",
]
