"""The `steerft` command: one subcommand per job, each a YAML config plus `key=value` overrides.

    steerft study   --config eval/studies/quick.yaml n=[1,4,16]
    steerft train   --config recipes/configs/sft_steer.yaml n=32 seed=1
    steerft extract --config recipes/configs/extract.yaml layers=[8,12]

Each job module exposes a config dataclass and `run(config)`; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .interop.cli import add_commands as add_interop_commands
from .interop.cli import run as run_interop
from .runconfig import ConfigError, build, load_config

# subcommand -> (module, config class, run function, help)
JOBS: dict[str, tuple[str, str, str, str]] = {
    "study": ("steerft.study", "StudyConfig", "run_study", "sample-efficiency study: n x method x seed"),
    "train": ("steerft.train", "TrainConfig", "run_training", "SFT or DPO with a steer, LoRA or full adapter"),
    "extract": ("steerft.extract", "ExtractConfig", "run_extraction", "extract steering vectors from contrast pairs"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="steerft", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="job", required=True)
    for name, (_, _, _, help_text) in JOBS.items():
        job = sub.add_parser(name, help=help_text)
        job.add_argument("--config", "-c", help="YAML config file")
        job.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    add_interop_commands(sub)
    return top


def run_job(job: str, config_path: str | None, overrides: Sequence[str]) -> object:
    module_name, config_name, run_name, _ = JOBS[job]
    module = importlib.import_module(module_name)
    config = build(getattr(module, config_name), load_config(config_path, overrides), where=config_path or job)
    return getattr(module, run_name)(config)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "handler"):  # export / import / push
        return run_interop(args)
    try:
        run_job(args.job, args.config, args.overrides)
    except ConfigError as err:
        print(f"steerft {args.job}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
