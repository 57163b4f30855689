"""llama.cpp control vectors: GGUF files of f32 tensors `direction.N`.

The convention, read from llama.cpp's source (`common_control_vector_load_one` in common/common.cpp,
`llama_adapter_cvec::apply` in src/llama-adapter.cpp, and each model graph's
`cur = build_cvec(cur, il)` right after the block's last residual add):

- `direction.N` is added to the output of block N, counting blocks from 0, at every token
  (prompt included). That is exactly steerft's site for `layers=[N]`, so N maps to N.
- N = 0 is rejected by llama.cpp's loader ("invalid (zero) direction tensor layer index"): the
  output of block 0 cannot be steered there, so an adapter at block 0 is refused on export.
- The loader sums duplicate tensors and scales each file by its `--control-vector-scaled` strength;
  the metadata (`general.architecture = controlvector`, `controlvector.model_hint`,
  `controlvector.layer_count`, as repeng also writes them) is descriptive and not checked by llama.cpp.

Export bakes the adapter's multiplier into the directions, so strength 1 reproduces the adapter:

    llama-cli -m MODEL.gguf --control-vector-scaled vector.gguf 1.0
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel

from steerft.io import atomic_write

from .adapter import InteropError, read_adapter, save_vectors_as_adapter

ARCHITECTURE = "controlvector"
_PREFIX = "direction."


def export_control_vector(adapter_dir: str | Path, out_path: str | Path, *, layers: list[int] | None = None,
                          model_hint: str | None = None) -> Path:
    """Write a steer adapter (operator add, positions all) as a llama.cpp control-vector GGUF."""
    adapter = read_adapter(adapter_dir)
    adapter.require_constant_addition("A llama.cpp control vector")
    directions = adapter.scaled_vectors()
    if layers is not None:
        missing = sorted(set(layers) - set(directions))
        if missing:
            raise InteropError(f"The adapter has no vector at blocks {missing}; it steers blocks {sorted(directions)}.")
        directions = {layer: directions[layer] for layer in sorted(set(layers))}
    if 0 in directions:
        raise InteropError(
            "llama.cpp cannot steer the output of block 0 (its loader rejects direction.0); "
            f"export the other blocks with --layers {' '.join(str(i) for i in directions if i) or '...'}, "
            "or make the adapter at a later block."
        )
    hint = model_hint or adapter.base_model or "unknown"
    data = _gguf_bytes(directions, hint)
    return atomic_write(out_path, lambda handle: handle.write(data))


def _gguf_bytes(directions: dict[int, torch.Tensor], model_hint: str) -> bytes:
    """GGUFWriter writes to a path; the bytes then go into place atomically (the files are small)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "control_vector.gguf"
        _write_gguf(path, directions, model_hint)
        return path.read_bytes()


def _write_gguf(path: Path, directions: dict[int, torch.Tensor], model_hint: str) -> None:
    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
    writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(directions))
    for layer, vector in directions.items():
        writer.add_tensor(f"{_PREFIX}{layer}", vector.detach().cpu().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_control_vector(path: str | Path) -> dict[int, torch.Tensor]:
    """{block: vector} from a control-vector GGUF, with llama.cpp's own checks (and its summing of repeats)."""
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"No control-vector file at {path}.")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise InteropError(f"{path} is not a readable GGUF file: {err}") from err
    field = reader.get_field("general.architecture")
    architecture = field.contents() if field is not None else None
    if architecture != ARCHITECTURE:
        raise InteropError(
            f"{path} has general.architecture={architecture!r}, not {ARCHITECTURE!r}: it is not a control vector "
            "(a model GGUF goes to --model, not here)."
        )
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        layer = _layer_of(tensor.name, path)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise InteropError(f"{path}: {tensor.name} must be a 1-D f32 tensor, as llama.cpp requires.")
        vector = torch.from_numpy(np.array(tensor.data, dtype=np.float32))
        directions[layer] = directions[layer] + vector if layer in directions else vector
    if not directions:
        raise InteropError(f"{path} holds no direction.N tensors.")
    return directions


def _layer_of(name: str, path: Path) -> int:
    prefix, _, number = name.partition(".")
    if f"{prefix}." != _PREFIX or not number.isdigit() or int(number) == 0:
        raise InteropError(f"{path}: tensor {name!r} is not direction.N with N >= 1, which llama.cpp requires.")
    return int(number)


def import_control_vector(path: str | Path, model: PreTrainedModel, out_dir: str | Path, *,
                          multiplier: float = 1.0) -> Path:
    """Write a control-vector GGUF (llama.cpp's or repeng's) as a steer adapter for `model`."""
    return save_vectors_as_adapter(model, read_control_vector(path), out_dir, source=str(path), multiplier=multiplier)
