"""The jobs behind the `steerft` subcommands, one module each, in one shape: a config dataclass and a run function.

- `extract`: `ExtractConfig`, `run_extraction` (vectors from contrast pairs)
- `train`: `TrainConfig`, `run_training` (SFT or DPO of an adapter, one run folder)
- `study`: `StudyConfig`, `run_study` (the n x method x seed study, steerft.study)
- `truth`: `TruthConfig`, `run_truth_study` (do label-free directions find truth?)

`config` holds the extract, train and truth configs and their checks, free of torch, so the CLI
checks a config (and lists its keys for `--help`) before it imports a job; each job module
re-exports its config. `startup` holds what the jobs share before their real work. The package
imports none of them, so the library can use `startup` without loading every job.
"""
