"""A method's result in the one shape the evaluation takes: a model plus how to prompt it.

Adapter methods differ in the model (steered, LoRA, fine-tuned), prompting methods in the prompt
(system prompt, demonstrations); stacked methods in both. Scoring every method through this one
object is what keeps the comparison fair: the same items, completions and metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..data import BehaviourItem, ContrastPair, PromptFormatter
from ..adapter import fixed_vectors


@dataclass
class Scorable:
    """A model, the formatter and demonstrations that build its prompts, and what it cost."""

    model: nn.Module
    fmt: PromptFormatter
    demonstrations: Sequence[BehaviourItem] = ()
    params: int = 0  # trainable (or fitted) parameters of the method; 0 for prompting
    choice: dict[str, Any] = field(default_factory=dict)  # layer, multiplier, demonstrations, ...

    def prompt(self, item: BehaviourItem | str) -> str:
        return self.fmt.prompt(item, demonstrations=self.demonstrations)

    def pairs(self, items: Sequence[BehaviourItem]) -> list[ContrastPair]:
        """Contrast pairs under this method's prompt: the completions are the same for every method."""
        return [ContrastPair(prompt=self.prompt(item), positive=self.fmt.completion(item.matching),
                             negative=self.fmt.completion(item.not_matching), id=item.id) for item in items]


def attach(model: nn.Module, vectors: dict[int, torch.Tensor], multiplier: float, positions: str) -> PeftModel:
    """Steer `model` (a private copy) for good: the method's final model."""
    return get_peft_model(model, fixed_vectors(vectors, multiplier, positions))


@contextmanager
def steered(model: nn.Module, vectors: dict[int, torch.Tensor], positions: str) -> Iterator[PeftModel]:
    """Steer `model` for the duration of the block and leave it exactly as it was after (selection).

    PEFT freezes the base weights when it wraps a model and unloading does not thaw them; they are
    restored here so a copy made later (e.g. for full fine-tuning) can still be trained.
    """
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    peft_model = attach(model, vectors, 1.0, positions)
    try:
        yield peft_model
    finally:
        peft_model.unload()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
