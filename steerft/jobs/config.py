"""The settings of the extract, train and truth jobs, checked without torch, transformers or PEFT.

`steerft JOB --help` lists these fields, and a config with a wrong key, type or value fails in
one line before any heavy import; each job module (steerft.jobs.extract, train, truth) re-exports
its config and runs it. Names (estimators, reductions) are checked against steerft.choices, which
imports no torch; only TRL's trainer keys need TRL (steerft.jobs.train.check_config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..adapter import AdapterSpec
from ..choices import ESTIMATOR_NAMES, REDUCTIONS, TRAINING_METHODS
from ..models import DEFAULT_MODEL
from ..runconfig import ConfigError, non_negative
from .startup import check_output_dir

__all__ = ["ExtractConfig", "TrainConfig", "TruthConfig", "check_extract", "check_train", "check_truth"]

MIN_N = 2  # PCA, a probe and CCS need two statements at least (truth study)

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

    def __post_init__(self) -> None:
        check_extract(self)


def check_extract(config: ExtractConfig) -> None:
    """Refuse a config that cannot run before anything is loaded."""
    non_negative(config, "seed", "split_seed")
    if not config.layers or len(set(config.layers)) != len(config.layers):
        raise ConfigError(f"layers={config.layers}: list at least one block index, each once (e.g. layers=[8,12]).")
    for key in ("n", "batch_size", "threads"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or null for the default).")
    check_output_dir(config.output_dir)
    unknown = [name for name in config.estimators if name not in ESTIMATOR_NAMES]
    if unknown or not config.estimators:
        what = f"unknown estimator {unknown[0]!r}" if unknown else "no estimator"
        raise ConfigError(f"estimators={config.estimators}: {what}; allowed values: {', '.join(ESTIMATOR_NAMES)}.")
    if config.reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={config.reduce!r}; allowed values: {', '.join(REDUCTIONS)}.")
    needs = max(MIN_PAIRS.get(name, 1) for name in config.estimators)
    if config.n is not None and config.n < needs:
        names = [name for name in config.estimators if MIN_PAIRS.get(name, 1) > config.n]
        raise ConfigError(f"n={config.n}: estimator(s) {', '.join(names)} need at least {needs} pairs; raise n "
                          f"or use estimators=[mean_diff].")


@dataclass
class TrainConfig:
    """Settings of `steerft train` and the recipes (YAML keys = field names; `adapter` and `trainer` are sections)."""

    model: str = DEFAULT_MODEL
    dataset: str | dict = "sentiment"  # a name or path, or {path, config, split, data_files, revision} for `datasets`
    fields: dict | None = None  # column renames, as for load_behaviour
    method: str = "sft"  # sft | dpo
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    # TRL's SFTConfig / DPOConfig keys as given, over steerft's defaults (steerft.training.TRAINER_DEFAULTS);
    # learning_rate defaults to the adapter kind's (steerft.adapter.default_learning_rate)
    trainer: dict = field(default_factory=dict)
    # data
    n: int | None = None  # training items; None = the whole training split
    seed: int = 0  # training subset and trainer seed
    split_seed: int = 0  # keep fixed across runs: it fixes the test split
    val_frac: float = 0.2
    test_frac: float = 0.2
    # output and tracking
    output_dir: str = "runs/train"  # the run folder is output_dir/run_name
    run_name: str | None = None  # None = derived from method, adapter, n and seed
    eval_items: int = 32  # validation items scored for metrics.json; 0 skips the check
    wandb: bool = True
    wandb_project: str = "steerft"
    wandb_group: str | None = None
    threads: int | None = None  # torch.set_num_threads
    resume: bool = False  # continue a killed run from the last checkpoint in its run folder
    overwrite: bool = False  # replace a finished run folder of the same run_name

    def __post_init__(self) -> None:
        check_train(self)


def check_train(config: TrainConfig) -> None:
    """Refuse bad values before anything is loaded; TRL's keys are checked by
    steerft.jobs.train.check_config, which needs TRL."""
    if config.method not in TRAINING_METHODS:
        raise ConfigError(f"method={config.method!r} is not supported; allowed values: {', '.join(TRAINING_METHODS)}.")
    for key in ("n", "threads"):
        value = getattr(config, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={value!r} must be positive (or null for the default).")
    if config.eval_items < 0:
        raise ConfigError(f"eval_items={config.eval_items} must be >= 0 (0 skips the held-out check).")
    non_negative(config, "seed", "split_seed")
    check_output_dir(config.output_dir)


@dataclass
class TruthConfig:
    """Settings of `steerft truth` (YAML keys = field names)."""

    name: str = "truth"  # W&B group and report title
    model: str = DEFAULT_MODEL
    dataset: str = "truth"  # true/false statements, as for load_statements
    fields: dict | None = None  # column renames
    n: list[int] = field(default_factory=lambda: [2, 8, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 0  # fixes the held-out split; keep it fixed across runs
    val_frac: float = 0.2
    test_frac: float = 0.2
    layers: list[int] = field(default_factory=lambda: [8, 14, 20])
    estimators: list[str] = field(default_factory=lambda: ["ccs", "pca", "mean_diff", "logistic"])
    test_items: int | None = 40  # held-out statements scored (null: all)
    batch_size: int = 16
    output_dir: str = "runs/truth"
    wandb: bool = True
    wandb_project: str = "steerft"
    threads: int | None = None  # torch.set_num_threads

    def __post_init__(self) -> None:
        check_truth(self)


def check_truth(config: TruthConfig) -> None:
    """Refuse a config that cannot run, naming the key and the fix."""
    for key in ("n", "seeds", "layers"):
        values = getattr(config, key)
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"{key}={values}: list at least one value, each once.")
    if min(config.n) < MIN_N:
        raise ConfigError(f"n={config.n}: a truth study needs n >= {MIN_N} statements per fit.")
    non_negative(config, "seeds", "split_seed")
    unknown = [name for name in config.estimators if name not in ESTIMATOR_NAMES]
    if unknown or not config.estimators:
        raise ConfigError(f"estimators={config.estimators}: name at least one of {', '.join(ESTIMATOR_NAMES)}.")
