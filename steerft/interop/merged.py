"""Merged checkpoints: the adapter folded into the base weights, saved as a plain transformers folder.

The result loads with `AutoModelForCausalLM.from_pretrained` alone (no steerft, no PEFT), which is how
a steer adapter reaches vLLM or any server of plain checkpoints. Only exact merges are allowed
(`operator="add"` at every token on architectures whose last block projection has an unnormalised
bias, or full directional ablation); anything else is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from steerft.io import atomic_dir
from steerft.tuner import MergeError

from .adapter import InteropError
from .base import load_with_adapter


def export_merged(adapter_dir: str | Path, out_dir: str | Path, *, model: str | None = None) -> Path:
    """Load the adapter on its base model (or `model`), merge it and save model and tokenizer to `out_dir`."""
    peft_model, tokenizer = load_with_adapter(adapter_dir, model)
    try:
        merged = peft_model.merge_and_unload()
    except MergeError as err:
        raise InteropError(str(err)) from err
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
