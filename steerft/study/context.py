"""What every point of a study shares: the base model, the splits, the fixed evaluation inputs.

The base model is loaded once and never modified: methods that change weights or attach adapters
work on copies (`fresh_model`), and steering selection attaches and removes its adapters around
each use, so every point is scored against the same base. Its own scores (validation and test
preference, the KL reference) are therefore computed once per study (`base_preference`,
`base_kl_reference`) and shared by every method, and so are its recorded passes over the
validation, test and general-text rows (`base_record`): every steering candidate, and every point
whose model is the base weights plus one added vector, is scored by replay from its block on
them (`replayed_logprobs`) instead of running the model again.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data import (
    BehaviourDataError,
    BehaviourItem,
    ContrastPair,
    PromptFormatter,
    answer_balance,
    answer_key,
    length_filter,
    load_behaviour,
    load_texts,
)
from ..batching import EncodedRow, encode
from ..jobs import startup
from ..metrics import (
    DEFAULT_RECORD_CAP,
    BaseRecord,
    PreferenceResult,
    Steering,
    as_base,
    base_log_distributions,
    pad_id,
    pair_rows,
    preference,
    preference_results,
    record_base,
    supports_site_cache,
)
from ..models import is_base_builtin, load_tokenizer
from ..runconfig import ConfigError
from ..tuner import SteerConfig, SteerLayer
from .scorable import Scorable

if TYPE_CHECKING:  # the config module imports the method registry, which builds on this module
    from .config import StudyConfig

T = TypeVar("T")

GENERAL_TEXT_REQUEST = "Write a short paragraph."
"""The request general text is scored as the reply to, so prompting methods can prefix it (see README)."""


@dataclass
class StudyData:
    """The dataset and the fixed splits: `test` is the same for every method and never used to choose anything."""

    train: list[BehaviourItem]
    val: list[BehaviourItem]
    test: list[BehaviourItem]
    system_prompt: str | None
    hygiene: dict[str, Any] = field(default_factory=dict)  # drop counts and split balance, for the report


def load_data(config: StudyConfig) -> StudyData:
    """Load, length-filter and split the dataset, refusing an n the training split cannot supply."""
    filtered: dict[str, Any] = {}
    dataset, splits = startup.load_splits(config, lambda source, fields: _filtered(config, source, fields, filtered))
    if max(config.n) > len(splits.train):
        raise ConfigError(f"n={config.n}: the training split of {dataset.name!r} has only {len(splits.train)} items; "
                          "lower n, or lower val_frac/test_frac.")
    system_prompt = config.system_prompt or dataset.system_prompt
    if system_prompt is None and any("system-prompt" in m for m in config.methods):
        raise ConfigError(f"methods: the system-prompt methods need a system prompt, and dataset "
                          f"{config.dataset!r} has none; set system_prompt: '...' in the config.")
    val = _cap(splits.val, config.eval.val_items, "eval.val_items",
               f" Raise val_frac (now {config.val_frac}) or give split_file to hold more.")
    test = _cap(splits.test, config.eval.test_items, "eval.test_items",
                f" Raise test_frac (now {config.test_frac}) or give split_file to hold more.")
    two_answer = all(answer_key(item.matching, item.not_matching) for item in dataset.items)
    hygiene = {"dropped": dict(dataset.dropped), **filtered,
               "balance": answer_balance(splits._replace(val=val, test=test)) if two_answer else None}
    return StudyData(splits.train, val, test, system_prompt, hygiene)


def _filtered(config: StudyConfig, source: str, fields: dict | None, counts: dict[str, Any]):
    """The dataset with the config's token-length filter applied (counts go into `counts`)."""
    dataset = load_behaviour(source, fields=fields)
    limits = {k: getattr(config, k) for k in ("max_prompt_tokens", "max_completion_tokens") if getattr(config, k)}
    if not limits:
        return dataset
    tokenizer = load_tokenizer(config.model)
    prompt_format(config, tokenizer)
    kept, dropped = length_filter(dataset.items, PromptFormatter(tokenizer), **limits)
    if not kept:
        raise BehaviourDataError(f"the length filter ({limits}) dropped all {len(dataset.items)} items; raise the limits")
    counts |= {"limits": limits, "length_filter": dropped}
    return replace(dataset, items=kept)


