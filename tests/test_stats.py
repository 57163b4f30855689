"""Competence check, answer-shift detector and item-level intervals (issue 9), on data built for each failure."""

from __future__ import annotations

import math
import re

import pytest
import torch

from steerft.metrics import (
    ABResult,
    PreferenceResult,
    answer_shift,
    competence_check,
    competence_warning,
    distinguishable_from_zero,
    mean_ci95,
    paired_interval,
)
from steerft.metrics.stats import binomial_band, binomial_upper_tail, hypergeometric_pmf


def margins_choosing(choices: list[str], matching: list[str], size: float = 1.0) -> torch.Tensor:
    """Margins of a model that picks `choices[i]` on item i: positive when it picks the matching answer."""
    return torch.tensor([size if c == m else -size for c, m in zip(choices, matching)], dtype=torch.float64)


def test_random_ab_set_with_a_strong_letter_bias_fails() -> None:
    """Balanced A/B, a model that says (A) on 85% of items whichever letter matches: not passed."""
    matching = ["A", "B"] * 40
    choices = ["A" if (i // 2) % 20 < 17 else "B" for i in range(80)]  # 85% (A) within each matching letter
    verdict = competence_check(margins_choosing(choices, matching), matching, metric_name="A/B")
    assert not verdict.passed and verdict.statistic_name == "balanced accuracy" and verdict.statistic == 0.5
    assert verdict.chance_band[0] <= verdict.statistic <= verdict.chance_band[1]
    assert verdict.answer_shares == {"A": 0.85, "B": pytest.approx(0.15)} and verdict.p_value > 0.05
    assert verdict.message.startswith("BASE MODEL AT CHANCE on A/B")


def test_letter_biased_guessers_pass_at_most_at_the_tests_level() -> None:
    """Models that guess with an 85% (A) bias, on random facts: the check passes about 5% of them, not more."""
    g = torch.Generator().manual_seed(0)
    matching = ["A", "B"] * 40
    passed = 0
    for _ in range(400):
        choices = ["A" if r < 0.85 else "B" for r in torch.rand(80, generator=g).tolist()]
        passed += competence_check(margins_choosing(choices, matching), matching).passed
    assert passed / 400 <= 0.07


def test_always_no_on_a_57_43_yes_no_split_is_not_passed_and_the_bias_is_reported() -> None:
    matching = ["No"] * 34 + ["Yes"] * 26  # 57/43: plain accuracy of "always No" is 0.567
    verdict = competence_check(margins_choosing(["No"] * 60, matching), matching, metric_name="Yes/No")
    assert not verdict.passed and verdict.statistic == 0.5 and verdict.p_value == pytest.approx(1.0)
    assert verdict.per_answer_accuracy == {"No": 1.0, "Yes": 0.0}
    assert verdict.answer_shares == {"No": 1.0, "Yes": 0.0}
    assert "'No' on 100% of items" in verdict.message


def test_a_competent_model_passes_with_answer_bias_present() -> None:
    g = torch.Generator().manual_seed(1)
    matching = ["Yes"] * 30 + ["No"] * 30
    # right 80% of the time on "Yes" items and 70% on "No" items: competent, mildly biased
    rates = {"Yes": 0.8, "No": 0.7}
    choices = [m if r < rates[m] else ("No" if m == "Yes" else "Yes")
               for m, r in zip(matching, torch.rand(60, generator=g).tolist())]
    verdict = competence_check(margins_choosing(choices, matching), matching)
    assert verdict.passed and verdict.p_value < 0.01 and verdict.statistic > verdict.chance_band[1]
    assert verdict.message.startswith("Competence check passed")


def test_threshold_is_a_test_at_the_test_set_size() -> None:
    """The same balanced accuracy (0.6) passes with many items and fails with few: no fixed constant."""
    def model(n: int) -> tuple[torch.Tensor, list[str]]:
        matching = ["A", "B"] * (n // 2)
        choices = [m if (i // 2) % 5 < 3 else ("B" if m == "A" else "A") for i, m in enumerate(matching)]
        return margins_choosing(choices, matching), matching

    few, many = competence_check(*model(20)), competence_check(*model(400))
    assert few.statistic == pytest.approx(0.6) == many.statistic
    assert not few.passed and many.passed
    assert many.chance_band[1] - many.chance_band[0] < few.chance_band[1] - few.chance_band[0]


def printed_threshold(message: str) -> float | None:
    """The "above chance ... needs >= X" value a verdict's message states (None when it says nothing passes)."""
    found = re.search(r"needs >= (\d\.\d{3})", message)
    return float(found.group(1)) if found else None


@pytest.mark.parametrize("n", [4, 10, 50])
def test_the_printed_accuracy_threshold_is_the_binomial_tests_decision(n: int) -> None:
    for hits in range(n + 1):
        verdict = competence_check(torch.tensor([1.0] * hits + [-1.0] * (n - hits)))
        threshold = printed_threshold(verdict.message)
        assert verdict.passed == (threshold is not None and round(verdict.statistic, 3) >= threshold)
        assert "chance 0.500" in verdict.message and "chance band" not in verdict.message
    assert threshold is None if n == 4 else threshold is not None  # 4 items cannot reach p < 0.05


@pytest.mark.parametrize("chose_a, can_pass", [(3, False), (10, True), (14, True), (19, False)])
def test_the_printed_balanced_accuracy_threshold_is_the_exact_tests_decision_at_this_answer_bias(chose_a, can_pass):
    """Whatever the answer bias, the message's threshold passes exactly the balanced accuracies the test passes."""
    matching = ["A"] * 10 + ["B"] * 10
    for cell in range(max(0, chose_a - 10), min(chose_a, 10) + 1):  # A-matching items answered A
        choices = ["A"] * cell + ["B"] * (10 - cell) + ["A"] * (chose_a - cell) + ["B"] * (10 - chose_a + cell)
        verdict = competence_check(margins_choosing(choices, matching), matching)
        threshold = printed_threshold(verdict.message)
        assert verdict.passed == (threshold is not None and round(verdict.statistic, 3) >= threshold)
        assert "chance band" not in verdict.message
    # with 3 or 19 of 20 answers A, even the best table has p >= 0.05: the message says nothing can pass
    assert (threshold is not None) == can_pass
    assert ("with this answer bias no balanced accuracy over 20 items is above chance" in verdict.message) != can_pass


def test_one_answer_to_every_item_is_exactly_chance_and_says_so() -> None:
    matching = ["A", "B"] * 10
    verdict = competence_check(margins_choosing(["B"] * 20, matching), matching)
    assert verdict.statistic == 0.5 and verdict.p_value == pytest.approx(1.0) and not verdict.passed
    assert "a model that gives one answer to every item, as this one does, scores exactly 0.500" in verdict.message


def test_free_completions_use_an_exact_binomial_test() -> None:
    verdict = competence_check(torch.tensor([1.0] * 33 + [-1.0] * 17))  # 66% of 50
    assert verdict.statistic_name == "accuracy" and verdict.passed
    assert verdict.p_value == pytest.approx(binomial_upper_tail(33, 50))
    assert not competence_check(torch.tensor([1.0] * 29 + [-1.0] * 21)).passed  # 58% of 50: inside the band


def test_single_answer_split_cannot_be_judged() -> None:
    verdict = competence_check(torch.ones(10), ["A"] * 10)
    assert not verdict.passed and verdict.p_value is None and "cannot be told apart" in verdict.message


def test_abresult_brings_its_letters_and_the_warning_keeps_its_name() -> None:
    margins = torch.tensor([1.0, -1.0] * 20, dtype=torch.float64)
    result = ABResult(PreferenceResult([str(i) for i in range(40)], margins, torch.zeros(40, dtype=torch.float64)),
                      matches_a=(True, False) * 20)  # always (A)
    assert competence_check(result).answer_shares == {"A": 1.0, "B": 0.0}
    with pytest.warns(UserWarning, match="BASE MODEL AT CHANCE"):
        assert competence_warning(result, metric_name="A/B") is not None


def test_exact_tails_match_hand_values() -> None:
    assert binomial_upper_tail(10, 10) == pytest.approx(2 ** -10)
    assert binomial_upper_tail(0, 7) == pytest.approx(1.0)
    assert sum(hypergeometric_pmf(20, 8, 10)) == pytest.approx(1.0)
    assert hypergeometric_pmf(4, 2, 2) == pytest.approx([1 / 6, 4 / 6, 1 / 6])
    low, high = binomial_band(100)
    assert 0.39 <= low <= 0.41 and 0.59 <= high <= 0.61


# --- answer shifts ---------------------------------------------------------------------------------

def test_a_letter_direction_is_called_an_answer_shift() -> None:
    """Gemma's 68/68 (A)->(B) flip: every item moves toward B whichever letter matches."""
    matching = ["A", "B"] * 34
    base = margins_choosing(["A"] * 68, matching)
    steered = margins_choosing(["B"] * 68, matching)
    shift = answer_shift(base, steered, matching)
    assert shift.shifted and shift.toward == "B" and shift.flipped == 68
    assert shift.share_toward == {"A": 1.0, "B": 1.0}
    assert shift.mean_change == {"A": -2.0, "B": 2.0}
    assert "ANSWER SHIFT" in shift.message


def test_a_behaviour_change_is_not_an_answer_shift() -> None:
    matching = ["Yes", "No"] * 30
    base = torch.zeros(60, dtype=torch.float64)
    steered = base + 1.5  # every item moves toward its matching answer
    shift = answer_shift(base, steered, matching)
    assert not shift.shifted and shift.message is None and shift.flipped == 60
    free = answer_shift(base, steered, [None] * 60)
    assert not free.shifted and free.toward is None


# --- intervals ---------------------------------------------------------------------------------------

def _correlated(n_items: int, n_seeds: int, effect: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item margins with a large item spread (sd 10) shared by baseline and method, small noise."""
    item = 10 * torch.randn(n_items, generator=g, dtype=torch.float64)
    baseline = item + 0.5 * torch.randn(n_items, generator=g, dtype=torch.float64)
    method = item + effect + 0.5 * torch.randn(n_seeds, n_items, generator=g, dtype=torch.float64)
    return method, baseline


def test_paired_interval_is_narrower_than_unpaired_on_correlated_items() -> None:
    method, baseline = _correlated(60, 1, 0.8, torch.Generator().manual_seed(0))
    paired = paired_interval(method, baseline)
    unpaired_half = 1.96 * math.sqrt(method.var().item() / 60 + baseline.var().item() / 60)
    assert paired.high - paired.low < 0.2 * 2 * unpaired_half
    assert distinguishable_from_zero(paired) and not abs(paired.mean - 0.8) > 0.5


def test_paired_interval_covers_the_truth_in_a_seeded_simulation() -> None:
    """Across 200 simulated studies (3 seeds, 40 items) the 95% interval covers the true effect ~95%."""
    g = torch.Generator().manual_seed(2)
    covered = 0
    for run in range(200):
        method, baseline = _correlated(40, 3, 0.3, g)
        interval = paired_interval(method, baseline, n_boot=1000, seed=run)
        covered += interval.low <= 0.3 <= interval.high
    assert 0.88 <= covered / 200 <= 0.99


def test_one_seed_still_gets_an_interval_and_seeds_widen_it() -> None:
    g = torch.Generator().manual_seed(3)
    method, baseline = _correlated(50, 4, 0.0, g)
    one = paired_interval(method[0], baseline)
    assert one.low < one.mean < one.high
    seed_offsets = torch.tensor([[-2.0], [2.0], [-1.0], [1.0]], dtype=torch.float64)  # seeds disagree
    with_seeds = paired_interval(method + seed_offsets, baseline)
    agreeing = paired_interval(method, baseline)
    assert with_seeds.high - with_seeds.low > agreeing.high - agreeing.low
    assert not distinguishable_from_zero(with_seeds)


def test_intervals_of_non_negative_quantities_stay_at_or_above_zero() -> None:
    kl_per_item = torch.tensor([0.0] * 45 + [30.0] * 5, dtype=torch.float64)  # skewed, mostly zero
    assert paired_interval(kl_per_item).low >= 0
    wall_times = [0.01, 0.02, 5.0]  # a t-interval over three seeds would go below 0
    assert mean_ci95(wall_times).low < 0
    clipped = mean_ci95(wall_times, nonnegative=True)
    assert clipped.low == 0.0 and clipped.high == mean_ci95(wall_times).high
    with pytest.raises(ValueError, match="negative"):
        mean_ci95([-1.0, 1.0], nonnegative=True)


def test_paired_interval_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        paired_interval(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        paired_interval([])
