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

**Prompts once, too.** Rows that share a prompt (a DPO pair's chosen and rejected rows) compute it
alike, so a pass runs each distinct prompt once, left-padded, from the site up (through every block
in the first pass over the rows, which fills the cache), and then each row's labelled part (from its
first label to its last real token) on top of its prompt's keys and values, right-padded: the
model's own masks, rotary embeddings and cache classes (a sliding window's included), position ids
as in the full pass; the stack's output is put back together at the pass's full width, and gradients
reach the vector through both. When every steer vector acts on completion positions only (the
labelled tokens) and nothing else in the stack trains, adapts or drops out, a prompt is the base
model's at every block and every step: every pass runs it apart from the labelled parts and without
gradients (nothing that trains reaches it, so the backward pass skips its columns, even for SFT rows
whose prompts are their own), the first pass over it keeps its keys and values from block L up and
the stack's output there, and later passes run only the labelled parts. Kept prompts cost about 2 x
(blocks from L) x key/value width x tokens each, e.g. 4 MB for a 165-token prompt at block 14 of
SmolLM2-135M; new ones stop being kept at `prompt_bytes`, and a model whose cache keeps fewer
columns than the pass (a sliding window shorter than the rows) keeps none. Prompts are not shared
while dropout is on in the stack (rows would draw their own masks) nor under an explicit
`steer_mask`.
"""

from __future__ import annotations

import contextlib
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
    the prompt positions among them that ran no block at all (kept from an earlier pass, or run once
    for another row of the pass with the same prompt)."""

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
class _Split:
    """A pass to run as each row's labelled part (from its first label to its last real token) on top
    of its prompt, each distinct prompt once: kept from an earlier pass, or run first in this one."""

    keys: list[RowKey]
    states: list[torch.Tensor] | None  # each row's states entering the site; None: unknown, the blocks below run
    prompts: list[RowKey]
    splits: list[int]  # each row's first labelled column
    labelled: torch.Tensor  # the pass's labelled columns (the steer layers' completion positions)
    kept: bool  # the prompts come from the kept ones
    unsteered: bool  # the prompts are the base model's: run without gradients, and may be kept


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
        self._split: _Split | None = None  # a pass over the labelled parts only
        self._entering: list[torch.Tensor] | None = None  # a filling split pass: each stage's states entering L
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
        self._own_forwards.append((self.stack, self.stack.__dict__.get("forward")))
        self.stack.forward = self._splittable(self.stack.forward)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module, own in self._own_forwards:
            del module.forward
            if own is not None:
                module.forward = own
        self._handles, self._own_forwards, self.rows, self.prompts = [], [], {}, {}
        self._forget_pass()

    def _skippable(self, forward: Callable) -> Callable:
        def forward_or_replay(*args, **kwargs):
            return forward(*args, **kwargs) if self._replay is None else self._replay

        return forward_or_replay

    def _splittable(self, forward: Callable) -> Callable:
        def forward_or_split(*args, **kwargs):
            return forward(*args, **kwargs) if self._split is None else self._split_pass(forward, args, kwargs)

        return forward_or_split

    def _forget_pass(self) -> None:
        self._pending = self._replay = self._split = self._entering = None

    # ------------------------------------------------------------------ one pass of the block stack

    def _begin_pass(self, module: nn.Module, args: tuple, kwargs: dict):
        self._forget_pass()
        ids = kwargs.get("input_ids", args[0] if len(args) == 1 else None)  # gpt2 passes them positionally
        keys = self._row_keys(ids, kwargs) if len(args) <= 1 else None
        if keys is None:
            self.counts.full_passes += 1
            return None
        splits = self._prompt_splits(len(keys), kwargs)
        prompts = None if splits is None else [(key[0][:split], key[1][:split]) for key, split in zip(keys, splits)]
        unsteered = prompts is not None and self._only_completions_change()
        known = [self.rows.get(key) for key in keys]
        filling = any(states is None for states in known)
        if filling:
            self.counts.full_passes += 1
        else:
            self.counts.replayed_passes += 1
            self.counts.replayed_tokens += ids.numel()
        kept = not filling and unsteered and all(prompt in self.prompts for prompt in prompts)
        shared = prompts is not None and len(set(prompts)) < len(prompts) and self._prompts_shared_alike()
        if unsteered or shared:
            labelled = self._site_positions().pending_completion.to(ids.device)
            self._split = _Split(keys, None if filling else known, prompts, splits, labelled, kept, unsteered)
            run = 0 if kept else sum(len(prompt[0]) for prompt in set(prompts))
            self.counts.prompt_tokens_reused += sum(splits) - run
            return None
        if filling:
            self._pending = keys
        else:
            self._replay = _right_aligned(known, ids.shape[1])  # zeros in the masked columns after a row's text
        return None

    def _end_pass(self, module: nn.Module, args: tuple, output) -> None:
        self._forget_pass()

    def _store(self, block: nn.Module, args: tuple, output) -> None:
        if self._entering is not None:
            self._entering.append(hidden_of(output).detach())
        if self._pending is None:
            return
        hidden = hidden_of(output).detach()
        for row, key in enumerate(self._pending):
            self.rows.setdefault(key, hidden[row, : len(key[0])].clone())
        self._pending = None

    # ------------------------------------------------------------------ prompts kept across passes

    def _keep_prompts(self, cache: DynamicCache, distinct: list[RowKey], output: torch.Tensor) -> None:
        """Keep the prompts of a pass over `distinct` (left-aligned, one per row) from its KV cache and stack
        output, within `prompt_bytes`."""
        above = cache.layers[self.layer: len(self.blocks)]
        width = output.shape[1]
        if not all(isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.shape[-2] == width
                   for layer in above):
            return  # this cache kept fewer columns than the pass (a sliding window): nothing to reuse
        total = sum(prompt.nbytes for prompt in self.prompts.values())
        for row, prompt in enumerate(distinct):
            if prompt in self.prompts or total >= self.prompt_bytes:
                continue
            columns = slice(width - len(prompt[0]), width)
            kept = _Prompt([layer.keys[row, :, columns].detach().clone() for layer in above],
                           [layer.values[row, :, columns].detach().clone() for layer in above],
                           output[row, columns].detach().clone())
            self.prompts[prompt] = kept
            total += kept.nbytes

    # ------------------------------------------------------------------ a pass over the labelled parts

    def _split_pass(self, forward: Callable, args: tuple, kwargs: dict):
        """Each distinct prompt once (kept, or run first here, left-padded), then each row's labelled
        part right-padded on top of its prompt's keys and values, position ids and steered tokens as
        in the full pass; the stack's output put back together at the pass's full width."""
        split, kwargs = self._split, dict(kwargs)
        ids = kwargs.pop("input_ids") if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        distinct = list(dict.fromkeys(split.prompts))
        first_row = {prompt: split.prompts.index(prompt) for prompt in distinct}
        index = {prompt: i for i, prompt in enumerate(distinct)}
        group = torch.tensor([index[prompt] for prompt in split.prompts], device=ids.device)
        width = max(split.splits)
        prompt_mask = _left_aligned([mask[first_row[p], : len(p[0])] for p in distinct], width)
        self._entering = None if split.states is not None else []
        if split.kept:
            cache, prompt_out = self._kept_prompts(distinct, width)
        else:
            cache = DynamicCache(config=self.model.config)
            prompt_out = self._run_prompts(forward, kwargs, ids, prompt_mask, distinct, first_row, split, cache)
            if split.unsteered:
                self._keep_prompts(cache, distinct, prompt_out)
        cache.batch_select_indices(group)
        parts = list(zip(split.splits, (len(key[0]) for key in split.keys)))  # (first label, end) per row
        output = self._run_parts(forward, kwargs, ids, mask, parts, cache, prompt_mask[group])
        if split.states is None:
            self._store_split_rows(split, parts, group.tolist(), width)
        output.last_hidden_state = _put_together(prompt_out[group], output.last_hidden_state, parts, ids.shape[1])
        return output

    def _run_parts(self, forward: Callable, kwargs: dict, ids: torch.Tensor, mask: torch.Tensor,
                   parts: list[tuple[int, int]], cache: DynamicCache, prompt_mask: torch.Tensor):
        """One pass over each row's labelled part, right-padded, on top of its prompt in `cache`."""
        split = self._split
        part_ids = _right_aligned([ids[row, start:end] for row, (start, end) in enumerate(parts)])
        part_mask = _right_aligned([mask[row, start:end] for row, (start, end) in enumerate(parts)])
        steered = _right_aligned([split.labelled[row, start:end] for row, (start, end) in enumerate(parts)])
        if split.states is not None:
            self._replay = _right_aligned([split.states[row][start:end] for row, (start, end) in enumerate(parts)])
        columns = torch.tensor(split.splits, device=ids.device)[:, None] + torch.arange(part_ids.shape[1],
                                                                                          device=ids.device)
        self._begin_positions(steered, prompt_mask.shape[1])
        output = forward(**{**kwargs, "input_ids": part_ids, "position_ids": columns, self._cache_arg: cache,
                            "attention_mask": torch.cat([prompt_mask, part_mask], dim=1)})
        self._replay = None
        return output

    def _run_prompts(self, forward: Callable, kwargs: dict, ids: torch.Tensor, prompt_mask: torch.Tensor,
                     distinct: list[RowKey], first_row: dict[RowKey, int], split: _Split,
                     cache: DynamicCache) -> torch.Tensor:
        """One pass over the distinct prompts, left-padded, filling `cache`: from the site up on their
        kept states entering it (the blocks below get zeros in the cache), or through every block in a
        filling pass. Returns the stack's output."""
        width = prompt_mask.shape[1]
        prompt_ids = _left_aligned([ids[first_row[p], : len(p[0])] for p in distinct], width)
        if split.states is not None:
            self._replay = _left_aligned([split.states[first_row[p]][: len(p[0])] for p in distinct], width)
        columns = (torch.arange(width, device=ids.device)
                   - torch.tensor([width - len(p[0]) for p in distinct], device=ids.device)[:, None]).clamp(min=0)
        self._begin_positions(torch.zeros_like(prompt_mask, dtype=torch.bool), 0)
        with torch.no_grad() if split.unsteered else contextlib.nullcontext():  # nothing that trains reaches them
            output = forward(**{**kwargs, "input_ids": prompt_ids, "attention_mask": prompt_mask,
                                "position_ids": columns, self._cache_arg: cache})
        if split.states is not None:
            self._replay = None
            self._zeros_below_site(cache, len(distinct), width)
        return output.last_hidden_state

    def _store_split_rows(self, split: _Split, parts: list[tuple[int, int]], group: list[int], width: int) -> None:
        """A filling split pass: each row's states entering the site, its prompt's then its labelled part's."""
        prompts, labelled = self._entering
        for row, (key, (start, end), index) in enumerate(zip(split.keys, parts, group)):
            self.rows.setdefault(key, torch.cat([prompts[index, width - start:], labelled[row, : end - start]]))

    def _kept_prompts(self, distinct: list[RowKey], width: int) -> tuple[DynamicCache, torch.Tensor]:
        """A KV cache holding the kept prompts left-padded to `width`, as a pass over them would leave
        it (zeros in the blocks below the site, which do not run), and their stack outputs."""
        kept = [self.prompts[prompt] for prompt in distinct]
        cache = DynamicCache(config=self.model.config)
        for block in range(self.layer, len(self.blocks)):
            keys, values = (_left_aligned([getattr(p, name)[block - self.layer].transpose(0, 1) for p in kept],
                                          width).transpose(1, 2) for name in ("keys", "values"))
            cache.update(keys, values, block)
        self._zeros_below_site(cache, len(kept), width)
        return cache, _left_aligned([prompt.output for prompt in kept], width)

    def _zeros_below_site(self, cache: DynamicCache, rows: int, width: int) -> None:
        """The blocks below the site do not run over the prompts; zeros of the prompts' width there keep
        every layer of the cache at the length the model's masks read."""
        site = cache.layers[self.layer].keys
        zeros = site.new_zeros((rows, site.shape[1], width, site.shape[-1]))
        for block in range(self.layer):
            cache.update(zeros, zeros, block)

    def _begin_positions(self, steered: torch.Tensor, past: int) -> None:
        """What the steer layers' positions hook does at the start of a pass, for a pass run from here."""
        positions = self._site_positions()
        positions.pending_completion = steered
        positions.begin_forward(steered.shape[0], steered.shape[1], past, steered.device)

    # ------------------------------------------------------------------ when the cache may serve a pass

    def _site_positions(self):
        return self.blocks[self.layer].steer._positions

    def _prompt_splits(self, rows: int, kwargs: dict) -> list[int] | None:
        """Each row's first labelled column, or None: a pass without labels, a row without one or without a
        prompt before it, an explicit steer mask (which may steer rows with one prompt differently), or
        a caller asking for a tuple instead of the output the split pass puts back together."""
        positions = self._site_positions()
        labelled = positions.pending_completion
        if (labelled is None or positions.pending_override is not None or kwargs.get("return_dict") is False
                or not bool(labelled.any(-1).all())):
            return None
        splits = labelled.int().argmax(-1)  # the first labelled column
        return splits.tolist() if bool((splits > 0).all()) and len(splits) == rows else None

    def _prompts_shared_alike(self) -> bool:
        """Whether rows with one prompt compute it alike, so it can run once for all of them: nothing
        in the stack draws random numbers (dropout while training)."""
        return not (self.stack.training and any(_drops_out(module) for module in self.stack.modules()))

    def _only_completions_change(self) -> bool:
        """Whether the prompts' states are the base model's in every pass: every steer adapter acts on
        completion positions only, and no other module in the stack trains, adapts or drops out."""
        steer = [module for module in self.stack.modules() if isinstance(module, SteerLayer)]
        for layer in steer:  # every adapter, active or not: prompts kept now must hold while it trains
            if layer.merged_adapters or any(config.positions != "completion" for config in layer.settings.values()):
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


