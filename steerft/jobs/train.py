"""The job behind `steerft train` and `recipes/{sft,dpo}.py`: check, train, write a run folder.

The run folder (adapter, config.yaml, subset_ids.json, metrics.json) is written atomically, from
the main process only when launched with Accelerate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from peft import PeftConfig

from .. import tracking
from ..adapter import adapter_kind, default_learning_rate, peft_config
from ..data import BehaviourItem, PromptFormatter, contrast_pairs, training_subset
from ..io import atomic_dir, write_json, write_text
from ..metrics import preference
from ..runconfig import ConfigError, as_dict, build
from ..training import build_trainer, check_trainer, row_counts, training_rows, training_shortcuts
from ..tuner import SteerConfig, hidden_size
from .config import TrainConfig
from .startup import layers_of, load_job_model, load_splits, set_threads

# The train job checkpoints so that a killed run can `resume`; the finished run folder replaces the
# checkpoints. Settings in `trainer:` win.
CHECKPOINTS = {"save_strategy": "steps", "save_steps": 50, "save_total_limit": 1}


def check_config(config: TrainConfig) -> TrainConfig:
    """Refuse a bad config before the model loads, naming the key and the fix: its values (checked
    when it is built, method included) and its `trainer` keys against TRL's config."""
    config = build(TrainConfig, as_dict(config), where="train config")  # types, also for configs built in code
    config.trainer = check_trainer(config.trainer, [config.method])
    return config


