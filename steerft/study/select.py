"""Choosing a steering method's layer and multiplier on the validation split, never on test.

Every candidate is scored by completion preference on the validation items (`select_by`: mean
margin, the default, or accuracy), and three rules keep the choice honest:

* **Doing nothing competes.** A multiplier-0 candidate (the model unsteered, under the method's
  prompt) is always in the grid, so a method whose vectors do not help is chosen as "don't steer".
* **A side-effect budget.** Where `select_caps` names a cap, each candidate's side effect is
  measured against the same model unsteered: `kl`, KL(unsteered || steered) along the base
  model's continuations of the study's neutral prompts, and `delta_ce`, the change of general-text
  cross-entropy. A candidate above a cap is excluded (kept in the record with the reason); it
  cannot win however well it scores, since a vector that breaks the model is not a steering result.
* **Paired comparison, gentlest on a tie.** The best candidate by mean is compared with each
  gentler one (smaller validation KL, else smaller |multiplier|) on the same validation items;
  the gentlest whose paired difference to the best is not distinguishable from zero wins.

Extracted vectors on a plain model are scored by `site_logprobs`: one recorded base pass over the
validation items serves every candidate, each of which re-runs only the blocks above its layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from peft import PeftModel
from torch import nn

from ..batching import encode
from ..data import PromptFormatter
from ..metrics import distinguishable_from_zero, kl_to_base, paired_interval, preference
from ..metrics.preference import PreferenceResult
from ..metrics.site_cache import Steering, site_logprobs, supports_site_cache
from .context import StudyContext
from .evaluate import reply_cross_entropy
from .scorable import Scorable, steered

SIDE_EFFECTS = ("kl", "delta_ce")
"""What `select_caps` may cap."""


@dataclass(frozen=True)
class Candidate:
    """One (layer, multiplier) scored on validation; `excluded` says why it may not win (None: it may)."""

    layer: int
    multiplier: float
    val_accuracy: float
    val_mean_margin: float
    val_kl: float | None = None
    val_delta_ce: float | None = None
    excluded: str | None = None
    val_margins: tuple[float, ...] = field(default=(), repr=False)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "val_margins"}


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, why it was chosen, and every candidate tried."""

    best: Candidate
    grid: tuple[Candidate, ...]
    reason: str = ""

    def as_dict(self) -> dict:
        return {**self.best.record(), "selection": self.reason, "select_by_grid": [c.record() for c in self.grid]}


def with_zero(multipliers: Sequence[float]) -> list[float]:
    """The multipliers to try: "don't steer" (0) first, then the config's."""
    return [0.0, *(float(m) for m in multipliers if m != 0)]


def _values(candidate: Candidate, select_by: str) -> torch.Tensor:
    margins = torch.tensor(candidate.val_margins, dtype=torch.float64)
    return (margins > 0).double() if select_by == "accuracy" else margins


def _mean(candidate: Candidate, select_by: str) -> float:
    return candidate.val_accuracy if select_by == "accuracy" else candidate.val_mean_margin


def _gentleness(candidate: Candidate) -> tuple[float, float]:
    return (candidate.val_kl if candidate.val_kl is not None else abs(candidate.multiplier), abs(candidate.multiplier))


def best_of(candidates: Sequence[Candidate], select_by: str) -> Choice:
    """The gentlest allowed candidate not distinguishably worse, on the same validation items, than the best."""
    allowed = [c for c in candidates if c.excluded is None]
    if not allowed:
        raise ValueError("best_of: every candidate is excluded; the multiplier-0 candidate should always compete.")
    top = max(allowed, key=lambda c: (_mean(c, select_by), -_gentleness(c)[0], -abs(c.multiplier)))
    label = select_by.replace("_", " ")
    for candidate in sorted(allowed, key=_gentleness):
        if candidate is top:
            break
        if not candidate.val_margins or not top.val_margins:
            continue
        difference = paired_interval(_values(top, select_by), _values(candidate, select_by))
        if not distinguishable_from_zero(difference):
            return Choice(candidate, tuple(candidates), (
                f"gentler than the best by {label} (L{top.layer} x{top.multiplier:g}): paired validation difference "
                f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}] not distinguishable from 0"))
    return Choice(top, tuple(candidates), f"best by {label} among {len(allowed)} allowed candidates "
                                          f"({len(candidates) - len(allowed)} over a side-effect cap)")


