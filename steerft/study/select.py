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
* **Paired comparison, gentlest on a tie.** The best allowed candidate by mean is compared with
  each gentler one (smaller |multiplier|, 0 first) on the same validation items; the gentlest
  allowed one whose paired difference to the best is not distinguishable from zero wins. Side
  effects are measured only for the candidates this walk reaches (the best-scoring ones down to
  the first within the caps, and the gentler ones that tie with it), so a large grid stays cheap.

Extracted vectors on a plain model, and a trained steer adapter's single vector, are scored by
replay: the base model's recorded passes over the validation items serve every candidate, each of
which re-runs only the blocks above its layer. On the study's base weights under its prompts the
study's kept record is read (`context.replayed_logprobs`, recorded once per study); otherwise
(another prompt, a merged LoRA below) `site_logprobs` records the passes for the call. The
general-text cross-entropy of the `delta_ce` cap is replayed the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from peft import PeftModel
from torch import nn

from ..data import PromptFormatter
from ..metrics import (
    PreferenceResult,
    Steering,
    distinguishable_from_zero,
    kl_to_base,
    pair_rows,
    paired_interval,
    preference,
    preference_results,
    site_logprobs,
    supports_site_cache,
)
from .context import (
    StudyContext,
    replayed_logprobs,
    single_vector,
)
from .evaluate import replayed_cross_entropy, replayed_kl, study_cross_entropy
from .scorable import Scorable, steered


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


def best_of(candidates: Sequence[Candidate], select_by: str,
            measure: Callable[[Candidate], Candidate] | None = None) -> Choice:
    """The gentlest allowed candidate not distinguishably worse, on the same validation items, than the best.

    Gentler means a smaller |multiplier| (0 first). `measure` fills in a candidate's side effects
    (and exclusion) when they are first needed, so only the candidates that could win pay for them;
    without it, candidates come measured (or uncapped).
    """
    grid = list(candidates)

    def allowed(i: int) -> bool:
        if measure is not None and grid[i].val_kl is None and grid[i].val_delta_ce is None:
            grid[i] = measure(grid[i])
        return grid[i].excluded is None

    ranked = sorted(range(len(grid)), key=lambda i: (-_mean(grid[i], select_by), abs(grid[i].multiplier)))
    top = next((i for i in ranked if allowed(i)), None)
    if top is None:
        raise ValueError("best_of: every candidate is excluded; the multiplier-0 candidate should always compete.")
    label = select_by.replace("_", " ")
    for i in sorted(range(len(grid)), key=lambda i: abs(grid[i].multiplier)):
        if abs(grid[i].multiplier) >= abs(grid[top].multiplier):
            break
        if not grid[i].val_margins or not grid[top].val_margins:
            continue
        difference = paired_interval(_values(grid[top], select_by), _values(grid[i], select_by))
        if not distinguishable_from_zero(difference) and allowed(i):
            return Choice(grid[i], tuple(grid), (
                f"gentler than the best by {label} (L{grid[top].layer} x{grid[top].multiplier:g}): paired validation "
                f"difference {difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}] not "
                "distinguishable from 0"))
    over = sum(c.excluded is not None for c in grid)
    return Choice(grid[top], tuple(grid), f"best by {label} ({over} better-scoring candidates over a side-effect cap)")


def score(ctx: StudyContext, scorable: Scorable) -> tuple[float, float]:
    """(accuracy, mean margin) of completion preference on the validation items."""
    result = preference(scorable.model, ctx.tokenizer, scorable.pairs(ctx.data.val),
                        batch_size=ctx.config.eval.batch_size)
    return result.accuracy, result.mean_margin


def multipliers_on(ctx: StudyContext, model: PeftModel, fmt: PromptFormatter, layer: int,
                   multipliers: Sequence[float]) -> list[Candidate]:
    """Score one steered model at multiplier 0 and each of `multipliers`, side effects included.

    A single added vector (a trained steer adapter) is scored by replay from its site on the
    adapter-disabled model, one recorded base pass for all multipliers; any other adapter is scored
    attached, once per multiplier. Side effects are measured with the adapter attached.
    """
    values = with_zero(multipliers)
    replayed = _replayed_single_vector(ctx, model, fmt, values)
    scored = []
    for i, multiplier in enumerate(values):
        with model.using_multiplier(multiplier):
            result = replayed[i] if replayed is not None else preference(
                model, ctx.tokenizer, Scorable(model, fmt).pairs(ctx.data.val), batch_size=ctx.config.eval.batch_size)
            effects = _side_effects(ctx, model, fmt, unsteered=multiplier == 0)
        scored.append((multiplier, result, effects))
    base = scored[0][2]
    return [_candidate(ctx, layer, multiplier, result, effects, base) for multiplier, result, effects in scored]


def _replayed_single_vector(ctx: StudyContext, model: PeftModel, fmt: PromptFormatter,
                            multipliers: Sequence[float]) -> list[PreferenceResult] | None:
    """Validation results at each multiplier by replay, when `model` is steered by one vector; else None.

    On a copy of the study's base weights the replay reads the study's kept validation record;
    otherwise it records the adapter-disabled model's passes for this call."""
    site = single_vector(model)
    if site is None:
        return None
    steerings = [replace(site, multiplier=float(m)) for m in multipliers]
    with model.disable_adapter():
        base = model.get_base_model()
        return _replayed(ctx, base, fmt, steerings) if supports_site_cache(base) else None


