"""The sample-efficiency study: with n examples, which method moves a behaviour most on held-out
data, at what side-effect cost, and where does fine-tuning overtake steering?

    steerft study --config eval/studies/quick.yaml [key=value ...]

One YAML (`StudyConfig`) describes the n x method x seed grid; `run_study` computes each point
once (resumably, shardable over `accelerate launch` processes) and writes results.csv,
summary.json, curves.png, side_effects.png, generations/ and report.md. Methods live in one
registry, `METHODS` (their torch-free specs: `METHOD_SPECS`).

The names load on first use (PEP 562), so the CLI reads and checks a `StudyConfig` without torch.
"""

from ..lazy import lazy_attributes

__all__ = ["METHODS", "METHOD_SPECS", "EvalSettings", "Method", "MethodSpec", "StudyConfig", "TrainSettings",
           "compute_point", "run_study"]

# public name -> the submodule that defines it
_LAZY = {"EvalSettings": ".config", "StudyConfig": ".config", "TrainSettings": ".config", "METHODS": ".methods",
         "Method": ".methods", "METHOD_SPECS": ".method_specs", "MethodSpec": ".method_specs",
         "compute_point": ".runner", "run_study": ".runner"}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
