"""The settings of a study: one YAML file describes the whole n x method x seed grid.

Everything is checked when the config is built, before a model or dataset is loaded, so a typo
in a method name or an empty grid fails in a second instead of an hour into a run. This module
imports no torch: names (methods, positions, side effects) are checked against the torch-free
lists of steerft.choices and steerft.study.method_specs; only TRL's trainer keys need TRL, last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter import KINDS as ADAPTER_KINDS
from ..adapter import AdapterSpec, default_learning_rate
from ..choices import POSITIONS, REDUCTIONS, TRAINING_METHODS
from ..models import DEFAULT_MODEL
from ..runconfig import ConfigError, as_dict
from .method_specs import METHOD_SPECS

SELECT_BY = ("mean_margin", "accuracy")

DEFAULT_METHODS = ["none", "random", "caa", "steer-sft", "lora-sft", "system-prompt"]

# Keys that say how a study runs or reports, not what it measures: a finished point stays valid
# when they change, and the grid axes may grow (more n, seeds or methods) on a resumed study.
NOT_IN_FINGERPRINT = ("name", "methods", "n", "seeds", "output_dir", "wandb", "wandb_project", "threads",
                      "workers", "datasets")
JUDGE_KINDS = ("fitted", "classifier", "none")


# Learning-rate grids per adapter kind, tried on validation where neither `train.learning_rates`
# nor `trainer.learning_rate` names one: around steerft.adapter's defaults, one step either side.
DEFAULT_LEARNING_RATE_GRIDS: dict[str, list[float]] = {"steer": [0.03, 0.1], "lora": [1e-3, 5e-3],
                                                       "full": [1e-5, 5e-5]}

SIDE_EFFECTS = ("kl", "delta_ce")  # what `select_caps` may cap (steerft.study.select applies the caps)
DEFAULT_SELECT_CAPS = {"kl": 1.0, "delta_ce": 0.5}  # nats: KL per token on neutral prompts, general-text CE


@dataclass
class TrainSettings:
    """How the trained methods (steer-*, lora-*, full-sft) are trained and tuned.

    `adapter` and `trainer` are the sections of a train config: the method name sets the adapter
    kind, a steering vector is trained at each of `adapter.layers` (each is tried), and `trainer`
    holds TRL's SFTConfig / DPOConfig keys (each method gets the keys its config has).

    Budget: `epochs` passes over the n items, at least `min_steps` optimizer steps, so training
    grows with n; `trainer.max_steps` > 0 fixes the same step count at every n instead.
    Tuning: every learning rate of the adapter kind's grid (and, for DPO, every `betas` value) is
    trained and scored on validation; the best is kept. `trainer.learning_rate` / `trainer.beta`
    pin one value.
    """

    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    trainer: dict = field(default_factory=dict)  # over steerft.training's TRAINER_DEFAULTS
    epochs: float = 3.0
    min_steps: int = 4
    # learning-rate grid per adapter kind (steer, lora, full); a scalar is a one-value grid;
    # kinds not named get DEFAULT_LEARNING_RATE_GRIDS
    learning_rates: dict[str, list[float]] = field(default_factory=dict)
    betas: list[float] = field(default_factory=lambda: [0.1])  # DPO beta grid
    multipliers: list[float] = field(default_factory=lambda: [1.0, 2.0])  # inference scales of trained vectors

    @property
    def fixed_steps(self) -> int | None:
        """`trainer.max_steps` when the config fixes the step budget, else None (epoch budget)."""
        steps = self.trainer.get("max_steps", -1)
        return steps if steps > 0 else None

    def batch_size(self) -> int:
        from ..training import TRAINER_DEFAULTS

        trainer = {**TRAINER_DEFAULTS, **self.trainer}
        return trainer["per_device_train_batch_size"] * trainer.get("gradient_accumulation_steps", 1)

    def steps(self, n_rows: int) -> int:
        """Optimizer steps for a training set of `n_rows` rows."""
        from ..training import epoch_steps

        if self.fixed_steps is not None:
            return self.fixed_steps
        return epoch_steps(n_rows, epochs=self.epochs, min_steps=self.min_steps, batch_size=self.batch_size())

    def learning_rate_grid(self, kind: str) -> list[float]:
        if "learning_rate" in self.trainer:
            return [self.trainer["learning_rate"]]
        return list(self.learning_rates.get(kind) or DEFAULT_LEARNING_RATE_GRIDS.get(kind)
                    or [default_learning_rate(kind)])

    def beta_grid(self, method: str) -> list[float | None]:
        """DPO's beta values to try; [None] for SFT, which has no beta."""
        if method != "dpo":
            return [None]
        return [self.trainer["beta"]] if "beta" in self.trainer else list(self.betas)

    def trainer_args(self, method: str, n_rows: int, learning_rate: float, beta: float | None = None) -> dict:
        """The TRL settings of one training run (`method` sft or dpo) on `n_rows` rows."""
        from ..training import for_method

        args = {**for_method(self.trainer, method), "learning_rate": learning_rate, "max_steps": self.steps(n_rows)}
        return args if beta is None else {**args, "beta": beta}

    def budget(self) -> str:
        """The training budget in words, for the report."""
        if self.fixed_steps is not None:
            return f"{self.fixed_steps} optimiser steps (fixed), batch {self.batch_size()}"
        return (f"{self.epochs:g} epochs over the n items, at least {self.min_steps} optimiser steps, "
                f"batch {self.batch_size()}")


