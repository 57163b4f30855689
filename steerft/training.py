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

import contextlib
import copy
import dataclasses
import math
import time
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftConfig, PeftModel

from . import tracking
from .adapter import adapter_kind, default_learning_rate
from .choices import TRAINING_METHODS
from .data import BehaviourItem, PromptFormatter, preference_rows, sft_rows
from .runconfig import ConfigError, checked_value
from .tuner import BelowSiteCache, ReplayCounts, SteerConfig, steer_site


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


def reference_defaults(method: str, peft_config: PeftConfig | None, settings: Mapping[str, Any],
                       n_rows: int) -> dict[str, Any]:
    """DPO with an adapter: the reference (the adapter-disabled model) is fixed for the run, so TRL
    computes its log-probs once over the training rows (`precompute_ref_log_probs`) instead of in
    every step, when the run sees more examples than there are rows. A shorter run (a fixed
    `max_steps` over many rows) keeps TRL's per-step references, which cover only the rows it trains
    on. Full fine-tuning keeps TRL's default (its reference is a frozen copy)."""
    if method != "dpo" or peft_config is None:
        return {}
    return {"precompute_ref_log_probs": _examples_seen(method, settings, n_rows) > n_rows}


def _examples_seen(method: str, settings: Mapping[str, Any], n_rows: int) -> float:
    """Training examples a run with these settings draws (one process): max_steps, or the epochs."""
    per_step = settings["per_device_train_batch_size"] * settings.get("gradient_accumulation_steps", 1)
    if settings.get("max_steps", -1) > 0:
        return settings["max_steps"] * per_step
    epochs = {f.name: f.default for f in dataclasses.fields(trainer_config_class(method))}["num_train_epochs"]
    return settings.get("num_train_epochs", epochs) * n_rows


def trainer_config_class(method: str) -> type:
    """TRL's config class of `method` (SFTConfig or DPOConfig)."""
    from trl import DPOConfig, SFTConfig

    if method not in TRAINING_METHODS:
        raise ConfigError(f"method={method!r} is not supported; allowed values: {', '.join(TRAINING_METHODS)}.")
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


def trainer_settings(method: str, peft_config: PeftConfig | None, args: Mapping[str, Any], n_rows: int,
                     report_to: Sequence[str] = ()) -> dict[str, Any]:
    """The SFTConfig/DPOConfig keyword arguments for `n_rows` training rows: steerft's defaults, then
    `args` as given.

    The learning rate defaults to `default_learning_rate` of the adapter kind.
    """
    trainer_config_class(method)
    settings = {**TRAINER_DEFAULTS, "learning_rate": default_learning_rate(adapter_kind(peft_config)),
                **_device_defaults(), **args, "report_to": list(report_to)}
    settings = {**reference_defaults(method, peft_config, settings, n_rows), **settings}
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
    settings = trainer_settings(method, peft_config, args, len(rows), report_to)
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
        trainer = SFTTrainer(args=trainer_args, **common)
    else:
        # With an adapter TRL disables it to get reference log-probs; only full fine-tuning needs a frozen copy.
        ref_model = None if peft_config is not None or isinstance(model, PeftModel) else _frozen_copy(model)
        trainer = DPOTrainer(args=trainer_args, ref_model=ref_model, **common)
    _warn_if_cut(row_counts(trainer, len(rows)), trainer_args.max_length)
    return trainer


