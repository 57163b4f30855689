"""The job behind `steerft extract` and `recipes/extract.py`: vectors at every layer with every estimator.

Writes one steer adapter per (estimator, layer), vectors.safetensors, a report and run.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data import PromptFormatter, contrast_pairs, training_subset
from ..extract import Extraction, fit_directions, pair_activations, save_adapter, save_vectors, write_report
from ..io import write_json
from ..runconfig import as_dict
from .config import ExtractConfig, check_extract
from .startup import layers_of, load_job_model, load_splits, set_threads

def run_extraction(config: ExtractConfig) -> Path:
    """Extract vectors at every requested layer with every estimator; write adapters and a report."""
    check_extract(config)
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
