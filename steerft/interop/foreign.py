"""Vectors from other steering libraries, as steer adapters.

Both libraries add their vector to the output of a decoder block, as steerft does, so only the keys
need mapping (read from their source code):

- repeng `ControlVector.directions[L]`: `ControlModel.set_control(vector, coeff)` adds
  coeff x directions[L] to the output of `model.layers[L]` (L >= 0, 0-based); its extraction reads
  `hidden_states[L + 1]`, the same site. Sign: positive coeff moves toward the positive examples.
  repeng's files are llama.cpp control vectors: import them with `import_control_vector`.
- steering-vectors `SteeringVector.layer_activations[L]` with `layer_type="decoder_block"`:
  `apply(model, multiplier)` adds multiplier x vector to the output of the L-th decoder block
  (negative L counts from the end). Sign: positive multiplier moves toward the positive examples.

So key L becomes steerft block L (negatives resolved), and the coefficient becomes the multiplier.
Neither library is imported here: the objects are read by their fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from steerft.tuner import block_count

from .adapter import InteropError, save_vectors_as_adapter


def repeng_vectors(control_vector: Any) -> dict[int, torch.Tensor]:
    """{block: vector} of a repeng `ControlVector` (keys are already 0-based block indices)."""
    directions = getattr(control_vector, "directions", None)
    if not isinstance(directions, dict) or not directions:
        raise InteropError("Expected a repeng ControlVector with a non-empty `directions` dict.")
    return {int(layer): torch.as_tensor(vector, dtype=torch.float32).reshape(-1) for layer, vector in directions.items()}


def steering_vectors_vectors(steering_vector: Any, n_blocks: int) -> dict[int, torch.Tensor]:
    """{block: vector} of a steering-vectors `SteeringVector` on a model with `n_blocks` blocks."""
    layer_type = getattr(steering_vector, "layer_type", None)
    if layer_type != "decoder_block":
        raise InteropError(
            f"This SteeringVector acts on layer_type={layer_type!r}; steerft steers decoder-block outputs only "
            "(layer_type='decoder_block')."
        )
    vectors = {}
    for layer, vector in steering_vector.layer_activations.items():
        block = int(layer) + n_blocks if int(layer) < 0 else int(layer)
        if block in vectors:
            raise InteropError(f"SteeringVector names block {block} twice (as {layer} and another index).")
        vectors[block] = torch.as_tensor(vector, dtype=torch.float32).detach().cpu().reshape(-1)
    return vectors


def import_repeng(control_vector: Any, model: PreTrainedModel, out_dir: str | Path, *, coeff: float = 1.0) -> Path:
    """Write a repeng ControlVector as a steer adapter; `coeff` (set_control's) becomes the multiplier."""
    return save_vectors_as_adapter(model, repeng_vectors(control_vector), out_dir,
                                   source="repeng ControlVector", multiplier=coeff)


def import_steering_vector(steering_vector: Any, model: PreTrainedModel, out_dir: str | Path, *,
                           multiplier: float = 1.0) -> Path:
    """Write a steering-vectors SteeringVector as a steer adapter; `multiplier` is apply()'s."""
    n_blocks = block_count(model)
    return save_vectors_as_adapter(model, steering_vectors_vectors(steering_vector, n_blocks), out_dir,
                                   source="steering-vectors SteeringVector", multiplier=multiplier)
