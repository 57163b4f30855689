"""Training a steer adapter without re-running the blocks below its site.

A vector at block L changes nothing below L, and while only the vector trains, the residual stream
entering block L is a fixed function of each training row. `BelowSiteCache` keeps it per row the
first time a row passes through the model, and on a batch whose rows are all known it hands block
L the stacked states while the blocks below return at once: the model's own embeddings, masks and
rotary embeddings still run, and every block from L up runs as usual (forward and backward).

Why it is exact: with default position ids a token's position is its column, and a causal model's
states at a column depend only on the token ids and attention mask of the columns up to it. So a
row is keyed by its ids and mask up to its last attended column (left padding included: the pad
count is part of the key), and the masked columns after it, which no real token attends to, are
zeros in the replay; a pass with a label on one of them falls back. TRL's SFT and DPO collators
pad on the right and label no pad column, so a row's states do not depend on its batch, and rows
hit the cache whatever the epoch's shuffle. A pass the cache cannot vouch for runs the full model,
unchanged: position ids or embeddings given, a KV cache in use, hidden states, attentions or
router logits requested, dropout or a trainable parameter or another adapter's module below L (or
in the stack's other modules, the final norm included), an enabled steer layer below L, no steer
layer at L, mixed-adapter rows, or gradient checkpointing. Labels are seen as the steer adapter
sees them, through the PeftModel's forward (TRL passes them there); a caller that hands labels to
the bare model instead must not place one after a row's last real token.

Memory: one (tokens, hidden size) tensor per distinct row, e.g. 256 x 576 float32 = 0.6 MB for
SmolLM2-135M, so 512 preference pairs (two rows each) hold about 0.6 GB at most.

**Prompts once, too.** When every steer vector in the model acts on completion positions only (the
labelled tokens), nothing else in the stack trains, changes or drops out, a row's columns before
its first label -- its prompt -- are the base model's at every block. So the cache also keeps each
distinct prompt's keys and values at block L and above and the stack's output there (the first
pass over a row captures them through a KV cache), and a pass whose rows and prompts are all known
runs only the labelled part of each row (from the first label to the last real token) through
blocks L and above, on top of the prompts' keys and values: the model's own masks, rotary
embeddings and cache classes, position ids kept as they were. The stack's output is then put back
together at the pass's full width. Prompts cost about 2 x (blocks above L) x key/value width x
prompt tokens each, e.g. 4 MB for a 165-token prompt at block 14 of SmolLM2-135M; new prompts stop
being kept at `prompt_bytes` (rows with one then run every column above the site, as before), and
a model whose cache keeps fewer columns than a pass (a sliding window shorter than the rows) keeps
none.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import DynamicCache

from .arch import architecture_of, block_stack, decoder_blocks
from .blocks import block_indices
from .config import SteerConfig
from .layer import SteerLayer, hidden_of
from .model import _checkpointing_on

RowKey = tuple[tuple[int, ...], tuple[int, ...]]  # token ids and attention mask up to the last real token
PROMPT_BYTES = 2 * 2**30
"""Bytes of prompt keys and values a cache keeps by default (`BelowSiteCache(prompt_bytes=)`)."""


@dataclass
class ReplayCounts:
    """What the cache did: passes that ran the full model, passes served from the cache, the token
    positions (padding included) of the served ones, whose blocks below the site did not run, and
    the prompt positions among them that ran no block at all."""

    full_passes: int = 0
    replayed_passes: int = 0
    replayed_tokens: int = 0
    prompt_tokens_reused: int = 0


@dataclass
class _Prompt:
    """What a row's unsteered prompt leaves for the blocks from the site up: each block's keys and
    values (heads, tokens, head size) and the block stack's output (tokens, hidden size)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    output: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, self.output))


@dataclass
class _Unfold:
    """How to put a pass over the labelled parts back at full width: where each row's part starts
    and ends, the pass's width, and each row's prompt output."""

    splits: list[int]
    ends: list[int]
    width: int
    prompts: list[torch.Tensor]