def _checkpoint(config: TrainConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from (None: start afresh); refuse to replace a run the user did not mean to."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file; choose another run_name or output_dir.")
    if (run_dir / "metrics.json").is_file() and not config.overwrite:
        raise ConfigError(f"run folder {run_dir} holds a finished run; choose another run_name, or set "
                          "overwrite=true to replace it.")
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if last and not (config.resume or config.overwrite):
        raise ConfigError(f"run folder {run_dir} holds checkpoints of an interrupted run; set resume=true to "
                          "continue it, or overwrite=true to start again.")
    if last and config.overwrite and not config.resume and _is_main_process():  # stale ones would mix into the rotation
        for stale in run_dir.glob("checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if config.resume and not last:
        print(f"steerft train: resume=true but {run_dir} holds no checkpoint; starting from the beginning.",
              flush=True)
    return last if config.resume else None


def _check_model_fit(adapter: PeftConfig | None, model) -> None:
    """Layers and given vectors must fit the loaded model; checked before any training step."""
    if not isinstance(adapter, SteerConfig):
        return
    layers_of(model, adapter.layers, "adapter.layers")
    width = hidden_size(model)
    for layer, vector in adapter.given_vectors.items():
        if vector.shape != (width,):
            raise ConfigError(f"adapter.init: the vector for layer {layer} has {vector.shape[0]} entries but the "
                              f"model's hidden size is {width}; it was made for another model.")


def _items(config: TrainConfig) -> tuple[list[BehaviourItem], list[BehaviourItem]]:
    """The training subset and the validation split."""
    dataset, splits = load_splits(config)
    n = len(splits.train) if config.n is None else config.n
    if n > len(splits.train):
        raise ConfigError(f"n={n} is larger than the training split of {config.dataset!r} ({len(splits.train)} items "
                          f"of {len(dataset)}); lower n, or lower val_frac/test_frac.")
    return training_subset(splits.train, n, config.seed), splits.val


def default_run_name(config: TrainConfig, kind: str, n: int) -> str:
    """e.g. sft-steer-L14-n32-s0, dpo-lora-r8-n32-s0: unique across a study's grid axes."""
    spec = config.adapter
    detail = {"steer": "-L" + "_".join(map(str, spec.layers)), "lora": f"-r{spec.lora_r}"}.get(kind, "")
    if spec.peft is not None:
        detail = ""
    return f"{config.method}-{kind}{detail}-n{n}-s{config.seed}"


def _is_main_process() -> bool:
    """Rank 0 of an Accelerate/torchrun launch, known before the trainer sets Accelerate up."""
    return int(os.environ.get("RANK", "0")) == 0


def run_training(config: TrainConfig) -> Path:
    """Check, train, and write the run folder; return its path (the same on every process)."""
    config, adapter, train_items, val_items = _resolve(config)
    run_dir = Path(config.output_dir) / config.run_name
    checkpoint = _checkpoint(config, run_dir)
    model, tokenizer = load_job_model(config.model)
    _check_model_fit(adapter, model)
    main = _is_main_process()
    if main:
        tracking.init_run(config.wandb_project, config.run_name, config.wandb_group, as_dict(config), "train",
                          enabled=config.wandb)
    fmt = PromptFormatter(tokenizer)
    try:
        args = {"output_dir": str(run_dir), "run_name": config.run_name, "seed": config.seed, **CHECKPOINTS,
                **config.trainer}
        with training_shortcuts(model, adapter):
            trainer = build_trainer(model, tokenizer, training_rows(config.method, train_items, fmt),
                                    method=config.method, peft_config=adapter, args=args,
                                    report_to=tracking.report_to(config.wandb))
            metrics = _train(trainer, config, adapter_kind(adapter), len(train_items), checkpoint, announce=main)
        metrics |= _heldout(trainer, tokenizer, val_items[: config.eval_items], fmt)
        _save(trainer, run_dir, config, train_items, metrics, main)
    finally:
        tracking.finish()
    return run_dir


def _resolve(config: TrainConfig) -> tuple[TrainConfig, PeftConfig | None, list[BehaviourItem], list[BehaviourItem]]:
    """Everything that needs no model: checks, seeds, adapter config, data; the config with defaults filled in."""
    config = check_config(config)
    set_threads(config.threads)
    from transformers import set_seed

    set_seed(config.seed)
    adapter = peft_config(config.adapter)
    kind = adapter_kind(adapter)
    train_items, val_items = _items(config)
    config = dataclasses.replace(
        config,
        n=len(train_items),
        trainer={"learning_rate": default_learning_rate(kind), **config.trainer},
        run_name=config.run_name or default_run_name(config, kind, len(train_items)),
    )
    return config, adapter, train_items, val_items


def _train(trainer, config: TrainConfig, kind: str, n: int, checkpoint: str | None, *,
           announce: bool) -> dict[str, Any]:
    """Train, saying first what runs where (the world size is Accelerate's, known once the trainer exists)."""
    world_size = trainer.accelerator.num_processes
    trainable, total = _parameter_counts(trainer.model)
    rows = row_counts(trainer, n)
    if announce:
        print(f"steerft train: {config.run_name}: {config.method} with a {kind} adapter ({trainable:,} trainable "
              f"parameters) on {rows['rows_trained']} items, world size {world_size} ({trainer.accelerator.device})"
              + (f", resuming from {checkpoint}" if checkpoint else ""), flush=True)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = _metrics(trainer, result, time.perf_counter() - started, world_size, trainable, total,
                       rows["rows_trained"])
    return metrics | rows


def _heldout(trainer, tokenizer, items: Sequence[BehaviourItem], fmt: PromptFormatter) -> dict[str, Any]:
    """Validation preference accuracy of the trained model, run on every rank (sharded models need all)."""
    if not items:
        return {}
    with trainer.accelerator.autocast():
        accuracy = preference(trainer.model, tokenizer, contrast_pairs(items, fmt)).accuracy
    return {"val_preference_accuracy": accuracy, "val_items": len(items)}


def _save(trainer, run_dir: Path, config: TrainConfig, train_items: Sequence[BehaviourItem],
          metrics: dict[str, Any], main: bool) -> None:
    """The main process writes the run folder in one rename; the others only join sharded gathers."""
    if not main:
        trainer.save_model(str(run_dir))  # writes nothing on this rank
        return
    with atomic_dir(run_dir) as tmp:
        trainer.save_model(str(tmp))
        _write_run_files(tmp, config, train_items, metrics)
    tracking.log_summary(metrics)
    print(f"steerft train: wrote {run_dir} (final loss {metrics['final_loss']:.4f}, "
          f"{metrics['steps']} steps in {metrics['wall_time_s']:.1f}s)", flush=True)


def _parameter_counts(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _metrics(trainer, result, seconds: float, world_size: int, trainable: int, total: int, n: int) -> dict[str, Any]:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    last_log = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    return {
        "n_train": n,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else math.nan,
        "final_loss": losses[-1] if losses else math.nan,
        "wall_time_s": seconds,
        "steps_per_s": trainer.state.global_step / seconds if seconds else math.nan,
        "trainable_params": trainable,
        "total_params": total,
        "world_size": world_size,
        "final_log": last_log,
    }


def _write_run_files(folder: Path, config: TrainConfig, train_items: Sequence[BehaviourItem],
                     metrics: dict[str, Any]) -> None:
    write_text(folder / "config.yaml", yaml.safe_dump(as_dict(config), sort_keys=False))
    write_json(folder / "subset_ids.json", {"dataset": config.dataset, "n": len(train_items), "seed": config.seed,
                                            "split_seed": config.split_seed, "ids": [i.id for i in train_items]})
    write_json(folder / "metrics.json", metrics)