def row_counts(trainer, given: int) -> dict[str, int]:
    """What TRL will actually train on: rows kept after its preparation, and how many `max_length` cuts.

    TRL drops rows that truncation leaves without a completion token and cuts the others silently;
    an SFT row that fills `max_length` exactly, or a preference row whose prompt plus longer answer
    exceed it, counts as cut.
    """
    dataset, limit = trainer.train_dataset, trainer.args.max_length
    if limit is None:
        return {"rows_given": given, "rows_trained": len(dataset), "rows_cut": 0}
    if "input_ids" in dataset.column_names:
        cut = sum(len(ids) >= limit for ids in dataset["input_ids"])
    else:
        answers = [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
        cut = sum(len(p) + a > limit for p, a in zip(dataset["prompt_ids"], answers))
    return {"rows_given": given, "rows_trained": len(dataset), "rows_cut": cut}


def _warn_if_cut(counts: dict[str, int], limit: int | None) -> None:
    if not counts["rows_trained"]:
        raise ConfigError(f"trainer.max_length={limit} leaves none of the {counts['rows_given']} training rows a "
                          "completion token to learn from; raise trainer.max_length.")
    dropped = counts["rows_given"] - counts["rows_trained"]
    if dropped or counts["rows_cut"]:
        warnings.warn(f"max_length={limit}: TRL dropped {dropped} of {counts['rows_given']} training rows (no "
                      f"completion token left) and cut {counts['rows_cut']} more to the limit; raise "
                      "trainer.max_length to train on whole rows.", stacklevel=3)


def _frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def epoch_steps(n_rows: int, *, epochs: float, min_steps: int, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `n_rows` rows, at least `min_steps` (tiny n still trains).

    This is the budget that grows with the training set: max(min_steps, ceil(epochs * n / batch)).
    """
    if n_rows < 1 or epochs <= 0 or min_steps < 0 or batch_size < 1:
        raise ValueError(f"epoch_steps needs n_rows >= 1, epochs > 0, min_steps >= 0, batch_size >= 1; got "
                         f"{n_rows}, {epochs}, {min_steps}, {batch_size}.")
    return max(min_steps, math.ceil(epochs * n_rows / batch_size))


@dataclass(frozen=True)
class TrainingBudget:
    """What one training run actually cost, as counted while it ran (not as configured).

    `steps` is the trainer's optimizer step count; `examples` the training rows its collator batched;
    `tokens_forward` every token position fed to the model (padding included: it costs compute),
    reference-model passes of DPO included; `tokens_backward` those of forward passes that built a
    graph for backward (a steering vector at block L back-propagates only above L, so for it this
    is an upper bound on backward work). `tokens_replayed` counts, among `tokens_forward`, the
    positions of passes that ran only the blocks from the steered one up, the blocks below served
    from the per-row cache (`BelowSiteCache`); 0 for other adapters. `tokens_prompt_reused` counts,
    among `tokens_forward`, the prompt positions that ran no block at all: a prompt run once for the
    rows of a pass that share it (a DPO pair's), or kept from an earlier pass (a steer adapter acting
    on completion positions only leaves prompts as the base model computes them).
    """

    steps: int
    examples: int
    tokens_forward: int
    tokens_backward: int
    tokens_replayed: int
    tokens_prompt_reused: int
    wall_time_s: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def counting_tokens(models: Sequence[Any]) -> Iterator[dict[str, int]]:
    """Count the token positions (rows x columns) of each call of the given models while the block runs.

    Counted where the model is called, not at its embeddings: a pass that reuses kept prompts
    (`BelowSiteCache`) embeds only the rest of each row, yet costs the caller the whole row.
    Yields {"forward": ..., "backward": ...}; a pass counts as backward when autograd is recording.
    """
    counts = {"forward": 0, "backward": 0}

    def hook(module, args, kwargs) -> None:
        tokens = kwargs.get("input_ids", args[0] if args else None)
        tokens = kwargs.get("inputs_embeds") if tokens is None else tokens
        positions = tokens.shape[0] * tokens.shape[1]
        counts["forward"] += positions
        if torch.is_grad_enabled():
            counts["backward"] += positions

    distinct = {id(model): model for model in models if model is not None}
    handles = [model.register_forward_pre_hook(hook, with_kwargs=True) for model in distinct.values()]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _counting_steps(training_step, counts: dict[str, int], rows_per_example: int):
    """Count the examples of every micro-batch the trainer trains on (the collator is called ahead of
    use by Accelerate's prefetching, so counting there would include a batch never trained on).
    TRL's DPO collator stacks chosen and rejected rows: two rows per example."""

    def step(model, inputs, *args, **kwargs):
        counts["examples"] += len(inputs["input_ids"]) // rows_per_example
        return training_step(model, inputs, *args, **kwargs)

    return step


@contextlib.contextmanager
def fused_head_on_labels_only() -> Iterator[None]:
    """Let TRL's fused LM head score only the labelled positions on CPU too, while the block runs.

    TRL's DPO (and KTO, GRPO) trainers compute per-token log-probs with a fused LM head that skips
    unlabelled positions on CUDA/XPU but scores every position elsewhere, so that a compiler (Neuron)
    sees fixed tile shapes. Eager CPU compiles nothing, and on preference rows most positions are
    the prompt's: on the bundled dialogues rows (prompts ~165, replies ~45 tokens) whole DPO runs
    took 1.6x less time with the head on the labelled positions, for steer and LoRA alike
    (`scripts/bench_train.py --whole-runs --head`). TRL picks the path by asking `_use_triton(device)` in
    `trl.trainer.utils`; inside this block that answer is yes for CPU tensors, and TRL's own
    labelled-only path runs (same log-probs: unlabelled positions are zero either way). Nothing
    happens if a TRL version no longer has that switch (a test names it, so an upgrade that moves
    it is noticed).
    """
    from trl.trainer import utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or decide(device)
    try:
        yield
    finally:
        trl_utils._use_triton = decide


@contextlib.contextmanager
def training_shortcuts(model, peft_config: PeftConfig | None, *,
                       cache_below_site: bool = True) -> Iterator[ReplayCounts]:
    """The exact shortcuts every steerft training run takes, around building the trainer and training:
    a steer adapter at block L >= 1 runs blocks 0..L-1 once per row (`BelowSiteCache`; the blocks
    below cannot change) and a prompt once for the rows of a pass that share it (once per run when
    it acts on completion positions only: prompts stay the base model's), and TRL's fused LM head
    scores labelled positions only on CPU (`fused_head_on_labels_only`). Yields the cache's counts
    (all zero without a cache)."""
    site = steer_site(model, peft_config) if cache_below_site else None
    cache = BelowSiteCache(model, *site) if site is not None else contextlib.nullcontext()
    with cache, fused_head_on_labels_only():
        yield cache.counts if isinstance(cache, BelowSiteCache) else ReplayCounts()


def fit_measured(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: Mapping[str, Any],
                 callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = (), cache_below_site: bool = True):
    """`fit`, also returning the `TrainingBudget` the run actually used.

    Building the trainer is counted too: DPO with an adapter computes its reference log-probs there
    (`reference_defaults`), once, as forward-only passes; with a steer adapter those passes also
    fill the cache of the states entering the steered block, so training replays from the start.
    """
    started = time.perf_counter()
    with training_shortcuts(model, peft_config, cache_below_site=cache_below_site) as replayed:
        with counting_tokens([model]) as setup:
            trainer = build_trainer(model, tokenizer, rows, method=method, peft_config=peft_config, args=args,
                                    callbacks=callbacks, report_to=report_to)
        seen = {"examples": 0}
        trainer.training_step = _counting_steps(trainer.training_step, seen, 2 if method == "dpo" else 1)
        with counting_tokens([trainer.model, getattr(trainer, "ref_model", None)]) as tokens:
            trainer.train()
    budget = TrainingBudget(steps=trainer.state.global_step, examples=seen["examples"],
                            tokens_forward=setup["forward"] + tokens["forward"],
                            tokens_backward=setup["backward"] + tokens["backward"],
                            tokens_replayed=replayed.replayed_tokens,
                            tokens_prompt_reused=replayed.prompt_tokens_reused,
                            wall_time_s=time.perf_counter() - started)
    return trainer.model, budget


def fit(model, tokenizer, rows, *, method: str, peft_config: PeftConfig | None, args: Mapping[str, Any],
        callbacks: Sequence[Any] | None = None, report_to: Sequence[str] = (), cache_below_site: bool = True):
    """Train `model` on `rows` with SFT or DPO and return the trained model (a PeftModel unless full).

    `rows` is a datasets.Dataset from `training_rows`. `peft_config` goes to TRL unchanged; `args`
    are SFTConfig/DPOConfig keys over `TRAINER_DEFAULTS`. `report_to=tracking.report_to(True)` logs
    into the active W&B run. A steer adapter at block L trains without re-running blocks 0..L-1 on
    rows already seen (`training_shortcuts`; exact); `cache_below_site=False` runs every block every step.
    """
    return fit_measured(model, tokenizer, rows, method=method, peft_config=peft_config, args=args,
                        callbacks=callbacks, report_to=report_to, cache_below_site=cache_below_site)[0]
