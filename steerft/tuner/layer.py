"""The per-block steering layer.

A `SteerLayer` is attached as the child `steer` of each steered decoder block and acts through
forward hooks on that block, so the block keeps its class and module path and the hidden states
that transformers records (`output_hidden_states[L + 1]`) include the vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import SteerConfig


class SteerVector(nn.Module):
    """One adapter's vector at one block.

    A module with a `.weight` (not a ParameterDict entry) so its state-dict key reads
    `...steer.vector.<adapter>.weight`, which TRL's reference-adapter copy recognises.
    """

    def __init__(self, hidden_size: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self._register_load_state_dict_pre_hook(self._check_loaded_shape)

    def _check_loaded_shape(self, state_dict, prefix, *args, **kwargs) -> None:
        loaded = state_dict.get(prefix + "weight")
        if loaded is not None and loaded.shape != self.weight.shape:
            raise ValueError(
                f"Steering vector for block {self.layer} has shape {tuple(loaded.shape)} in the checkpoint but the "
                f"model's hidden size is {self.weight.shape[0]}: the adapter was trained on a different model."
            )
        if loaded is not None and not torch.isfinite(loaded).all():
            raise ValueError(f"Steering vector for block {self.layer} in the checkpoint contains NaN or inf values.")


class TokenPositions:
    """Which tokens of the forward pass in progress are steered, and by which adapter.

    Filled by a pre-hook on the module that owns the block list, before any block runs:
    from an explicit mask handed over by `SteerModel.forward` (from `labels` or `steer_mask`), or,
    during generation, from the KV cache: a pass over new tokens with a non-empty cache is
    completion, the first pass over the prompt is not. `adapter_rows` (PEFT's `adapter_names=`)
    names one adapter per row, `"__base__"` for rows left unsteered.
    """

    def __init__(self) -> None:
        self.completion: torch.Tensor | None = None
        self.override: torch.Tensor | None = None
        self.pending_completion: torch.Tensor | None = None
        self.pending_override: torch.Tensor | None = None
        self.adapter_rows: list[str] | None = None
        self._rows: list[str] | None = None
        self._device: torch.device | None = None

    def begin_forward(self, batch: int, seq: int, past_length: int, device: torch.device) -> None:
        pending, self.pending_completion = self.pending_completion, None
        self.override, self.pending_override = self.pending_override, None
        self._device = device
        if pending is not None:
            _check_mask_shape("labels", pending, batch, seq)
            self.completion = pending.to(device)
        else:
            self.completion = torch.full((batch, seq), past_length > 0, dtype=torch.bool, device=device)
        if self.override is not None:
            _check_mask_shape("steer_mask", self.override, batch, seq)
            self.override = self.override.to(device=device, dtype=torch.bool)
        self._rows = None if self.adapter_rows is None else _rows_for_batch(self.adapter_rows, batch)

    def mask(self, positions: str, adapter_name: str) -> torch.Tensor | None:
        """Boolean mask of steered tokens, (batch, seq) or (batch, 1), or None for every token."""
        if self.override is not None:
            tokens = self.override
        elif positions == "all" or self.completion is None:
            tokens = None
        else:
            tokens = self.completion if positions == "completion" else ~self.completion
        if self._rows is None:
            return tokens
        rows = torch.tensor([name == adapter_name for name in self._rows], device=self._device).unsqueeze(-1)
        return rows if tokens is None else tokens & rows

    def row_adapters(self) -> set[str] | None:
        """The adapters a mixed batch names, or None when every row uses the active adapters."""
        return None if self._rows is None else set(self._rows)


def _rows_for_batch(adapter_rows: list[str], batch: int) -> list[str]:
    """`generate` repeats each input row for beams and return sequences; repeat its adapter name alike."""
    if batch % len(adapter_rows):
        raise ValueError(f"adapter_names has {len(adapter_rows)} entries but the batch has {batch} rows; give one per row.")
    repeats = batch // len(adapter_rows)
    return [name for name in adapter_rows for _ in range(repeats)]


def _check_mask_shape(name: str, mask: torch.Tensor, batch: int, seq: int) -> None:
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the input has (batch, seq) = ({batch}, {seq}).")


def hidden_of(output):
    """The residual-stream tensor inside a block's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _masked(delta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return delta if mask is None else delta * mask.unsqueeze(-1).to(delta.dtype)


def remove_direction(hidden: torch.Tensor, vector: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """h - scale * (h . u) u for u = vector / |vector| (a zero vector removes nothing)."""
    norm = vector.norm()
    if norm == 0 or scale == 0:
        return hidden
    unit = (vector / norm).to(hidden.dtype)
    projection = (hidden @ unit).unsqueeze(-1) * unit
    return hidden - scale * _masked(projection, mask)


class SteerLayer(nn.Module, BaseTunerLayer):
    """Holds every adapter's vector at one block and applies the active ones."""

    adapter_layer_names = ("vector",)
    other_param_names = ("settings",)

    def __init__(self, block: nn.Module, writers: Sequence[nn.Module], positions: TokenPositions, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.vector = nn.ModuleDict()
        self.settings: dict[str, SteerConfig] = {}
        self._active_adapter: list[str] = []
        self.merged_adapters = []
        self._positions = positions
        self.__dict__["_block"] = block  # not a child: the block owns this layer, not the other way round
        self.bias_before_merge: dict[str, torch.Tensor | None] = {}  # merge_adapter: the bias to restore
        self._handles = [
            block.register_forward_pre_hook(self._ablate_input_hook, prepend=True),
            block.register_forward_hook(self._output_hook, prepend=True),
            *(writer.register_forward_hook(self._ablate_writer_hook, prepend=True) for writer in writers),
        ]

    def update_layer(self, adapter_name: str, config: SteerConfig, hidden_size: int, init: torch.Tensor | None) -> None:
        vector = SteerVector(hidden_size, self.layer)
        if init is not None:
            if init.shape != (hidden_size,):
                raise ValueError(
                    f"SteerConfig.init vector for layer {self.layer} has {init.shape[0]} entries but the model's "
                    f"hidden size is {hidden_size}."
                )
            with torch.no_grad():
                vector.weight.copy_(init)
        self.vector[adapter_name] = vector
        self.settings[adapter_name] = config

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def block(self) -> nn.Module:
        return self.__dict__["_block"]

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Vectors follow the block's device and stay float32 (cast to the activations' dtype when used)."""
        if adapter_name not in self.vector or self.vector[adapter_name].weight.is_meta:
            return
        if device is None:
            device = next((p.device for p in self.block.parameters() if not p.is_meta), None)
        if device is not None:
            self.vector[adapter_name].to(device)

    def _active(self, operators: Sequence[str]) -> list[tuple[str, torch.Tensor, SteerConfig]]:
        if self.disable_adapters:
            return []
        names = self._positions.row_adapters()
        names = self.active_adapters if names is None else sorted(names)
        return [
            (name, self.vector[name].weight, self.settings[name])
            for name in names
            if name in self.vector and name not in self.merged_adapters and self.settings[name].operator in operators
        ]

    def _ablate(self, hidden: torch.Tensor) -> torch.Tensor:
        for name, vector, config in self._active(("ablate", "ablate_add")):
            scale = config.multiplier if config.operator == "ablate" else 1.0
            hidden = remove_direction(hidden, vector, scale, self._positions.mask(config.positions, name))
        return hidden

    def _ablate_input_hook(self, block: nn.Module, args: tuple):
        """Ablation also cleans the block's input, so the block output carries no component along u."""
        if not args or not self._active(("ablate", "ablate_add")):
            return None
        return (self._ablate(args[0]), *args[1:])

    def _ablate_writer_hook(self, module: nn.Module, args: tuple, output):
        if not self._active(("ablate", "ablate_add")):
            return None
        return with_hidden(output, self._ablate(hidden_of(output)))

    def _output_hook(self, block: nn.Module, args: tuple, output):
        active = self._active(("add", "ablate_add"))
        if not active:
            return None
        hidden = hidden_of(output)
        for name, vector, config in active:
            delta = config.multiplier * vector.to(hidden.dtype)
            hidden = hidden + _masked(delta, self._positions.mask(config.positions, name))
        return with_hidden(output, hidden)

