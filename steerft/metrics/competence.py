"""Is the base model competent at a metric's format at all, and is a method's change the behaviour?

A model that answers at chance is not reading the items, and differences between methods on that
metric are noise: a study must say so loudly rather than plot them. On two-answer formats (A/B
letters, Yes/No) plain accuracy hides this: a model that always says "No" scores the test split's
share of "No"-matching items. So the check judges two-answer formats by balanced accuracy (the
mean of the accuracies on the items each answer matches), which is 0.5 for any model whose choice
does not depend on the item, whatever its answer bias; and it says "passed" only when a one-sided
exact test puts the base model above chance at this test-set size.

Every function takes per-item margins log p(matching) - log p(not matching) (positive: the model
prefers the matching answer) and, for two-answer formats, each item's matching answer as named by
``steerft.data.answer_key`` (e.g. "A"/"B" or "Yes"/"No"; None for free completions).
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .preference import ABResult, PreferenceResult
from .stats import Numbers, binomial_band, binomial_upper_tail, central_quantiles, hypergeometric_pmf

ALPHA = 0.05
"""One-sided significance level of the test against chance."""

SHIFT_SHARE = 0.8
"""Share of the items of each matching answer that must move toward one answer to call it a shift."""


@dataclass(frozen=True)
class CompetenceVerdict:
    """The outcome of the competence check, for the report, the terminal and W&B.

    ``statistic`` is balanced accuracy for two-answer formats and accuracy otherwise;
    ``chance_band`` is where it falls 95% of the time for a model that does not read the items
    (at this test size and, for two-answer formats, this answer bias); ``p_value`` is the
    one-sided exact p-value against chance (None when it cannot be computed, e.g. every item
    matches the same answer). ``answer_shares`` is the share of items on which the model chose
    each answer: its answer bias. ``gating`` says whether a failed check makes effects on the metric
    uninterpretable: so for two-answer formats, where a model that does not read the items still
    shows answer-bias "effects"; not for free completions, whose margin is the model's own
    likelihood of the full answers, so a base preference near 0.5 is the behaviour's starting
    point rather than a format the model fails to read.
    """

    passed: bool
    statistic_name: str
    statistic: float
    n: int
    chance_band: tuple[float, float]
    p_value: float | None
    per_answer_accuracy: dict[str, float]
    answer_shares: dict[str, float]
    message: str
    gating: bool = True

    def as_dict(self) -> dict:
        return {"passed": self.passed, "statistic_name": self.statistic_name, "statistic": self.statistic,
                "n": self.n, "chance_band": list(self.chance_band), "p_value": self.p_value,
                "per_answer_accuracy": self.per_answer_accuracy, "answer_shares": self.answer_shares,
                "message": self.message, "gating": self.gating}


def competence_check(result: Numbers | PreferenceResult | ABResult,
                     matching_answers: Sequence[str | None] | None = None, *, metric_name: str = "behaviour",
                     alpha: float = ALPHA) -> CompetenceVerdict:
    """Judge whether the base model is measurably above chance on the behaviour, answer bias removed.

    Two-answer formats (every item's matching answer named, two distinct answers): balanced
    accuracy, tested with a one-sided Fisher exact test on the 2x2 table of matching answer
    against chosen answer; with the table's margins fixed, balanced accuracy grows with its
    first cell, so this is exactly the permutation test of balanced accuracy. Otherwise:
    accuracy against 0.5 with a one-sided exact binomial test. An ``ABResult`` brings its own
    matching letters.
    """
    margins, answers = _margins_and_answers(result, matching_answers)
    correct = margins > 0  # ties count as wrong, as in PreferenceResult.accuracy
    names = sorted({a for a in answers if a is not None})
    if None in answers or not names:
        return _free_verdict(correct, metric_name, alpha)
    if len(names) == 1:
        return _single_answer_verdict(correct, names[0], metric_name)
    if len(names) > 2:
        raise ValueError(f"competence_check: two-answer items must share two answers, got {names}.")
    return _two_answer_verdict(correct, answers, names, metric_name, alpha)


def competence_warning(base_result: PreferenceResult | ABResult, *, metric_name: str,
                       matching_answers: Sequence[str | None] | None = None) -> str | None:
    """The check's message when a gating check fails (also warned): the base model is not measurably above
    chance on a two-answer format. None otherwise."""
    verdict = competence_check(base_result, matching_answers, metric_name=metric_name)
    if verdict.passed or not verdict.gating:
        return None
    warnings.warn(verdict.message, stacklevel=2)
    return verdict.message


@dataclass(frozen=True)
class AnswerShift:
    """How a method moved items between the two answers, relative to the base model.

    ``toward`` is the answer most items moved toward; ``share_toward`` gives, per matching
    answer, the share of its items that moved toward ``toward``; ``mean_change`` the mean margin
    change per matching answer (the effect reported per answer); ``flipped`` how many items
    changed their chosen answer. ``shifted`` is True when items of both matching answers moved
    toward the same answer: a preference for an answer (e.g. a letter direction), not the behaviour.
    """

    shifted: bool
    toward: str | None
    share_toward: dict[str, float]
    mean_change: dict[str, float]
    flipped: int
    n: int
    message: str | None


def answer_shift(base_margins: Numbers, method_margins: Numbers, matching_answers: Sequence[str | None], *,
                 share: float = SHIFT_SHARE) -> AnswerShift:
    """Detect a method whose change moves most items toward one answer regardless of which one matches.

    Margins are per item on the same test items, in the order of ``matching_answers``. An item
    moves toward its matching answer when its margin grows and toward the other answer when it
    shrinks. When each matching answer's items have at least ``share`` of them moving toward
    the same answer, the change is an answer shift.
    """
    base = torch.as_tensor(base_margins, dtype=torch.float64).flatten()
    steered = torch.as_tensor(method_margins, dtype=torch.float64).flatten()
    if not len(base) == len(steered) == len(matching_answers):
        raise ValueError(f"answer_shift: {len(base)} base margins, {len(steered)} method margins and "
                         f"{len(matching_answers)} matching answers must be one per test item.")
    names = sorted({a for a in matching_answers if a is not None})
    change = steered - base
    flipped = int(((base > 0) != (steered > 0)).sum())
    if len(names) != 2 or None in matching_answers:
        return AnswerShift(False, None, {}, {}, flipped, len(base), None)
    groups = {name: torch.tensor([a == name for a in matching_answers]) for name in names}
    mean_change = {name: change[mask].mean().item() for name, mask in groups.items()}
    best: tuple[float, str, dict[str, float]] | None = None
    for target in names:
        other = names[1 - names.index(target)]
        # toward `target`: its margin grows where it matches, shrinks where the other answer matches
        moved = {target: (change[groups[target]] > 0).double().mean().item(),
                 other: (change[groups[other]] < 0).double().mean().item()}
        if best is None or min(moved.values()) > min(best[2].values()):
            best = (min(moved.values()), target, moved)
    weakest, toward, moved = best
    shifted = weakest >= share
    message = None
    if shifted:
        parts = ", ".join(f"{moved[name]:.0%} of {name}-matching items" for name in names)
        message = (f"ANSWER SHIFT: the change moves items toward {toward!r} whichever answer matches ({parts}; "
                   f"{flipped} of {len(base)} items changed answer); it is a preference for an answer, not the "
                   "behaviour.")
    return AnswerShift(shifted, toward, moved, mean_change, flipped, len(base), message)


def _margins_and_answers(result: Numbers | PreferenceResult | ABResult,
                         matching_answers: Sequence[str | None] | None) -> tuple[torch.Tensor, list[str | None]]:
    if isinstance(result, ABResult):
        if matching_answers is None:
            matching_answers = [None if a is None else ("A" if a else "B") for a in result.matches_a]
        result = result.preference
    margins = result.margins if isinstance(result, PreferenceResult) else result
    margins = torch.as_tensor(margins, dtype=torch.float64).flatten()
    answers = list(matching_answers) if matching_answers is not None else [None] * len(margins)
    if len(answers) != len(margins):
        raise ValueError(f"competence_check: {len(margins)} margins but {len(answers)} matching answers.")
    if len(margins) == 0:
        raise ValueError("competence_check needs at least one test item.")
    return margins, answers


def _free_verdict(correct: torch.Tensor, metric_name: str, alpha: float) -> CompetenceVerdict:
    n, hits = len(correct), int(correct.sum())
    accuracy = hits / n
    band = binomial_band(n)
    p_value = binomial_upper_tail(hits, n)
    passed = p_value < alpha
    needed = _smallest_passing(lambda k: binomial_upper_tail(k, n), n, alpha)
    needs = (f"no accuracy over {n} items is above chance" if needed is None else
             f"above chance at this test size needs >= {needed / n:.3f}")
    detail = (f"accuracy {accuracy:.3f} over {n} items (chance 0.500; {needs}; one-sided exact binomial "
              f"p = {p_value:.3g})")
    if passed:
        message = f"The base model prefers the matching completion above chance on {metric_name}: {detail}."
    else:
        message = (f"The base model does not prefer the matching completion above chance on {metric_name}: {detail}. "
                   "Free completions have no answer format to fail: this is the behaviour's starting point, and "
                   "effects are shifts of the model's own likelihood of the full answers.")
    return CompetenceVerdict(passed, "accuracy", accuracy, n, band, p_value, {}, {}, message, gating=False)


def _single_answer_verdict(correct: torch.Tensor, answer: str, metric_name: str) -> CompetenceVerdict:
    n = len(correct)
    accuracy = correct.double().mean().item()
    message = (f"COMPETENCE NOT TESTABLE on {metric_name}: every one of the {n} test items matches {answer!r}, so "
               f"accuracy ({accuracy:.3f}) cannot be told apart from a preference for {answer!r}. Use a test split "
               "balanced by matching answer.")
    # every item matches `answer`, so the model chose it exactly on the items it got right
    return CompetenceVerdict(False, "accuracy", accuracy, n, (0.0, 1.0), None, {answer: accuracy},
                             {answer: accuracy}, message)


def _two_answer_verdict(correct: torch.Tensor, answers: list[str], names: list[str], metric_name: str,
                        alpha: float) -> CompetenceVerdict:
    first, second = names
    is_first = torch.tensor([a == first for a in answers])
    chose_first = torch.where(is_first, correct, ~correct)
    n, n_first = len(answers), int(is_first.sum())
    n_second, chosen_first = n - n_first, int(chose_first.sum())
    accuracy = {first: correct[is_first].double().mean().item(), second: correct[~is_first].double().mean().item()}
    balanced = (accuracy[first] + accuracy[second]) / 2

    def balanced_at(cell: int) -> float:  # balanced accuracy when `cell` first-matching items chose first
        return (cell / n_first + (n_second - (chosen_first - cell)) / n_second) / 2

    pmf = hypergeometric_pmf(n, n_first, chosen_first)

    def tail(cell: int) -> float:  # the one-sided exact p-value of `cell`
        return min(1.0, sum(pmf[cell:]))

    observed = int((chose_first & is_first).sum())
    p_value = tail(observed)
    low, high = central_quantiles(pmf)
    band = (balanced_at(low), balanced_at(high))
    shares = {first: chosen_first / n, second: 1 - chosen_first / n}
    passed = p_value < alpha
    needed = _smallest_passing(tail, min(chosen_first, n_first), alpha)
    if needed is not None:
        needs = f"above chance at this test size and answer bias needs >= {balanced_at(needed):.3f}"
    elif chosen_first in (0, n):  # whatever the items say
        needs = "a model that gives one answer to every item, as this one does, scores exactly 0.500"
    else:
        needs = f"with this answer bias no balanced accuracy over {n} items is above chance"
    per_answer = ", ".join(f"{name} {accuracy[name]:.3f}" for name in names)
    detail = (f"balanced accuracy {balanced:.3f} over {n} items (accuracy on the items each answer matches: "
              f"{per_answer}; chance 0.500; {needs}; one-sided exact p = {p_value:.3g})")
    bias = f" The model chose {first!r} on {shares[first]:.0%} of items and {second!r} on {shares[second]:.0%}."
    return CompetenceVerdict(passed, "balanced accuracy", balanced, n, band, p_value, accuracy, shares,
                             _message(passed, metric_name, detail, alpha, bias))


def _smallest_passing(p_value: Callable[[int], float], top: int, alpha: float) -> int | None:
    """The smallest count in 0..top (the most the data allow) whose one-sided p-value is below alpha: the
    check's decision as a value to reach. None when no reachable count passes. p-values fall as counts grow."""
    first = bisect.bisect_left(range(top + 1), True, key=lambda count: p_value(count) < alpha)
    return first if first <= top else None


def _message(passed: bool, metric_name: str, detail: str, alpha: float, bias: str) -> str:
    if passed:
        return f"Competence check passed on {metric_name}: {detail}.{bias}"
    return (f"BASE MODEL AT CHANCE on {metric_name}: {detail}, not measurably above chance (p >= {alpha}).{bias} "
            "Differences between methods on this metric are meaningless, not behaviour changes; use a metric the "
            "base model is competent at (e.g. full-completion preference) or a stronger model.")
