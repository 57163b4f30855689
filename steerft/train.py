"""SFT and DPO with TRL for every adapter kind: a steering vector, LoRA, any PEFT config, or full weights.

The same code path trains all of them so that comparisons differ only in the adapter: the data
come from one behaviour dataset (`steerft.data`), the trainer is TRL's, and the adapter travels as
`peft_config=`, unchanged. For DPO that means TRL uses the adapter-disabled model as the reference,
so no second model copy is held (full fine-tuning alone needs one).

- `fit(...)` trains a model in-process and returns it (the study runner calls it per grid point).
- `run_training(TrainConfig)` is the job behind `steerft train` and `recipes/{sft,dpo}.py`: it
  checks the config, trains, and writes a run folder (adapter, config.yaml, subset_ids.json,
  metrics.json) atomically, from the main process only when launched with Accelerate.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import LoraConfig, PeftConfig, PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils.peft_types import PeftType
from safetensors.torch import load_file

from . import tracking
from .data import (
    BehaviourDataError,
    BehaviourItem,
    PromptFormatter,
    contrast_pairs,
    load_behaviour,
    preference_rows,
    sft_rows,
    split_items,
    training_subset,
)
from .io import atomic_dir, write_json, write_text
from .metrics import preference
from .models import DEFAULT_MODEL, ModelNotAvailableError, load_model
from .runconfig import ConfigError, as_dict, build, load_config
from .tuner import SteerConfig, resolve_layers
from .tuner.arch import architecture_of, decoder_blocks, hidden_size

METHODS = ("sft", "dpo")
ADAPTERS = ("steer", "lora", "full")
STEER_INITS = ("zeros", "random")

# A steering vector is a handful of parameters in activation units and needs a far larger step than
# low-rank or full weight updates; adapters given as a `peft` dict use the LoRA rate.
DEFAULT_LEARNING_RATE = {"steer": 1e-1, "lora": 1e-3, "full": 1e-5}


@dataclass
class TrainConfig:
    """Settings of `steerft train` and the recipes (YAML keys = field names)."""

    model: str = DEFAULT_MODEL
    dataset: str = "sentiment"
    fields: dict | None = None  # column renames, as for load_behaviour
    method: str = "sft"  # sft | dpo
    adapter: str = "steer"  # steer | lora | full
    peft: dict | None = None  # any PEFT config as a mapping with `peft_type`; overrides `adapter`
    # steer
    layers: list[int] = field(default_factory=lambda: [14])
    positions: str = "all"  # all | prompt | completion
    multiplier: float = 1.0
    init: str = "zeros"  # zeros | random | path of a saved steer adapter (e.g. an extracted vector)
    # lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # data
    n: int | None = None  # training items; None = the whole training split
    seed: int = 0  # training subset and trainer seed
    split_seed: int = 0  # keep fixed across runs: it fixes the test split
    val_frac: float = 0.2
    test_frac: float = 0.2
    # optimisation
    learning_rate: float | None = None  # None = DEFAULT_LEARNING_RATE of the adapter kind
    num_epochs: float = 3.0
    max_steps: int | None = None  # overrides num_epochs when set
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    beta: float = 0.1  # DPO
    max_length: int | None = 256
    gradient_checkpointing: bool = False  # keep off for steer: it forces backward through every block
    logging_steps: int = 1
    # output and tracking
    output_dir: str = "runs/train"  # the run folder is output_dir/run_name
    run_name: str | None = None  # None = derived from method, adapter, n and seed
    eval_items: int = 32  # validation items scored for metrics.json; 0 skips the check
    wandb: bool = True
    wandb_project: str = "steerft"
    wandb_group: str | None = None
    threads: int | None = None  # torch.set_num_threads


# --------------------------------------------------------------------------- adapter configs


def adapter_config(config: TrainConfig) -> PeftConfig | None:
    """The PEFT config the trainer receives: steer, LoRA, one given as a `peft` mapping, or None (full)."""
    if config.peft is not None:
        return _peft_from_mapping(config.peft)
    if config.adapter == "steer":
        init = config.init if config.init in STEER_INITS else load_steer_vectors(config.init)
        try:
            return SteerConfig(layers=list(config.layers), positions=config.positions,
                               multiplier=config.multiplier, init=init)
        except ValueError as err:
            raise ConfigError(f"steer adapter (layers, positions, multiplier, init): {err}") from err
    if config.adapter == "lora":
        return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    if config.adapter == "full":
        return None
    raise ConfigError(f"adapter={config.adapter!r} is not supported; allowed values: {', '.join(ADAPTERS)}.")


def _peft_from_mapping(mapping: dict) -> PeftConfig:
    """Any registered PEFT method from YAML: `{peft_type: LORA, r: 16, target_modules: [q_proj]}`."""
    options = dict(mapping)
    name = str(options.pop("peft_type", "")).upper()
    if name not in PeftType.__members__ or PeftType[name] not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(m for m in PeftType.__members__ if PeftType[m] in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise ConfigError(f"peft.peft_type={mapping.get('peft_type')!r} is not a PEFT method; allowed values: {known}.")
    options.setdefault("task_type", "CAUSAL_LM")
    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name]](**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"peft: {err}") from err


def load_steer_vectors(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """The vectors a saved steer adapter applies (vector times its multiplier), keyed by block.

    Read from the files directly, so that a run can start from an extracted vector without
    loading a model twice.
    """
    folder = Path(path)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not (config_file.is_file() and weights_file.is_file()):
        raise ConfigError(f"init={str(path)!r} is neither one of {', '.join(STEER_INITS)} nor a saved steer adapter "
                          "folder (with adapter_config.json and adapter_model.safetensors).")
    saved = json.loads(config_file.read_text())
    if not str(saved.get("peft_type", "")).upper().startswith("STEER") or saved.get("operator", "add") != "add":
        raise ConfigError(f"init={str(path)!r} holds a {saved.get('peft_type')} adapter (operator "
                          f"{saved.get('operator')!r}); starting vectors must come from an additive steer adapter.")
    multiplier = float(saved.get("multiplier", 1.0))
    vectors = {}
    for key, tensor in load_file(weights_file).items():  # e.g. base_model.model.model.layers.14.steer.vector.weight
        parts = key.split(".")
        if "steer" in parts:
            vectors[int(parts[parts.index("steer") - 1])] = multiplier * tensor.float()
    return vectors


def adapter_kind(peft_config: PeftConfig | None) -> str:
    """Short name of what is trained: steer, lora, full, or the PEFT method's name."""
    if peft_config is None:
        return "full"
    if isinstance(peft_config, SteerConfig):
        return "steer"
    return str(peft_config.peft_type.name).lower()


