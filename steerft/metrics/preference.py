"""Behaviour metrics on held-out contrast pairs: completion preference, A/B probability, steerability.

All of them come from one quantity, the margin log p(positive) - log p(negative) of an item's two
completions, so they agree by construction and a study can derive any of them from saved margins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import EncodedRow, encode
from ..data import ContrastPair
from ._forward import pad_id
from .site_cache import shared_prompt_logprobs
from .stats import Numbers, mean_ci95


@dataclass(frozen=True)
class PreferenceResult:
    """Per-item margins log p(positive) - log p(negative); positive means the behaviour is preferred."""

    ids: list[str]
    logp_positive: torch.Tensor
    logp_negative: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.logp_positive - self.logp_negative

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def accuracy(self) -> float:
        """Share of items whose positive completion is more likely (ties count as wrong)."""
        return (self.margins > 0).double().mean().item()

    @property
    def mean_margin(self) -> float:
        return self.margins.mean().item()

    def summary(self) -> dict[str, float | int]:
        _, low, high = mean_ci95(self.margins)
        return {"n": self.n, "accuracy": self.accuracy, "mean_margin": self.mean_margin,
                "mean_margin_ci_low": low, "mean_margin_ci_high": high}


def preference(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[ContrastPair], *, batch_size: int = 16
) -> PreferenceResult:
    """Score both completions of every held-out pair, each prompt run once for both (`shared_prompt_logprobs`)."""
    if not pairs:
        raise ValueError("preference needs at least one contrast pair.")
    logprobs = shared_prompt_logprobs(model, pair_rows(tokenizer, pairs), batch_size=batch_size, pad=pad_id(tokenizer))
    return preference_results(pairs, logprobs[None])[0]


def pair_rows(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[ContrastPair]) -> list[EncodedRow]:
    """Every pair's positive completion row, then every negative one (the order `preference_results` reads)."""
    return ([encode(tokenizer, pair.prompt, pair.positive) for pair in pairs]
            + [encode(tokenizer, pair.prompt, pair.negative) for pair in pairs])


def preference_results(pairs: Sequence[ContrastPair], logprobs: torch.Tensor) -> list[PreferenceResult]:
    """One result per candidate from (candidates, rows) log-probability sums over `pair_rows(pairs)`."""
    n = len(pairs)
    return [PreferenceResult(ids=[pair.id for pair in pairs], logp_positive=row[:n], logp_negative=row[n:])
            for row in logprobs]


_LETTER = re.compile(r"\s*\(?([A-Z])\)?\s*")


def answer_letter(completion: str) -> str | None:
    """"A" for completions like " (A)", "(A)" or "A"; None for anything else."""
    match = _LETTER.fullmatch(completion)
    return match.group(1) if match else None


@dataclass(frozen=True)
class ABResult:
    """Behaviour probability on A/B items, with the answer-letter bias that can fake or hide it.

    ``matches_a[i]`` is True when the matching answer of item i is "A", False when the other one
    is, None when the item's answers are not a pair of letters including "A".
    """

    preference: PreferenceResult
    matches_a: tuple[bool | None, ...]

    @property
    def p_matching(self) -> torch.Tensor:
        """p(match) / (p(match) + p(not)) per item: the two answer strings normalised against each other."""
        return torch.sigmoid(self.preference.margins)

    @property
    def mean(self) -> float:
        return self.p_matching.mean().item()

    @property
    def share_above_half(self) -> float:
        return self.preference.accuracy

    @property
    def p_a(self) -> torch.Tensor:
        """Normalised p of the "A" answer on the items that have one (the model's letter preference)."""
        keep = [i for i, a in enumerate(self.matches_a) if a is not None]
        is_a = torch.tensor([self.matches_a[i] for i in keep], dtype=torch.bool)
        p = self.p_matching[keep]
        return torch.where(is_a, p, 1 - p)

    @property
    def a_items(self) -> int:
        return sum(a is not None for a in self.matches_a)

    @property
    def letter_bias(self) -> float | None:
        """Mean normalised p of "A": 0.5 is no bias; None when no item has letter answers."""
        return self.p_a.mean().item() if self.a_items else None

    @property
    def a_matching_share(self) -> float | None:
        """Share of letter items whose matching answer is "A": 0.5 when the dataset is balanced."""
        return sum(a is True for a in self.matches_a) / self.a_items if self.a_items else None

    def summary(self) -> dict[str, float | int | None]:
        _, low, high = mean_ci95(self.p_matching)
        return {"n": self.preference.n, "p_matching": self.mean, "p_matching_ci_low": low, "p_matching_ci_high": high,
                "share_above_half": self.share_above_half, "letter_bias": self.letter_bias,
                "a_matching_share": self.a_matching_share}


def ab_probability(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[ContrastPair], *, batch_size: int = 16
) -> ABResult:
    """A/B behaviour probability as CAA reports it, normalised over the two answer strings.

    Each answer string is scored whole (e.g. " (A)" as " (", "A", ")"), so multi-token answers are
    handled and a shared prefix such as " (" cancels in the normalisation. Balancing which letter
    is the matching answer is the dataset's job: with an unbalanced dataset a letter bias shows up
    as (anti-)behaviour. ``letter_bias`` shows the model's own preference for "A" so it can be
    checked on the base model; ``a_matching_share`` shows the dataset's balance.
    """
    return ab_result(preference(model, tokenizer, pairs, batch_size=batch_size), pairs)


def ab_result(result: PreferenceResult, pairs: Sequence[ContrastPair]) -> ABResult:
    """`result` (scored on `pairs`) read as A/B behaviour probability, e.g. from base scores computed earlier."""
    return ABResult(result, tuple(_matches_a(pair) for pair in pairs))


def _matches_a(pair: ContrastPair) -> bool | None:
    letters = answer_letter(pair.positive), answer_letter(pair.negative)
    if None in letters or letters[0] == letters[1] or "A" not in letters:
        return None
    return letters[0] == "A"


def steerability(base_margins: Numbers, steered_margins: Numbers) -> torch.Tensor:
    """Per-item margin change steered - base (Tan et al. 2024: steerability varies per item)."""
    base = torch.as_tensor(base_margins, dtype=torch.float64)
    steered = torch.as_tensor(steered_margins, dtype=torch.float64)
    if base.shape != steered.shape or base.ndim != 1 or base.numel() == 0:
        raise ValueError(f"Need two non-empty 1-D margin arrays over the same items; got shapes "
                         f"{tuple(base.shape)} and {tuple(steered.shape)}.")
    return steered - base


def anti_steerable_fraction(base_margins: Numbers, steered_margins: Numbers, *, direction: int = 1) -> float:
    """Share of items a method moved the wrong way: margin change of the opposite sign to `direction`.

    ``direction`` is +1 when the method should raise the margin (towards the behaviour), -1 when it
    should lower it. Unchanged items are not counted as anti-steerable.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    return (steerability(base_margins, steered_margins) * direction < 0).double().mean().item()
