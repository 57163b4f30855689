"""Which decoder blocks a list of layer indices names in a model: the one place that counts blocks.

Jobs and readers outside the tuner ask here instead of walking `arch` themselves, so the valid
range is worded once and every caller can re-raise it against its own config key.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .arch import architecture_of, decoder_blocks
from .model import resolve_layers


def block_list(model: nn.Module, blocks_path: str | None = None) -> nn.ModuleList:
    """The decoder blocks of `model` (its steerable sites), found by architecture or `blocks_path`."""
    return decoder_blocks(model, architecture_of(model, blocks_path))


def block_count(model: nn.Module, blocks_path: str | None = None) -> int:
    """How many decoder blocks `model` has."""
    return len(block_list(model, blocks_path))


def block_indices(model: nn.Module, layers: Sequence[int], blocks_path: str | None = None) -> list[int]:
    """`layers` as block indices of `model` (negatives count from the end).

    Raises ValueError naming the model's block count and the allowed range when a layer lies
    outside the model or names a block twice.
    """
    n_blocks = block_count(model, blocks_path)
    try:
        return resolve_layers(list(layers), n_blocks)
    except ValueError as err:
        raise ValueError(f"layers={list(layers)}: the model has {n_blocks} blocks, so layers must lie in "
                         f"{-n_blocks}..{n_blocks - 1}, each once.") from err
