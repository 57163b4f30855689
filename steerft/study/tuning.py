"""Trained methods tuned with the same care as extracted vectors: on validation, never on test.

Extracted vectors choose layer and multiplier on the validation split (`select`). A trained method
gets the same treatment: it is trained once per learning rate of its adapter kind's grid (and, for
DPO, per beta), each run with the budget that n earns (`TrainSettings.steps`), and the run whose
validation score is best is kept (ties: the earlier grid value). The grid, every run's validation
score and budget, and the choice go into the point's record; so does the compute the whole grid
cost, since that is what tuning the method took.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

from torch import nn

from ..adapter import peft_config
from ..data import BehaviourItem
from ..training import TrainingBudget, fit_measured, training_rows
from .context import StudyContext
from .scorable import Scorable
from .select import Candidate, best_of, score

Validate = Callable[[nn.Module, int], list[Candidate]]


@dataclass(frozen=True)
class Trial:
    """One training run of the grid and its best validation candidate."""

    learning_rate: float
    beta: float | None
    budget: TrainingBudget
    best: Candidate
    candidates: tuple[Candidate, ...]

    def as_dict(self) -> dict:
        return {"learning_rate": self.learning_rate, "beta": self.beta, **asdict(self.best),
                "budget": self.budget.as_dict()}


@dataclass
class Tuned:
    """The kept model of a tuning grid, its trial, and every trial run."""

    model: nn.Module
    chosen: Trial
    trials: list[Trial]

    def record(self) -> dict:
        """What the point stores: choice, grid, the chosen run's budget and the whole grid's compute."""
        return {"learning_rate": self.chosen.learning_rate, "beta": self.chosen.beta,
                "budget": self.chosen.budget.as_dict(), "tuning_grid": [t.as_dict() for t in self.trials],
                "compute": grid_compute(t.budget for t in self.trials)}


def grid_compute(budgets: Iterable[TrainingBudget]) -> dict[str, float]:
    """Tokens and training wall time summed over every run of a grid."""
    budgets = list(budgets)
    return {"tokens_forward": sum(b.tokens_forward for b in budgets),
            "tokens_backward": sum(b.tokens_backward for b in budgets),
            "train_wall_time_s": sum(b.wall_time_s for b in budgets), "runs": len(budgets)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep TRL's dataset progress bars and final metrics print out of the study's progress lines."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def train_once(ctx: StudyContext, items: list[BehaviourItem], seed: int, *, method: str, adapter: str, layer: int,
               learning_rate: float, beta: float | None) -> tuple[nn.Module, TrainingBudget]:
    """SFT or DPO of a steer, LoRA or full adapter on a copy of the base model, with n's budget."""
    from transformers import set_seed

    settings = ctx.config.train
    spec = replace(settings.adapter, kind=adapter, layers=[layer], positions=ctx.config.positions)
    set_seed(seed)  # TRL initialises LoRA weights before the trainer seeds itself
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        args = {**settings.trainer_args(method, len(items), learning_rate, beta), "output_dir": tmp, "seed": seed,
                "disable_tqdm": True, "logging_strategy": "no"}
        model, budget = fit_measured(ctx.fresh_model(), ctx.tokenizer, training_rows(method, items, ctx.fmt),
                                     method=method, peft_config=peft_config(spec), args=args)
    return model.eval(), budget


def tune(ctx: StudyContext, items: list[BehaviourItem], seed: int, *, method: str, adapter: str,
         layers: Sequence[int], validate: Validate) -> Tuned:
    """Train every (layer, learning rate, beta) of the grid; keep the one `validate` scores best.

    `validate(model, layer)` returns validation candidates (one per multiplier for a vector); only
    the best model so far is held, so a grid costs one extra model copy, not one per run.
    """
    settings = ctx.config.train
    kept: Tuned | None = None
    trials = []
    for layer in layers:
        for learning_rate in settings.learning_rate_grid(adapter):
            for beta in settings.beta_grid(method):
                model, budget = train_once(ctx, items, seed, method=method, adapter=adapter, layer=layer,
                                           learning_rate=learning_rate, beta=beta)
                candidates = validate(model, layer)
                best = best_of(candidates, ctx.config.select_by).best
                trial = Trial(learning_rate, beta, budget, best, tuple(candidates))
                trials.append(trial)
                if kept is None or best_of([kept.chosen.best, best], ctx.config.select_by).best is not kept.chosen.best:
                    kept = Tuned(model, trial, trials)
    return kept


def validate_as_is(ctx: StudyContext) -> Validate:
    """Score a fine-tuned model on validation as it is (no multiplier to choose)."""

    def validate(model: nn.Module, layer: int) -> list[Candidate]:
        accuracy, margin = score(ctx, Scorable(model, ctx.fmt))
        return [Candidate(layer, 1.0, accuracy, margin)]

    return validate