class BelowSiteCache:
    """Per-row cache of the residual stream entering block `layer` of `model`, used while active.

    `model` is the causal LM (or a PeftModel around it); its block list is found as the steer tuner
    finds it. Use as a context manager around training: the hooks come off and the cache is freed
    on exit. `prompt_bytes` caps the prompts' keys and values kept (see the module docstring).
    """

    def __init__(self, model: nn.Module, layer: int, blocks_path: str | None = None, *,
                 prompt_bytes: int = PROMPT_BYTES) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        arch = architecture_of(base, blocks_path)
        self.blocks = decoder_blocks(base, arch)
        if not 1 <= layer < len(self.blocks):
            raise ValueError(f"BelowSiteCache needs a block with blocks below it: 1..{len(self.blocks) - 1}, "
                             f"got {layer}.")
        self.layer = layer
        self.stack = block_stack(base, arch)
        self.model = base
        self.rows: dict[RowKey, torch.Tensor] = {}
        self.prompts: dict[RowKey, _Prompt] = {}
        self.prompt_bytes = prompt_bytes
        self.counts = ReplayCounts()
        parameters = inspect.signature(self.stack.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"  # transformers 5 renamed it
        self._pending: list[RowKey] | None = None  # a filling pass: the rows to store from block L-1's output
        self._replay: torch.Tensor | None = None  # a replaying pass: what the blocks below hand to block L
        self._capture: tuple[DynamicCache, list[RowKey], list[int]] | None = None  # prompts to keep from this pass
        self._unfold: _Unfold | None = None  # a pass over the labelled parts only
        self._handles: list = []
        self._own_forwards: list[tuple[nn.Module, Callable | None]] = []

    def __enter__(self) -> "BelowSiteCache":
        self._handles = [
            # first, so the steer layers' positions hook has not yet taken the pass's labels
            self.stack.register_forward_pre_hook(self._begin_pass, with_kwargs=True, prepend=True),
            self.stack.register_forward_hook(self._end_pass, always_call=True),
            self.blocks[self.layer - 1].register_forward_hook(self._store),
        ]
        for block in self.blocks[: self.layer]:
            self._own_forwards.append((block, block.__dict__.get("forward")))
            block.forward = self._skippable(block.forward)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for block, own in self._own_forwards:
            del block.forward
            if own is not None:
                block.forward = own
        self._handles, self._own_forwards, self.rows, self.prompts = [], [], {}, {}
        self._forget_pass()

    def _skippable(self, forward: Callable) -> Callable:
        def forward_or_replay(*args, **kwargs):
            return forward(*args, **kwargs) if self._replay is None else self._replay

        return forward_or_replay

    def _forget_pass(self) -> None:
        self._pending = self._replay = self._capture = self._unfold = None

    # ------------------------------------------------------------------ one pass of the block stack

    def _begin_pass(self, module: nn.Module, args: tuple, kwargs: dict):
        self._forget_pass()
        ids = kwargs.get("input_ids", args[0] if len(args) == 1 else None)  # gpt2 passes them positionally
        keys = self._row_keys(ids, kwargs) if len(args) <= 1 else None
        if keys is None:
            self.counts.full_passes += 1
            return None
        splits = self._prompt_splits(len(keys))
        prompts = None if splits is None else [(key[0][:split], key[1][:split]) for key, split in zip(keys, splits)]
        known = [self.rows.get(key) for key in keys]
        if any(states is None for states in known):
            self._pending = keys
            self.counts.full_passes += 1
            return self._capturing(prompts, splits, args, kwargs)
        self.counts.replayed_passes += 1
        self.counts.replayed_tokens += ids.numel()
        if prompts is not None and all(prompt in self.prompts for prompt in prompts):
            self.counts.prompt_tokens_reused += sum(splits)
            return (), self._labelled_parts(ids, keys, known, prompts, splits, kwargs)
        self._replay = self._stacked(known, ids.shape[1])
        return self._capturing(prompts, splits, args, kwargs)

    def _end_pass(self, module: nn.Module, args: tuple, output):
        try:
            if output is None:  # the pass raised
                return None
            if self._capture is not None:
                self._keep_prompts(output)
            if self._unfold is not None:
                output.last_hidden_state = self._unfolded(output.last_hidden_state)
                return output
            return None
        finally:
            self._forget_pass()

    def _store(self, block: nn.Module, args: tuple, output) -> None:
        if self._pending is None:
            return
        hidden = hidden_of(output).detach()
        for row, key in enumerate(self._pending):
            self.rows.setdefault(key, hidden[row, : len(key[0])].clone())
        self._pending = None

    @staticmethod
    def _stacked(states: list[torch.Tensor], width: int) -> torch.Tensor:
        """Block L's input: each row's cached columns, zeros in the masked columns after its last real token."""
        stacked = states[0].new_zeros((len(states), width, states[0].shape[-1]))
        for row, row_states in enumerate(states):
            stacked[row, : len(row_states)] = row_states
        return stacked

    # ------------------------------------------------------------------ prompts run once

    def _capturing(self, prompts: list[RowKey] | None, splits: list[int] | None, args: tuple, kwargs: dict):
        """Run this pass with a fresh KV cache when it can leave prompts worth keeping."""
        if prompts is None or self._prompt_total() >= self.prompt_bytes or all(p in self.prompts for p in prompts):
            return None
        cache = DynamicCache(config=self.model.config)
        self._capture = (cache, prompts, splits)
        return args, {**kwargs, self._cache_arg: cache}

    def _prompt_total(self) -> int:
        return sum(prompt.nbytes for prompt in self.prompts.values())

    def _keep_prompts(self, output) -> None:
        cache, prompts, splits = self._capture
        width = output.last_hidden_state.shape[1]
        above = cache.layers[self.layer: len(self.blocks)]
        if not all(isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.shape[-2] == width
                   for layer in above):
            return  # this cache kept fewer columns than the pass (a sliding window): nothing to reuse
        total = self._prompt_total()
        for row, (prompt, split) in enumerate(zip(prompts, splits)):
            if prompt in self.prompts or total >= self.prompt_bytes:
                continue
            kept = _Prompt([layer.keys[row, :, :split].detach().clone() for layer in above],
                           [layer.values[row, :, :split].detach().clone() for layer in above],
                           output.last_hidden_state[row, :split].detach().clone())
            self.prompts[prompt] = kept
            total += kept.nbytes

    def _labelled_parts(self, ids: torch.Tensor, keys: list[RowKey], states: list[torch.Tensor],
                        prompts: list[RowKey], splits: list[int], kwargs: dict) -> dict:
        """The stack's arguments for a pass over each row's labelled part, on top of its kept prompt:
        prompts left-padded in the KV cache, labelled parts right-padded after them, position ids
        and steered tokens as in the full pass."""
        positions = self._site_positions()
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        kept = [self.prompts[prompt] for prompt in prompts]
        ends = [len(key[0]) for key in keys]
        rows, prompt_width = len(kept), max(splits)
        width = max(end - split for split, end in zip(splits, ends))
        part_ids, part_mask = ids.new_zeros((rows, width)), mask.new_zeros((rows, width))
        prompt_mask = mask.new_zeros((rows, prompt_width))
        steered = torch.zeros((rows, width), dtype=torch.bool, device=ids.device)
        hidden = states[0].new_zeros((rows, width, states[0].shape[-1]))
        labelled = positions.pending_completion.to(ids.device)
        for row, (split, end) in enumerate(zip(splits, ends)):
            part_ids[row, : end - split] = ids[row, split:end]
            part_mask[row, : end - split] = mask[row, split:end]
            prompt_mask[row, prompt_width - split:] = mask[row, :split]
            steered[row, : end - split] = labelled[row, split:end]
            hidden[row, : end - split] = states[row][split:end]
        positions.pending_completion = steered
        self._replay = hidden
        self._unfold = _Unfold(splits, ends, ids.shape[1], [prompt.output for prompt in kept])
        columns = torch.tensor(splits, device=ids.device)[:, None] + torch.arange(width, device=ids.device)
        return {**kwargs, "input_ids": part_ids, "attention_mask": torch.cat([prompt_mask, part_mask], dim=1),
                "position_ids": columns, self._cache_arg: self._prompt_cache(kept, prompt_width)}

    def _prompt_cache(self, kept: list[_Prompt], width: int) -> DynamicCache:
        """A KV cache holding the prompts left-padded to `width`, as a prefill over them would leave it:
        zeros in the blocks below the site, which do not run."""
        cache = DynamicCache(config=self.model.config)
        first = kept[0].keys[0]
        below = first.new_zeros((len(kept), first.shape[0], width, first.shape[-1]))
        for block in range(len(self.blocks)):
            if block < self.layer:
                cache.update(below, below, block)
                continue
            keys, values = (_left_padded([getattr(p, name)[block - self.layer] for p in kept], width)
                            for name in ("keys", "values"))
            cache.update(keys, values, block)
        return cache

    def _unfolded(self, parts: torch.Tensor) -> torch.Tensor:
        """The stack's output at the pass's full width: kept prompt outputs, the labelled parts, zeros after."""
        unfold = self._unfold
        rows = []
        for row, (split, end, prompt) in enumerate(zip(unfold.splits, unfold.ends, unfold.prompts)):
            after = parts.new_zeros((unfold.width - end, parts.shape[-1]))
            rows.append(torch.cat([prompt.to(parts.dtype), parts[row, : end - split], after]))
        return torch.stack(rows)

    # ------------------------------------------------------------------ when the cache may serve a pass

    def _site_positions(self):
        return self.blocks[self.layer].steer._positions

    def _prompt_splits(self, rows: int) -> list[int] | None:
        """Each row's first labelled column when this pass may reuse prompts, else None: every row has
        a prompt and a label, and nothing but completion-position steering changes the model."""
        positions = self._site_positions()
        labelled = positions.pending_completion
        if labelled is None or positions.pending_override is not None or not self._only_completions_change():
            return None
        if not bool(labelled.any(-1).all()):
            return None
        splits = labelled.int().argmax(-1)  # the first labelled column
        return splits.tolist() if bool((splits > 0).all()) and len(splits) == rows else None

    def _only_completions_change(self) -> bool:
        """Whether the prompts' states are the base model's in every pass: steer layers act on
        completion positions only, and no other module in the stack trains, adapts or drops out."""
        steer = [module for module in self.stack.modules() if isinstance(module, SteerLayer)]
        for layer in steer:
            if layer.merged_adapters or any(config.positions != "completion"
                                            for _, _, config in layer._active(("add", "ablate", "ablate_add"))):
                return False
        owned = {id(module) for layer in steer for module in layer.modules()}
        for module in self.stack.modules():
            if id(module) in owned:
                continue
            if (isinstance(module, BaseTunerLayer) or (self.stack.training and _drops_out(module))
                    or any(p.requires_grad for p in module.parameters(recurse=False))):
                return False
        return True

    def _row_keys(self, ids, kwargs: dict) -> list[RowKey] | None:
        """Each row's token ids and mask up to its last attended column, or None when this pass must run in full.

        With position ids taken from the columns, a causal model's states at a column depend only on
        the columns up to it, so this prefix fixes them (left padding included); masked columns after
        it are read by nothing but a label placed on them, which falls back.
        """
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or not self._inputs_allow(kwargs):
            return None
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape or not bool(((mask == 0) | (mask == 1)).all()):
            return None
        columns = torch.arange(1, ids.shape[1] + 1, device=ids.device)
        ends = (mask.bool() * columns).amax(-1)  # one past each row's last attended column
        if not bool((ends > 0).all()) or not self._model_allows(ends):
            return None
        return [(tuple(row[:end]), tuple(row_mask[:end]))
                for row, row_mask, end in zip(ids.tolist(), mask.tolist(), ends.tolist())]

    def _inputs_allow(self, kwargs: dict) -> bool:
        unset = ("inputs_embeds", "position_ids", "token_type_ids", "cache", "past_key_values", "cache_position",
                 "encoder_hidden_states")
        config = self.model.config
        return (all(kwargs.get(name) is None for name in unset)
                and kwargs.get("use_cache", getattr(config, "use_cache", False)) is False
                and not kwargs.get("output_hidden_states", getattr(config, "output_hidden_states", False))
                and not kwargs.get("output_attentions", getattr(config, "output_attentions", False))
                # a mixture of experts' router logits (its auxiliary loss) come from every block and column
                and not kwargs.get("output_router_logits", getattr(config, "output_router_logits", False)))

    def _model_allows(self, ends: torch.Tensor) -> bool:
        """Nothing below the site may change during the run, nor be random, nor steer mixed rows, and
        no label may sit after a row's last real token (it would be predicted from a zeroed column).
        The steer layer at the site sees the pass's labels (`SteerModel.forward` hands them over)."""
        site = getattr(self.blocks[self.layer], "steer", None)
        if not isinstance(site, SteerLayer) or _checkpointing_on(self.model):
            return False
        positions = site._positions
        labelled = positions.pending_completion
        if positions.adapter_rows is not None or (labelled is not None and _labels_after(labelled, ends)):
            return False
        upper = {id(module) for block in self.blocks[self.layer:] for module in block.modules()}
        below = [module for module in self.stack.modules() if id(module) not in upper]
        for module in below:
            if isinstance(module, SteerLayer):
                if not module.disable_adapters and any(name in module.vector for name in module.active_adapters):
                    return False
            elif isinstance(module, BaseTunerLayer):
                return False
            if self.stack.training and _drops_out(module):
                return False
        return not any(p.requires_grad for module in below for p in module.parameters(recurse=False))


def _left_padded(per_row: list[torch.Tensor], width: int) -> torch.Tensor:
    """(rows, heads, width, head size): each row's (heads, tokens, head size) keys or values, zeros before them."""
    first = per_row[0]
    padded = first.new_zeros((len(per_row), first.shape[0], width, first.shape[-1]))
    for row, states in enumerate(per_row):
        padded[row, :, width - states.shape[1]:] = states
    return padded


def _labels_after(labelled: torch.Tensor, ends: torch.Tensor) -> bool:
    """Whether a row has a label after column `ends[row]`: it is predicted from a column the cache zeroes."""
    columns = torch.arange(labelled.shape[1], device=ends.device)
    return bool((labelled.to(ends.device) & (columns > ends[:, None])).any())


def _drops_out(module: nn.Module) -> bool:
    if isinstance(module, nn.Dropout):
        return module.p > 0
    rate = getattr(module, "attention_dropout", 0.0)
    return isinstance(rate, float) and rate > 0


def steer_site(model: nn.Module, peft_config: PeftConfig | None = None) -> tuple[int, str | None] | None:
    """(block, blocks_path) whose input a run training a steer adapter can cache: the lowest block
    the adapter steers. The adapter is `peft_config` (a config about to be applied) or the active
    adapter of `model`; None when it is not a steer adapter or steers block 0 (nothing below)."""
    if peft_config is None and isinstance(model, PeftModel):
        peft_config = model.active_peft_config
    if not isinstance(peft_config, SteerConfig):
        return None
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    lowest = min(block_indices(base, peft_config.layers, peft_config.blocks_path))
    return (lowest, peft_config.blocks_path) if lowest > 0 else None
