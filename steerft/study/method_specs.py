"""What a study needs to know of each method before building it: its family, whether it is
measured once, the smallest n it can fit, the memoised work it shares, and whether it trains.

The table imports no torch, so `steerft study` checks method names (and points plans the grid)
without loading a model library; steerft.study.methods attaches each method's builder by name.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("baseline", "steering", "finetuning", "prompting", "stacked")


@dataclass(frozen=True)
class MethodSpec:
    """`shared`: the result depends on neither n nor seed, so it is measured once.
    `memo`: the memoised work it reads at its (n, seed); methods naming the same work run on one rank.
    `trains`: it fits a model by gradient steps, so its points cost several times an extracted one's;
    ranks take such work first, so the long points do not come last (`points.work_units`)."""

    name: str
    family: str
    shared: bool = False
    min_n: int = 1
    memo: tuple[str, ...] = ()
    trains: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name!r}: family {self.family!r} is not one of {FAMILIES}")


METHOD_SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("none", "baseline", shared=True),
    MethodSpec("random", "baseline", memo=("activations", "caa choice")),
    MethodSpec("caa", "steering", memo=("activations", "caa choice")),
    MethodSpec("pca", "steering", min_n=2, memo=("activations",)),
    MethodSpec("steer-sft", "steering", trains=True),
    MethodSpec("steer-dpo", "steering", trains=True),
    MethodSpec("lora-sft", "finetuning", memo=("lora-sft",), trains=True),
    MethodSpec("lora-dpo", "finetuning", trains=True),
    MethodSpec("full-sft", "finetuning", trains=True),
    MethodSpec("few-shot", "prompting"),
    MethodSpec("system-prompt", "prompting", shared=True),
    MethodSpec("caa+system-prompt", "stacked", memo=("activations",)),
    MethodSpec("caa+lora-sft", "stacked", memo=("activations", "lora-sft"), trains=True),
)}
