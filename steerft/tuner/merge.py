"""Folding steering adapters into the base weights, where that is exact.

- `add` at every token: the vector is a constant added to the block output, which equals adding it
  to the bias of the block's last projection when nothing normalises that projection's output.
- `ablate` at every block with multiplier 1: removing the direction from everything written into
  the residual stream (embeddings, attention and MLP outputs) equals orthogonalising those weights
  (Arditi et al. 2024).
Every other case changes the model in a way no weight edit reproduces, and is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .arch import Architecture, architecture_of, decoder_blocks
from .config import SteerConfig
from .layer import SteerLayer


class MergeError(ValueError):
    """The adapter cannot be folded into the weights exactly."""


def merge_adapters(model: nn.Module, adapters: Sequence[tuple[str, SteerConfig]], layers: Sequence[SteerLayer]) -> None:
    """Fold each adapter into `model` in place; check all of them before changing anything."""
    plans = [(name, config, architecture_of(model, config.blocks_path)) for name, config in adapters]
    for name, config, arch in plans:
        _check_mergeable(model, name, config, arch, layers)
    for name, config, arch in plans:
        vectors = {layer.layer: layer.vector[name].weight.detach() for layer in layers if name in layer.vector}
        if config.operator == "add":
            _fold_into_bias(model, arch, {i: config.multiplier * v for i, v in vectors.items()})
        else:
            vector = next(iter(vectors.values()))  # one direction at every block, checked above
            _orthogonalise(model, arch, vector / vector.norm())


def _check_mergeable(model: nn.Module, name: str, config: SteerConfig, arch: Architecture, layers: Sequence[SteerLayer]) -> None:
    def refuse(reason: str) -> None:
        raise MergeError(f"Adapter {name!r} cannot be merged into the weights: {reason}")

    if config.positions != "all":
        refuse(f"positions={config.positions!r} steers only some tokens, while a weight edit acts on every token.")
    if config.operator == "ablate_add":
        refuse("operator='ablate_add' both projects and shifts at one block, which no single weight edit reproduces.")
    if config.operator == "add" and arch.bias_target is None:
        refuse(
            f"{type(model).__name__} normalises each block's last projection before adding it to the residual stream, "
            "so no bias reproduces a constant shift. Keep it as an adapter."
        )
    if config.operator == "ablate":
        n_blocks = len(decoder_blocks(model, arch))
        steered = {layer.layer for layer in layers if name in layer.vector}
        if steered != set(range(n_blocks)):
            refuse(
                f"ablation at blocks {sorted(steered)} only; orthogonalising the weights equals ablation at every "
                f"block (layers=list(range({n_blocks})))."
            )
        if config.multiplier != 1.0:
            refuse(f"multiplier={config.multiplier} removes only part of the direction; merging needs multiplier=1.")
        if not arch.writers_are_projections:
            refuse(f"{type(model).__name__} normalises after its output projections, so orthogonalising them is not exact.")
        vectors = {layer.layer: layer.vector[name].weight.detach() for layer in layers if name in layer.vector}
        if not _all_equal(vectors):
            refuse("the ablated direction differs between blocks; orthogonalisation needs one direction everywhere.")
        if next(iter(vectors.values())).norm() == 0:
            refuse("the vector is zero, so there is no direction to remove.")


def _all_equal(vectors: dict[int, torch.Tensor]) -> bool:
    first = next(iter(vectors.values()))
    return all(torch.equal(first, v) for v in vectors.values())


def _fold_into_bias(model: nn.Module, arch: Architecture, shifts: dict[int, torch.Tensor]) -> None:
    blocks = decoder_blocks(model, arch)
    if arch.bias_flag is not None and not getattr(model.config, arch.bias_flag, False):
        # The stock class creates these biases on reload only with the flag set, and then for every MLP projection.
        for block in blocks:
            for path in (arch.bias_target, *arch.bias_siblings):
                _ensure_bias(block.get_submodule(path))
        setattr(model.config, arch.bias_flag, True)
    for index, shift in shifts.items():
        projection = blocks[index].get_submodule(arch.bias_target)
        bias = _ensure_bias(projection)
        with torch.no_grad():
            bias.add_(shift.to(bias.dtype))


def _ensure_bias(projection: nn.Module) -> nn.Parameter:
    if getattr(projection, "bias", None) is None:
        out_features = _out_features(projection)
        weight = projection.weight
        projection.bias = nn.Parameter(torch.zeros(out_features, dtype=weight.dtype, device=weight.device))
    return projection.bias


def _out_features(projection: nn.Module) -> int:
    # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out).
    return projection.weight.shape[1] if type(projection).__name__ == "Conv1D" else projection.weight.shape[0]


def _orthogonalise(model: nn.Module, arch: Architecture, unit: torch.Tensor) -> None:
    _untie_output_embeddings(model)
    with torch.no_grad():
        for path in arch.embeddings:
            table = model.get_submodule(path).weight  # (vocab, d): each row is written into the residual stream
            table -= torch.outer(table @ unit.to(table.dtype), unit.to(table.dtype))
        for block in decoder_blocks(model, arch):
            for path in arch.writers:
                _orthogonalise_projection(block.get_submodule(path), unit)


def _orthogonalise_projection(projection: nn.Module, unit: torch.Tensor) -> None:
    weight = projection.weight
    u = unit.to(weight.dtype)
    if type(projection).__name__ == "Conv1D":  # y = x W + b, W: (in, d)
        weight -= torch.outer(weight @ u, u)
    else:  # y = x W^T + b, W: (d, in)
        weight -= torch.outer(u, u @ weight)
    if getattr(projection, "bias", None) is not None:
        projection.bias -= (projection.bias @ u) * u


def _untie_output_embeddings(model: nn.Module) -> None:
    """Orthogonalising a tied input embedding must not change the output head."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if output is None or inputs is None or output.weight is not inputs.weight:
        return
    output.weight = nn.Parameter(inputs.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_config is not None:
        text_config.tie_word_embeddings = False
