"""Everything a study writes, regenerated from its point log: CSV, summary, figures, samples, report, W&B.

Effects are derived here, against the `none` point: effect = mean test margin minus the base
model's, anti-steerable fraction = share of test items whose margin the method moved down, and
delta cross-entropy = the method's general-text cross-entropy minus the base model's.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_dir, write_json, write_text
from ..metrics import anti_steerable_fraction, mean_ci95
from .config import StudyConfig, effective_methods
from .context import eval_inputs
from .ledger import ledger_summary
from .plots import plot_compute, plot_curves, plot_side_effects
from .points import Point
from .report import render_report

# Quantities that cannot be negative get intervals clipped at 0 (metrics.mean_ci95(nonnegative=True)).
NONNEGATIVE_METRICS = ("kl", "wall_time_s")
SUMMARY_METRICS = ("accuracy", "mean_margin", "effect", "anti_steerable_fraction", "kl", "delta_ce", "wall_time_s")
CSV_COLUMNS = ("method", "family", "n", "seed", "shared", "accuracy", "mean_margin", "effect",
               "anti_steerable_fraction", "kl", "ce", "delta_ce", "params", "layer", "multiplier", "demonstrations",
               "wall_time_s")
ALL_N = "all"  # summary key of methods measured once


def write_outputs(config: StudyConfig, points: Sequence[Point], records: dict[str, dict[str, Any]],
                  out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write results.csv, summary.json, curves.png, side_effects.png, generations/ and report.md (atomically).

    Returns the rows and the summary, for W&B (`wandb_log.log_study`)."""
    rows = point_rows(points, records)
    summary = summarise(config, rows, records)
    summary["ledger"] = ledger_summary(points, records)  # budget, compute, judged generations (steerft.study.ledger)
    write_text(out / "results.csv", _csv(rows))
    write_json(out / "summary.json", summary)
    plot_curves(summary, out / "curves.png")
    plot_side_effects(summary, out / "side_effects.png")
    plot_compute(summary, out / "compute.png")
    _write_generations(config, points, records, out / "generations")
    write_text(out / "report.md", render_report(config, summary, rows))
    return rows, summary


def point_rows(points: Sequence[Point], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per point of the grid, with the effects relative to the `none` point."""
    base = records[Point("none").key]
    rows = []
    for point in points:
        record = records[point.key]
        choice = record.get("choice", {})
        rows.append({
            "method": record["method"], "family": record["family"], "n": record["n"], "seed": record["seed"],
            "shared": record["shared"], "accuracy": record["accuracy"], "mean_margin": record["mean_margin"],
            "effect": record["mean_margin"] - base["mean_margin"],
            "anti_steerable_fraction": anti_steerable_fraction(base["margins"], record["margins"]),
            "kl": record["kl"], "ce": record["ce"], "delta_ce": record["ce"] - base["ce"], "params": record["params"],
            "layer": choice.get("layer"), "multiplier": choice.get("multiplier"),
            "demonstrations": choice.get("demonstrations"), "wall_time_s": record["wall_time_s"],
        })
    return rows


def summarise(config: StudyConfig, rows: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method and n: mean and 95% t-interval over seeds of every metric (one value for shared methods)."""
    base = records[Point("none").key]
    methods: dict[str, Any] = {}
    for row in rows:
        entry = methods.setdefault(row["method"], {"family": row["family"], "shared": row["shared"], "params": 0,
                                                   "by_n": {}})
        entry["params"] = max(entry["params"], row["params"])
        entry["by_n"].setdefault(ALL_N if row["shared"] else str(row["n"]), []).append(row)
    for entry in methods.values():
        entry["by_n"] = {n: _stats(group) for n, group in entry["by_n"].items()}
    methods = {name: methods[name] for name in effective_methods(config)}
    return {
        "name": config.name, "model": config.model, "dataset": config.dataset, "n": list(config.n),
        "seeds": list(config.seeds), "test_items": len(base["margins"]), "select_by": config.select_by,
        "baseline": {k: base.get(k) for k in ("accuracy", "mean_margin", "ce", "competence_warning", "letter_bias",
                                              "a_matching_share")},
        "methods": methods,
    }


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {"seeds": len(rows)}
    for metric in SUMMARY_METRICS:
        if metric in NONNEGATIVE_METRICS:  # a KL of -1e-9 is float rounding of 0
            mean, low, high = mean_ci95([max(row[metric], 0.0) for row in rows], nonnegative=True)
        else:
            mean, low, high = mean_ci95([row[metric] for row in rows])
        stats[metric] = {"mean": mean, "ci_low": low, "ci_high": high}
    return stats


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None or (isinstance(row[k], float) and math.isnan(row[k])) else row[k]
                         for k in CSV_COLUMNS})
    return buffer.getvalue()


def _write_generations(config: StudyConfig, points: Sequence[Point], records: dict[str, dict[str, Any]],
                       folder: Path) -> None:
    """One JSON file per point: each generation prompt with the method's greedy reply."""
    _, _, prompts = eval_inputs(config)
    with atomic_dir(folder) as tmp:
        for point in points:
            record = records[point.key]
            write_json(tmp / f"{_file_name(point.key)}.json", {
                "method": record["method"], "n": record["n"], "seed": record["seed"],
                "samples": [{"prompt": p, "generation": g} for p, g in zip(prompts, record["generations"])],
            })


def _file_name(key: str) -> str:
    """caa|n=8|seed=1 -> caa_n8_seed1"""
    return re.sub(r"[^A-Za-z0-9+.-]+", "_", key.replace("=", "")).strip("_")
