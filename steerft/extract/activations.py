"""Reading residual-stream activations at steering sites, with early exit.

The site is the one a steer adapter writes to: the output of decoder block L (what
`hidden_states[L + 1]` reports). Reading hooks run after any steering hook on the same block,
so they see what the next block sees. A vector at block L cannot depend on anything above L,
so the forward pass stops right after the deepest requested block.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Batch, EncodedRow, batches, encode
from ..choices import REDUCTIONS
from ..tuner import block_indices, block_list, hidden_of, hidden_size

Reduce = Literal["last", "mean"]


class _StopForward(Exception):
    """Raised after the deepest requested block: nothing above it is needed."""


@contextmanager
def site_readers(model: nn.Module, layers: Sequence[int], *, early_exit: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Capture block outputs at `layers` into the yielded dict during forward passes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = block_list(base, _blocks_path(model))
    layers = block_indices(base, layers, _blocks_path(model))
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def reader(layer: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            captured[layer] = hidden_of(output)
            if early_exit and layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(reader(layer)) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _blocks_path(model: nn.Module) -> str | None:
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, dict) and configs:
        return getattr(next(iter(configs.values())), "blocks_path", None)
    return None


def forward_to_sites(model: nn.Module, batch: Batch, layers: Sequence[int], *, early_exit: bool = True) -> dict[int, torch.Tensor]:
    """Block outputs (batch, seq, d) at `layers` for one batch, stopping after the deepest one."""
    with site_readers(model, layers, early_exit=early_exit) as captured, torch.no_grad():
        try:
            # labels mark the completion for steer adapters with positions="completion"; early exit
            # stops the pass before any loss is computed.
            model(**batch.model_inputs(), labels=batch.labels, use_cache=False)
        except _StopForward:
            pass
    return captured


def reduce_tokens(hidden: torch.Tensor, completion_mask: torch.Tensor, how: Reduce) -> torch.Tensor:
    """(batch, seq, d) -> (batch, d): the last completion token, or the mean over completion tokens."""
    if how == "last":
        positions = torch.arange(completion_mask.shape[1], device=completion_mask.device)
        last = torch.where(completion_mask, positions, -1).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0]), last]
    weights = completion_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1)


def read_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    layers: Sequence[int],
    *,
    reduce: Reduce = "last",
    batch_size: int = 16,
    padding_side: str = "right",
    accelerator: Accelerator | None = None,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """Activations {layer: (n, d) float32} of each (prompt, completion) at the completion tokens.

    Under Accelerate the rows are sharded across processes and gathered back, so every process
    returns the same full result.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is not supported; allowed values: {', '.join(REDUCTIONS)}.")
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"Need as many prompts as completions, at least one; got {len(prompts)} and {len(completions)}.")
    rows = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = list(range(rank, len(rows), world))
    local = read_rows(model, [rows[i] for i in mine], layers, reduce, batch_size, tokenizer.pad_token_id, padding_side, progress)
    pieces = [(mine[i], {layer: acts[i] for layer, acts in local.items()}) for i in range(len(mine))]
    if world > 1:
        pieces = gather_object(pieces)
    pieces.sort(key=lambda piece: piece[0])
    return {layer: torch.stack([acts[layer] for _, acts in pieces]) for layer in _indices(model, layers)}


def _indices(model: nn.Module, layers: Sequence[int]) -> list[int]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return block_indices(base, layers, _blocks_path(model))


def read_rows(
    model: nn.Module,
    rows: Sequence[EncodedRow],
    layers: Sequence[int],
    reduce: Reduce,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    progress: bool,
) -> dict[int, torch.Tensor]:
    """Activations {layer: (n, d) float32} of already-encoded rows, read in this process only."""
    layers = _indices(model, layers)
    device = next(model.parameters()).device
    out = {layer: torch.empty(len(rows), hidden_size(model)) for layer in layers}
    n_batches = -(-len(rows) // batch_size)
    for batch in tqdm(batches(rows, batch_size, pad_id, padding_side), total=n_batches, disable=not progress, desc="activations"):
        batch = batch.to(device)
        captured = forward_to_sites(model, batch, layers)
        for layer in layers:
            out[layer][batch.index] = reduce_tokens(captured[layer], batch.completion_mask, reduce).float().cpu()
    return out

