"""Scoring that computes nothing twice: one pass per prompt, nothing below the steered block.

Two savings, both exact up to float rounding against the plain path (`logprobs.summed_logprobs`):

* **Shared prompts.** Rows with the same prompt (an item's two completions) are scored from one
  pass over the prompt: its KV cache is copied to each completion row, and the completions run on
  top. A steer adapter sees the same positions as with `labels` (a pass over a non-empty cache is
  completion), so this works for any model.
* **Nothing below the site.** A candidate that adds `multiplier * vector` to block L's output
  cannot change blocks 0..L. The base passes over a set of rows are recorded (`record_base`),
  keeping only what a replay from the given layers needs: the residual stream leaving each of
  those blocks, the other arguments the model built for the blocks above the lowest of them
  (masks, rotary embeddings) and, if asked, the prompts' keys and values there. Each candidate
  re-runs only blocks L+1.. with the model's own modules. A candidate steering only completion
  positions also leaves the prompt untouched, so with the prompt cache it runs completion tokens
  only; the first completion token, predicted from the last prompt position, keeps its base
  log-probability. A record is kept for many calls (a study keeps one per split for all its
  points) when its estimated size fits a cap, or recorded one batch at a time in each call
  (`site_logprobs`); both are the same code and give the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from transformers import DynamicCache

from ..batching import EncodedRow
from ..tuner import SteerLayer, block_list, hidden_of
from ._forward import device_of, inference

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm")


@dataclass
class SharedBatch:
    """Rows grouped by prompt: prompts left-padded (G, P), completions right-padded (R, C).

    Left-padded prompts end in the same column, so one cache serves every completion row and
    the completion columns start together; position ids keep each row's real positions.
    """

    index: list[int]
    group: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def prompt_positions(self) -> torch.Tensor:
        return (self.prompt_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def completion_positions(self) -> torch.Tensor:
        return self.prompt_mask.sum(-1)[self.group].unsqueeze(1) + torch.arange(
            self.completion_ids.shape[1], device=self.completion_ids.device)

    @property
    def attention(self) -> torch.Tensor:
        """The completion pass's mask over prompt and completion columns."""
        return torch.cat([self.prompt_mask[self.group], self.completion_mask], dim=1)

    @property
    def predicts_next(self) -> torch.Tensor:
        """(R, C-1): completion positions whose next token is a completion token."""
        return self.completion_mask[:, 1:].bool()

    def to(self, device: torch.device) -> "SharedBatch":
        return SharedBatch(self.index, self.group.to(device), self.prompt_ids.to(device), self.prompt_mask.to(device),
                           self.completion_ids.to(device), self.completion_mask.to(device))


