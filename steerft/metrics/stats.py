"""Small statistics for study results, without a scipy dependency.

Studies report means over a handful of seeds, where a normal interval is too narrow: the
t-interval needs Student-t quantiles, computed here exactly for integer degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

Numbers = Sequence[float] | torch.Tensor

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""


def mean_ci95(values: Numbers) -> tuple[float, float, float]:
    """(mean, low, high) of a two-sided 95% t-interval for the mean; one value gives (x, x, x)."""
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    if data.numel() == 0:
        raise ValueError("mean_ci95 needs at least one value.")
    mean = data.mean().item()
    if data.numel() == 1:
        return mean, mean, mean
    half = t_critical(data.numel() - 1) * data.std(correction=1).item() / math.sqrt(data.numel())
    return mean, mean - half, mean + half


@lru_cache(maxsize=None)
def t_critical(df: int, level: float = 0.95) -> float:
    """The t with P(|T| < t) = level for Student's T with `df` degrees of freedom (bisection)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"Degrees of freedom must be a positive integer, got {df!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    low, high = 0.0, 1.0
    while t_coverage(high, df) < level:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_coverage(middle, df) < level else (low, middle)
    return (low + high) / 2


def t_coverage(t: float, df: int) -> float:
    """P(|T| < t) for Student's T with integer `df` (Abramowitz & Stegun 26.7.3-4, finite sums)."""
    theta = math.atan(t / math.sqrt(df))
    cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2 == 0:
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    for k in range(1, (df - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def chance_band(n: int, chance: float = 0.5) -> tuple[float, float]:
    """Where a share of n items answered at random (rate `chance`) falls 95% of the time (normal approx.)."""
    if n < 1:
        raise ValueError(f"chance_band needs n >= 1, got {n}.")
    half = Z95 * math.sqrt(chance * (1 - chance) / n)
    return chance - half, chance + half
