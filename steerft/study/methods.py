"""Every method a study compares, in one registry: name -> how to build its scorable from n items.

A builder gets the study context, n and the seed (both None for methods that use no training
items) and returns a `Scorable`. All training data come from the same seeded, nested subset of
the training split (`training_subset`), so at one (n, seed) every method sees the same items.
Work that several methods share at one (n, seed) (activations, the CAA choice, a trained model) is
memoised in the context, so e.g. `random` reuses the CAA vector's layer, norm and multiplier.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from ..data import BehaviourItem, contrast_pairs, training_subset
from ..extract import PairActivations, estimate, pair_activations
from ..adapter import peft_config
from ..training import fit, training_rows
from .context import StudyContext
from .scorable import Scorable, attach, trainable_params
from .select import Choice, best_of, choose_steering, multipliers_on

FAMILIES = ("baseline", "steering", "finetuning", "prompting", "stacked")

Builder = Callable[[StudyContext, "int | None", "int | None"], Scorable]


@dataclass(frozen=True)
class Method:
    """A registry entry. `shared`: the result depends on neither n nor seed, so it is measured once."""

    name: str
    family: str
    build: Builder
    shared: bool = False
    min_n: int = 1


# --------------------------------------------------------------------------- shared pieces


def subset(ctx: StudyContext, n: int, seed: int) -> list[BehaviourItem]:
    return training_subset(ctx.data.train, n, seed)


def _activations(ctx: StudyContext, n: int, seed: int) -> PairActivations:
    """Activations of the n training pairs at every candidate layer, in one early-exit pass."""
    return ctx.remember(("activations", n, seed), lambda: pair_activations(
        ctx.model, ctx.tokenizer, contrast_pairs(subset(ctx, n, seed), ctx.fmt), ctx.layers,
        batch_size=ctx.config.eval.batch_size))


def _vectors(ctx: StudyContext, n: int, seed: int, estimator: str) -> dict[int, torch.Tensor]:
    acts = _activations(ctx, n, seed)
    return {layer: estimate(estimator, *acts.at(layer)).vector for layer in ctx.layers}


def _base_choice(ctx: StudyContext, n: int, seed: int, estimator: str) -> Choice:
    """Layer and multiplier of an extracted vector on the bare model, chosen on validation."""
    return ctx.remember(("choice", estimator, n, seed), lambda: choose_steering(
        ctx, ctx.model, ctx.fmt, _vectors(ctx, n, seed, estimator)))


def _steered(ctx: StudyContext, model: nn.Module, vector: torch.Tensor, choice: Choice) -> nn.Module:
    return attach(model, {choice.best.layer: vector}, choice.best.multiplier, ctx.config.positions)


def _vector_record(choice: Choice, vector: torch.Tensor) -> dict:
    return {**choice.as_dict(), "vector_norm": float(vector.norm())}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep TRL's dataset progress bars and final metrics print out of the study's progress lines."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def train(ctx: StudyContext, items: list[BehaviourItem], seed: int, *, method: str, adapter: str,
          layer: int | None = None) -> nn.Module:
    """SFT or DPO of a steer, LoRA or full adapter on a copy of the base model (steerft.training.fit)."""
    from transformers import set_seed

    settings = ctx.config.train
    spec = replace(settings.adapter, kind=adapter, layers=[layer if layer is not None else ctx.train_layers[0]],
                   positions=ctx.config.positions)
    set_seed(seed)  # TRL initialises LoRA weights before the trainer seeds itself
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        args = {**settings.trainer_args(method, adapter), "output_dir": tmp, "seed": seed, "disable_tqdm": True,
                "logging_strategy": "no"}
        model = fit(ctx.fresh_model(), ctx.tokenizer, training_rows(method, items, ctx.fmt), method=method,
                    peft_config=peft_config(spec), args=args)
    return model.eval()


def _trained(ctx: StudyContext, n: int, seed: int, method: str, adapter: str) -> nn.Module:
    return ctx.remember(("trained", method, adapter, n, seed),
                        lambda: train(ctx, subset(ctx, n, seed), seed, method=method, adapter=adapter))


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
                    choice={"estimator": estimator, **_vector_record(choice, vector)})


def _random(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """A random direction with the CAA vector's layer, norm and multiplier: direction without magnitude."""
    choice = _base_choice(ctx, n, seed, "mean_diff")
    caa = _vectors(ctx, n, seed, "mean_diff")[choice.best.layer]
    generator = torch.Generator().manual_seed(zlib.crc32(f"steerft.random:{n}:{seed}".encode()))
    direction = torch.randn(caa.shape, generator=generator)
    vector = direction / direction.norm() * caa.norm()
    return Scorable(_steered(ctx, ctx.fresh_model(), vector, choice), ctx.fmt, params=vector.numel(),
                    choice={**_vector_record(choice, vector), "matched_to": "caa"})