def shared_batches(rows: Sequence[EncodedRow], batch_size: int, pad_id: int) -> Iterator[SharedBatch]:
    """Length-sorted batches of whole prompt groups, at most `batch_size` completion rows each (one group at least)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if row.prompt_length < 1:
            raise ValueError(f"Row {i} has an empty prompt: its first completion token would have no context.")
        groups.setdefault(tuple(row.ids[: row.prompt_length]), []).append(i)
    ordered = sorted(groups.items(), key=lambda g: len(g[0]) + max(rows[i].completion_length for i in g[1]))
    chunk: list[tuple[tuple[int, ...], list[int]]] = []
    for group in ordered:
        if chunk and sum(len(members) for _, members in chunk) + len(group[1]) > batch_size:
            yield _collate(rows, chunk, pad_id)
            chunk = []
        chunk.append(group)
    if chunk:
        yield _collate(rows, chunk, pad_id)


def _collate(rows: Sequence[EncodedRow], chunk: list[tuple[tuple[int, ...], list[int]]], pad_id: int) -> SharedBatch:
    prompt_width = max(len(prompt) for prompt, _ in chunk)
    index = [i for _, members in chunk for i in members]
    completion_width = max(rows[i].completion_length for i in index)
    prompt_ids = torch.full((len(chunk), prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(chunk), prompt_width), dtype=torch.long)
    completion_ids = torch.full((len(index), completion_width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(index), completion_width), dtype=torch.long)
    group = []
    for g, (prompt, members) in enumerate(chunk):
        prompt_ids[g, prompt_width - len(prompt):] = torch.tensor(prompt)
        prompt_mask[g, prompt_width - len(prompt):] = 1
        group += [g] * len(members)
    for r, i in enumerate(index):
        completion = rows[i].ids[rows[i].prompt_length:]
        completion_ids[r, : len(completion)] = torch.tensor(completion)
        completion_mask[r, : len(completion)] = 1
    return SharedBatch(index, torch.tensor(group), prompt_ids, prompt_mask, completion_ids, completion_mask)


def _summed(first_logits: torch.Tensor, next_logits: torch.Tensor | None, batch: SharedBatch) -> torch.Tensor:
    """Float64 per-row sums: the first completion token from the prompt's last position, the rest from
    the completion pass.

    `first_logits` is (G, V), one per prompt; `next_logits` is (n, V) at the `predicts_next` positions in row order.
    """
    first = first_logits.float().log_softmax(-1)[batch.group]
    sums = first.gather(-1, batch.completion_ids[:, :1]).squeeze(-1).double()
    if next_logits is not None:
        keep = batch.predicts_next
        targets = batch.completion_ids[:, 1:][keep]
        rest = next_logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
        rows = torch.arange(len(batch.index), device=keep.device).unsqueeze(1).expand_as(keep)[keep]
        sums = sums.index_add(0, rows, rest)
    return sums


def _scatter(values: torch.Tensor, batch: SharedBatch, out: torch.Tensor) -> None:
    out[..., batch.index] = values.cpu()


def _prompt_then_completions(model: nn.Module, batch: SharedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits predicting each completion token and nothing else: (G, V) from each prompt's last
    position, and (R, C-1, V) from the completion columns (None when every completion is one token)."""
    prompt_pass = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                        position_ids=batch.prompt_positions, use_cache=True, logits_to_keep=1)
    width = batch.completion_ids.shape[1]
    if width == 1:
        return prompt_pass.logits[:, -1], None
    cache = prompt_pass.cache
    cache.batch_select_indices(batch.group)
    rest = model(input_ids=batch.completion_ids, attention_mask=batch.attention,
                 position_ids=batch.completion_positions, cache=cache, use_cache=True,
                 logits_to_keep=torch.arange(width - 1, device=batch.group.device)).logits
    return prompt_pass.logits[:, -1], rest


def shared_prompt_logprobs(model: nn.Module, rows: Sequence[EncodedRow], *, batch_size: int, pad: int) -> torch.Tensor:
    """Per-row float64 sums of completion log-probabilities, each prompt run once for all its completions."""
    sums = torch.zeros(len(rows), dtype=torch.float64)
    device = device_of(model)
    with inference(model):
        for batch in shared_batches(rows, batch_size, pad):
            batch = batch.to(device)
            first, rest = _prompt_then_completions(model, batch)
            _scatter(_summed(first, None if rest is None else rest[batch.predicts_next], batch), batch, sums)
    return sums


def completion_log_distributions(model: nn.Module, batch: SharedBatch) -> torch.Tensor:
    """Float32 (R, C, V) next-token log-probabilities predicting each completion column of `batch`
    (padding columns included, masked by `batch.completion_mask`); logits only at those positions."""
    first, rest = _prompt_then_completions(model, batch)
    logits = first[batch.group].unsqueeze(1)
    if rest is not None:
        logits = torch.cat([logits, rest], dim=1)
    return logits.float().log_softmax(-1)


