"""The `steerft` command: one subcommand per job, each a YAML config plus `key=value` overrides.

    steerft study   --config eval/studies/quick.yaml n=[1,4,16]
    steerft train   --config recipes/configs/sft_steer.yaml n=32 seed=1 trainer.warmup_steps=0.1
    steerft extract --config recipes/configs/extract.yaml layers=[8,12]
    steerft truth   --config eval/studies/truth.yaml

Each job module (steerft.jobs) exposes a config dataclass and a run function; this file only wires
them up. The recipes (recipes/*.py) call `main` too, so flags and errors are handled here once.
The configs import no torch: `--help` and a bad config answer at once, and a job's module (torch,
transformers, PEFT, TRL) is imported only when the config has passed its checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .adapter import KINDS
from .interop import cli as interop_cli
from .jobs import config as job_config
from .runconfig import ConfigError, build, load_config
from .study import StudyConfig

# subcommand -> (config class, run function of the steerft.jobs module of the same name, help)
JOBS: dict[str, tuple[type, str, str]] = {
    "study": (StudyConfig, "run_study", "sample-efficiency study: n x method x seed"),
    "train": (job_config.TrainConfig, "run_training", "SFT or DPO with a steer, LoRA or full adapter"),
    "extract": (job_config.ExtractConfig, "run_extraction", "extract steering vectors from contrast pairs"),
    "truth": (job_config.TruthConfig, "run_truth_study",
              "do label-free directions find truth? (n x estimator x layer)"),
}


def parser(prog: str = "steerft") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="job", required=True)
    for name, (config_class, _, help_text) in JOBS.items():
        job = sub.add_parser(name, help=help_text, description=help_text, epilog=_keys_help(config_class),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        job.add_argument("--config", "-c", help=f"YAML config (keys of {config_class.__name__})")
        job.add_argument("--no-wandb", action="store_true", help="shortcut for wandb=false")
        if name == "train":
            job.add_argument("--adapter", choices=KINDS, help="shortcut for adapter.kind=...")
        job.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    interop_cli.add_commands(sub)
    return top


def _keys_help(config_class: type, prefix: str = "") -> str:
    """The config keys with their defaults, for `steerft JOB --help`."""
    lines = [] if prefix else [f"config keys (YAML or key=value; see {config_class.__module__}.{config_class.__name__}):"]
    for f in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            lines += _keys_help(f.default_factory, f"{prefix}{f.name}.").splitlines()
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name}={default!r}")
    return "\n".join(lines)


# What a Ctrl-C leaves, per job: the study and train keep their progress on disk.
_INTERRUPTED = {"study": "interrupted; rerun the same command to resume (finished points are kept).",
                "train": "interrupted; rerun the same command with resume=true to continue from the last checkpoint.",
                "extract": "interrupted; nothing was written, rerun the same command to start again.",
                "truth": "interrupted; rerun the same command to resume (finished fits are kept)."}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags and `key=value` overrides in any order (argparse alone stops at the first flag after them)."""
    top = parser()
    args, rest = top.parse_known_args(argv)
    if hasattr(args, "handler"):  # export / import / push take no overrides
        return top.parse_args(argv)
    flags = [arg for arg in rest if arg.startswith("-")]
    if flags:
        top.error(f"unrecognized arguments: {' '.join(flags)}")
    args.overrides = [*args.overrides, *rest]
    return args


def config_data(args: argparse.Namespace, pinned: Mapping[str, Any] = {}) -> dict[str, Any]:
    """The YAML with overrides and flags applied; `pinned` keys (set by a recipe) must not be contradicted."""
    data = load_config(args.config, args.overrides)
    for key, value in pinned.items():
        if data.get(key, value) != value:
            raise ConfigError(f"this recipe runs {key}={value} but the config sets {key}={data[key]!r}; "
                              f"drop the key or use the recipe for {data[key]}.")
        data[key] = value
    if args.no_wandb:
        data["wandb"] = False
    if getattr(args, "adapter", None):
        data.setdefault("adapter", {})["kind"] = args.adapter
    return data


def run_job(job: str, data: Mapping[str, Any], where: str) -> object:
    """Build and check the config, then import the job (and torch with it) and run it."""
    config_class, run_name, _ = JOBS[job]
    config = build(config_class, data, where=where)
    run: Callable[[Any], object] = getattr(importlib.import_module(f"{__package__}.jobs.{job}"), run_name)
    return run(config)


def main(argv: Sequence[str] | None = None, *, pinned: Mapping[str, Any] = {}) -> int:
    """Run one job; a bad config ends in one line on stderr and exit code 2."""
    args = parse(argv)
    if hasattr(args, "handler"):  # export / import / push
        return interop_cli.run(args)
    try:
        run_job(args.job, config_data(args, pinned), args.config or args.job)
    except ConfigError as err:
        print(f"steerft {args.job}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsteerft {args.job}: {_INTERRUPTED[args.job]}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
