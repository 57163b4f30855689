"""Choosing a steering method's layer and multiplier on the validation split, never on test.

Every candidate is scored by completion preference on the validation items (`select_by`: mean
margin, the default, or accuracy); ties go to the smaller |multiplier|, the gentler edit. The whole
grid is recorded with the choice so a study can show how sharp the optimum was.

Extracted vectors on a plain model are scored by `site_logprobs`: one recorded base pass over the
validation items serves every candidate, each of which re-runs only the blocks above its layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from peft import PeftModel
from torch import nn

from ..batching import encode
from ..data import PromptFormatter
from ..metrics import PreferenceResult, Steering, preference, site_logprobs, supports_site_cache
from ..tuner import SteerConfig, SteerLayer
from .context import StudyContext
from .scorable import Scorable, steered


@dataclass(frozen=True)
class Candidate:
    layer: int
    multiplier: float
    val_accuracy: float
    val_mean_margin: float


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and every candidate tried."""

    best: Candidate
    grid: tuple[Candidate, ...]

    def as_dict(self) -> dict:
        return {**asdict(self.best), "select_by_grid": [asdict(c) for c in self.grid]}


def score(ctx: StudyContext, scorable: Scorable) -> tuple[float, float]:
    """(accuracy, mean margin) of completion preference on the validation items."""
    result = preference(scorable.model, ctx.tokenizer, scorable.pairs(ctx.data.val),
                        batch_size=ctx.config.eval.batch_size)
    return result.accuracy, result.mean_margin


def _key(candidate: Candidate, select_by: str) -> tuple[float, float]:
    value = candidate.val_accuracy if select_by == "accuracy" else candidate.val_mean_margin
    return value, -abs(candidate.multiplier)


def best_of(candidates: Sequence[Candidate], select_by: str) -> Choice:
    return Choice(max(candidates, key=lambda c: _key(c, select_by)), tuple(candidates))


def multipliers_on(ctx: StudyContext, model: PeftModel, fmt: PromptFormatter, layer: int,
                   multipliers: Sequence[float]) -> list[Candidate]:
    """Score one steered model at each multiplier.

    A single added vector (a trained steer adapter) is replayed from its site on the
    adapter-disabled model, one recorded base pass for all multipliers; any other adapter is
    scored attached, once per multiplier.
    """
    site = _single_vector(model)
    if site is not None:
        positions = model.peft_config[model.active_adapter].positions
        steerings = [Steering(*site, float(m), positions) for m in multipliers]
        with model.disable_adapter():
            if supports_site_cache(model.get_base_model()):
                return _replayed_candidates(ctx, model.get_base_model(), fmt, steerings)
    candidates = []
    for multiplier in multipliers:
        with model.using_multiplier(multiplier):
            accuracy, margin = score(ctx, Scorable(model, fmt))
        candidates.append(Candidate(layer, float(multiplier), accuracy, margin))
    return candidates


def _single_vector(model: PeftModel) -> tuple[int, torch.Tensor] | None:
    """(layer, vector) of a model steered by one unmerged `add` vector at one block and nothing else, else None."""
    if len(model.peft_config) != 1:
        return None
    config = model.peft_config[model.active_adapter]
    merged = any(layer.merged for layer in model.modules() if isinstance(layer, SteerLayer))
    if not isinstance(config, SteerConfig) or config.operator != "add" or merged:
        return None
    vectors = model.get_vectors()
    return next(iter(vectors.items())) if len(vectors) == 1 else None


def choose_steering(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
                    vectors: dict[int, torch.Tensor]) -> Choice:
    """Best (layer, multiplier) for per-layer candidate vectors added to `model` under `fmt`'s prompts.

    `model` is left unchanged: each layer's vector is attached only while it is scored, or, on a
    plain model, added by the block replay without attaching anything.
    """
    if supports_site_cache(model):
        steerings = [Steering(layer, vector, float(m), ctx.config.positions)
                     for layer, vector in vectors.items() for m in ctx.config.multipliers]
        return best_of(_replayed_candidates(ctx, model, fmt, steerings), ctx.config.select_by)
    candidates = []
    for layer, vector in vectors.items():
        with steered(model, {layer: vector}, ctx.config.positions) as peft_model:
            candidates += multipliers_on(ctx, peft_model, fmt, layer, ctx.config.multipliers)
    return best_of(candidates, ctx.config.select_by)


def _replayed_candidates(ctx: StudyContext, model: nn.Module, fmt: PromptFormatter,
                         steerings: list[Steering]) -> list[Candidate]:
    """Every candidate from one recorded base pass per batch (same numbers as attaching each)."""
    pairs = Scorable(model, fmt).pairs(ctx.data.val)
    rows = [encode(ctx.tokenizer, p.prompt, p.positive) for p in pairs]
    rows += [encode(ctx.tokenizer, p.prompt, p.negative) for p in pairs]
    logprobs = site_logprobs(model, rows, steerings, batch_size=ctx.config.eval.batch_size,
                             pad=ctx.tokenizer.pad_token_id)
    n = len(pairs)
    results = [PreferenceResult([p.id for p in pairs], row[:n], row[n:]) for row in logprobs]
    return [Candidate(s.layer, s.multiplier, r.accuracy, r.mean_margin) for s, r in zip(steerings, results)]
