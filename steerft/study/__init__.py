"""The sample-efficiency study: with n examples, which method moves a behaviour most on held-out
data, at what side-effect cost, and where does fine-tuning overtake steering?

    steerft study --config eval/studies/quick.yaml [key=value ...]

One YAML (`StudyConfig`) describes the n x method x seed grid; `run_study` computes each point
once (resumably, shardable over `accelerate launch` processes) and writes results.csv,
summary.json, curves.png, side_effects.png, generations/ and report.md. Methods live in one
registry, `METHODS`.
"""

from .config import EvalSettings, StudyConfig, TrainSettings
from .methods import METHODS, Method
from .runner import compute_point, run_study

__all__ = ["METHODS", "EvalSettings", "Method", "StudyConfig", "TrainSettings", "compute_point", "run_study"]
