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
unchanged: position ids or embeddings given, a KV cache in use, hidden states or attentions
requested, dropout or a trainable parameter or another adapter's module below L (or in the stack's
other modules, the final norm included), an enabled steer layer below L, no steer layer at L,
mixed-adapter rows, or gradient checkpointing. Labels are seen as the steer adapter sees them, through
the PeftModel's forward (TRL passes them there); a caller that hands labels to the bare model instead
must not place one after a row's last real token.

Memory: one (tokens, hidden size) tensor per distinct row, e.g. 256 x 576 float32 = 0.6 MB for
SmolLM2-135M, so 512 preference pairs (two rows each) hold about 0.6 GB at most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .arch import architecture_of, block_stack, decoder_blocks
from .blocks import block_indices
from .config import SteerConfig
from .layer import SteerLayer, hidden_of
from .model import _checkpointing_on

RowKey = tuple[tuple[int, ...], tuple[int, ...]]  # token ids and attention mask up to the last real token


@dataclass
class ReplayCounts:
    """What the cache did: passes that ran the full model, passes served from the cache, and the
    token positions (padding included) of the served ones, whose blocks below the site did not run."""

    full_passes: int = 0
    replayed_passes: int = 0
    replayed_tokens: int = 0


class BelowSiteCache:
    """Per-row cache of the residual stream entering block `layer` of `model`, used while active.

    `model` is the causal LM (or a PeftModel around it); its block list is found as the steer tuner
    finds it. Use as a context manager around training: the hooks come off and the cache is freed
    on exit.
    """

    def __init__(self, model: nn.Module, layer: int, blocks_path: str | None = None) -> None:
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
        self.counts = ReplayCounts()
        self._pending: list[RowKey] | None = None  # a filling pass: the rows to store from block L-1's output
        self._replay: torch.Tensor | None = None  # a replaying pass: what the blocks below hand to block L
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
        self._handles, self._own_forwards, self.rows = [], [], {}
        self._pending = self._replay = None

    def _skippable(self, forward: Callable) -> Callable:
        def forward_or_replay(*args, **kwargs):
            return forward(*args, **kwargs) if self._replay is None else self._replay

        return forward_or_replay

    # ------------------------------------------------------------------ one pass of the block stack

    def _begin_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = self._replay = None
        ids = kwargs.get("input_ids", args[0] if len(args) == 1 else None)  # gpt2 passes them positionally
        keys = self._row_keys(ids, kwargs) if len(args) <= 1 else None
        if keys is None:
            self.counts.full_passes += 1
            return
        known = [self.rows.get(key) for key in keys]
        if any(states is None for states in known):
            self._pending = keys
            self.counts.full_passes += 1
            return
        self._replay = self._stacked(known, ids.shape[1])
        self.counts.replayed_passes += 1
        self.counts.replayed_tokens += ids.numel()

    def _end_pass(self, module: nn.Module, args: tuple, output) -> None:
        self._pending = self._replay = None

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

    # ------------------------------------------------------------------ when the cache may serve a pass

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
                and not kwargs.get("output_attentions", getattr(config, "output_attentions", False)))

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
