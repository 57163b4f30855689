"""Folding steering adapters into the base weights, where that is exact.

- `add` at every token: the vector is a constant added to the block output, which equals adding it
  to the bias of the block's last projection when nothing normalises that projection's output.
- `ablate` at every block with multiplier 1: removing the direction from everything written into
  the residual stream (embeddings, attention and MLP outputs) equals orthogonalising those weights
  (Arditi et al. 2024).
Every other case changes the model in a way no weight edit reproduces, and is refused with the reason.

`merge_and_unload` merges for good, so its result must also survive save -> reload: an `add` merge is refused
where the config cannot declare the bias (qwen2, qwen3, mistral). `merge_adapter` merges `add` in memory and
remembers the biases, so `unmerge_adapter` restores them bit for bit.
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


def merge_adapters(
    model: nn.Module, adapters: Sequence[tuple[str, SteerConfig]], layers: Sequence[SteerLayer], safe_merge: bool = False
) -> None:
    """Fold each adapter into `model` for good; check all of them before changing anything.

    The merged model must also survive `save_pretrained` -> `from_pretrained`, so an `add` merge is refused
    where the architecture's config cannot declare the bias it needs.
    """
    plans = [(name, config, architecture_of(model, config.blocks_path)) for name, config in adapters]
    for name, config, arch in plans:
        _check_mergeable(model, name, config, arch, layers)
        if config.operator == "add":
            _check_bias_reloads(model, name, arch, layers)
    for name, config, arch in plans:
        vectors = _vectors(name, layers)
        if config.operator == "add":
            _fold_into_bias(model, arch, {i: config.multiplier * v for i, v in vectors.items()}, name, safe_merge)
        else:
            vector = next(iter(vectors.values()))  # one direction at every block, checked above
            _orthogonalise(model, arch, vector / vector.norm(), name, safe_merge)


def merge_reversibly(model: nn.Module, name: str, config: SteerConfig, layers: Sequence[SteerLayer], safe_merge: bool) -> None:
    """`merge_adapter`: add the vector to each block's output bias, remembering the bias to restore it exactly.

    Only `add` is reversible: orthogonalising weights loses their component along the direction.
    """
    arch = architecture_of(model, config.blocks_path)
    if config.operator != "add":
        raise MergeError(
            f"Adapter {name!r} cannot be merged reversibly: operator={config.operator!r} orthogonalises the weights, "
            "which unmerge cannot undo. Keep it as an adapter, or merge for good with merge_and_unload()."
        )
    _check_mergeable(model, name, config, arch, layers)
    steered = [layer for layer in layers if name in layer.vector]
    new_biases = {}
    for layer in steered:
        projection = layer.block.get_submodule(arch.bias_target)
        bias = getattr(projection, "bias", None)
        base = torch.zeros(_out_features(projection), dtype=projection.weight.dtype, device=projection.weight.device)
        shift = config.multiplier * layer.vector[name].weight.detach()
        new_biases[layer.layer] = (base if bias is None else bias.detach()) + shift.to(base.dtype)
        if safe_merge:
            _check_finite(new_biases[layer.layer], name)
    for layer in steered:
        projection = layer.block.get_submodule(arch.bias_target)
        if arch.bias_target not in layer.bias_before_merge:
            bias = getattr(projection, "bias", None)
            layer.bias_before_merge[arch.bias_target] = None if bias is None else bias.detach().clone()
        _ensure_bias(projection)
        with torch.no_grad():
            projection.bias.copy_(new_biases[layer.layer])
        layer.merged_adapters.append(name)


def unmerge(layers: Sequence[SteerLayer]) -> None:
    """Restore every bias `merge_reversibly` changed, bit for bit."""
    for layer in layers:
        for path, bias in layer.bias_before_merge.items():
            projection = layer.block.get_submodule(path)
            if bias is None:
                projection.bias = None
            else:
                with torch.no_grad():
                    projection.bias.copy_(bias)
        layer.bias_before_merge.clear()
        layer.merged_adapters.clear()


def _vectors(name: str, layers: Sequence[SteerLayer]) -> dict[int, torch.Tensor]:
    return {layer.layer: layer.vector[name].weight.detach() for layer in layers if name in layer.vector}


def _check_finite(merged: torch.Tensor, name: str) -> None:
    """PEFT's safe_merge contract, in PEFT's words."""
    if not torch.isfinite(merged).all():
        raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")


def _check_bias_reloads(model: nn.Module, name: str, arch: Architecture, layers: Sequence[SteerLayer]) -> None:
    """transformers drops a bias the config does not declare, so the saved merge would reload as the base model."""
    if arch.bias_flag is not None:
        return
    steered = [layer for layer in layers if name in layer.vector]
    if all(getattr(layer.block.get_submodule(arch.bias_target), "bias", None) is not None for layer in steered):
        return
    raise MergeError(
        f"Adapter {name!r} cannot be merged into {type(model).__name__} for good: its config cannot declare a bias on "
        f"{arch.bias_target}, so a saved merged model would reload without the vector. Keep it as an adapter, "
        "or merge in memory only with merge_adapter() (undone by unmerge_adapter())."
    )


def _check_mergeable(model: nn.Module, name: str, config: SteerConfig, arch: Architecture, layers: Sequence[SteerLayer]) -> None:
    def refuse(reason: str) -> None:
        raise MergeError(f"Adapter {name!r} cannot be merged into the weights: {reason}")

    vectors = _vectors(name, layers)
    for vector in vectors.values():
        _check_finite(vector, name)
    if any(name in layer.merged_adapters for layer in layers):
        refuse("it is already merged (merge_adapter()); call unmerge_adapter() first.")
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
        if set(vectors) != set(range(n_blocks)):
            refuse(
                f"ablation at blocks {sorted(vectors)} only; orthogonalising the weights equals ablation at every "
                f"block (layers=list(range({n_blocks})))."
            )
        if config.multiplier != 1.0:
            refuse(f"multiplier={config.multiplier} removes only part of the direction; merging needs multiplier=1.")
        if not arch.writers_are_projections:
            refuse(f"{type(model).__name__} normalises after its output projections, so orthogonalising them is not exact.")
        if not _all_equal(vectors):
            refuse("the ablated direction differs between blocks; orthogonalisation needs one direction everywhere.")
        if next(iter(vectors.values())).norm() == 0:
            refuse("the vector is zero, so there is no direction to remove.")


def _all_equal(vectors: dict[int, torch.Tensor]) -> bool:
    first = next(iter(vectors.values()))
    return all(torch.equal(first, v) for v in vectors.values())


def _fold_into_bias(
    model: nn.Module, arch: Architecture, shifts: dict[int, torch.Tensor], name: str, safe_merge: bool
) -> None:
    blocks = decoder_blocks(model, arch)
    if safe_merge:
        for index, shift in shifts.items():
            bias = getattr(blocks[index].get_submodule(arch.bias_target), "bias", None)
            _check_finite(shift if bias is None else bias.detach() + shift.to(bias.dtype), name)
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


def _orthogonalise(model: nn.Module, arch: Architecture, unit: torch.Tensor, name: str, safe_merge: bool) -> None:
    """Remove the direction from everything written into the residual stream (all checked before any is written)."""
    updates = [_orthogonalised_table(model.get_submodule(path).weight, unit) for path in arch.embeddings]
    for block in decoder_blocks(model, arch):
        for path in arch.writers:
            updates.extend(_orthogonalised_projection(block.get_submodule(path), unit))
    if safe_merge:
        for _, merged in updates:
            _check_finite(merged, name)
    _untie_output_embeddings(model)
    with torch.no_grad():
        for parameter, merged in updates:
            parameter.copy_(merged)


def _orthogonalised_table(table: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = unit.to(table.dtype)  # (vocab, d): each row is written into the residual stream
    return table, table.detach() - torch.outer(table.detach() @ u, u)


def _orthogonalised_projection(projection: nn.Module, unit: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weight = projection.weight.detach()
    u = unit.to(weight.dtype)
    if type(projection).__name__ == "Conv1D":  # y = x W + b, W: (in, d)
        updates = [(projection.weight, weight - torch.outer(weight @ u, u))]
    else:  # y = x W^T + b, W: (d, in)
        updates = [(projection.weight, weight - torch.outer(u, u @ weight))]
    if getattr(projection, "bias", None) is not None:
        bias = projection.bias.detach()
        updates.append((projection.bias, bias - (bias @ u) * u))
    return updates


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
