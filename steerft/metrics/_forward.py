"""Forward passes shared by every metric: eval mode, the base-model context, log-distributions.

Every metric scores tokens the same way (prompt and completion tokenised apart, `labels` passed so
steer adapters with positions="completion" steer exactly the scored tokens), so numbers from
different metrics and methods are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..batching import Batch


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; the caller's train/eval mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (steerft.models.load_model does).")
    return tokenizer.pad_token_id


def log_distributions(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 next-token log-probabilities (n_tokens, vocab) predicting each completion token.

    Returns them with the batch row of each token. Only completion positions are normalised,
    which keeps memory at n_tokens x vocab instead of batch x seq x vocab.
    """
    batch = batch.to(device_of(model))
    # labels tell steer adapters which tokens are completion; the loss itself is not used.
    logits = model(**batch.model_inputs(), labels=batch.labels, use_cache=False).logits
    predicts_completion = batch.completion_mask[:, 1:]
    rows = torch.arange(batch.input_ids.shape[0], device=logits.device).unsqueeze(1).expand_as(predicts_completion)
    return logits[:, :-1][predicts_completion].float().log_softmax(-1), rows[predicts_completion]


def token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 log p of each completion token, with its batch row."""
    distributions, rows = log_distributions(model, batch)
    targets = batch.input_ids[:, 1:].to(distributions.device)[batch.completion_mask[:, 1:].to(distributions.device)]
    return distributions.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double(), rows


def check_base_model(model: nn.Module, base_model: nn.Module | None) -> None:
    """Refuse the model a PEFT adapter wraps as `base_model`: PEFT modifies it in place, so it is steered too."""
    if base_model is not None and isinstance(model, PeftModel) and any(m is base_model for m in model.modules()):
        raise ValueError(
            "base_model is the model this PEFT adapter wraps; PEFT modifies it in place, so it runs with the adapter. "
            "Leave base_model out to use the adapter-disabled model, or pass a separately loaded copy."
        )


@contextmanager
def as_base(model: nn.Module, base_model: nn.Module | None = None) -> Iterator[nn.Module]:
    """Yield the model that gives base behaviour.

    An explicit `base_model` wins; a PeftModel is its own base with the adapter disabled (exact);
    any other model is its own base (prompting methods differ only in their prompts).
    """
    if base_model is not None:
        yield base_model
    elif isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
    else:
        yield model