# --------------------------------------------------------------------------- training


def training_rows(method: str, items: Sequence[BehaviourItem], fmt: PromptFormatter):
    """SFT rows (prompt -> matching) or preference rows (chosen = matching, rejected = not)."""
    return sft_rows(items, fmt) if method == "sft" else preference_rows(items, fmt)


def _device_defaults() -> dict[str, Any]:
    """bf16 only where the hardware has it; on CPU stay in fp32 and tell Accelerate so."""
    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": False}


def _checkpointing_key() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def build_trainer(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: dict[str, Any],
                  callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = ()):
    """A TRL SFTTrainer or DPOTrainer with CPU-friendly defaults; `args` are SFTConfig/DPOConfig keys.

    The defaults turn off what TRL turns on for large GPU runs: gradient checkpointing (it makes
    backward run through every block, where a steering vector at block L needs it only above L),
    bf16 without hardware support, dataloader workers, and checkpoint saving (callers save).
    """
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not supported; allowed values: {', '.join(METHODS)}.")
    if "wandb" in report_to:
        tracking.configure(True)  # before TRL's WandbCallback can start a run that waits for a network
    # Every trainable parameter of a steer, LoRA or full model takes part in each forward, so DDP need
    # not search the graph for unused ones.
    settings = {"save_strategy": "no", "dataloader_num_workers": 0, "ddp_find_unused_parameters": False,
                **_device_defaults(), **args, "report_to": list(report_to)}
    checkpointing = any([settings.pop("gradient_checkpointing", False), settings.pop("activation_checkpointing", False)])
    settings[_checkpointing_key()] = checkpointing
    if isinstance(peft_config, SteerConfig) and checkpointing:
        warnings.warn("gradient_checkpointing=True with a steer adapter makes backward run through every block; "
                      "a vector at block L needs it only above L. Set gradient_checkpointing=False unless memory "
                      "forces it.", stacklevel=2)
    common = dict(model=model, train_dataset=rows, processing_class=tokenizer, peft_config=peft_config,
                  callbacks=list(callbacks or []))
    if method == "sft":
        return SFTTrainer(args=SFTConfig(**settings), **common)
    # With an adapter TRL disables it to get reference log-probs; only full fine-tuning needs a frozen copy.
    ref_model = None if peft_config is not None or isinstance(model, PeftModel) else _frozen_copy(model)
    return DPOTrainer(args=DPOConfig(**settings), ref_model=ref_model, **common)