def choose_steering(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
                    vectors: dict[int, torch.Tensor]) -> Choice:
    """Best (layer, multiplier) for per-layer candidate vectors added to `model` under `fmt`'s prompts.

    `model` is left unchanged: each layer's vector is attached only while it is scored, or, on a
    plain model, added by the block replay without attaching anything. Side effects are measured
    only for the candidates `best_of` has to check: by replay from the study's kept records where
    they apply, else with the vector attached.
    """
    positions = ctx.config.positions
    if not supports_site_cache(model):
        candidates: list[Candidate] = []
        for layer, vector in vectors.items():
            with steered(model, {layer: vector}, positions) as peft_model:
                candidates += multipliers_on(ctx, peft_model, fmt, layer, ctx.config.multipliers)[1 if candidates else 0:]
        return best_of(candidates, ctx.config.select_by)
    first = next(iter(vectors))
    steerings = [Steering(first, vectors[first], 0.0, positions)]
    steerings += [Steering(layer, vector, m, positions)
                  for layer, vector in vectors.items() for m in with_zero(ctx.config.multipliers)[1:]]
    unmeasured = [Candidate(s.layer, s.multiplier, r.accuracy, r.mean_margin, val_margins=tuple(r.margins.tolist()))
                  for s, r in zip(steerings, _replayed(ctx, model, fmt, steerings))]
    base: dict[str, float] = {}

    def measure(candidate: Candidate) -> Candidate:
        if not base:
            base.update(_side_effects(ctx, model, fmt, unsteered=True))
        steering = Steering(candidate.layer, vectors[candidate.layer], candidate.multiplier, positions)
        effects = base if candidate.multiplier == 0 else _replayed_side_effects(ctx, model, fmt, steering)
        if effects is None:
            with steered(model, {candidate.layer: vectors[candidate.layer]}, positions) as peft_model:
                with peft_model.using_multiplier(candidate.multiplier):
                    effects = _side_effects(ctx, peft_model, fmt, unsteered=False)
        return _measured(ctx, candidate, effects, base)

    return best_of(unmeasured, ctx.config.select_by, measure if ctx.config.select_caps else None)


def _side_effects(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter, *, unsteered: bool) -> dict[str, float]:
    """The capped side effects of `model` as it steers now: KL to itself unsteered (0 when unsteered), and
    general-text cross-entropy (`ce`, made relative to the unsteered model's by `_candidate`)."""
    caps = ctx.config.select_caps
    effects: dict[str, float] = {}
    if "kl" in caps:
        effects["kl"] = 0.0 if unsteered else max(_kl_to_unsteered(ctx, model, fmt), 0.0)
    if "delta_ce" in caps:
        effects["ce"] = study_cross_entropy(ctx, Scorable(model, fmt))
    return effects


def _replayed_side_effects(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
                           steering: Steering) -> dict[str, float] | None:
    """`_side_effects` of `steering` added to the unsteered `model`, by replay from the study's kept records
    without attaching anything; None where a capped effect cannot be replayed."""
    scorable = Scorable(model, fmt)
    effects: dict[str, float] = {}
    if "kl" in ctx.config.select_caps:
        kl = replayed_kl(ctx, scorable, steering)
        if kl is None:
            return None
        effects["kl"] = max(kl, 0.0)
    if "delta_ce" in ctx.config.select_caps:
        ce = replayed_cross_entropy(ctx, scorable, steering)
        if ce is None:
            return None
        effects["ce"] = ce
    return effects


def _kl_to_unsteered(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter) -> float:
    """KL(unsteered || steered) under `fmt`'s prompts: by replay against the study's base reference where `model` is
    the base weights plus one vector under the base prompts (`replayed_kl`), else the adapter-disabled model's."""
    replayed = replayed_kl(ctx, Scorable(model, fmt))
    if replayed is not None:
        return replayed
    prompts = [fmt.prompt(p) for p in ctx.neutral_prompts]
    return kl_to_base(model, ctx.tokenizer, prompts, prompts, ctx.references, batch_size=ctx.config.eval.batch_size)


def _candidate(ctx: StudyContext, layer: int, multiplier: float, result: PreferenceResult, effects: dict[str, float],
               base: dict[str, float]) -> Candidate:
    candidate = Candidate(layer, float(multiplier), result.accuracy, result.mean_margin,
                          val_margins=tuple(result.margins.tolist()))
    return _measured(ctx, candidate, effects, base)


def _measured(ctx: StudyContext, candidate: Candidate, effects: dict[str, float], base: dict[str, float]) -> Candidate:
    """`candidate` with its side effects and, when one is over its cap, the reason it is excluded."""
    kl = effects.get("kl")
    delta_ce = effects["ce"] - base["ce"] if "ce" in effects else None
    over = [f"{name} {value:.3g} > cap {ctx.config.select_caps[name]:g}"
            for name, value in (("kl", kl), ("delta_ce", delta_ce))
            if value is not None and value > ctx.config.select_caps[name]]
    return replace(candidate, val_kl=kl, val_delta_ce=delta_ce, excluded="; ".join(over) or None)


def _replayed(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
              steerings: list[Steering]) -> list[PreferenceResult]:
    """Every candidate's validation result by replay from its block (same numbers as attaching each): from the
    study's kept validation record where `model` computes as the base model under its prompts, else from one
    base pass per batch recorded for this call."""
    pairs = Scorable(model, fmt).pairs(ctx.data.val)
    rows = pair_rows(ctx.tokenizer, pairs)
    logprobs = replayed_logprobs(ctx, model, "val", rows, steerings)
    if logprobs is None:
        logprobs = site_logprobs(model, rows, steerings, batch_size=ctx.config.eval.batch_size,
                                 pad=ctx.tokenizer.pad_token_id)
    return preference_results(pairs, logprobs)