@dataclass
class JudgeSettings:
    """The generation judge: `fitted` (default; a probe on the base model, fitted on the validation
    split's labeled completions), `classifier` (a local or hub sequence classifier named by
    `name_or_path`, `label` = its behaviour class), or `none`."""

    kind: str = "fitted"
    name_or_path: str | None = None
    label: int | str = 1
    layer: int | None = None  # fitted judge: the block it reads (null: the middle one)


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
    judge_prompts: int | None = 8  # held-out (test) prompts whose sampled replies the judge scores
    judge_samples: int = 2  # replies sampled per prompt
    judge_tokens: int = 32  # tokens per sampled reply


@dataclass
class StudyConfig:
    """Settings of `steerft study` (YAML keys = field names; `train.*` and `eval.*` are sections)."""

    name: str = "study"  # W&B group and report title
    model: str = DEFAULT_MODEL
    dataset: str | dict = "sentiment"  # a name or path, or {path, config, split, data_files, revision} for `datasets`
    datasets: list[str] | None = None  # several behaviours, one study: the grid runs on each (overrides `dataset`)
    split_file: str | None = None  # JSON {"test": [ids], "validation": [ids]} fixing the held-out splits
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
    caa_reduce: str = "mean"  # extracted vectors read the mean over the completion, or its `last` token
    max_demonstrations: int = 8  # few-shot: at most this many of the n items as demonstrations
    # --- honest selection and data hygiene (steerft.study.select, context; README "Config keys")
    # side-effect budget of layer/multiplier selection: a candidate over a cap cannot win ({}: no caps)
    select_caps: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SELECT_CAPS))
    max_prompt_tokens: int | None = None  # drop items whose formatted prompt is longer (counted in the report)
    max_completion_tokens: int | None = None  # drop items with a longer completion (counted in the report)
    chat_template: str = "auto"  # auto | none | <path to a Jinja template>; see context.prompt_format
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    output_dir: str = "runs/study"
    wandb: bool = True
    wandb_project: str = "steerft"
    threads: int | None = None  # torch.set_num_threads; null: torch's default (cores / workers with workers > 1)
    workers: int = 1  # local processes sharing the grid (on CPU, workers 2 x threads 1 uses two cores best)

    def __post_init__(self) -> None:
        check(self)


