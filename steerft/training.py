"""SFT and DPO with TRL for every adapter kind: a steering vector, LoRA, any PEFT config, or full weights.

The same code path trains all of them so that comparisons differ only in the adapter: the data
come from one behaviour dataset (`steerft.data`), the trainer is TRL's, and the adapter travels as
`peft_config=`, unchanged. For DPO that means TRL uses the adapter-disabled model as the reference,
so no second model copy is held (full fine-tuning alone needs one), and its log-probs are computed
once per run (`reference_defaults`).

Trainer settings are TRL's own `SFTConfig` / `DPOConfig` keys, passed as given on top of
steerft's defaults (`build_trainer`); the `trainer:` section of a config is such a mapping.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from peft import PeftConfig, PeftModel

from . import tracking
from .adapter import adapter_kind, default_learning_rate
from .data import BehaviourItem, PromptFormatter, preference_rows, sft_rows
from .runconfig import ConfigError, checked_value
from .tuner import SteerConfig

METHODS = ("sft", "dpo")

# What steerft changes in TRL's defaults, which suit large GPU runs: gradient checkpointing off (it
# makes backward run through every block, where a steering vector at block L needs it only above L),
# short rows and small batches for small models, a log line per step, no checkpoints (callers save),
# no dataloader workers. Every trainable parameter of a steer, LoRA or full model takes part in each
# forward, so DDP need not search the graph for unused ones.
TRAINER_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "max_length": 256,
    "logging_steps": 1,
    "gradient_checkpointing": False,
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "ddp_find_unused_parameters": False,
}


def reference_defaults(method: str, peft_config: PeftConfig | None) -> dict[str, Any]:
    """DPO with an adapter: the reference (the adapter-disabled model) is fixed for the run, so TRL
    computes its log-probs once over the training rows (`precompute_ref_log_probs`) instead of in
    every step of every epoch. Full fine-tuning keeps TRL's default (its reference is a frozen copy)."""
    return {"precompute_ref_log_probs": True} if method == "dpo" and peft_config is not None else {}


def trainer_config_class(method: str) -> type:
    """TRL's config class of `method` (SFTConfig or DPOConfig)."""
    from trl import DPOConfig, SFTConfig

    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not supported; allowed values: {', '.join(METHODS)}.")
    return SFTConfig if method == "sft" else DPOConfig


def check_trainer(settings: Mapping[str, Any], methods: Sequence[str], where: str = "trainer") -> dict[str, Any]:
    """`settings` checked against `methods`' TRL configs before anything is loaded: every key a
    setting of one of them, every value of its type (YAML's `1e-3` string read as a float)."""
    hints: dict[str, Any] = {}
    for method in methods:
        hints = {**typing.get_type_hints(trainer_config_class(method)), **hints}
    classes = " / ".join(trainer_config_class(m).__name__ for m in methods)
    checked = {}
    for key, value in settings.items():
        if key not in hints or key == "report_to":
            hint = " (set `wandb:` instead)" if key == "report_to" else ""
            raise ConfigError(f"{where}.{key} is not a setting of TRL's {classes}{hint}; see "
                              "https://huggingface.co/docs/trl for the keys.")
        checked[key] = checked_value(value, hints[key], f"{where}.{key}")
    return checked


def for_method(settings: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The keys of `settings` that `method`'s TRL config has (e.g. `beta` only for DPO)."""
    names = {f.name for f in dataclasses.fields(trainer_config_class(method))}
    return {key: value for key, value in settings.items() if key in names}


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


def trainer_settings(method: str, peft_config: PeftConfig | None, args: Mapping[str, Any],
                     report_to: Sequence[str] = ()) -> dict[str, Any]:
    """The SFTConfig/DPOConfig keyword arguments: steerft's defaults, then `args` as given.

    The learning rate defaults to `default_learning_rate` of the adapter kind.
    """
    trainer_config_class(method)
    settings = {**TRAINER_DEFAULTS, **reference_defaults(method, peft_config),
                "learning_rate": default_learning_rate(adapter_kind(peft_config)),
                **_device_defaults(), **args, "report_to": list(report_to)}
    checkpointing = any([settings.pop("gradient_checkpointing", False), settings.pop("activation_checkpointing", False)])
    settings[_checkpointing_key()] = checkpointing
    return settings


def build_trainer(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: Mapping[str, Any],
                  callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = ()):
    """A TRL SFTTrainer or DPOTrainer; `args` are SFTConfig/DPOConfig keys over `TRAINER_DEFAULTS`."""
    from trl import DPOTrainer, SFTTrainer

    config_class = trainer_config_class(method)
    if "wandb" in report_to:
        tracking.configure(True)  # before TRL's WandbCallback can start a run that waits for a network
    settings = trainer_settings(method, peft_config, args, report_to)
    if isinstance(peft_config, SteerConfig) and settings[_checkpointing_key()]:
        warnings.warn("gradient_checkpointing=True with a steer adapter makes backward run through every block; "
                      "a vector at block L needs it only above L. Set gradient_checkpointing=False unless memory "
                      "forces it.", stacklevel=2)
    try:
        trainer_args = config_class(**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer: TRL's {config_class.__name__} refused the settings: {err}") from err
    common = dict(model=model, train_dataset=rows, processing_class=tokenizer, peft_config=peft_config,
                  callbacks=list(callbacks or []))
    if method == "sft":
        return SFTTrainer(args=trainer_args, **common)
    # With an adapter TRL disables it to get reference log-probs; only full fine-tuning needs a frozen copy.
    ref_model = None if peft_config is not None or isinstance(model, PeftModel) else _frozen_copy(model)
    return DPOTrainer(args=trainer_args, ref_model=ref_model, **common)


def _frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def fit(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: Mapping[str, Any],
        callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = ()):
    """Train `model` on `rows` with SFT or DPO and return the trained model (a PeftModel unless full).

    `rows` is a datasets.Dataset from `training_rows`. `peft_config` goes to TRL unchanged; `args`
    are SFTConfig/DPOConfig keys over `TRAINER_DEFAULTS`. `report_to=tracking.report_to(True)` logs
    into the active W&B run.
    """
    trainer = build_trainer(model, tokenizer, rows, method=method, peft_config=peft_config, args=args,
                            callbacks=callbacks, report_to=report_to)
    trainer.train()
    return trainer.model