def _frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def fit(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: dict[str, Any],
        callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = ()):
    """Train `model` on `rows` with SFT or DPO and return the trained model (a PeftModel unless full).

    `rows` is a datasets.Dataset from `steerft.data.sft_rows` / `preference_rows`. `peft_config` goes
    to TRL unchanged; `args` are SFTConfig/DPOConfig keys (output_dir, learning_rate, beta, ...) over
    the defaults of `build_trainer`. `report_to=tracking.report_to(True)` logs into the active W&B run.
    """
    trainer = build_trainer(model, tokenizer, rows, method=method, peft_config=peft_config, args=args,
                            callbacks=callbacks, report_to=report_to)
    trainer.train()
    return trainer.model


def trainer_args(config: TrainConfig, output_dir: str | os.PathLike) -> dict[str, Any]:
    """SFTConfig/DPOConfig keys for a TrainConfig (whose learning_rate and run_name are resolved)."""
    args = dict(
        output_dir=str(output_dir),
        run_name=config.run_name,
        seed=config.seed,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
    )
    if config.method == "dpo":
        args["beta"] = config.beta
    return args


# --------------------------------------------------------------------------- checks


_POSITIVE = ("batch_size", "gradient_accumulation_steps", "num_epochs", "beta", "logging_steps", "lora_r", "lora_alpha")


