"""What every point of a study shares: the base model, the splits, the fixed evaluation inputs.

The base model is loaded once and never modified: methods that change weights or attach adapters
work on copies (`fresh_model`), and steering selection attaches and removes its adapters around
each use, so every point is scored against the same base.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data import (
    BehaviourDataError,
    BehaviourDataset,
    BehaviourItem,
    PromptFormatter,
    Splits,
    load_behaviour,
    load_texts,
    split_items,
)
from ..models import ModelNotAvailableError, load_model
from ..runconfig import ConfigError
from ..tuner import resolve_layers
from ..tuner.arch import architecture_of, decoder_blocks
from .config import StudyConfig

T = TypeVar("T")

GENERAL_TEXT_REQUEST = "Write a short paragraph."
"""The request general text is scored as the reply to, so prompting methods can prefix it (see README)."""


@dataclass
class StudyData:
    """The dataset and the fixed splits: `test` is the same for every method and never used to choose anything."""

    dataset: BehaviourDataset
    train: list[BehaviourItem]
    val: list[BehaviourItem]
    test: list[BehaviourItem]
    system_prompt: str | None


def load_data(config: StudyConfig) -> StudyData:
    """Load and split the dataset, refusing an n the training split cannot supply."""
    try:
        dataset = load_behaviour(config.dataset, fields=config.fields)
        splits: Splits = split_items(dataset.items, config.split_seed, config.val_frac, config.test_frac)
    except BehaviourDataError as err:
        raise ConfigError(f"dataset={config.dataset!r}: {err}") from err
    if max(config.n) > len(splits.train):
        raise ConfigError(f"n={config.n}: the training split of {dataset.name!r} has only {len(splits.train)} items; "
                          "lower n, or lower val_frac/test_frac.")
    system_prompt = config.system_prompt or dataset.system_prompt
    if system_prompt is None and any("system-prompt" in m for m in config.methods):
        raise ConfigError(f"methods: the system-prompt methods need a system prompt, and dataset "
                          f"{config.dataset!r} has none; set system_prompt: '...' in the config.")
    return StudyData(dataset, splits.train, _cap(splits.val, config.eval.val_items),
                     _cap(splits.test, config.eval.test_items), system_prompt)


def _cap(items: list[T], limit: int | None) -> list[T]:
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
    memo: dict[Hashable, Any] = field(default_factory=dict)

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


def load_base_model(config: StudyConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base model, on the GPU when there is one."""
    try:
        model, tokenizer = load_model(config.model)
    except (OSError, ValueError, ModelNotAvailableError) as err:
        raise ConfigError(f"model={config.model!r} could not be loaded: {err}") from err
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def resolved_layers(config: StudyConfig, model: nn.Module) -> tuple[list[int], list[int]]:
    """Candidate layers of extracted and of trained vectors as block indices (negatives count from the end)."""
    n_blocks = len(decoder_blocks(model, architecture_of(model)))
    resolved = []
    for key, layers in (("layers", config.layers), ("train.layers", config.train.layers)):
        try:
            resolved.append(resolve_layers(list(layers), n_blocks))
        except ValueError as err:
            raise ConfigError(f"{key}={layers}: the model has {n_blocks} blocks, so layers must lie in "
                              f"{-n_blocks}..{n_blocks - 1}.") from err
    return resolved[0], resolved[1]


def eval_inputs(config: StudyConfig) -> tuple[list[str], list[str], list[str]]:
    """Neutral prompts (KL), general texts (cross-entropy) and generation prompts, capped."""
    sizes = config.eval
    return (_cap(load_texts("neutral_prompts", "prompt"), sizes.neutral_prompts),
            _cap(load_texts("general_text", "text"), sizes.general_texts),
            _cap(load_texts("generation_prompts", "prompt"), sizes.generation_prompts))
