"""steerft.metrics against hand computations on tiny random models."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from peft import get_peft_model

from steerft import SteerConfig
from steerft.batching import encode
from steerft.data import ContrastPair, PromptFormatter
from steerft.metrics import (
    PreferenceResult,
    ab_probability,
    answer_letter,
    anti_steerable_fraction,
    competence_check,
    competence_warning,
    completion_logprobs,
    cross_entropy,
    generate_samples,
    kl_to_base,
    mean_ci95,
    preference,
    reference_continuations,
    steerability,
    t_critical,
)
from steerft.testing import tiny_model

QUESTIONS = ["Is the sky blue?", "Would you like to have more power over people?", "Pick one.", "What is 2 + 2?"]
COMPLETIONS = [" (A)", " Yes, absolutely and without any doubt.", " no", " 4"]
NEUTRAL = ["Explain how a bicycle gear works.", "List three uses for a paperclip.", "Hi", "Describe the water cycle."]


@pytest.fixture(scope="module")
def tiny():
    """A model no test wraps with PEFT (get_peft_model modifies its model in place)."""
    return tiny_model()


def _prompts(tokenizer) -> list[str]:
    fmt = PromptFormatter(tokenizer)
    return [fmt.prompt(q) for q in QUESTIONS]


def _by_hand(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion | prompt) from one unpadded forward and an explicit log-softmax."""
    row = encode(tokenizer, prompt, completion)
    ids = torch.tensor([row.ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].double().log_softmax(-1)
    return sum(logprobs[t - 1, row.ids[t]].item() for t in range(row.prompt_length, len(row.ids)))


def _steered(positions: str = "all", init="random", layers=(1,), multiplier: float = 4.0, seed: int = 0):
    model, tokenizer = tiny_model()
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        init = torch.randn(model.config.hidden_size, generator=generator)
    config = SteerConfig(layers=list(layers), positions=positions, init=init, multiplier=multiplier)
    return get_peft_model(model, config), tokenizer


# ------------------------------------------------------------------ completion log-probabilities

def test_completion_logprobs_match_hand_log_softmax(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    scores = completion_logprobs(model, tokenizer, prompts, COMPLETIONS)
    expected = torch.tensor([_by_hand(model, tokenizer, p, c) for p, c in zip(prompts, COMPLETIONS)], dtype=torch.float64)
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_one_by_one_under_either_padding(tiny, padding_side):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    batched = completion_logprobs(model, tokenizer, prompts, COMPLETIONS, batch_size=4, padding_side=padding_side)
    single = torch.cat([completion_logprobs(model, tokenizer, [p], [c]) for p, c in zip(prompts, COMPLETIONS)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_scoring_restores_train_mode_and_needs_no_grad(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        scores = completion_logprobs(model, tokenizer, _prompts(tokenizer)[:1], COMPLETIONS[:1])
        assert model.training and not scores.requires_grad
    finally:
        model.eval()


def test_completion_logprobs_refuse_mismatched_lengths(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="one completion per prompt"):
        completion_logprobs(model, tokenizer, ["a", "b"], [" c"])


def test_completion_positions_steer_the_scored_tokens():
    completion_model, tokenizer = _steered("completion")
    prompt_model, _ = _steered("prompt")
    prompts = _prompts(tokenizer)
    on_completion = completion_logprobs(completion_model, tokenizer, prompts, COMPLETIONS)
    on_prompt = completion_logprobs(prompt_model, tokenizer, prompts, COMPLETIONS)
    with completion_model.disable_adapter():
        base = completion_logprobs(completion_model, tokenizer, prompts, COMPLETIONS)
    assert not torch.allclose(on_completion, on_prompt)
    assert not torch.allclose(on_completion, base)


# ------------------------------------------------------------------ preference and A/B probability

def _pairs(tokenizer, answers=((" (A)", " (B)"), (" (B)", " (A)"), (" (A)", " (B)"), (" yes", " no"))):
    return [ContrastPair(prompt=p, positive=pos, negative=neg, id=f"item-{i}")
            for i, (p, (pos, neg)) in enumerate(zip(_prompts(tokenizer), answers))]


def test_preference_margins_and_accuracy_from_hand_logprobs(tiny):
    model, tokenizer = tiny
    pairs = _pairs(tokenizer)
    result = preference(model, tokenizer, pairs, batch_size=3)
    margins = torch.tensor([_by_hand(model, tokenizer, p.prompt, p.positive) - _by_hand(model, tokenizer, p.prompt, p.negative)
                            for p in pairs], dtype=torch.float64)
    torch.testing.assert_close(result.margins, margins, atol=2e-5, rtol=0)
    assert result.ids == [p.id for p in pairs]
    assert result.accuracy == pytest.approx((margins > 0).double().mean().item())
    assert result.mean_margin == pytest.approx(margins.mean().item(), abs=1e-5)
    summary = result.summary()
    assert summary["n"] == 4 and summary["mean_margin_ci_low"] <= summary["mean_margin"] <= summary["mean_margin_ci_high"]


def test_ab_probability_normalises_over_the_two_answers(tiny):
    model, tokenizer = tiny
    pairs = _pairs(tokenizer)[:3]
    result = ab_probability(model, tokenizer, pairs)
    for pair, p in zip(pairs, result.p_matching.tolist()):
        match, other = (math.exp(_by_hand(model, tokenizer, pair.prompt, c)) for c in (pair.positive, pair.negative))
        assert p == pytest.approx(match / (match + other), abs=1e-5)
    p = result.p_matching.tolist()
    assert result.matches_a == (True, False, True)
    assert result.letter_bias == pytest.approx((p[0] + (1 - p[1]) + p[2]) / 3)
    assert result.a_matching_share == pytest.approx(2 / 3)
    assert result.share_above_half == pytest.approx(sum(x > 0.5 for x in p) / 3)


def test_answer_letters_and_non_letter_items(tiny):
    assert [answer_letter(a) for a in [" (A)", "(B)", "C", " (a)", " Yes", "(A) because"]] == ["A", "B", "C", None, None, None]
    model, tokenizer = tiny
    result = ab_probability(model, tokenizer, _pairs(tokenizer)[3:])
    assert result.matches_a == (None,) and result.letter_bias is None and result.a_matching_share is None


def test_anti_steerable_fraction_on_hand_made_margins():
    base = [0.0, 1.0, -1.0, 2.0, 0.5]
    steered = [1.0, 0.5, -1.0, 3.0, -2.0]  # changes +1, -0.5, 0, +1, -2.5
    torch.testing.assert_close(steerability(base, steered), torch.tensor([1.0, -0.5, 0.0, 1.0, -2.5], dtype=torch.float64))
    assert anti_steerable_fraction(base, steered) == pytest.approx(2 / 5)
    assert anti_steerable_fraction(base, steered, direction=-1) == pytest.approx(2 / 5)
    assert anti_steerable_fraction(base, [1.0, 2.0, 0.0, 3.0, 1.5]) == 0.0
    with pytest.raises(ValueError, match="direction"):
        anti_steerable_fraction(base, steered, direction=2)
    with pytest.raises(ValueError, match="same items"):
        anti_steerable_fraction(base, steered[:3])


# ------------------------------------------------------------------ side effects

def test_kl_is_zero_for_a_zero_adapter_and_positive_for_a_random_one():
    zero, tokenizer = _steered(init="zeros")
    prompts = _prompts(tokenizer)
    continuations = reference_continuations(zero, tokenizer, prompts, max_new_tokens=6)
    assert kl_to_base(zero, tokenizer, prompts, prompts, continuations, batch_size=3) < 1e-7
    steered, _ = _steered()
    assert kl_to_base(steered, tokenizer, prompts, prompts, continuations, batch_size=3) > 1e-4


def test_kl_with_base_model_equals_kl_with_disabled_adapter():
    steered, tokenizer = _steered()
    separate_base, _ = tiny_model()  # same weights, not wrapped
    prompts = _prompts(tokenizer)
    continuations = reference_continuations(separate_base, tokenizer, prompts, max_new_tokens=6)
    assert continuations == reference_continuations(steered, tokenizer, prompts, max_new_tokens=6)
    disabled = kl_to_base(steered, tokenizer, prompts, prompts, continuations)
    explicit = kl_to_base(steered, tokenizer, prompts, prompts, continuations, base_model=separate_base)
    assert disabled > 0 and explicit == pytest.approx(disabled, rel=1e-6)
    with pytest.raises(ValueError, match="wraps"):
        kl_to_base(steered, tokenizer, prompts, prompts, continuations, base_model=steered.get_base_model())


def test_kl_for_a_prompting_method(tiny):
    model, tokenizer = tiny
    base_prompts = [PromptFormatter(tokenizer).prompt(q) for q in NEUTRAL]
    method_prompts = [PromptFormatter(tokenizer, system_prompt="Always be very cheerful.").prompt(q) for q in NEUTRAL]
    continuations = reference_continuations(model, tokenizer, base_prompts, max_new_tokens=6)
    assert kl_to_base(model, tokenizer, base_prompts, base_prompts, continuations) == 0.0
    assert kl_to_base(model, tokenizer, base_prompts, method_prompts, continuations) > 1e-4
    with pytest.raises(ValueError, match="as many"):
        kl_to_base(model, tokenizer, base_prompts, method_prompts[:2], continuations)


def test_cross_entropy_matches_hand_computation(tiny):
    model, tokenizer = tiny
    texts = ["The river starts as a trickle high in the hills.", "Bread has been baked for thousands of years."]
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    assert cross_entropy(model, tokenizer, texts, batch_size=2) == pytest.approx(total / count, abs=1e-5)


# ------------------------------------------------------------------ generation

def test_generate_samples_batched_equals_one_by_one_and_keeps_padding_side(tiny):
    model, tokenizer = tiny
    prompts = [PromptFormatter(tokenizer).prompt(q) for q in NEUTRAL] + ["xyz", "Tell me a story about a dog"]
    tokenizer.padding_side = "right"
    batched = generate_samples(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    single = [generate_samples(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert batched == generate_samples(model, tokenizer, prompts, max_new_tokens=8, batch_size=6)
    assert tokenizer.padding_side == "right"
    assert len(set(batched)) > 1


def test_steered_generation_batched_equals_one_by_one():
    model, tokenizer = _steered("completion")
    prompts = ["Hi", "Tell me a story about a dog", "xyz"]
    batched = generate_samples(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert batched == [generate_samples(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]


# ------------------------------------------------------------------ competence and statistics

def _result(margins) -> PreferenceResult:
    margins = torch.tensor(margins, dtype=torch.float64)
    return PreferenceResult(ids=[str(i) for i in range(len(margins))], logp_positive=margins, logp_negative=torch.zeros_like(margins))


def test_competence_warning_fires_when_a_two_answer_format_is_at_chance_only():
    answers = ["Yes", "No"] * 20
    at_chance = _result([0.02, -0.03, 0.01, -0.01] * 10)
    with pytest.warns(UserWarning, match="AT CHANCE on preference"):
        message = competence_warning(at_chance, metric_name="preference", matching_answers=answers)
    assert message is not None and "meaningless" in message
    competent = _result([3.0, 2.0, 4.0, -0.5] * 10)  # every Yes item right, half the No items
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert competence_warning(competent, metric_name="preference", matching_answers=answers) is None
    confident_but_at_chance = _result([5.0, -5.0] * 20)  # always "Yes": confidence is not competence
    with pytest.warns(UserWarning, match="AT CHANCE"):
        assert competence_warning(confident_but_at_chance, metric_name="preference", matching_answers=answers)


def test_free_completion_verdict_is_reported_but_does_not_gate():
    half_right = _result([5.0, -5.0] * 20)
    verdict = competence_check(half_right, metric_name="preference")
    assert (verdict.passed, verdict.gating) == (False, False)
    assert "starting point" in verdict.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert competence_warning(half_right, metric_name="preference") is None
    assert competence_check(_result([3.0, 2.0, 4.0, -0.5] * 10), metric_name="preference").passed


def test_competence_warning_sees_a_pure_letter_bias(tiny):
    model, tokenizer = tiny
    result = ab_probability(model, tokenizer, _pairs(tokenizer)[:2])
    biased = type(result)(preference=_result([1.0, -1.0] * 20), matches_a=(True, False) * 20)
    assert biased.letter_bias == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    with pytest.warns(UserWarning, match="AT CHANCE"):
        assert competence_warning(biased, metric_name="A/B") is not None


def test_mean_ci95_matches_a_hand_t_interval():
    values = [1.0, 2.0, 3.0, 4.0]
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in values) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, df=3) from tables
    mean, low, high = mean_ci95(values)
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-9)
    assert mean_ci95([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        mean_ci95([])


@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                                          (9, 2.262157163), (30, 2.042272456), (200, 1.971896224)])
def test_t_critical_matches_tables(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=1e-7)
