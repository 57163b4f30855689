"""steerft.metrics.judge and .fluency against hand computations on tiny random models."""

from __future__ import annotations

import math
import random

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaForSequenceClassification

from steerft import SteerConfig
from steerft.batching import text_ids
from steerft.data import BehaviourItem, ContrastPair, PromptFormatter
from steerft.extract.activations import read_activations
from steerft.metrics import (
    ClassifierJudge,
    JudgeError,
    SamplingSettings,
    completion_logprobs,
    fit_judge,
    fluency_score,
    harmonic_mean,
    judge_generations,
    per_token_margins,
    preference,
    reply_loglik,
    repetition_rate,
    summarise_judged,
)
from steerft.metrics.generation import greedy_ids
from steerft.metrics.judge import binomial_p_above_half, encode_replies, sample_replies, wilson_interval
from steerft.testing import tiny_model

VOWELS, CONSONANTS = "aeiou", "bcdfg"


def _word(rng: random.Random, letters: str) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(4, 8)))


def _items(n: int, *, informative: bool, seed: int = 0) -> list[BehaviourItem]:
    """Matching completions made of vowels, non-matching of consonants (or both from one pool)."""
    rng = random.Random(seed)
    pool = VOWELS + CONSONANTS
    items = []
    for i in range(n):
        matching = _word(rng, VOWELS if informative else pool)
        not_matching = _word(rng, CONSONANTS if informative else pool)
        items.append(BehaviourItem(id=f"q{i}", prompt=f"Question {i}: say something.", matching=matching,
                                   not_matching=not_matching))
    return items


@pytest.fixture(scope="module")
def tiny():
    """A model no test wraps with PEFT (get_peft_model modifies its model in place)."""
    return tiny_model()


@pytest.fixture(scope="module")
def fitted(tiny):
    model, tokenizer = tiny
    return fit_judge(model, tokenizer, _items(40, informative=True), layer=2)


def _steered(layer: int = 0, multiplier: float = 8.0):
    model, tokenizer = tiny_model()
    return get_peft_model(model, SteerConfig(layers=[layer], init="random", multiplier=multiplier)), tokenizer


def test_fitted_judge_separates_token_identity(tiny, fitted):
    model, tokenizer = tiny
    assert fitted.held_out.n == 24  # 12 held-out items x 2 completions
    assert fitted.held_out.accuracy >= 0.9
    assert fitted.held_out.p_value < 1e-4
    fmt = PromptFormatter(tokenizer)
    scores = fitted.score([fmt.prompt("Another question?")] * 2, ["aeiouae", "bcdfgbc"], model=model)
    assert scores[0] > 0.5 > scores[1]
    summary = fitted.summary()
    assert summary["judge_layer"] == 2 and summary["judge_fit_n"] == 28


def test_fit_judge_refuses_label_shuffled_data(tiny):
    model, tokenizer = tiny
    with pytest.raises(JudgeError, match="near chance"):
        fit_judge(model, tokenizer, _items(40, informative=False), layer=2)


def test_fit_judge_rejects_too_few_items_and_bad_layer(tiny):
    model, tokenizer = tiny
    with pytest.raises(JudgeError, match="too few"):
        fit_judge(model, tokenizer, _items(2, informative=True))
    with pytest.raises(JudgeError, match="outside the model's 4 blocks"):
        fit_judge(model, tokenizer, _items(10, informative=True), layer=4)


def test_encoding_ignores_an_active_steering_adapter(tiny):
    base, tokenizer = tiny
    steered, _ = _steered(layer=0)
    fmt = PromptFormatter(tokenizer)
    prompts, replies = [fmt.prompt("Hi"), fmt.prompt("How are you?")], ["hello there", ""]
    from_base = encode_replies(base, tokenizer, prompts, replies, layer=2)
    from_steered = encode_replies(steered, tokenizer, prompts, replies, layer=2)
    assert torch.equal(from_base, from_steered)
    # the adapter does move this site when it is active, so the equality above is not vacuous
    active = read_activations(steered, tokenizer, prompts[:1], replies[:1], [2], reduce="mean")[2].double()
    assert not torch.allclose(active[0], from_base[0])


def test_reply_loglik_matches_hand_computation_with_adapter_disabled(tiny):
    model, tokenizer = tiny
    steered, _ = _steered(layer=1)
    prompt = PromptFormatter(tokenizer).prompt("Tell me a story.")
    reply = tokenizer("Once upon", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = text_ids(tokenizer, prompt) + reply
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    start = len(ids) - len(reply)
    by_hand = sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids))) / len(reply)
    for scored_by in (model, steered):
        loglik, counts = reply_loglik(scored_by, tokenizer, [prompt], [reply])
        assert counts.tolist() == [len(reply)]
        assert loglik.item() == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.parametrize(("text", "n", "rate"), [
    ("a b c a b c", 3, 1 / 4),  # abc bca cab abc: one of four trigrams repeats
    ("a a a a a", 3, 2 / 3),
    ("the cat sat on the mat", 3, 0.0),
    ("a b a", 1, 1 / 3),
    ("too short", 3, 0.0),
    ("", 3, 0.0),
])
def test_repetition_rate_exact(text, n, rate):
    assert repetition_rate(text, n) == pytest.approx(rate, abs=1e-15)


def test_harmonic_mean_and_fluency_score_exact():
    assert harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3, abs=1e-15)
    assert harmonic_mean(1.0, 1.0) == 1.0
    assert harmonic_mean(0.0, 0.7) == 0.0
    with pytest.raises(ValueError, match="behaviour score must be in"):
        harmonic_mean(1.5, 0.5)
    assert fluency_score(-1.0, 0.25) == pytest.approx(math.exp(-1) * 0.75, abs=1e-15)
    assert fluency_score(-3.0, 0.0, reference_loglik=-2.0) == pytest.approx(math.exp(-1), abs=1e-15)
    assert fluency_score(-1.0, 0.0, reference_loglik=-2.0) == 1.0