def _trained_vector(ctx: StudyContext, n: int, seed: int, *, method: str) -> Scorable:
    """A vector trained at each of train.layers; its layer and multiplier chosen on validation."""
    items = subset(ctx, n, seed)
    models, candidates = {}, []
    for layer in ctx.train_layers:
        models[layer] = train(ctx, items, seed, method=method, adapter="steer", layer=layer)
        candidates += multipliers_on(ctx, models[layer], ctx.fmt, layer, ctx.config.train.multipliers)
    choice = best_of(candidates, ctx.config.select_by)
    model = models[choice.best.layer]
    model.set_multiplier(choice.best.multiplier)
    vector = model.get_vectors()[choice.best.layer]
    return Scorable(model, ctx.fmt, params=trainable_params(model), choice=_vector_record(choice, vector))


def _fine_tuned(ctx: StudyContext, n: int, seed: int, *, method: str, adapter: str) -> Scorable:
    model = _trained(ctx, n, seed, method, adapter)
    return Scorable(model, ctx.fmt, params=trainable_params(model))


def _caa_on_system_prompt(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """The CAA vector on top of the system prompt; layer and multiplier re-chosen with the prompt in place."""
    vectors = _vectors(ctx, n, seed, "mean_diff")
    choice = choose_steering(ctx, ctx.model, ctx.system_fmt, vectors)
    vector = vectors[choice.best.layer]
    return Scorable(_steered(ctx, ctx.fresh_model(), vector, choice), ctx.system_fmt, params=vector.numel(),
                    choice=_vector_record(choice, vector))


def _caa_on_lora(ctx: StudyContext, n: int, seed: int) -> Scorable:
    """The base model's CAA vector on top of the merged LoRA-SFT model of the same (n, seed)."""
    lora = _trained(ctx, n, seed, "sft", "lora")
    merged = copy.deepcopy(lora).merge_and_unload()
    vectors = _vectors(ctx, n, seed, "mean_diff")
    choice = choose_steering(ctx, merged, ctx.fmt, vectors)
    vector = vectors[choice.best.layer]
    return Scorable(_steered(ctx, merged, vector, choice), ctx.fmt, params=trainable_params(lora) + vector.numel(),
                    choice=_vector_record(choice, vector))


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("none", "baseline", _none, shared=True),
    Method("random", "baseline", _random),
    Method("caa", "steering", partial(_extracted, estimator="mean_diff")),
    Method("pca", "steering", partial(_extracted, estimator="pca"), min_n=2),
    Method("steer-sft", "steering", partial(_trained_vector, method="sft")),
    Method("steer-dpo", "steering", partial(_trained_vector, method="dpo")),
    Method("lora-sft", "finetuning", partial(_fine_tuned, method="sft", adapter="lora")),
    Method("lora-dpo", "finetuning", partial(_fine_tuned, method="dpo", adapter="lora")),
    Method("full-sft", "finetuning", partial(_fine_tuned, method="sft", adapter="full")),
    Method("few-shot", "prompting", _few_shot),
    Method("system-prompt", "prompting", _system_prompt, shared=True),
    Method("caa+system-prompt", "stacked", _caa_on_system_prompt),
    Method("caa+lora-sft", "stacked", _caa_on_lora),
)}
