"""The settings of a study: one YAML file describes the whole n x method x seed grid.

Everything is checked when the config is built, before a model or dataset is loaded, so a typo
in a method name or an empty grid fails in a second instead of an hour into a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter import KINDS as ADAPTER_KINDS
from ..adapter import AdapterSpec, default_learning_rate
from ..models import DEFAULT_MODEL
from ..runconfig import ConfigError, as_dict
from ..training import METHODS as TRAINING_METHODS
from ..training import TRAINER_DEFAULTS, check_trainer, for_method
from ..tuner import POSITIONS
from .methods import METHODS
from .select import SIDE_EFFECTS

SELECT_BY = ("mean_margin", "accuracy")

DEFAULT_METHODS = ["none", "random", "caa", "steer-sft", "lora-sft", "system-prompt"]

# Keys that say how a study runs or reports, not what it measures: a finished point stays valid
# when they change, and the grid axes may grow (more n, seeds or methods) on a resumed study.
NOT_IN_FINGERPRINT = ("name", "methods", "n", "seeds", "output_dir", "wandb", "wandb_project", "threads",
                      "workers")


DEFAULT_SELECT_CAPS = {"kl": 1.0, "delta_ce": 0.5}  # nats: KL per token on neutral prompts, general-text CE

STUDY_TRAINER_DEFAULTS = {"max_steps": 16}  # a fixed budget at every n (max_steps: -1 trains num_train_epochs)


@dataclass
class TrainSettings:
    """How the trained methods (steer-*, lora-*, full-sft) are trained; the same for every n.

    `adapter` and `trainer` are the sections of a train config: the method name sets the adapter
    kind, a steering vector is trained at each of `adapter.layers` (each is tried), and `trainer`
    holds TRL's SFTConfig / DPOConfig keys (each method gets the keys its config has).
    """

    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    trainer: dict = field(default_factory=dict)  # over STUDY_TRAINER_DEFAULTS and steerft.training's
    # learning rate per adapter kind (steer, lora, full) where `trainer.learning_rate` is unset;
    # a kind not named here gets steerft.adapter.default_learning_rate
    learning_rates: dict[str, float] = field(default_factory=dict)
    multipliers: list[float] = field(default_factory=lambda: [1.0, 2.0])  # inference scales of trained vectors

    def trainer_args(self, method: str, kind: str) -> dict:
        """The TRL settings of one trained method (`method` sft or dpo, adapter `kind`)."""
        learning_rate = self.learning_rates.get(kind, default_learning_rate(kind))
        return {**STUDY_TRAINER_DEFAULTS, "learning_rate": learning_rate, **for_method(self.trainer, method)}

    def budget(self) -> str:
        """The training budget in words, for the report."""
        trainer = {**TRAINER_DEFAULTS, **STUDY_TRAINER_DEFAULTS, **self.trainer}
        steps, batch = trainer["max_steps"], trainer["per_device_train_batch_size"]
        spent = f"{steps} optimiser steps" if steps > 0 else f"{trainer.get('num_train_epochs', 3.0):g} epochs"
        return f"{spent}, batch {batch}"


@dataclass
class EvalSettings:
    """How much held-out data each point is scored on (caps bound CPU time; null: all)."""

    test_items: int | None = 40  # the fixed test split every method is scored on
    val_items: int | None = 48  # validation items for choosing layer and multiplier (paired comparison needs many)
    neutral_prompts: int | None = 16  # KL to the base model
    general_texts: int | None = 8  # delta cross-entropy
    generation_prompts: int | None = 8
    reference_tokens: int = 16  # length of the base model's continuations the KL runs along
    generation_tokens: int = 32
    batch_size: int = 16


@dataclass
class StudyConfig:
    """Settings of `steerft study` (YAML keys = field names; `train.*` and `eval.*` are sections)."""

    name: str = "study"  # W&B group and report title
    model: str = DEFAULT_MODEL
    dataset: str = "sentiment"
    fields: dict | None = None  # column renames, as for load_behaviour
    system_prompt: str | None = None  # for system-prompt methods; null: the dataset's own
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  # `none` is always added
    n: list[int] = field(default_factory=lambda: [2, 8, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 0  # fixes the val/test split; keep it fixed across a study
    val_frac: float = 0.2
    test_frac: float = 0.2
    layers: list[int] = field(default_factory=lambda: [8, 14, 20])  # candidate layers of extracted vectors
    multipliers: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])  # candidate scales of extracted vectors
    select_by: str = "mean_margin"  # validation criterion for layer and multiplier
    positions: str = "all"  # tokens steered by every vector method
    max_demonstrations: int = 8  # few-shot: at most this many of the n items as demonstrations
    # --- honest selection and data hygiene (steerft.study.select, context; README "Config keys")
    # side-effect budget of layer/multiplier selection: a candidate over a cap cannot win ({}: no caps)
    select_caps: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SELECT_CAPS))
    max_prompt_tokens: int | None = None  # drop items whose formatted prompt is longer (counted in the report)
    max_completion_tokens: int | None = None  # drop items with a longer completion (counted in the report)
    chat_template: str = "auto"  # auto | none | <path to a Jinja template>; see context.prompt_format
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    output_dir: str = "runs/study"
    wandb: bool = True
    wandb_project: str = "steerft"
    threads: int | None = None  # torch.set_num_threads; null: torch's default (cores / workers with workers > 1)
    workers: int = 1  # local processes sharing the grid (on CPU, workers 2 x threads 1 uses two cores best)

    def __post_init__(self) -> None:
        check(self)


def check(config: StudyConfig) -> None:
    """Refuse a config that cannot run, naming the key and the fix."""
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r}; allowed values: {', '.join(METHODS)}.")
    for key in ("methods", "n", "seeds", "layers", "multipliers"):
        _non_empty_unique(key, getattr(config, key))
    _non_empty_unique("train.adapter.layers", config.train.adapter.layers)
    _non_empty_unique("train.multipliers", config.train.multipliers)
    if min(config.n) < 1:
        raise ConfigError(f"n={config.n}: every training-set size must be >= 1 (n=0 is the `none` baseline).")
    for name in config.methods:
        if min(config.n) < METHODS[name].min_n:
            raise ConfigError(f"n={config.n}: method {name!r} needs n >= {METHODS[name].min_n}; "
                              f"drop the smaller n or the method.")
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"select_by={config.select_by!r}; allowed values: {', '.join(SELECT_BY)}.")
    if config.positions not in POSITIONS:
        raise ConfigError(f"positions={config.positions!r}; allowed values: {', '.join(POSITIONS)}.")
    if config.train.adapter.positions not in ("all", config.positions):
        raise ConfigError(f"train.adapter.positions={config.train.adapter.positions!r}: a study steers the same "
                          "tokens with every vector method; set `positions:` at the top level only.")
    if config.train.adapter.peft is not None or config.train.adapter.kind != AdapterSpec.kind:
        raise ConfigError("train.adapter.kind / train.adapter.peft: a study's method names set the adapter kind "
                          "(steer-*, lora-*, full-sft); drop the key.")
    config.train.trainer = check_trainer(config.train.trainer, TRAINING_METHODS, where="train.trainer")
    for kind, rate in config.train.learning_rates.items():
        if kind not in ADAPTER_KINDS:
            raise ConfigError(f"train.learning_rates.{kind}: not an adapter kind; allowed keys: "
                              f"{', '.join(ADAPTER_KINDS)}.")
        if not rate > 0:
            raise ConfigError(f"train.learning_rates.{kind}={rate!r} must be positive.")
    _positive(config, ("max_demonstrations", "threads", "workers", "max_prompt_tokens", "max_completion_tokens"))
    _check_honesty_keys(config)
    _positive(config.eval, tuple(f.name for f in dataclasses.fields(EvalSettings)), "eval.")


def _check_honesty_keys(config: StudyConfig) -> None:
    if not isinstance(config.select_caps, dict):
        raise ConfigError(f"select_caps={config.select_caps!r} must be a mapping, e.g. {DEFAULT_SELECT_CAPS}.")
    for key, cap in config.select_caps.items():
        if key not in SIDE_EFFECTS:
            raise ConfigError(f"select_caps.{key}: not a side effect; allowed keys: {', '.join(SIDE_EFFECTS)}.")
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
            raise ConfigError(f"select_caps.{key}={cap!r} must be a positive number (drop the key for no cap).")
    if config.chat_template not in ("auto", "none") and not Path(config.chat_template).is_file():
        raise ConfigError(f"chat_template={config.chat_template!r}: use auto, none or the path of a Jinja template "
                          "file; no such file.")


def _non_empty_unique(key: str, values: list) -> None:
    if not values:
        raise ConfigError(f"{key} is empty: the study grid needs at least one value (e.g. {key}: "
                          f"{_EXAMPLES.get(key, '[...]')}).")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}={values} repeats a value; list each once.")


_EXAMPLES = {"n": "[2, 8, 32]", "seeds": "[0, 1, 2]", "methods": "[caa, lora-sft]", "layers": "[8, 14, 20]",
             "multipliers": "[2, 4, 8]"}


def _positive(settings: object, keys: tuple[str, ...], prefix: str = "") -> None:
    for key in keys:
        value = getattr(settings, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{prefix}{key}={value!r} must be positive (or null for the default).")


def effective_methods(config: StudyConfig) -> list[str]:
    """The methods run: `none` first (every effect is measured against it), then the config's order."""
    return ["none", *(m for m in config.methods if m != "none")]


def fingerprint(config: StudyConfig) -> dict:
    """The settings a finished point depends on; a resumed study must match them."""
    return {k: v for k, v in as_dict(config).items() if k not in NOT_IN_FINGERPRINT}
