"""The job behind `steerft extract` and `recipes/extract.py`: vectors at every layer with every estimator.

Writes one steer adapter per (estimator, layer), vectors.safetensors, a report and run.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator

from ..data import PromptFormatter, contrast_pairs, training_subset
from ..extract import ESTIMATORS, REDUCTIONS, Extraction, fit_directions, pair_activations, save_adapter, save_vectors, write_report
from ..io import write_json
from ..models import DEFAULT_MODEL
from ..runconfig import ConfigError, as_dict, non_negative
from .startup import check_output_dir, layers_of, load_job_model, load_splits, set_threads

# The fewest contrast pairs each estimator fits (a mean needs one pair; a spread, a probe or CCS two).
MIN_PAIRS = {"mean_diff": 1, "pca": 2, "logistic": 2, "ccs": 2}


@dataclass
class ExtractConfig:
    """Settings of `steerft extract` (YAML keys = field names)."""

    model: str = DEFAULT_MODEL
    dataset: str | dict = "sentiment"  # a name or path, or {path, config, split, data_files, revision} for `datasets`
    fields: dict | None = None
    layers: list[int] = field(default_factory=lambda: [6, 10, 14, 18, 22])
    estimators: list[str] = field(default_factory=lambda: ["mean_diff", "pca", "logistic"])
    n: int | None = None
    seed: int = 0
    split_seed: int = 0
    val_frac: float = 0.2
    test_frac: float = 0.2
    reduce: Literal["last", "mean"] = "mean"
    batch_size: int = 16
    multiplier: float = 1.0
    output_dir: str = "runs/extract"
    threads: int | None = None
    progress: bool = True


def _check(config: ExtractConfig) -> None:
    """Refuse a config that cannot run before anything is loaded."""
    unknown = [name for name in config.estimators if name not in ESTIMATORS]
    if unknown or not config.estimators:
        what = f"unknown estimator {unknown[0]!r}" if unknown else "no estimator"
        raise ConfigError(f"estimators={config.estimators}: {what}; allowed values: {', '.join(ESTIMATORS)}.")
    if config.reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={config.reduce!r}; allowed values: {', '.join(REDUCTIONS)}.")
    non_negative(config, "seed", "split_seed")
    if not config.layers or len(set(config.layers)) != len(config.layers):
        raise ConfigError(f"layers={config.layers}: list at least one block index, each once (e.g. layers=[8,12]).")
    for key in ("n", "batch_size", "threads"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or null for the default).")
    needs = max(MIN_PAIRS.get(name, 1) for name in config.estimators)
    if config.n is not None and config.n < needs:
        names = [name for name in config.estimators if MIN_PAIRS.get(name, 1) > config.n]
        raise ConfigError(f"n={config.n}: estimator(s) {', '.join(names)} need at least {needs} pairs; raise n "
                          f"or use estimators=[mean_diff].")
    check_output_dir(config.output_dir)


def run_extraction(config: ExtractConfig) -> Path:
    """Extract vectors at every requested layer with every estimator; write adapters and a report."""
    _check(config)
    set_threads(config.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    _, splits = load_splits(config)
    train_items = training_subset(splits.train, config.n or len(splits.train), config.seed)
    model, tokenizer = load_job_model(config.model)
    layers_of(model, config.layers)
    model.to(accelerator.device)
    fmt = PromptFormatter(tokenizer)
    started = time.perf_counter()
    read = dict(reduce=config.reduce, batch_size=config.batch_size, accelerator=accelerator,
                progress=config.progress and accelerator.is_main_process)
    train = pair_activations(model, tokenizer, contrast_pairs(train_items, fmt), config.layers, **read)
    heldout = pair_activations(model, tokenizer, contrast_pairs(splits.val, fmt), config.layers, **read)
    extraction = fit_directions(train, config.estimators, heldout=heldout)
    seconds = time.perf_counter() - started
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        _write_outputs(model, extraction, config, out, seconds, accelerator.num_processes, len(train_items))
    accelerator.wait_for_everyone()
    return out


def _write_outputs(model, extraction: Extraction, config: ExtractConfig, out: Path, seconds: float,
                   world_size: int, n_train: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for (name, layer), direction in extraction.directions.items():
        save_adapter(model, {layer: direction.vector}, out / "adapters" / f"{name}-layer{layer}", multiplier=config.multiplier)
    save_vectors(extraction, out / "vectors.safetensors")
    vectors = {f"{name}@{layer}": d.vector for (name, layer), d in extraction.directions.items()}
    write_report(extraction.reports, vectors, out, title=f"{config.dataset}: {config.model} (n={n_train})")
    write_json(out / "run.json", {"config": as_dict(config), "n_train": n_train, "seconds": seconds,
                                  "world_size": world_size})
    print(f"steerft extract: {len(extraction.directions)} vectors from {n_train} pairs in {seconds:.1f}s "
          f"on {world_size} process(es) -> {out}")