def check(config: StudyConfig) -> None:
    """Refuse a config that cannot run, naming the key and the fix."""
    for key in ("methods", "n", "seeds", "layers", "multipliers"):
        _non_empty_unique(key, getattr(config, key))
    _non_empty_unique("train.adapter.layers", config.train.adapter.layers)
    _non_empty_unique("train.multipliers", config.train.multipliers)
    if min(config.n) < 1:
        raise ConfigError(f"n={config.n}: every training-set size must be >= 1 (n=0 is the `none` baseline).")
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"select_by={config.select_by!r}; allowed values: {', '.join(SELECT_BY)}.")
    if config.train.adapter.positions not in ("all", config.positions):
        raise ConfigError(f"train.adapter.positions={config.train.adapter.positions!r}: a study steers the same "
                          "tokens with every vector method; set `positions:` at the top level only.")
    if config.train.adapter.peft is not None or config.train.adapter.kind != AdapterSpec.kind:
        raise ConfigError("train.adapter.kind / train.adapter.peft: a study's method names set the adapter kind "
                          "(steer-*, lora-*, full-sft); drop the key.")
    if config.datasets is not None:
        _non_empty_unique("datasets", config.datasets)
        if config.split_file is not None:
            raise ConfigError("split_file names the ids of one dataset; with `datasets:` run each behaviour as its "
                              "own study to fix its split (or drop split_file).")
    _check_train_values(config.train)
    _check_judge(config.judge)
    _positive(config, ("max_demonstrations", "threads", "workers", "max_prompt_tokens", "max_completion_tokens"))
    _positive(config.eval, tuple(f.name for f in dataclasses.fields(EvalSettings)), "eval.")
    _check_names(config)
    _check_honesty_keys(config)
    _check_trainer_keys(config)


def _check_names(config: StudyConfig) -> None:
    unknown = [m for m in config.methods if m not in METHOD_SPECS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r}; allowed values: {', '.join(METHOD_SPECS)}.")
    for name in config.methods:
        if min(config.n) < METHOD_SPECS[name].min_n:
            raise ConfigError(f"n={config.n}: method {name!r} needs n >= {METHOD_SPECS[name].min_n}; "
                              f"drop the smaller n or the method.")
    if config.positions not in POSITIONS:
        raise ConfigError(f"positions={config.positions!r}; allowed values: {', '.join(POSITIONS)}.")
    if config.caa_reduce not in REDUCTIONS:
        raise ConfigError(f"caa_reduce={config.caa_reduce!r}; allowed values: {', '.join(REDUCTIONS)}.")


def _check_trainer_keys(config: StudyConfig) -> None:
    """TRL's SFTConfig / DPOConfig keys: the one check that needs TRL (and so torch), hence the last."""
    from ..training import check_trainer

    config.train.trainer = check_trainer(config.train.trainer, TRAINING_METHODS, where="train.trainer")


def _check_train_values(train: TrainSettings) -> None:
    if "num_train_epochs" in train.trainer:
        raise ConfigError("train.trainer.num_train_epochs: a study sets the budget with train.epochs and "
                          "train.min_steps (or a fixed train.trainer.max_steps); move the value to train.epochs.")
    if not train.epochs > 0 or train.min_steps < 0:
        raise ConfigError(f"train.epochs={train.epochs!r} must be positive and train.min_steps={train.min_steps!r} "
                          ">= 0.")
    for kind, rates in list(train.learning_rates.items()):
        if kind not in ADAPTER_KINDS:
            raise ConfigError(f"train.learning_rates.{kind}: not an adapter kind; allowed keys: "
                              f"{', '.join(ADAPTER_KINDS)}.")
        rates = rates if isinstance(rates, list) else [rates]
        if not rates or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates):
            raise ConfigError(f"train.learning_rates.{kind}={rates!r}: give a positive number or a list of them.")
        _non_empty_unique(f"train.learning_rates.{kind}", rates)
        train.learning_rates[kind] = [float(r) for r in rates]
    _non_empty_unique("train.betas", train.betas)
    if not all(b > 0 for b in train.betas):
        raise ConfigError(f"train.betas={train.betas}: every DPO beta must be positive.")


def _check_judge(judge: JudgeSettings) -> None:
    if judge.kind not in JUDGE_KINDS:
        raise ConfigError(f"judge.kind={judge.kind!r}; allowed values: {', '.join(JUDGE_KINDS)}.")
    if (judge.kind == "classifier") != (judge.name_or_path is not None):
        raise ConfigError("judge.name_or_path names the classifier of judge.kind: classifier, and only it; "
                          "set both or neither.")


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
