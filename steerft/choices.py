"""The allowed values of steerft's named settings, in one place that imports no torch.

The modules that act on a setting import its values from here, and the `steerft` command checks
a config against them before anything heavy loads, so a typo fails in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

POSITIONS = ("all", "prompt", "completion")  # the tokens a steering vector acts on (SteerConfig.positions)
OPERATORS = ("add", "ablate", "ablate_add")  # how it acts on them (SteerConfig.operator)
REDUCTIONS = ("last", "mean")  # how a completion's activations become one vector (steerft.extract)
ESTIMATOR_NAMES = ("mean_diff", "pca", "logistic", "ccs")  # the direction estimators (steerft.extract.ESTIMATORS)
TRAINING_METHODS = ("sft", "dpo")  # the TRL trainers steerft.training builds


def in_order(names: tuple[str, ...], entries: Mapping[str, T], what: str) -> dict[str, T]:
    """`entries` keyed and ordered by `names`. A name without an entry, or an entry without a name, fails
    at import: the light list the CLI checks and the heavy registry that runs must never drift apart."""
    missing, extra = sorted(set(names) - set(entries)), sorted(set(entries) - set(names))
    if missing or extra:
        raise RuntimeError(f"{what}: names without an entry {missing}, entries without a name {extra}.")
    return {name: entries[name] for name in names}
