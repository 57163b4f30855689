"""Is the base model competent at a metric's format at all?

If the base model answers at chance and its answer probabilities barely change from item to item,
it is not reading the items (e.g. SmolLM2-135M on public A/B questions: p(matching) = 0.48 for the
base model and for every steering vector tried). Differences between methods on that metric are then
noise, and a study must say so loudly rather than plot them.
"""

from __future__ import annotations

import warnings

import torch

from .preference import ABResult, PreferenceResult
from .stats import chance_band

DEFAULT_MIN_SPREAD = 0.1
"""Standard deviation across items of the per-item answer probability below which answers "barely vary"."""


def competence_warning(
    base_result: PreferenceResult | ABResult, *, metric_name: str, min_spread: float = DEFAULT_MIN_SPREAD
) -> str | None:
    """A warning (also issued with `warnings.warn`) when the base model is at chance on a metric, else None.

    At chance means both: the share of items answered the behaviour's way lies in the binomial 95%
    band around 0.5 for this many items (both metrics are two-way choices, so chance is 0.5), and the
    per-item answer probability varies across items by less than `min_spread` (standard deviation).
    For A/B items that probability is the normalised p of the "A" answer, so a model that always
    prefers one letter counts as not varying; otherwise it is p(positive) normalised over the pair.
    """
    rate = base_result.share_above_half if isinstance(base_result, ABResult) else base_result.accuracy
    n = base_result.preference.n if isinstance(base_result, ABResult) else base_result.n
    low, high = chance_band(n)
    spread = _item_probabilities(base_result).std(correction=0).item()
    if not (low <= rate <= high and spread < min_spread):
        return None
    message = (
        f"BASE MODEL AT CHANCE on {metric_name}: {rate:.3f} of {n} items go the behaviour's way (chance band "
        f"{low:.3f}-{high:.3f}) and per-item answer probabilities barely vary (sd {spread:.3f} < {min_spread}). "
        "The model does not read this format; any method's effect on this metric is meaningless. Use a metric "
        "the base model is competent at (e.g. full-completion preference) or a stronger model."
    )
    warnings.warn(message, stacklevel=2)
    return message


def _item_probabilities(result: PreferenceResult | ABResult) -> torch.Tensor:
    if isinstance(result, ABResult):
        return result.p_a if result.a_items == result.preference.n else result.p_matching
    return torch.sigmoid(result.margins)