def test_binomial_test_and_wilson_interval():
    assert binomial_p_above_half(5, 5) == 1 / 32
    assert binomial_p_above_half(3, 4) == 5 / 16
    assert binomial_p_above_half(0, 3) == 1.0
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def _save_classifier(tmp_path, num_labels: int, id2label: dict[int, str] | None = None):
    model, tokenizer = tiny_model()
    config = model.config
    config.num_labels = num_labels
    if id2label:
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return classifier, tokenizer


def test_named_local_classifier_judge(tmp_path, tiny):
    classifier, tokenizer = _save_classifier(tmp_path, 2, {0: "NEG", 1: "POS"})
    judge = ClassifierJudge(str(tmp_path), behaviour_label="POS", batch_size=2)
    replies = ["a fine day", "awful", "it is what it is"]
    scores = judge.score(["p"] * 3, replies, model=tiny[0])
    for reply, score in zip(replies, scores):
        with torch.no_grad():
            logits = classifier(**tokenizer(reply, return_tensors="pt")).logits[0].double()
        assert score.item() == pytest.approx(logits.softmax(-1)[1].item(), abs=1e-5)
    assert judge.summary()["judge_label_index"] == 1
    with_prompt = ClassifierJudge(str(tmp_path), behaviour_label=1, with_prompt=True)
    assert with_prompt.score(["Q: hi. "], ["awful"]).item() == pytest.approx(
        judge.score(["unused"], ["Q: hi. awful"]).item(), abs=1e-12)
    with pytest.raises(JudgeError, match="0=NEG, 1=POS"):
        ClassifierJudge(str(tmp_path), behaviour_label="happy")


def test_one_logit_reward_model_reads_as_log_odds(tmp_path):
    classifier, tokenizer = _save_classifier(tmp_path, 1)
    score = ClassifierJudge(str(tmp_path)).score(["p"], ["nice"])
    with torch.no_grad():
        logit = classifier(**tokenizer("nice", return_tensors="pt")).logits[0, 0].double()
    assert score.item() == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)


def test_greedy_settings_reproduce_greedy_generation(tiny):
    model, tokenizer = tiny
    prompts = [PromptFormatter(tokenizer).prompt(q) for q in ("Hi", "What is 2 + 2?")]
    settings = SamplingSettings(samples_per_prompt=1, max_new_tokens=6, temperature=0)
    greedy = sample_replies(model, tokenizer, prompts, settings)
    assert [samples[0] for samples in greedy] == greedy_ids(model, tokenizer, prompts, max_new_tokens=6, batch_size=8)
    with pytest.raises(JudgeError, match="samples_per_prompt=1"):
        SamplingSettings(samples_per_prompt=2, temperature=0)


def test_judge_generations_records_and_per_prompt_summary(tiny, fitted):
    model, tokenizer = tiny
    held_out = _items(3, informative=True, seed=1)
    settings = SamplingSettings(samples_per_prompt=2, max_new_tokens=5, seed=3)
    state = torch.random.get_rng_state()
    replies = judge_generations(model, tokenizer, held_out, fitted, settings=settings)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    again = judge_generations(model, tokenizer, held_out, fitted, settings=settings)
    assert replies == again
    assert [(r.prompt_id, r.sample) for r in replies] == [(f"q{i}", s) for i in range(3) for s in range(2)]
    assert all(0 <= r.behaviour <= 1 and 1 <= r.n_tokens <= 5 and r.loglik_per_token < 0 for r in replies)
    scores = summarise_judged(replies)
    assert scores.prompt_ids == ["q0", "q1", "q2"] and scores.n_replies == 6
    first = replies[:2]
    assert scores.per_prompt["behaviour"][0].item() == pytest.approx(sum(r.behaviour for r in first) / 2, abs=1e-12)
    fluency = [fluency_score(r.loglik_per_token, r.repetition) for r in first]
    aggregate = sum(harmonic_mean(r.behaviour, f) for r, f in zip(first, fluency)) / 2
    assert scores.per_prompt["aggregate"][0].item() == pytest.approx(aggregate, abs=1e-12)
    summary = scores.summary()
    assert summary["n_prompts"] == 3
    assert summary["behaviour_ci_low"] <= summary["behaviour_mean"] <= summary["behaviour_ci_high"]


def test_per_token_margins_divide_by_completion_tokens(tiny):
    model, tokenizer = tiny
    prompt = PromptFormatter(tokenizer).prompt("Pick one.")
    pairs = [ContrastPair(prompt, "yes", "no thanks", "a"), ContrastPair(prompt, "sure thing", "x", "b")]
    result = preference(model, tokenizer, pairs)
    margins = per_token_margins(result, tokenizer, pairs)
    positive = completion_logprobs(model, tokenizer, [prompt] * 2, ["yes", "sure thing"])
    negative = completion_logprobs(model, tokenizer, [prompt] * 2, ["no thanks", "x"])
    # the byte-level tiny tokenizer has one token per ASCII character
    tokens = lambda *counts: torch.tensor(counts, dtype=torch.float64)  # noqa: E731
    expected = positive / tokens(3, 10) - negative / tokens(9, 1)
    assert torch.allclose(margins, expected, atol=1e-6)
    with pytest.raises(ValueError, match="same order"):
        per_token_margins(result, tokenizer, pairs[::-1])
