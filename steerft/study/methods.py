"""Every method a study compares, in one registry: name -> how to build its scorable from n items.

Each method's spec (family, min_n, ...) lives in the torch-free steerft.study.method_specs, which
the config checks read; here each spec gets its builder, and a spec without one fails at import.

A builder gets the study context, n and the seed (both None for methods that use no training
items) and returns a `Scorable`. All training data come from the same seeded, nested subset of
the training split (`training_subset`), so at one (n, seed) every method sees the same items.
Work that several methods share at one (n, seed) (activations, the CAA choice, a trained model) is
memoised in the context, so e.g. `random` reuses the CAA vector's layer, norm and multiplier.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from ..choices import in_order
from ..data import BehaviourItem, contrast_pairs, training_subset
from ..extract import PairActivations, estimate, pair_activations
from ..training import counting_tokens
from .context import StudyContext
from .method_specs import FAMILIES, METHOD_SPECS, MethodSpec
from .scorable import Scorable, attach, trainable_params
from .select import Candidate, Choice, choose_steering, multipliers_on
from .tuning import Tuned, tune, validate_as_is

__all__ = ["FAMILIES", "METHODS", "Builder", "Method"]

Builder = Callable[[StudyContext, "int | None", "int | None"], Scorable]


@dataclass(frozen=True)
class Method(MethodSpec):
    """A registry entry: the method's spec (steerft.study.method_specs) and how to build it."""

    build: Builder = field(kw_only=True)


# --------------------------------------------------------------------------- shared pieces


def subset(ctx: StudyContext, n: int, seed: int) -> list[BehaviourItem]:
    return training_subset(ctx.data.train, n, seed)


def _activations(ctx: StudyContext, n: int, seed: int) -> tuple[PairActivations, dict[str, int]]:
    """Activations of the n training pairs at every candidate layer, in one early-exit pass, read
    with `caa_reduce` (mean over the completion or its last token); and the tokens that pass read."""

    def read() -> tuple[PairActivations, dict[str, int]]:
        with counting_tokens([ctx.model]) as tokens:
            acts = pair_activations(ctx.model, ctx.tokenizer, contrast_pairs(subset(ctx, n, seed), ctx.fmt),
                                    ctx.layers, reduce=ctx.config.caa_reduce, batch_size=ctx.config.eval.batch_size)
        return acts, {"tokens_forward": tokens["forward"], "tokens_backward": 0}

    return ctx.remember(("activations", n, seed), read)


def _vectors(ctx: StudyContext, n: int, seed: int, estimator: str) -> dict[int, torch.Tensor]:
    acts, _ = _activations(ctx, n, seed)
    return {layer: estimate(estimator, *acts.at(layer)).vector for layer in ctx.layers}


def _extraction_record(ctx: StudyContext, n: int, seed: int) -> dict:
    """How the vector was read (recorded with the point) and what reading it cost."""
    return {"caa_reduce": ctx.config.caa_reduce, "compute": _activations(ctx, n, seed)[1]}


def _base_choice(ctx: StudyContext, n: int, seed: int, estimator: str) -> Choice:
    """Layer and multiplier of an extracted vector on the bare model, chosen on validation."""
    return ctx.remember(("choice", estimator, n, seed), lambda: choose_steering(
        ctx, ctx.model, ctx.fmt, _vectors(ctx, n, seed, estimator)))


def _steered(ctx: StudyContext, model: nn.Module, vector: torch.Tensor, choice: Choice) -> nn.Module:
    return attach(model, {choice.best.layer: vector}, choice.best.multiplier, ctx.config.positions)


def _vector_record(choice: Choice, vector: torch.Tensor) -> dict:
    return {**choice.as_dict(), "vector_norm": float(vector.norm())}


def _trained(ctx: StudyContext, n: int, seed: int, method: str, adapter: str) -> Tuned:
    """A fine-tuned model whose learning rate (and DPO beta) was chosen on validation."""
    return ctx.remember(("trained", method, adapter, n, seed), lambda: tune(
        ctx, subset(ctx, n, seed), seed, method=method, adapter=adapter, layers=ctx.train_layers[:1],
        validate=validate_as_is(ctx)))


# --------------------------------------------------------------------------- builders


def _none(ctx: StudyContext, n: None, seed: None) -> Scorable:
    return Scorable(ctx.model, ctx.fmt)


def _system_prompt(ctx: StudyContext, n: None, seed: None) -> Scorable:
    return Scorable(ctx.model, ctx.system_fmt, choice={"system_prompt": ctx.data.system_prompt})