def check_config(config: TrainConfig) -> TrainConfig:
    """Refuse a bad config before anything is loaded, naming the key and the fix."""
    config = build(TrainConfig, as_dict(config), where="train config")  # types, also for configs built in code
    if config.method not in METHODS:
        raise ConfigError(f"method={config.method!r} is not supported; allowed values: {', '.join(METHODS)}.")
    if config.peft is None and config.adapter not in ADAPTERS:
        raise ConfigError(f"adapter={config.adapter!r} is not supported; allowed values: {', '.join(ADAPTERS)} "
                          "(or give any PEFT config as a `peft:` mapping).")
    for key in _POSITIVE:
        if not getattr(config, key) > 0:
            raise ConfigError(f"{key}={getattr(config, key)!r} must be positive.")
    for key in ("n", "max_steps", "threads", "max_length", "learning_rate"):
        value = getattr(config, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={value!r} must be positive (or null for the default).")
    if config.eval_items < 0:
        raise ConfigError(f"eval_items={config.eval_items} must be >= 0 (0 skips the held-out check).")
    return config


def _check_model_fit(peft_config: PeftConfig | None, model) -> None:
    """Layers and given vectors must fit the loaded model; checked before any training step."""
    if not isinstance(peft_config, SteerConfig):
        return
    n_blocks = len(decoder_blocks(model, architecture_of(model, peft_config.blocks_path)))
    try:
        resolve_layers(peft_config.layers, n_blocks)
    except ValueError as err:
        raise ConfigError(f"layers={peft_config.layers}: the model has {n_blocks} blocks, so layers must lie in "
                          f"{-n_blocks}..{n_blocks - 1}.") from err
    width = hidden_size(model)
    for layer, vector in peft_config.given_vectors.items():
        if vector.shape != (width,):
            raise ConfigError(f"init: the vector for layer {layer} has {vector.shape[0]} entries but the model's "
                              f"hidden size is {width}; it was made for another model.")


def _items(config: TrainConfig) -> tuple[list[BehaviourItem], list[BehaviourItem]]:
    """The training subset and the validation split, with data errors reported against their key."""
    try:
        dataset = load_behaviour(config.dataset, fields=config.fields)
        splits = split_items(dataset.items, config.split_seed, config.val_frac, config.test_frac)
    except BehaviourDataError as err:
        raise ConfigError(f"dataset={config.dataset!r}: {err}") from err
    n = len(splits.train) if config.n is None else config.n
    if n > len(splits.train):
        raise ConfigError(f"n={n} is larger than the training split of {config.dataset!r} ({len(splits.train)} items "
                          f"of {len(dataset)}); lower n, or lower val_frac/test_frac.")
    return training_subset(splits.train, n, config.seed), splits.val


def default_run_name(config: TrainConfig, kind: str, n: int) -> str:
    """e.g. sft-steer-L14-n32-s0, dpo-lora-r8-n32-s0: unique across a study's grid axes."""
    detail = {"steer": "-L" + "_".join(map(str, config.layers)), "lora": f"-r{config.lora_r}"}.get(kind, "")
    if config.peft is not None:
        detail = ""
    return f"{config.method}-{kind}{detail}-n{n}-s{config.seed}"


# --------------------------------------------------------------------------- the job


def _is_main_process() -> bool:
    """Rank 0 of an Accelerate/torchrun launch, known before the trainer sets Accelerate up."""
    return int(os.environ.get("RANK", "0")) == 0


def run_training(config: TrainConfig) -> Path:
    """Check, train, and write the run folder; return its path (the same on every process)."""
    config, peft_config, train_items, val_items = _resolve(config)
    model, tokenizer = _load(config.model)
    _check_model_fit(peft_config, model)
    run_dir = Path(config.output_dir) / config.run_name
    main = _is_main_process()
    if main:
        tracking.init_run(config.wandb_project, config.run_name, config.wandb_group, as_dict(config), "train",
                          enabled=config.wandb)
    fmt = PromptFormatter(tokenizer)
    try:
        trainer = build_trainer(model, tokenizer, training_rows(config.method, train_items, fmt), method=config.method,
                                peft_config=peft_config, args=trainer_args(config, run_dir),
                                report_to=tracking.report_to(config.wandb))
        metrics = _train(trainer, config, adapter_kind(peft_config), len(train_items), announce=main)
        metrics |= _heldout(trainer, tokenizer, val_items[: config.eval_items], fmt)
        _save(trainer, run_dir, config, train_items, metrics, main)
    finally:
        tracking.finish()
    return run_dir


def _resolve(config: TrainConfig) -> tuple[TrainConfig, PeftConfig | None, list[BehaviourItem], list[BehaviourItem]]:
    """Everything that needs no model: checks, seeds, adapter config, data; the config with defaults filled in."""
    config = check_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    from transformers import set_seed

    set_seed(config.seed)
    peft_config = adapter_config(config)
    kind = adapter_kind(peft_config)
    train_items, val_items = _items(config)
    config = dataclasses.replace(
        config,
        n=len(train_items),
        learning_rate=config.learning_rate or DEFAULT_LEARNING_RATE.get(kind, DEFAULT_LEARNING_RATE["lora"]),
        run_name=config.run_name or default_run_name(config, kind, len(train_items)),
    )
    return config, peft_config, train_items, val_items


def _load(name_or_path: str):
    try:
        return load_model(name_or_path)
    except (OSError, ValueError, ModelNotAvailableError) as err:
        raise ConfigError(f"model={name_or_path!r} could not be loaded: {err}") from err


def _train(trainer, config: TrainConfig, kind: str, n: int, *, announce: bool) -> dict[str, Any]:
    """Train, saying first what runs where (the world size is Accelerate's, known once the trainer exists)."""
    world_size = trainer.accelerator.num_processes
    trainable, total = _parameter_counts(trainer.model)
    if announce:
        print(f"steerft train: {config.run_name}: {config.method} with a {kind} adapter ({trainable:,} trainable "
              f"parameters) on {n} items, world size {world_size} ({trainer.accelerator.device})", flush=True)
    started = time.perf_counter()
    result = trainer.train()
    return _metrics(trainer, result, time.perf_counter() - started, world_size, trainable, total, n)


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


# --------------------------------------------------------------------------- recipes


def recipe_main(method: str, argv: Sequence[str] | None = None) -> int:
    """Command line of recipes/sft.py and recipes/dpo.py: a YAML config, key=value overrides, two shortcuts."""
    parser = argparse.ArgumentParser(description=f"{method.upper()} with a steer, LoRA or full adapter (TRL).")
    parser.add_argument("--config", "-c", help="YAML config (keys of steerft.train.TrainConfig)")
    parser.add_argument("--adapter", choices=ADAPTERS, help="shortcut for adapter=...")
    parser.add_argument("--no-wandb", action="store_true", help="shortcut for wandb=false")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    args = parser.parse_args(argv)
    try:
        data = load_config(args.config, args.overrides)
        if data.get("method", method) != method:
            raise ConfigError(f"this recipe trains {method} but the config sets method={data['method']!r}; "
                              f"use recipes/{data['method']}.py or drop the key.")
        data["method"] = method
        if args.adapter:
            data["adapter"] = args.adapter
        if args.no_wandb:
            data["wandb"] = False
        run_training(build(TrainConfig, data, where=args.config or "overrides"))
    except ConfigError as err:
        print(f"{method}: {err}", file=sys.stderr)
        return 2
    return 0
