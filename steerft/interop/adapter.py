"""A steer adapter folder as plain data: its config and one vector per block.

Every format in `steerft.interop` reads or writes through this module, so a vector means the same
thing everywhere: added, times the multiplier, to the output of decoder block L (0-based), the
residual stream that `output_hidden_states[L + 1]` reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from steerft.tuner import block_count
from steerft.tuner import hidden_size as model_hidden_size

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_VECTOR_KEY = re.compile(r"\.(\d+)\.steer\.vector(?:\.[^.]+)?\.weight$")


class InteropError(ValueError):
    """A file or adapter cannot be converted; the message says why and what to do instead."""


@dataclass
class SteerAdapter:
    """What an adapter folder holds: settings from `adapter_config.json` and {block: vector}."""

    config: dict[str, Any]
    vectors: dict[int, torch.Tensor]

    @property
    def multiplier(self) -> float:
        return float(self.config.get("multiplier", 1.0))

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scaled_vectors(self) -> dict[int, torch.Tensor]:
        """What is actually added at each block: multiplier x vector."""
        return {layer: self.multiplier * vector for layer, vector in sorted(self.vectors.items())}

    def require_constant_addition(self, target: str) -> None:
        """Formats that only add a constant at every token cannot hold anything else."""
        operator, positions = self.config.get("operator", "add"), self.config.get("positions", "all")
        if operator != "add":
            raise InteropError(
                f"{target} only adds a vector; this adapter uses operator={operator!r}, which projects the "
                "hidden state. Keep it as a PEFT adapter (or export a merged checkpoint where merging is exact)."
            )
        if positions != "all":
            raise InteropError(
                f"{target} adds the vector at every token; this adapter steers positions={positions!r} only. "
                "Export an adapter made with positions='all'."
            )


def read_adapter(folder: str | Path) -> SteerAdapter:
    """Read a steer adapter folder without loading any model."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise InteropError(f"{folder} is not an adapter folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    config = json.loads(config_path.read_text())
    if not str(config.get("peft_type", "")).upper().startswith("STEER"):
        raise InteropError(f"{folder} holds a {config.get('peft_type')!r} adapter, not a steer adapter.")
    vectors = {}
    for key, tensor in load_file(str(weights_path)).items():
        match = _VECTOR_KEY.search(key)
        if match:
            vectors[int(match.group(1))] = tensor.float()
    if not vectors:
        raise InteropError(f"{weights_path} holds no steering vectors (keys '...<block>.steer.vector.weight').")
    return SteerAdapter(config=config, vectors=vectors)


def check_fits(model: PreTrainedModel, vectors: dict[int, torch.Tensor], source: str) -> None:
    """Refuse vectors made for another model: wrong hidden size or a block the model does not have."""
    width = model_hidden_size(model)
    n_blocks = block_count(model)
    sizes = {int(v.numel()) for v in vectors.values()}
    if sizes != {width}:
        raise InteropError(
            f"{source} holds vectors of size {sorted(sizes)} but {type(model).__name__} has hidden size {width}: "
            "the vectors were made for another model."
        )
    outside = sorted(layer for layer in vectors if not 0 <= layer < n_blocks)
    if outside:
        raise InteropError(
            f"{source} steers blocks {outside} but the model has {n_blocks} blocks (0..{n_blocks - 1}): "
            "the vectors were made for another model."
        )


def save_vectors_as_adapter(model: PreTrainedModel, vectors: dict[int, torch.Tensor], out_dir: str | Path,
                            *, source: str, multiplier: float = 1.0) -> Path:
    """Check `vectors` against `model`, then write them as a steer adapter folder."""
    from steerft.extract.pipeline import save_adapter  # the one writer of steer adapter folders

    vectors = {int(layer): torch.as_tensor(v, dtype=torch.float32).reshape(-1) for layer, v in vectors.items()}
    check_fits(model, vectors, source)
    return save_adapter(model, vectors, out_dir, multiplier=multiplier)
