"""Reading the vectors of a saved steer adapter straight from its files.

Next to the tuner because it reads the tuner's own layout: `adapter_config.json` (peft_type,
operator, multiplier) and state-dict keys `...layers.<block>.steer.vector...`. A run can so start
from an extracted vector without loading a model twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..io import read_json_object

STEER_MODULE = "steer"  # the state-dict component that follows the block index


def load_steer_vectors(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """The vectors a saved additive steer adapter applies (vector times its multiplier), keyed by block.

    Raises ValueError when `path` is not such an adapter folder.
    """
    folder = Path(path)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not (config_file.is_file() and weights_file.is_file()):
        raise ValueError(f"{str(path)!r} is not a saved steer adapter folder (with adapter_config.json and "
                         "adapter_model.safetensors).")
    saved = read_json_object(config_file, fix="save the adapter again")
    if not str(saved.get("peft_type", "")).upper().startswith("STEER") or saved.get("operator", "add") != "add":
        raise ValueError(f"{str(path)!r} holds a {saved.get('peft_type')} adapter (operator "
                         f"{saved.get('operator')!r}); starting vectors must come from an additive steer adapter.")
    multiplier = saved.get("multiplier", 1.0)
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise ValueError(f"{config_file}: multiplier={multiplier!r} is not a number; save the adapter again.")
    vectors = {}
    try:
        weights = load_file(weights_file)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{weights_file} is not a readable safetensors file ({err}); save the adapter again.") from None
    for key, tensor in weights.items():  # e.g. base_model.model.model.layers.14.steer.vector.weight
        parts = key.split(".")
        if STEER_MODULE in parts:
            vectors[int(parts[parts.index(STEER_MODULE) - 1])] = float(multiplier) * tensor.float()
    return vectors