@dataclass(frozen=True)
class Steering:
    """A candidate: add `multiplier * vector` to block `layer`'s output at `positions` (all, prompt, completion)."""

    layer: int
    vector: torch.Tensor
    multiplier: float
    positions: str = "all"


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the LM head, or None where the tail is not norm then head."""
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        return None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return next((getattr(decoder, name) for name in _FINAL_NORMS if hasattr(decoder, name)), None)


def supports_site_cache(model: nn.Module) -> bool:
    """Whether a replay of recorded blocks computes what the model computes.

    Modules inside the blocks (LoRA layers included) run in the replay like in the full pass; an
    enabled steer layer does not, since it learns which tokens are completion from a hook on the
    block stack, which a replay bypasses (a disabled one adds nothing, so it is no obstacle). A
    PeftModel wrapper is refused: score its base model.
    """
    return (not isinstance(model, PeftModel)
            and not any(isinstance(m, SteerLayer) and not m.disable_adapters for m in model.modules())
            and final_norm(model) is not None and model.get_output_embeddings() is not None)


DEFAULT_RECORD_CAP = 2 * 2**30
"""Bytes kept base records may take (`record_base`'s default, a study's budget for all of its records); a record
over it is recorded again in each call instead."""


@dataclass
class _Pass:
    """One recorded base pass, only what replays from the recorded layers need: the residual stream
    leaving each of those blocks, and the other arguments (masks, rotary embeddings, position ids)
    of every block above the lowest of them: the positional ones after the hidden state (None when
    the hidden state came as a keyword) and the keyword ones but the hidden state."""

    leaving: dict[int, torch.Tensor]
    calls: dict[int, tuple[tuple | None, dict]]


@contextmanager
def _recording(blocks: nn.ModuleList, norm: nn.Module, layers: frozenset[int]) -> Iterator[list[_Pass]]:
    passes: list[_Pass] = []
    lowest, last = min(layers), len(blocks) - 1

    def record(index: int):
        def hook(module, args, kwargs):
            if index == 0:
                passes.append(_Pass({}, {}))
            if index - 1 in layers:
                passes[-1].leaving[index - 1] = args[0] if args else kwargs["hidden_states"]
            if index > lowest:
                passes[-1].calls[index] = (args[1:] if args else None,
                                           {k: v for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def record_output(module, args):
        passes[-1].leaving[last] = args[0]

    handles = [block.register_forward_pre_hook(record(i), with_kwargs=True) for i, block in enumerate(blocks)]
    handles.append(norm.register_forward_pre_hook(record_output))
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def _run_blocks(blocks: nn.ModuleList, record: _Pass, start: int, hidden: torch.Tensor) -> torch.Tensor:
    """Blocks `start`.. on `hidden`, each called with the arguments the model built for it."""
    for layer in range(start, len(blocks)):
        args, kwargs = record.calls[layer]
        if args is not None:
            hidden = hidden_of(blocks[layer](hidden, *args, **kwargs))
        else:
            hidden = hidden_of(blocks[layer](**{**kwargs, "hidden_states": hidden}))
    return hidden


class _RecordedBatch:
    """The base passes of one batch, as much as replays from `layers` need, and the replay of any candidate.

    With `prompt_cache`, the prompt's keys and values above the lowest layer are kept, so a
    candidate steering completion positions runs completion tokens only; without it, such a
    candidate re-runs the prompt from its block (unsteered) to rebuild them.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, norm: nn.Module, batch: SharedBatch,
                 layers: frozenset[int], prompt_cache: bool) -> None:
        self.model, self.blocks, self.norm, self.batch = model, blocks, norm, batch
        self.cache = DynamicCache(config=model.config)
        self.empty = [copy.copy(layer) for layer in self.cache.layers]
        above = range(min(layers) + 1, len(blocks))
        with _recording(blocks, norm, layers) as passes:
            model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=batch.prompt_positions,
                  cache=self.cache, use_cache=True, logits_to_keep=1)
            self.prompt_layers = {i: copy.copy(self.cache.layers[i]) for i in above} if prompt_cache else None
            self.cache.batch_select_indices(batch.group)
            if batch.completion_ids.shape[1] > 1:
                model(input_ids=batch.completion_ids, attention_mask=batch.attention,
                      position_ids=batch.completion_positions, cache=self.cache, use_cache=True, logits_to_keep=1)
        self._reset(-1, {})  # the passes' keys and values: replays rebuild or copy what they need
        self.prompt_pass = passes[0]
        self.completion_pass = passes[1] if len(passes) > 1 else None

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(self.norm(hidden))

    def _reset(self, layer: int, layers: dict[int, object]) -> None:
        """Cache layers above `layer`: copies of `layers`' where given, else empty."""
        for i in range(layer + 1, len(self.blocks)):
            if i in layers:
                self.cache.layers[i] = copy.copy(layers[i])
            elif i < len(self.empty):
                self.cache.layers[i] = copy.copy(self.empty[i])
            else:
                self.cache.layers[i] = self.cache.layer_class_to_replicate()

    def _final_hidden(self, steering: Steering | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last block's output under `steering`: (G, d) at each prompt's last position, and (R, C, d) over
        the completion columns (None without a completion pass)."""
        last = len(self.blocks) - 1
        prompt, completion = self.prompt_pass, self.completion_pass
        if steering is None or steering.multiplier == 0:
            return prompt.leaving[last][:, -1], None if completion is None else completion.leaving[last]
        layer = steering.layer
        delta = steering.multiplier * steering.vector.to(prompt.leaving[layer])
        steer_prompt = steering.positions in ("all", "prompt")
        prompt_last = prompt.leaving[last][:, -1]
        if steer_prompt or self.prompt_layers is None:
            self._reset(layer, {})
            hidden = prompt.leaving[layer] + delta if steer_prompt else prompt.leaving[layer]
            prompt_last = _run_blocks(self.blocks, prompt, layer + 1, hidden)[:, -1]
        else:
            self._reset(layer, self.prompt_layers)
        if completion is None:
            return prompt_last, None
        for i in range(layer + 1, len(self.blocks)):
            self.cache.layers[i].batch_select_indices(self.batch.group)
        hidden = completion.leaving[layer]
        if steering.positions in ("all", "completion"):
            hidden = hidden + delta
        return prompt_last, _run_blocks(self.blocks, completion, layer + 1, hidden)

    def logprobs(self, steering: Steering | None) -> torch.Tensor:
        """Per-row completion log-probability sums under `steering` (None: the base model)."""
        prompt_last, completion = self._final_hidden(steering)
        self._reset(-1, {})  # a kept record holds no replay's keys and values between calls
        next_logits = None if completion is None else self._logits(completion[:, :-1][self.batch.predicts_next])
        return _summed(self._logits(prompt_last), next_logits, self.batch)

    def log_distributions(self, steering: Steering | None) -> torch.Tensor:
        """Float32 (R, C, V) next-token log-probabilities predicting each completion column under `steering`
        (what `completion_log_distributions` gives for the model steered so)."""
        prompt_last, completion = self._final_hidden(steering)
        self._reset(-1, {})
        logits = self._logits(prompt_last)[self.batch.group].unsqueeze(1)
        if completion is not None:
            logits = torch.cat([logits, self._logits(completion[:, :-1])], dim=1)
        return logits.float().log_softmax(-1)

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the record holds (some several times: rotary embeddings and masks are shared by blocks)."""
        for recorded in filter(None, (self.prompt_pass, self.completion_pass)):
            yield from recorded.leaving.values()
            for args, kwargs in recorded.calls.values():
                yield from _tensors_in([*(args or ()), *kwargs.values()])
        for layer in (self.prompt_layers or {}).values():
            yield from _tensors_in(vars(layer).values())


def _tensors_in(values) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors_in(value)


class BaseRecord:
    """The base model's passes over `rows`, as much as a replay from any of `layers` needs.

    Kept (`kept`), it is recorded once and every `logprobs` call replays from it: a study keeps
    one per split for all its points. Not kept, each `logprobs` call records one batch at a time and
    drops it after its candidates are scored: the memory of one batch, the cost of one base pass per call.
    """

    def __init__(self, model: nn.Module, rows: Sequence[EncodedRow], layers: Iterable[int], *, prompt_cache: bool,
                 batch_size: int, pad: int, keep: bool) -> None:
        if not supports_site_cache(model):
            raise ValueError("site_logprobs needs a transformers causal LM (final norm, LM head) without a PEFT wrapper "
                             "or steer layers; score such a model with summed_logprobs instead.")
        self.blocks, self.norm = block_list(model), final_norm(model)
        for layer in layers:
            if not 0 <= layer < len(self.blocks):
                raise ValueError(f"Candidate layer {layer} is outside the model's {len(self.blocks)} blocks.")
        self.model, self.rows, self.layers = model, rows, frozenset(layers) | {len(self.blocks) - 1}
        self.prompt_cache, self.batch_size, self.pad = prompt_cache, batch_size, pad
        self._kept: list[_RecordedBatch] | None = None
        if keep:
            with inference(model):
                self._kept = list(self._recorded())

    @property
    def kept(self) -> bool:
        return self._kept is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors a kept record holds (0 when not kept), each storage counted once."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for recorded in self._kept or () for t in recorded.tensors()}
        return sum(storages.values())

    def _check(self, candidates: Sequence[Steering | None]) -> None:
        for steering in candidates:
            if steering is not None and steering.layer not in self.layers:
                raise ValueError(f"Candidate layer {steering.layer} is not recorded (layers {sorted(self.layers)}).")

    def _recorded(self) -> Iterator[_RecordedBatch]:
        device = device_of(self.model)
        for batch in shared_batches(self.rows, self.batch_size, self.pad):
            yield _RecordedBatch(self.model, self.blocks, self.norm, batch.to(device), self.layers, self.prompt_cache)

    def logprobs(self, candidates: Sequence[Steering | None]) -> torch.Tensor:
        """Float64 (n_candidates, n_rows) completion log-probability sums; a None candidate (or multiplier 0) is the
        base model. Each candidate runs only the blocks above its layer, and only the completion tokens when it
        steers completion positions and the record holds the prompt cache."""
        self._check(candidates)
        sums = torch.zeros((len(candidates), len(self.rows)), dtype=torch.float64)
        with inference(self.model):
            for recorded in self._kept if self._kept is not None else self._recorded():
                _scatter(torch.stack([recorded.logprobs(steering) for steering in candidates]), recorded.batch, sums)
        return sums


    def log_distributions(self, steering: Steering | None) -> Iterator[tuple[SharedBatch, torch.Tensor]]:
        """Each batch with its rows' (R, C, V) log-distributions over the completion columns under `steering`."""
        self._check([steering])
        with inference(self.model):
            for recorded in self._kept if self._kept is not None else self._recorded():
                yield recorded.batch, recorded.log_distributions(steering)


def record_bytes(model: nn.Module, rows: Sequence[EncodedRow], layers: Sequence[int], *, prompt_cache: bool,
                 batch_size: int, pad: int) -> int:
    """An upper estimate of a kept record's bytes, from the batches' shapes, before recording anything.

    Residual streams at the recorded layers (and the last block), the prompt's keys and values
    above the lowest layer (with `prompt_cache`), and per pass one float attention mask and one
    pair of rotary tables for each of two attention kinds (full and sliding window), the most any
    supported architecture builds.
    """
    config = model.config
    size = next(model.parameters()).element_size()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_width = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    blocks = len(block_list(model))
    recorded = set(layers) | {blocks - 1}
    above = blocks - 1 - min(recorded)
    total = 0
    for batch in shared_batches(rows, batch_size, pad):
        groups, prompt = batch.prompt_ids.shape
        completion_rows, completion = batch.completion_ids.shape
        completion_tokens = completion_rows * completion if completion > 1 else 0
        tokens = groups * prompt + completion_tokens
        masks = groups * prompt * prompt + completion_tokens * (prompt + completion)
        total += size * (len(recorded) * tokens * config.hidden_size + (2 * masks + 4 * tokens * head_dim if above else 0))
        if prompt_cache:
            total += size * above * 2 * groups * prompt * kv_width
    return total


def record_base(model: nn.Module, rows: Sequence[EncodedRow], layers: Sequence[int], *, prompt_cache: bool,
                batch_size: int, pad: int, max_bytes: int | None = DEFAULT_RECORD_CAP) -> BaseRecord:
    """The base passes over `rows` that replays from `layers` need, kept when their estimate
    (`record_bytes`) fits `max_bytes` (None: always), else recorded again in each `logprobs` call.

    `prompt_cache` keeps the prompts' keys and values above the lowest layer, which only
    candidates steering `completion` positions read.
    """
    keep = max_bytes is None or (supports_site_cache(model) and record_bytes(
        model, rows, layers, prompt_cache=prompt_cache, batch_size=batch_size, pad=pad) <= max_bytes)
    return BaseRecord(model, rows, layers, prompt_cache=prompt_cache, batch_size=batch_size, pad=pad, keep=keep)


def site_logprobs(model: nn.Module, rows: Sequence[EncodedRow], candidates: Sequence[Steering | None], *,
                  batch_size: int, pad: int) -> torch.Tensor:
    """Float64 (n_candidates, n_rows) completion log-probability sums, one base pass per batch for all candidates.

    A None candidate is the base model. The base passes are recorded one batch at a time for these
    candidates' layers (`record_base`, not kept), so memory holds one batch's record, never the dataset's.
    """
    steerings = [steering for steering in candidates if steering is not None]
    record = BaseRecord(model, rows, [s.layer for s in steerings], batch_size=batch_size, pad=pad, keep=False,
                        prompt_cache=any(s.positions == "completion" for s in steerings))
    return record.logprobs(candidates)