def prompt_format(config: StudyConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """Set the tokenizer's chat template as `chat_template` says; returns the format in words, for the report.

    `none`: plain text ("Question: ...\\nAnswer:"). A path: that Jinja template. `auto` (default):
    the tokenizer's own template, except for models the built-in registry marks as base models
    (e.g. gemma3-270m, whose GGUF ships no template), which get plain text: a base model was never
    trained on turn markers. A hub base model whose tokenizer carries a template is not detectable
    this way; set `chat_template: none` for it.
    """
    if config.chat_template == "none" or (config.chat_template == "auto" and is_base_builtin(config.model)):
        tokenizer.chat_template = None
        reason = "chat_template: none" if config.chat_template == "none" else f"{config.model} is a base model"
        return f"plain text, Question: ... Answer: ({reason})"
    if config.chat_template != "auto":
        tokenizer.chat_template = Path(config.chat_template).read_text()
        return f"chat template from {config.chat_template}"
    if tokenizer.chat_template:
        return "the tokenizer's own chat template"
    return "plain text, Question: ... Answer: (the tokenizer has no chat template)"


SYSTEM_PROBE = "steerft system prompt probe"


def check_system_prompt(config: StudyConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse system-prompt methods where the prompt format has no place for a system prompt.

    Plain text puts the system prompt first, as its own paragraph. A chat template must render a
    system message in its own way (its own role, or folded into the first user turn as Gemma 3
    does); one that raises on it or drops it is refused with the reason.
    """
    if not any("system-prompt" in m for m in config.methods) or not tokenizer.chat_template:
        return
    try:
        text = PromptFormatter(tokenizer, system_prompt=SYSTEM_PROBE).prompt("Hello?")
    except Exception as err:  # a template's own refusal (jinja2 TemplateError, ValueError, ...)
        raise ConfigError(f"methods: the system-prompt methods need a system prompt, and {config.model}'s chat "
                          f"template refuses one ({err}); drop those methods or set chat_template: none.") from err
    if SYSTEM_PROBE not in text:
        raise ConfigError(f"methods: {config.model}'s chat template drops the system message, so the system-prompt "
                          "methods would be the bare model; drop them or set chat_template: none.")


def _cap(items: list[T], limit: int | None, key: str, fix: str = "") -> list[T]:
    """The first `limit` items; fewer than asked is said in one line, not passed over."""
    if limit is not None and limit > len(items):
        print(f"steerft study: {key}={limit}, but only {len(items)} are available; using those {len(items)}.{fix}",
              file=sys.stderr, flush=True)
    return items if limit is None else items[:limit]


@dataclass
class StudyContext:
    """Base model, tokenizer, data and evaluation inputs for every point, plus a per-group memo."""

    config: StudyConfig
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    data: StudyData
    neutral_prompts: list[str]
    references: list[str]  # the base model's continuations of the neutral prompts
    general_texts: list[str]
    generation_prompts: list[str]
    layers: list[int]  # candidate layers of extracted vectors (block indices)
    train_layers: list[int]  # layers trained vectors are trained at
    judge: Any = None  # the study's generation judge (steerft.study.judging.StudyJudge), made once
    memo: dict[Hashable, Any] = field(default_factory=dict)
    base_memo: dict[Hashable, Any] = field(default_factory=dict)  # the base model's scores, kept for the whole study

    @property
    def fmt(self) -> PromptFormatter:
        return PromptFormatter(self.tokenizer)

    @property
    def system_fmt(self) -> PromptFormatter:
        return PromptFormatter(self.tokenizer, system_prompt=self.data.system_prompt)

    def fresh_model(self) -> nn.Module:
        """A private copy of the base model for a method that trains or attaches an adapter."""
        return copy.deepcopy(self.model)

    def remember(self, key: Hashable, compute: Callable[[], T]) -> T:
        """Compute once per (n, seed) group what several methods share (extracted vectors, a LoRA)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def remember_base(ctx: StudyContext, key: Hashable, compute: Callable[[], T]) -> T:
    """Compute once per study what depends on the base model alone (unlike `remember`, never cleared)."""
    if key not in ctx.base_memo:
        ctx.base_memo[key] = compute()
    return ctx.base_memo[key]


def base_pairs(ctx: StudyContext, split: str) -> list[ContrastPair]:
    """The contrast pairs of split `split` ("val" or "test") under the base model's own prompts."""
    return Scorable(ctx.model, ctx.fmt).pairs(getattr(ctx.data, split))


def general_rows(ctx: StudyContext, scorable: Scorable) -> list[EncodedRow]:
    """The general texts as replies to GENERAL_TEXT_REQUEST under `scorable`'s prompt (what `cross_entropy` scores)."""
    prompt = scorable.prompt(GENERAL_TEXT_REQUEST)
    return [encode(ctx.tokenizer, prompt, scorable.fmt.completion(text)) for text in ctx.general_texts]


def base_rows(ctx: StudyContext, split: str) -> list[EncodedRow]:
    """The rows the base model is scored on: `val` and `test` pairs (`pair_rows`), the `general` texts, or the
    `neutral` prompts with their reference continuations (what the KL runs along)."""

    def rows() -> list[EncodedRow]:
        if split == "general":
            return general_rows(ctx, Scorable(ctx.model, ctx.fmt))
        if split == "neutral":
            return neutral_rows(ctx, Scorable(ctx.model, ctx.fmt))
        return pair_rows(ctx.tokenizer, base_pairs(ctx, split))

    return remember_base(ctx, ("rows", split), rows)


def neutral_rows(ctx: StudyContext, scorable: Scorable) -> list[EncodedRow]:
    """The neutral prompts under `scorable`'s prompt, each with the base model's reference continuation."""
    return [encode(ctx.tokenizer, scorable.prompt(p), c) for p, c in zip(ctx.neutral_prompts, ctx.references)]


def steerable_layers(ctx: StudyContext) -> list[int]:
    """Every block a study's vector can be added at: extracted vectors' candidate layers and trained vectors'."""
    return sorted(set(ctx.layers) | set(ctx.train_layers))


def base_record(ctx: StudyContext, split: str) -> BaseRecord:
    """The base model's passes over `split`'s rows (`base_rows`), recorded once per study for replays from any
    steerable layer; with `positions: completion` it keeps the prompts' cache too. Over the record's memory cap
    (`site_cache.DEFAULT_RECORD_CAP`, for all of a study's records together) it is recorded again in each call
    instead (same numbers)."""
    kept = sum(value.nbytes for key, value in ctx.base_memo.items() if key[0] == "record")
    return remember_base(ctx, ("record", split), lambda: record_base(
        ctx.model, base_rows(ctx, split), steerable_layers(ctx), prompt_cache=ctx.config.positions == "completion",
        batch_size=ctx.config.eval.batch_size, pad=pad_id(ctx.tokenizer), max_bytes=DEFAULT_RECORD_CAP - kept))


def base_preference(ctx: StudyContext, split: str) -> PreferenceResult:
    """The base model's completion preference on `split`, scored once per study for every method that needs it:
    from the split's base record (its recording pass), unless the model's blocks cannot be replayed."""

    def compute() -> PreferenceResult:
        pairs = base_pairs(ctx, split)
        if not supports_site_cache(ctx.model):
            return preference(ctx.model, ctx.tokenizer, pairs, batch_size=ctx.config.eval.batch_size)
        return preference_results(pairs, base_record(ctx, split).logprobs([None]))[0]

    return remember_base(ctx, ("preference", split), compute)


def single_vector(model: nn.Module) -> Steering | None:
    """The one unmerged `add` vector at one block that steers PeftModel `model` and nothing else, at the
    multiplier and positions it steers with now; else None."""
    config = getattr(model, "peft_config", {})
    if len(config) != 1:
        return None
    config = config[model.active_adapter]
    merged = any(layer.merged for layer in model.modules() if isinstance(layer, SteerLayer))
    if not isinstance(config, SteerConfig) or config.operator != "add" or merged:
        return None
    vectors = model.get_vectors()
    if len(vectors) != 1:
        return None
    (layer, vector), = vectors.items()
    return Steering(layer, vector.detach(), config.multiplier, config.positions)


def computes_as_base(ctx: StudyContext, model: nn.Module) -> bool:
    """Whether `model`'s weights (its base model's, for a PeftModel) are the study base model's: a steer
    adapter on a copy of it is then the base model plus its vector, and replays from the base record."""
    if model is ctx.model:
        return True
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = dict(inner.named_parameters())
    base = dict(ctx.model.named_parameters())
    vectors = {id(p) for module in inner.modules() if isinstance(module, SteerLayer) for p in module.parameters()}
    if any(name not in base and id(weight) not in vectors for name, weight in own.items()):
        return False
    return all(name in own and (own[name] is weight or torch.equal(own[name], weight)) for name, weight in base.items())


@contextmanager
def replaying(ctx: StudyContext, model: nn.Module, split: str, rows: Sequence[EncodedRow],
              steerings: Sequence[Steering | None]) -> Iterator[BaseRecord | None]:
    """The study's kept record of `split` to replay `steerings` from, when `rows` are its rows, `model` computes
    as the base model (`computes_as_base`) and every steering's layer is recorded; else None.

    `model`'s own adapter stays disabled meanwhile. While a vector is attached to the study's base
    model in place (selection's fallback does this) nothing is replayed: its replay and records
    would run through the attached layer, and a record built then could differ from one built on
    the bare model by float rounding, so a resumed study would not repeat an uninterrupted one.
    """
    layers = {s.layer for s in steerings if s is not None}
    attached = any(isinstance(module, SteerLayer) for module in ctx.model.modules())
    if attached or list(rows) != base_rows(ctx, split) or not layers <= set(steerable_layers(ctx)):
        yield None
        return
    with as_base(model):
        usable = supports_site_cache(ctx.model) and computes_as_base(ctx, model)
        yield base_record(ctx, split) if usable else None


def replayed_logprobs(ctx: StudyContext, model: nn.Module, split: str, rows: Sequence[EncodedRow],
                      steerings: Sequence[Steering | None]) -> torch.Tensor | None:
    """(steerings, rows) log-probability sums replayed from the study's kept record of `split` (`replaying`),
    or None where it does not apply."""
    with replaying(ctx, model, split, rows, steerings) as record:
        return None if record is None else record.logprobs(steerings)


def base_kl_reference(ctx: StudyContext) -> list[torch.Tensor]:
    """The base model's log-distributions along the neutral prompts' reference continuations (every point's KL).

    It holds prompts x continuation tokens x vocabulary floats: 50 MB at the defaults on SmolLM2.
    """
    return remember_base(ctx, ("kl",), lambda: base_log_distributions(
        ctx.model, ctx.tokenizer, [ctx.fmt.prompt(p) for p in ctx.neutral_prompts], ctx.references,
        batch_size=ctx.config.eval.batch_size))


def load_base_model(config: StudyConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base model, on the GPU when there is one, its tokenizer set to the config's prompt format."""
    model, tokenizer = startup.load_job_model(config.model)
    prompt_format(config, tokenizer)
    check_system_prompt(config, tokenizer)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def resolved_layers(config: StudyConfig, model: nn.Module) -> tuple[list[int], list[int]]:
    """Candidate layers of extracted and of trained vectors as block indices (negatives count from the end)."""
    return (startup.layers_of(model, config.layers, "layers"),
            startup.layers_of(model, config.train.adapter.layers, "train.adapter.layers"))


def eval_inputs(config: StudyConfig) -> tuple[list[str], list[str], list[str]]:
    """Neutral prompts (KL), general texts (cross-entropy) and generation prompts, capped."""
    sizes = config.eval
    return (_cap(load_texts("neutral_prompts", "prompt"), sizes.neutral_prompts, "eval.neutral_prompts"),
            _cap(load_texts("general_text", "text"), sizes.general_texts, "eval.general_texts"),
            _cap(load_texts("generation_prompts", "prompt"), sizes.generation_prompts, "eval.generation_prompts"))
