"""`SteerConfig`: the PEFT config of a steering-vector adapter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open

from ..choices import OPERATORS, POSITIONS
from .peft_type import STEER_PEFT_TYPE

INITS = ("zeros", "random", "given")

VectorLike = Union[torch.Tensor, Sequence[float]]


@dataclass
class SteerConfig(PeftConfig):
    """A steering vector added to (or projected out of) the residual stream.

    The site is the output of each decoder block in `layers`, i.e. what `output_hidden_states[L + 1]`
    reports. Training learns the vector; `multiplier` scales it at inference and can be changed
    without reloading (`model.set_multiplier`).

    operator:
        "add":        h + m * v
        "ablate":     h - m * (h . u) u,  u = v / |v|   (m = 1 removes the direction; exact
                      weight-orthogonalisation when every block is ablated)
        "ablate_add": h - (h . u) u + m * v              (sets the component along u to m |v|)
    init: "zeros" (the adapter starts exactly at the base model), "random" (a random unit vector), or
        given vectors: one tensor for every layer, or a mapping layer -> tensor. Given vectors are not
        written into `adapter_config.json`; they live in the adapter weights. A trainable ablation needs a
        direction to start from, so `ablate`/`ablate_add` with `trainable=True` refuse "zeros".
    modules_to_save, trainable_token_indices: as in PEFT's own methods (e.g. the `score` head that
        `task_type="SEQ_CLS"` adds, or embeddings of tokens a chat template adds).
    """

    layers: Union[int, list[int]] = field(default_factory=lambda: [12], metadata={"help": "Block indices; negative counts from the end."})
    positions: str = field(default="all", metadata={"help": f"Which tokens are steered: one of {POSITIONS}."})
    multiplier: float = field(default=1.0, metadata={"help": "Scale of the vector at inference."})
    operator: str = field(default="add", metadata={"help": f"One of {OPERATORS}."})
    init: Any = field(default="zeros", metadata={"help": "'zeros', 'random', or vectors per layer."})
    trainable: bool = field(default=True, metadata={"help": "Whether the vectors receive gradients."})
    blocks_path: Union[str, None] = field(default=None, metadata={"help": "Dotted path of the decoder block list, for unknown architectures."})
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Extra modules trained fully and saved with the adapter (e.g. a classification head)."},
    )
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None,
        metadata={"help": "Token ids whose embeddings are trained and saved (e.g. tokens a chat template adds)."},
    )

    def __post_init__(self) -> None:
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"  # PeftModelForCausalLM gives generate() and TRL's trainers expect it
        super().__post_init__()
        self.peft_type = STEER_PEFT_TYPE
        self.layers = _check_layers(self.layers)
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("operator", self.operator, OPERATORS)
        self.multiplier = check_multiplier(self.multiplier)
        # Not a dataclass field: given vectors travel in the adapter weights, never in adapter_config.json.
        self.given_vectors: dict[int, torch.Tensor] = {}
        if isinstance(self.init, str):
            _check_choice("init", self.init, INITS)
        else:
            self.given_vectors = _check_vectors(self.init, self.layers)
            self.init = "given"
        # Saved adapters carry inference_mode=True and their trained vectors, so loading them stays possible.
        if self.operator != "add" and self.init == "zeros" and self.trainable and not self.inference_mode:
            raise ValueError(
                f"SteerConfig(operator={self.operator!r}, init='zeros', trainable=True) can never train: a zero vector has "
                "no direction to remove, so no gradient reaches it. Start from init='random' or given vectors "
                "(e.g. an extracted direction), or set trainable=False."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs: Any) -> "SteerConfig":
        """PEFT reads the weights later and reports a damaged file without its name; check it here, by name."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        _check_weights_readable(Path(pretrained_model_name_or_path, subfolder or "", SAFETENSORS_WEIGHTS_NAME))
        return config


def _check_weights_readable(path: Path) -> None:
    if not path.is_file():
        return  # a hub id, or weights PEFT will look for elsewhere
    try:
        with safe_open(path, framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{path} is not a readable safetensors file ({err}); save the adapter again.") from None


def check_multiplier(multiplier: Any) -> float:
    """A multiplier as a float; NaN, inf and non-numbers would make every logit meaningless."""
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier):
        raise ValueError(f"The steering multiplier must be a finite number, got {multiplier!r}.")
    return float(multiplier)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"SteerConfig.{name}={value!r} is not supported; allowed values: {', '.join(allowed)}.")


def _check_layers(layers: Any) -> list[int]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    ):
        raise ValueError(f"SteerConfig.layers must be an int or a non-empty list of ints (block indices), got {layers!r}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"SteerConfig.layers has repeated entries: {list(layers)}.")
    return list(layers)


def _check_vectors(init: Any, layers: list[int]) -> dict[int, torch.Tensor]:
    """Normalise given vectors to {layer: 1-D float tensor}, refusing non-finite values."""
    if isinstance(init, Mapping):
        vectors = {int(k): v for k, v in init.items()}
        if set(vectors) != set(layers):
            raise ValueError(
                f"SteerConfig.init gives vectors for layers {sorted(vectors)} but layers={layers}; give one per layer."
            )
    else:
        vectors = {layer: init for layer in layers}
    checked = {}
    for layer, vector in vectors.items():
        tensor = torch.as_tensor(vector, dtype=torch.float32).detach().clone()
        if tensor.ndim != 1:
            raise ValueError(f"SteerConfig.init vector for layer {layer} must be 1-D, got shape {tuple(tensor.shape)}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"SteerConfig.init vector for layer {layer} contains NaN or inf values.")
        checked[layer] = tensor
    return checked