def multipliers_on(ctx: StudyContext, model: PeftModel, fmt: PromptFormatter, layer: int,
                   multipliers: Sequence[float]) -> list[Candidate]:
    """Score one steered model at multiplier 0 and each of `multipliers`, side effects included."""
    scored = []
    for multiplier in with_zero(multipliers):
        with model.using_multiplier(multiplier):
            result = preference(model, ctx.tokenizer, Scorable(model, fmt).pairs(ctx.data.val),
                                batch_size=ctx.config.eval.batch_size)
            effects = _side_effects(ctx, model, fmt, unsteered=multiplier == 0)
        scored.append((multiplier, result, effects))
    base = scored[0][2]
    return [_candidate(ctx, layer, multiplier, result, effects, base) for multiplier, result, effects in scored]


def choose_steering(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
                    vectors: dict[int, torch.Tensor]) -> Choice:
    """Best (layer, multiplier) for per-layer candidate vectors added to `model` under `fmt`'s prompts.

    `model` is left unchanged: each layer's vector is attached only while it is scored, or, on a
    plain model, added by the block replay without attaching anything.
    """
    if supports_site_cache(model):
        first = next(iter(vectors))
        steerings = [Steering(first, vectors[first], 0.0, ctx.config.positions)]
        steerings += [Steering(layer, vector, float(m), ctx.config.positions)
                      for layer, vector in vectors.items() for m in with_zero(ctx.config.multipliers)[1:]]
        results = _replayed(ctx, model, fmt, steerings)
        base = _side_effects(ctx, model, fmt, unsteered=True)
        candidates = [_candidate(ctx, first, 0.0, results[0], base, base)]
        for layer, vector in vectors.items():
            with steered(model, {layer: vector}, ctx.config.positions) as peft_model:
                for steering, result in zip(steerings[1:], results[1:]):
                    if steering.layer == layer:
                        with peft_model.using_multiplier(steering.multiplier):
                            effects = _side_effects(ctx, peft_model, fmt, unsteered=False)
                        candidates.append(_candidate(ctx, layer, steering.multiplier, result, effects, base))
        return best_of(candidates, ctx.config.select_by)
    candidates = []
    for layer, vector in vectors.items():
        with steered(model, {layer: vector}, ctx.config.positions) as peft_model:
            candidates += multipliers_on(ctx, peft_model, fmt, layer, ctx.config.multipliers)[0 if not candidates else 1:]
    return best_of(candidates, ctx.config.select_by)


def _side_effects(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter, *, unsteered: bool) -> dict[str, float]:
    """The capped side effects of `model` as it steers now: KL to itself unsteered (0 when unsteered), and
    general-text cross-entropy (`ce`, made relative to the unsteered model's by `_candidate`)."""
    caps = ctx.config.select_caps
    effects: dict[str, float] = {}
    if "kl" in caps:
        prompts = [fmt.prompt(p) for p in ctx.neutral_prompts]
        effects["kl"] = 0.0 if unsteered else max(kl_to_base(
            model, ctx.tokenizer, prompts, prompts, ctx.references, batch_size=ctx.config.eval.batch_size), 0.0)
    if "delta_ce" in caps:
        effects["ce"] = reply_cross_entropy(Scorable(model, fmt), ctx.tokenizer, ctx.general_texts,
                                            batch_size=ctx.config.eval.batch_size)
    return effects


def _candidate(ctx: StudyContext, layer: int, multiplier: float, result: PreferenceResult, effects: dict[str, float],
               base: dict[str, float]) -> Candidate:
    kl = effects.get("kl")
    delta_ce = effects["ce"] - base["ce"] if "ce" in effects else None
    over = [f"{name} {value:.3g} > cap {ctx.config.select_caps[name]:g}"
            for name, value in (("kl", kl), ("delta_ce", delta_ce))
            if value is not None and value > ctx.config.select_caps[name]]
    return Candidate(layer, float(multiplier), result.accuracy, result.mean_margin, kl, delta_ce,
                     "; ".join(over) or None, tuple(result.margins.tolist()))


def _replayed(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
              steerings: list[Steering]) -> list[PreferenceResult]:
    """Every candidate's validation result from one recorded base pass per batch (same numbers as attaching each)."""
    pairs = Scorable(model, fmt).pairs(ctx.data.val)
    rows = [encode(ctx.tokenizer, p.prompt, p.positive) for p in pairs]
    rows += [encode(ctx.tokenizer, p.prompt, p.negative) for p in pairs]
    logprobs = site_logprobs(model, rows, steerings, batch_size=ctx.config.eval.batch_size,
                             pad=ctx.tokenizer.pad_token_id)
    n = len(pairs)
    return [PreferenceResult([p.id for p in pairs], row[:n], row[n:]) for row in logprobs]
