"""Small statistics for study results, without a scipy dependency.

Studies report means over a handful of seeds, where a normal interval is too narrow: the
t-interval needs Student-t quantiles, computed here exactly for integer degrees of freedom.
Effects are compared with a paired bootstrap over test items (and seeds), and tests against
chance use exact binomial and hypergeometric tails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import torch

Numbers = Sequence[float] | torch.Tensor

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""


class Interval(NamedTuple):
    """A mean and its two-sided interval; unpacks as ``mean, low, high``."""

    mean: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        return not self.low <= value <= self.high



def mean_ci95(values: Numbers, *, nonnegative: bool = False) -> Interval:
    """(mean, low, high) of a two-sided 95% t-interval for the mean; one value gives (x, x, x).

    ``nonnegative=True`` (KL, wall time) clips the lower end at 0: the true mean cannot be below
    0, so clipping removes only impossible values and keeps the interval's coverage.
    """
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    if data.numel() == 0:
        raise ValueError("mean_ci95 needs at least one value.")
    if nonnegative and bool((data < 0).any()):
        raise ValueError("mean_ci95(nonnegative=True) got negative values.")
    mean = data.mean().item()
    if data.numel() == 1:
        return Interval(mean, mean, mean)
    half = t_critical(data.numel() - 1) * data.std(correction=1).item() / math.sqrt(data.numel())
    return Interval(mean, max(mean - half, 0.0) if nonnegative else mean - half, mean + half)


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


def distinguishable_from_zero(interval: Interval | tuple[float, float, float]) -> bool:
    """Whether an effect's interval lies wholly on one side of 0 (otherwise do not rank or quote it)."""
    _, low, high = interval
    return low > 0 or high < 0


def paired_interval(method: Numbers, baseline: Numbers | None = None, *, level: float = 0.95, n_boot: int = 4000,
                    seed: int = 0) -> Interval:
    """Interval for the mean over test items (and seeds) of ``method - baseline`` on the same items.

    ``method`` is one value per test item, shape ``(items,)``, or one row per seed, ``(seeds,
    items)``, columns in the same item order as ``baseline`` (``(items,)`` or ``(seeds, items)``;
    None gives the interval of ``method``'s own mean, e.g. for a shared method). Pairing removes
    the item-to-item spread both share, which is most of it on real data. Method: percentile
    bootstrap resampling items (one draw shared by all seeds, as items are shared) and, when there
    are several seeds, seeds too; so with one seed there is still an item-level interval. A
    percentile bootstrap stays within the range of the resampled means, so the interval of a
    non-negative quantity (KL, wall time) never goes below 0.
    """
    values = torch.as_tensor(method, dtype=torch.float64)
    if baseline is not None:
        values = values - torch.as_tensor(baseline, dtype=torch.float64)
    values = values.reshape(1, -1) if values.dim() <= 1 else values
    if values.dim() != 2 or values.numel() == 0:
        raise ValueError(f"paired_interval needs values of shape (items,) or (seeds, items), "
                         f"got {tuple(values.shape)}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    n_seeds, n_items = values.shape
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_items, (n_boot, n_items), generator=generator)
    counts = torch.zeros(n_boot, n_items, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))  # times each item was drawn
    per_seed = counts @ values.T / n_items  # (n_boot, seeds): each seed's mean over the resampled items
    if n_seeds > 1:
        per_seed = per_seed.gather(1, torch.randint(n_seeds, (n_boot, n_seeds), generator=generator))
    means = per_seed.mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(values.mean().item(), low, high)


def binomial_upper_tail(successes: int, n: int, p: float = 0.5) -> float:
    """P(X >= successes) for X ~ Binomial(n, p): the one-sided p-value of an accuracy against chance."""
    return sum(math.exp(_log_binomial_pmf(k, n, p)) for k in range(max(successes, 0), n + 1))


def binomial_band(n: int, p: float = 0.5, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` band of the share of successes in n Binomial(n, p) trials (exact quantiles)."""
    pmf = [math.exp(_log_binomial_pmf(k, n, p)) for k in range(n + 1)]
    low, high = central_quantiles(pmf, level)
    return low / n, high / n


def hypergeometric_pmf(total: int, marked: int, drawn: int) -> list[float]:
    """P(A = a) for a = 0..drawn: marked items among `drawn` taken without replacement from `total`."""
    log_all = _log_comb(total, drawn)
    return [math.exp(_log_comb(marked, a) + _log_comb(total - marked, drawn - a) - log_all)
            if 0 <= drawn - a <= total - marked and a <= marked else 0.0 for a in range(drawn + 1)]


def central_quantiles(pmf: Sequence[float], level: float = 0.95) -> tuple[int, int]:
    """The values between which a discrete distribution on 0..len-1 lies with probability >= level."""
    tail = (1 - level) / 2
    cumulative, low = 0.0, None
    for k, mass in enumerate(pmf):
        cumulative += mass
        if low is None and cumulative > tail:
            low = k
        if cumulative >= 1 - tail - 1e-12:
            return low, k
    return low if low is not None else 0, len(pmf) - 1


def _log_comb(n: int, k: int) -> float:
    if k < 0 or k > n:
        return -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_binomial_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return 0.0 if k == n * p else -math.inf
    return _log_comb(n, k) + k * math.log(p) + (n - k) * math.log(1 - p)
