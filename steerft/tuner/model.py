"""`SteerModel`: the PEFT tuner that injects steering layers into decoder blocks."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.integrations import init_empty_weights
from peft.utils.other import set_additional_trainable_modules
from torch import nn

from .arch import Architecture, architecture_of, block_stack, decoder_blocks, hidden_size
from .config import SteerConfig, check_multiplier
from .layer import SteerLayer, TokenPositions
from .merge import MergeError, merge_adapters, merge_reversibly, unmerge


class SteerModel(BaseTuner):
    """Adds steering vectors at the outputs of decoder blocks.

    Use it through PEFT: `get_peft_model(model, SteerConfig(layers=[12]))`. Besides the usual PEFT
    API it offers `set_multiplier`, `using_multiplier`, `get_vectors` and `set_vectors`.

    Which tokens count as completion (for `positions="completion"`/`"prompt"`): tokens whose
    `labels` are not -100 when labels are passed (TRL's SFT and DPO trainers pass them), tokens
    generated after the prompt during `generate`, or exactly the tokens of an explicit
    `steer_mask=` (batch, seq) boolean passed to `forward`, which overrides `positions`.
    """

    # PEFT (and its generic tests) find adapter parameters by `prefix in name`: ours are `...steer.vector.<adapter>.weight`.
    prefix: str = "steer."
    tuner_layer_cls = SteerLayer
    target_module_mapping: dict[str, list[str]] = {}

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
    ) -> None:
        """Attach (or extend) a `SteerLayer` on every block the config names."""
        config: SteerConfig = self.peft_config[adapter_name]
        arch = architecture_of(model, config.blocks_path)
        blocks = decoder_blocks(model, arch)
        layers = resolve_layers(config.layers, len(blocks))
        if config.operator != "add" and not arch.writers:
            raise ValueError(
                f"SteerConfig.operator={config.operator!r} needs to know which modules of {type(model).__name__} write "
                "into the residual stream; register them with steerft.register_architecture(...), or use operator='add'."
            )
        if config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
            raise ValueError(
                f"SteerConfig.task_type is 'CAUSAL_LM' (the default), but {type(model).__name__} does not generate text; "
                "set task_type to match the model, e.g. SteerConfig(task_type='SEQ_CLS', ...) for a reward model."
            )
        width = hidden_size(model)
        self._install_positions_hook(model, arch)
        with init_empty_weights() if low_cpu_mem_usage else nullcontext():  # PEFT then loads the weights with assign=True
            for raw_layer, layer in zip(config.layers, layers):
                steer_layer = self._steer_layer(blocks[layer], arch, layer)
                steer_layer.update_layer(adapter_name, config, width, _initial_vector(config, raw_layer, width))
                self.targeted_module_names.append(f"{arch.blocks}.{layer}")
        self._mark_only_adapters_as_trainable(model)
        self._set_trainability()
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(self),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )
        if _checkpointing_on(model):
            warnings.warn(
                "Gradient checkpointing is on: PEFT then makes backward run through every block. A steering vector "
                "at block L needs backward only above L; turn checkpointing off (gradient_checkpointing=False) for "
                "steer adapters."
            )

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("SteerModel attaches layers to whole blocks in inject_adapter; it replaces no module.")

    def _steer_layer(self, block: nn.Module, arch: Architecture, layer: int) -> SteerLayer:
        existing = getattr(block, "steer", None)
        if isinstance(existing, SteerLayer):
            return existing
        if existing is not None:
            raise ValueError(f"Block {layer} already has a child module named 'steer' ({type(existing).__name__}).")
        writers = [block.get_submodule(path) for path in arch.writers]
        steer_layer = SteerLayer(block, writers, self._positions, layer)
        steer_layer._active_adapter = list(self.active_adapters)
        block.steer = steer_layer
        return steer_layer

    @property
    def _positions(self) -> TokenPositions:
        if "_token_positions" not in self.__dict__:
            self.__dict__["_token_positions"] = TokenPositions()
        return self.__dict__["_token_positions"]

    def _install_positions_hook(self, model: nn.Module, arch: Architecture) -> None:
        if "_positions_handle" in self.__dict__:
            return
        positions = self._positions

        def begin_forward(module: nn.Module, args: tuple, kwargs: dict) -> None:
            tokens = kwargs.get("input_ids", args[0] if args else None)
            if tokens is None:
                tokens = kwargs["inputs_embeds"]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 renamed it to `cache`
            past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            positions.begin_forward(tokens.shape[0], tokens.shape[1], int(past), tokens.device)

        stack = block_stack(model, arch)
        self.__dict__["_positions_handle"] = stack.register_forward_pre_hook(begin_forward, with_kwargs=True)

    def _set_trainability(self) -> None:
        """Only active, trainable, non-inference adapters receive gradients."""
        for layer in self._steer_layers():
            for name, vector in layer.vector.items():
                config = self.peft_config.get(name)  # None while PEFT is deleting this adapter
                trainable = config is not None and name in self.active_adapters and config.trainable and not config.inference_mode
                vector.weight.requires_grad_(trainable)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._set_trainability()

    def _steer_layers(self) -> Iterator[SteerLayer]:
        return (module for module in self.model.modules() if isinstance(module, SteerLayer))

    def forward(self, *args: Any, steer_mask: Optional[torch.Tensor] = None, **kwargs: Any):
        """Hand the completion mask (from `labels`) and any explicit `steer_mask` to the layers."""
        labels = kwargs.get("labels")
        positions = self._positions
        positions.pending_completion = labels.ne(-100) if isinstance(labels, torch.Tensor) else None
        positions.pending_override = steer_mask
        try:
            return self.model(*args, **kwargs)
        finally:
            positions.pending_completion = positions.pending_override = None

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Mixed batches: `adapter_names=[...]` steers each row with its own adapter ("__base__": none)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        self._check_adapter_names(adapter_names)
        positions = self._positions
        positions.adapter_rows = list(adapter_names)
        try:
            yield
        finally:
            positions.adapter_rows = None

    def _check_adapter_names(self, adapter_names: Any) -> None:
        if not isinstance(adapter_names, (list, tuple)) or not all(isinstance(name, str) for name in adapter_names):
            raise TypeError(f"adapter_names must be a list with one adapter name per row, got {adapter_names!r}.")
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        if any(layer.merged for layer in self._steer_layers()):
            raise ValueError("Cannot pass `adapter_names` while an adapter is merged; call unmerge_adapter() first.")
        unknown = sorted(set(adapter_names) - {"__base__"} - set(self.peft_config))
        if unknown:
            raise ValueError(
                f"adapter_names names unknown adapter(s) {unknown}; adapters: {sorted(self.peft_config)} "
                "(use '__base__' for unsteered rows)."
            )

    def set_multiplier(self, multiplier: float, adapter_name: Optional[str] = None) -> None:
        """Change the inference-time scale of an adapter (default: the active ones) in place."""
        multiplier = check_multiplier(multiplier)
        names = self._names(adapter_name)
        merged = [name for name in names if any(name in layer.merged_adapters for layer in self._steer_layers())]
        if merged:
            raise MergeError(f"Adapter(s) {merged} are merged with their multiplier; call unmerge_adapter() first.")
        for name in names:
            self.peft_config[name].multiplier = multiplier

    @contextmanager
    def using_multiplier(self, multiplier: float, adapter_name: Optional[str] = None) -> Iterator[None]:
        """Temporarily steer with another multiplier."""
        names = self._names(adapter_name)
        before = {name: self.peft_config[name].multiplier for name in names}
        self.set_multiplier(multiplier, adapter_name)
        try:
            yield
        finally:
            for name, value in before.items():
                self.peft_config[name].multiplier = value

    def get_vectors(self, adapter_name: Optional[str] = None) -> dict[int, torch.Tensor]:
        """The adapter's vectors as {block index: detached copy}."""
        (name,) = self._names(adapter_name, single=True)
        return {layer.layer: layer.vector[name].weight.detach().clone() for layer in self._steer_layers() if name in layer.vector}

    def set_vectors(self, vectors: dict[int, torch.Tensor], adapter_name: Optional[str] = None) -> None:
        """Overwrite the adapter's vectors, e.g. with extracted ones, keeping their dtype and device."""
        (name,) = self._names(adapter_name, single=True)
        layers = {layer.layer: layer for layer in self._steer_layers() if name in layer.vector}
        n_blocks = len(decoder_blocks(self.model, architecture_of(self.model, self.peft_config[name].blocks_path)))
        vectors = {resolve_layers([k], n_blocks)[0]: v for k, v in vectors.items()}
        if set(vectors) != set(layers):
            raise ValueError(f"Adapter {name!r} steers blocks {sorted(layers)}; got vectors for {sorted(vectors)}.")
        for index, vector in vectors.items():
            weight = layers[index].vector[name].weight
            vector = torch.as_tensor(vector)
            if vector.shape != weight.shape or not torch.isfinite(vector).all():
                raise ValueError(
                    f"Vector for block {index} must be finite with shape {tuple(weight.shape)}, got {tuple(vector.shape)}."
                )
            with torch.no_grad():
                weight.copy_(vector)

    def _names(self, adapter_name: Optional[str], single: bool = False) -> list[str]:
        names = [adapter_name] if adapter_name is not None else list(self.active_adapters)
        unknown = [name for name in names if name not in self.peft_config]
        if unknown:
            raise ValueError(f"Unknown adapter {unknown[0]!r}; adapters: {sorted(self.peft_config)}.")
        if single and len(names) != 1:
            raise ValueError(f"Several adapters are active ({names}); name one with adapter_name=.")
        return names

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for layer in list(self._steer_layers()):
            if not layer.vector:
                _detach_layer(self.model, layer)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: Optional[list[str]] = None,
    ) -> nn.Module:
        layers = list(self._steer_layers())
        unmerge(layers)  # merge_and_unload folds for good below; unload() returns the base model exactly
        if merge:
            names = adapter_names or list(self.active_adapters)
            merge_adapters(self.model, [(name, self.peft_config[name]) for name in names], layers, safe_merge)
        for layer in list(self._steer_layers()):
            _detach_layer(self.model, layer)
        handle = self.__dict__.pop("_positions_handle", None)
        if handle is not None:
            handle.remove()
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Fold `add` adapters into the block biases in memory; `unmerge_adapter()` restores the biases exactly."""
        self._check_merge_allowed()
        layers = list(self._steer_layers())
        for name in adapter_names or list(self.active_adapters):
            if name not in self.peft_config:
                raise ValueError(f"Unknown adapter {name!r}; adapters: {sorted(self.peft_config)}.")
            merge_reversibly(self.model, name, self.peft_config[name], layers, safe_merge)

    def unmerge_adapter(self) -> None:
        unmerge(list(self._steer_layers()))

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """Disabling must give the base model, so merged adapters are unmerged first (as PEFT's LoRA does)."""
        if not enabled and any(layer.merged for layer in self._steer_layers()):
            warnings.warn("Unmerging merged steering adapters before disabling them.")
            self.unmerge_adapter()
        super()._enable_adapter_layers(enabled)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Vectors follow their block's device; they stay float32 and are cast to the activations' dtype when used."""
        for layer in self._steer_layers():
            layer._move_adapter_to_device_of_base_layer(adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: SteerConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Loading is strict: the saved vectors must be exactly the blocks the config steers."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        wanted = _blocks_with_vectors(model.state_dict(), adapter_name)
        saved = _blocks_with_vectors(remapped)
        if wanted != saved:
            raise ValueError(
                f"The saved steering vectors do not match the adapter config: layers={config.layers} steers blocks "
                f"{sorted(wanted)}, but the weights hold vectors for blocks {sorted(saved)} (missing: "
                f"{sorted(wanted - saved)}; unexpected: {sorted(saved - wanted)}). Fix `layers` in adapter_config.json "
                "or save the adapter again."
            )
        return remapped


def resolve_layers(layers: list[int], n_blocks: int) -> list[int]:
    """Negative indices count from the end; anything outside the model is an error."""
    resolved = []
    for layer in layers:
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(
                f"SteerConfig.layers contains {layer}, but the model has {n_blocks} blocks: "
                f"allowed values are {-n_blocks}..{n_blocks - 1}."
            )
        resolved.append(layer % n_blocks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"SteerConfig.layers={layers} names the same block twice.")
    return resolved


def _initial_vector(config: SteerConfig, raw_layer: int, hidden_size: int) -> torch.Tensor | None:
    """The starting vector at one block; None keeps the zero init (the base model)."""
    if config.init == "random":
        vector = torch.randn(hidden_size)
        return vector / vector.norm()
    return config.given_vectors.get(raw_layer)


def _blocks_with_vectors(state_dict: dict[str, torch.Tensor], adapter_name: Optional[str] = None) -> set[int]:
    """Block indices of the steering vectors in a state dict: `...<index>.steer.vector[.<adapter>].weight`.

    A checkpoint key with no matching model parameter keeps its saved form, without the adapter name.
    """
    adapter = r"(?:[^.]+\.)?" if adapter_name is None else re.escape(adapter_name) + r"\."
    pattern = re.compile(rf"\.(\d+)\.steer\.vector\.{adapter}weight$")
    return {int(match.group(1)) for key in state_dict if (match := pattern.search(key))}


def _checkpointing_on(model: nn.Module) -> bool:
    """Whether activation checkpointing is on, asked of the transformers model under any PEFT wrapper
    under its current name (transformers 5 warns on the old one, which a wrapper would forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flag = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(base, flag, False))


def _detach_layer(model: nn.Module, layer: SteerLayer) -> None:
    layer.remove_hooks()
    for module in model.modules():
        if getattr(module, "steer", None) is layer:
            del module.steer
            return
