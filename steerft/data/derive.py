"""Every method's training data, derived from the same items through the same formatter.

Deriving all of it here is what makes comparisons fair: CAA, SFT and DPO see the same prompts
and completions, differing only in how they use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerft.data.format import PromptFormatter
from steerft.data.items import BehaviourItem, Statement

if TYPE_CHECKING:
    import datasets

STATEMENT_QUESTION = "Is the following statement true or false?\n\n{statement}"


@dataclass(frozen=True)
class ContrastPair:
    """One prompt with a positive and a negative completion; read activations on each."""

    prompt: str
    positive: str
    negative: str
    id: str


def contrast_pairs(items: Sequence[BehaviourItem], fmt: PromptFormatter) -> list[ContrastPair]:
    """Prompt + matching completion (positive) against prompt + non-matching one (negative)."""
    return [ContrastPair(prompt=fmt.prompt(item), positive=fmt.completion(item.matching),
                         negative=fmt.completion(item.not_matching), id=item.id) for item in items]


def sft_rows(items: Sequence[BehaviourItem], fmt: PromptFormatter) -> datasets.Dataset:
    """TRL's prompt-completion format (templated text), so the loss covers only the completion."""
    import datasets  # deferred: slow to import, and only the trainers need a Dataset

    pairs = contrast_pairs(items, fmt)
    return datasets.Dataset.from_dict({"prompt": [p.prompt for p in pairs],
                                       "completion": [p.positive for p in pairs]})


def preference_rows(items: Sequence[BehaviourItem], fmt: PromptFormatter) -> datasets.Dataset:
    """TRL's preference format: chosen = matching, rejected = non-matching, on the same prompt."""
    import datasets  # deferred: slow to import, and only the trainers need a Dataset

    pairs = contrast_pairs(items, fmt)
    return datasets.Dataset.from_dict({"prompt": [p.prompt for p in pairs],
                                       "chosen": [p.positive for p in pairs],
                                       "rejected": [p.negative for p in pairs]})


def statement_pairs(statements: Sequence[Statement],
                    fmt: PromptFormatter) -> tuple[list[ContrastPair], list[bool]]:
    """CCS's x+/x- construction: the same question answered "True" and "False", and the truth.

    The labels are returned apart from the pairs so that unsupervised methods cannot use them
    by accident.
    """
    pairs = [ContrastPair(prompt=fmt.prompt(STATEMENT_QUESTION.format(statement=s.text)),
                          positive=fmt.completion("True"), negative=fmt.completion("False"), id=s.id)
             for s in statements]
    return pairs, [s.label for s in statements]