def _put_together(prompts: torch.Tensor, parts: torch.Tensor, spans: list[tuple[int, int]],
                  width: int) -> torch.Tensor:
    """(rows, width, hidden): each row's prompt output (left-aligned in `prompts`), its labelled part's,
    zeros after its last real token."""
    rows = []
    for row, (start, end) in enumerate(spans):
        after = parts.new_zeros((width - end, parts.shape[-1]))
        rows.append(torch.cat([prompts[row, prompts.shape[1] - start:].to(parts.dtype), parts[row, : end - start],
                               after]))
    return torch.stack(rows)


def _left_aligned(per_row: list[torch.Tensor], width: int) -> torch.Tensor:
    """(rows, width, ...): each row's (length, ...) tensor at the end, zeros before it."""
    first = per_row[0]
    aligned = first.new_zeros((len(per_row), width, *first.shape[1:]))
    for row, values in enumerate(per_row):
        aligned[row, width - len(values):] = values
    return aligned


def _right_aligned(per_row: list[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """(rows, width, ...): each row's (length, ...) tensor at the start, zeros after it; `width`
    defaults to the longest row."""
    first = per_row[0]
    width = max(len(values) for values in per_row) if width is None else width
    aligned = first.new_zeros((len(per_row), width, *first.shape[1:]))
    for row, values in enumerate(per_row):
        aligned[row, : len(values)] = values
    return aligned


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
