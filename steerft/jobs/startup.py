"""What every job does before its real work, each failure reported as one `ConfigError` line.

Threads, the dataset and its fixed splits, the model, and the config's layers as block indices:
the same four steps in the extract, train, study and truth jobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from ..data import BehaviourDataError, Splits, load_behaviour, load_held_out_ids, split_items
from ..models import ModelNotAvailableError, load_model
from ..runconfig import ConfigError

if TYPE_CHECKING:  # torch loads with the model; check_output_dir serves config checks without it
    from torch import nn
    from transformers import PreTrainedTokenizerBase


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads when the config names a count (null: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_splits(config, loader: Callable = load_behaviour):
    """The config's dataset (keys dataset, fields, split_seed, val_frac, test_frac, split_file) and its fixed splits."""
    try:
        dataset = loader(config.dataset, fields=config.fields)
        split_file = getattr(config, "split_file", None)  # a study option: test/validation ids fixed by the user
        held_out = load_held_out_ids(split_file) if split_file else None
        splits: Splits = split_items(dataset.items, config.split_seed, config.val_frac, config.test_frac,
                                     held_out=held_out)
    except BehaviourDataError as err:
        raise ConfigError(f"dataset={config.dataset!r}: {err}") from err
    return dataset, splits


def load_job_model(name_or_path: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model and tokenizer the config names."""
    try:
        return load_model(name_or_path)
    except (OSError, ValueError, ModelNotAvailableError) as err:
        raise ConfigError(f"model={name_or_path!r} could not be loaded: {err}") from err


def layers_of(model: nn.Module, layers: Sequence[int], key: str = "layers") -> list[int]:
    """The config's `key` as block indices of `model`."""
    from ..tuner import block_indices

    try:
        return block_indices(model, layers)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from err


def check_output_dir(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """Refuse an output folder that is a file or cannot be created or written, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a file, not a folder; choose another {key}.")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={str(path)!r}: {existing} is a file, so the folder cannot be made there; "
                          f"choose another {key}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(path)!r}: no permission to write in {existing}; choose another {key} "
                          "or fix the folder's permissions.")
    return path
