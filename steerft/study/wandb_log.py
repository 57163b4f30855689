"""W&B logging of a finished study: one run per method (grouped by study), points against n, a summary table.

Logged from the merged point log at the end, so a resumed or multi-process study logs each point
exactly once. Offline unless the user is logged in (`steerft.tracking`); `wandb: false` skips it.
A base model at chance is said in every run: `warning` in its summary (with `interpretable:
false`) and a W&B alert with the report's warning text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import tracking
from ..runconfig import as_dict
from .config import StudyConfig
from .outputs import SUMMARY_METRICS
from .report import competence_alarm

LOGGED = (*SUMMARY_METRICS, "params")


def log_study(config: StudyConfig, rows: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> None:
    import wandb

    for method, entry in summary["methods"].items():
        run = tracking.init_run(config.wandb_project, f"{config.name}-{method}", config.name,
                                {**as_dict(config), "method": method, "family": entry["family"]}, "study")
        if run is None:  # WANDB_MODE=disabled
            return
        try:
            run.define_metric("n")
            for metric in LOGGED:
                run.define_metric(metric, step_metric="n")
            for row in rows:
                if row["method"] == method and not row["shared"]:
                    run.log({"n": row["n"], "seed": row["seed"], **{k: row[k] for k in LOGGED}})
            run.log({"summary": _table(wandb, method, entry)})
            run.summary.update({"shared": entry["shared"], "params": entry["params"], "output_dir": str(out),
                                "interpretable": summary["interpretable"], **_best(entry)})
            if not summary["interpretable"]:
                run.summary["warning"] = competence_alarm(summary)
                run.alert(title=f"{config.name}: base model at chance", text=competence_alarm(summary),
                          level=wandb.AlertLevel.WARN)
        finally:
            run.finish()


def _table(wandb, method: str, entry: dict[str, Any]):
    parts = [(metric, part) for metric in SUMMARY_METRICS for part in ("mean", "ci_low", "ci_high")]
    columns = ["method", "n", "seeds", *(f"{metric}_{part}" for metric, part in parts)]
    data = [[method, n, stats["seeds"], *(stats[metric][part] for metric, part in parts)]
            for n, stats in entry["by_n"].items()]
    return wandb.Table(columns=columns, data=data)


def _best(entry: dict[str, Any]) -> dict[str, Any]:
    """The largest mean effect over n (the one value of a shared method)."""
    n, stats = max(entry["by_n"].items(), key=lambda item: item[1]["effect"]["mean"])
    return {"best_effect": stats["effect"]["mean"], "best_effect_n": n}