def _few_shot(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """The same n items as demonstrations, at most `max_demonstrations` (long prompts cost quadratic time)."""
    demonstrations = subset(ctx, n, seed)[: ctx.config.max_demonstrations]
    return Scorable(ctx.model, ctx.fmt, demonstrations,
                    choice={"demonstrations": len(demonstrations), "max_demonstrations": ctx.config.max_demonstrations})


def _extracted(ctx: StudyContext, n: int, seed: int, *, estimator: str) -> Scorable:
    choice = _base_choice(ctx, n, seed, estimator)
    vector = _vectors(ctx, n, seed, estimator)[choice.best.layer]
    return Scorable(_steered(ctx, ctx.fresh_model(), vector, choice), ctx.fmt, params=vector.numel(),
                    choice={"estimator": estimator, **_vector_record(choice, vector),
                            **_extraction_record(ctx, n, seed)})


def _random(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """A random direction with the CAA vector's layer, norm and multiplier: direction without magnitude."""
    choice = _base_choice(ctx, n, seed, "mean_diff")
    caa = _vectors(ctx, n, seed, "mean_diff")[choice.best.layer]
    generator = torch.Generator().manual_seed(zlib.crc32(f"steerft.random:{n}:{seed}".encode()))
    direction = torch.randn(caa.shape, generator=generator)
    vector = direction / direction.norm() * caa.norm()
    return Scorable(_steered(ctx, ctx.fresh_model(), vector, choice), ctx.fmt, params=vector.numel(),
                    choice={**_vector_record(choice, vector), "matched_to": "caa",
                            **_extraction_record(ctx, n, seed)})


def _trained_vector(ctx: StudyContext, n: int, seed: int, *, method: str) -> Scorable:
    """A vector trained at each of train.layers and each grid learning rate (and beta); the layer,
    learning rate and multiplier chosen on validation."""

    def validate(model: nn.Module, layer: int) -> list[Candidate]:
        return multipliers_on(ctx, model, ctx.fmt, layer, ctx.config.train.multipliers)

    tuned = tune(ctx, subset(ctx, n, seed), seed, method=method, adapter="steer", layers=ctx.train_layers,
                 validate=validate)
    model, best = tuned.model, tuned.chosen.best
    model.set_multiplier(best.multiplier)
    vector = model.get_vectors()[best.layer]
    choice = Choice(best, tuple(c for trial in tuned.trials for c in trial.candidates))
    return Scorable(model, ctx.fmt, params=trainable_params(model),
                    choice={**_vector_record(choice, vector), **tuned.record()})


def _fine_tuned(ctx: StudyContext, n: int, seed: int, *, method: str, adapter: str) -> Scorable:
    tuned = _trained(ctx, n, seed, method, adapter)
    return Scorable(tuned.model, ctx.fmt, params=trainable_params(tuned.model), choice=tuned.record())


def _caa_on_system_prompt(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """The CAA vector on top of the system prompt; layer and multiplier re-chosen with the prompt in place."""
    vectors = _vectors(ctx, n, seed, "mean_diff")
    choice = choose_steering(ctx, ctx.model, ctx.system_fmt, vectors)
    vector = vectors[choice.best.layer]
    return Scorable(_steered(ctx, ctx.fresh_model(), vector, choice), ctx.system_fmt, params=vector.numel(),
                    choice=_vector_record(choice, vector))


def _merged_copy(ctx: StudyContext, lora: nn.Module) -> nn.Module:
    """The LoRA's weights merged into a fresh copy of the base model. Not a deepcopy of the trained model:
    training leaves an instance-level forward wrapper on it whose closure still calls the original, so a
    copy would run the original's blocks and ignore hooks (steering vectors) attached to its own."""
    fresh = get_peft_model(ctx.fresh_model(), lora.peft_config[lora.active_adapter])
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(lora))
    return fresh.merge_and_unload()


def _caa_on_lora(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """The base model's CAA vector on top of the merged LoRA-SFT model of the same (n, seed)."""
    tuned = _trained(ctx, n, seed, "sft", "lora")
    lora = tuned.model
    merged = _merged_copy(ctx, lora)
    vectors = _vectors(ctx, n, seed, "mean_diff")
    choice = choose_steering(ctx, merged, ctx.fmt, vectors)
    vector = vectors[choice.best.layer]
    return Scorable(_steered(ctx, merged, vector, choice), ctx.fmt, params=trainable_params(lora) + vector.numel(),
                    choice={**_vector_record(choice, vector), "learning_rate": tuned.chosen.learning_rate,
                            "budget": tuned.chosen.budget.as_dict(),
                            "compute": _plus(tuned.record()["compute"], _extraction_record(ctx, n, seed)["compute"])})


def _plus(training: dict, extraction: dict) -> dict:
    """The compute of a stacked method: its training grid plus the extraction pass of its vector."""
    return {**training, **{key: training[key] + extraction[key] for key in ("tokens_forward", "tokens_backward")}}


_BUILDERS: dict[str, Builder] = {
    "none": _none,
    "random": _random,
    "caa": partial(_extracted, estimator="mean_diff"),
    "pca": partial(_extracted, estimator="pca"),
    "steer-sft": partial(_trained_vector, method="sft"),
    "steer-dpo": partial(_trained_vector, method="dpo"),
    "lora-sft": partial(_fine_tuned, method="sft", adapter="lora"),
    "lora-dpo": partial(_fine_tuned, method="dpo", adapter="lora"),
    "full-sft": partial(_fine_tuned, method="sft", adapter="full"),
    "few-shot": _few_shot,
    "system-prompt": _system_prompt,
    "caa+system-prompt": _caa_on_system_prompt,
    "caa+lora-sft": _caa_on_lora,
}

METHODS: dict[str, Method] = {name: Method(**asdict(METHOD_SPECS[name]), build=build)
                              for name, build in in_order(tuple(METHOD_SPECS), _BUILDERS, "study methods").items()}
