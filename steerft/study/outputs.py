"""Everything a study writes, regenerated from its point log: CSV, summary, figures, samples, report, W&B.

Effects are derived here, against the `none` point, from the saved per-item test margins: effect =
mean test margin minus the base model's, with a paired bootstrap interval over test items (and
seeds, where there are several; `stats.paired_interval`), so even one seed or a shared method
(`none`, `system-prompt`) has an interval that reflects test-item noise. Next to it: accuracy,
items whose chosen answer flipped, anti-steerable fraction, KL and delta cross-entropy (intervals
that respect their support), and, for two-answer formats, the effect per matching answer and
whether the change is an answer shift (`metrics.answer_shift`) rather than the behaviour.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_dir, write_json, write_text
from ..metrics import answer_shift, competence_check, mean_ci95, paired_interval
from .config import StudyConfig, effective_methods
from .context import eval_inputs
from .evaluate import TEST_METRIC
from .ledger import ledger_summary
from .plots import plot_compute, plot_curves, plot_side_effects
from .points import Point
from .report import render_report

SUMMARY_METRICS = ("accuracy", "mean_margin", "effect", "anti_steerable_fraction", "flipped", "kl", "delta_ce",
                   "wall_time_s")
CSV_COLUMNS = ("method", "family", "n", "seed", "shared", "accuracy", "mean_margin", "effect",
               "anti_steerable_fraction", "flipped", "answer_shift", "kl", "ce", "delta_ce", "params", "layer",
               "multiplier", "demonstrations", "wall_time_s")
ALL_N = "all"  # summary key of methods measured once


def write_outputs(config: StudyConfig, points: Sequence[Point], records: dict[str, dict[str, Any]],
                  out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write results.csv, summary.json, curves.png, side_effects.png, generations/ and report.md (atomically).

    A base model at chance is announced in the terminal too. Returns the rows and the summary,
    for W&B (`wandb_log.log_study`)."""
    rows = point_rows(points, records)
    summary = summarise(config, points, rows, records)
    write_text(out / "results.csv", _csv(rows))
    write_json(out / "summary.json", summary)
    plot_curves(summary, out / "curves.png")
    plot_side_effects(summary, out / "side_effects.png")
    plot_compute(summary, out / "compute.png")
    _write_generations(config, points, records, out / "generations")
    write_text(out / "report.md", render_report(config, summary, rows))
    if not summary["interpretable"]:
        print(f"\n{'!' * 78}\nsteerft study {config.name}: {summary['baseline']['competence']['message']}\n"
              f"No method's effect on {TEST_METRIC} is a behaviour change; see the top of {out / 'report.md'}.\n"
              f"{'!' * 78}", flush=True)
    return rows, summary


def point_rows(points: Sequence[Point], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per point of the grid, with the effects relative to the `none` point."""
    base = records[Point("none").key]
    answers = base.get("matching_answers")
    rows = []
    for point in points:
        record = records[point.key]
        choice = record.get("choice", {})
        base_margins, margins = _margins(base), _margins(record)
        shift = answer_shift(base_margins, margins, answers) if answers else None
        rows.append({
            "key": point.key, "method": record["method"], "family": record["family"], "n": record["n"],
            "seed": record["seed"], "shared": record["shared"], "accuracy": record["accuracy"],
            "mean_margin": record["mean_margin"], "effect": record["mean_margin"] - base["mean_margin"],
            "anti_steerable_fraction": (margins < base_margins).double().mean().item(),
            "flipped": int(((margins > 0) != (base_margins > 0)).sum()),
            "answer_shift": shift.shifted if shift is not None else None,
            "kl": record["kl"], "ce": record["ce"], "delta_ce": record["ce"] - base["ce"], "params": record["params"],
            "layer": choice.get("layer"), "multiplier": choice.get("multiplier"),
            "demonstrations": choice.get("demonstrations"), "wall_time_s": record["wall_time_s"],
            "candidates": len(choice.get("select_by_grid", [])),
            "excluded_candidates": sum(c.get("excluded") is not None for c in choice.get("select_by_grid", [])),
        })
    return rows


def summarise(config: StudyConfig, points: Sequence[Point], rows: list[dict[str, Any]],
              records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method and n: every metric's mean and 95% interval (paired over test items and seeds where per-item
    values exist, a t-interval over seeds otherwise); the base model's competence verdict; and, per fine-tuning
    method and n, the paired difference to the best steering method (for the crossover)."""
    base = records[Point("none").key]
    answers = base.get("matching_answers")
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    methods: dict[str, Any] = {}
    for row in rows:
        entry = methods.setdefault(row["method"], {"family": row["family"], "shared": row["shared"], "params": 0,
                                                   "by_n": {}})
        entry["params"] = max(entry["params"], row["params"])
        groups.setdefault(row["method"], {}).setdefault(ALL_N if row["shared"] else str(row["n"]), []).append(row)
    for name, by_n in groups.items():
        methods[name]["by_n"] = {n: _stats(group, records, base, answers) for n, group in by_n.items()}
    methods = {name: methods[name] for name in effective_methods(config)}
    competence = base.get("competence") or competence_check(
        _margins(base), answers, metric_name=TEST_METRIC).as_dict()  # point logs written before verdicts were kept
    return {
        "name": config.name, "model": config.model, "dataset": config.dataset, "n": list(config.n),
        "seeds": list(config.seeds), "test_items": len(base["margins"]), "select_by": config.select_by,
        "interpretable": bool(competence["passed"] or not competence.get("gating", True)),
        "baseline": {**{k: base.get(k) for k in ("accuracy", "mean_margin", "ce", "letter_bias", "a_matching_share")},
                     "competence": competence, "answer_counts": dict(Counter(a for a in answers if a))
                     if answers else {}},
        "data": base.get("data", {}),
        "methods": methods,
        "crossover": _differences(methods, groups, records),
        "ledger": ledger_summary(points, records),  # budget, compute, judged generations (steerft.study.ledger)
    }


def _margins(record: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(record["margins"], dtype=torch.float64)


def _interval(interval) -> dict[str, float]:
    mean, low, high = interval
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _stats(rows: list[dict[str, Any]], records: dict[str, dict[str, Any]], base: dict[str, Any],
           answers: list[str | None] | None) -> dict[str, Any]:
    margins = torch.stack([_margins(records[row["key"]]) for row in rows])  # (seeds, items)
    base_margins = _margins(base)
    change = margins - base_margins
    stats: dict[str, Any] = {
        "seeds": len(rows),
        "accuracy": _interval(paired_interval((margins > 0).double())),
        "mean_margin": _interval(paired_interval(margins)),
        "effect": _interval(paired_interval(margins, base_margins)),
        "anti_steerable_fraction": _interval(paired_interval((change < 0).double())),
        "flipped": _interval(paired_interval(((margins > 0) != (base_margins > 0)).double() * margins.shape[1])),
        "kl": _interval(mean_ci95([max(row["kl"], 0.0) for row in rows], nonnegative=True)),
        "delta_ce": _interval(mean_ci95([row["delta_ce"] for row in rows])),
        "wall_time_s": _interval(mean_ci95([row["wall_time_s"] for row in rows], nonnegative=True)),
    }
    if answers and None not in answers and len(set(answers)) == 2:
        stats["effect_by_answer"] = {
            answer: _interval(paired_interval(margins[:, keep], base_margins[keep]))
            for answer in sorted(set(answers)) for keep in [torch.tensor([a == answer for a in answers])]}
        shifts = [answer_shift(base_margins, row_margins, answers) for row_margins in margins]
        shifted = [s for s in shifts if s.shifted]
        stats["answer_shift"] = {"seeds_shifted": len(shifted), "seeds": len(shifts),
                                 "toward": Counter(s.toward for s in shifted).most_common(1)[0][0] if shifted else None,
                                 "message": shifted[0].message if shifted else None}
    return stats


def _differences(methods: dict[str, Any], groups: dict[str, dict[str, list[dict[str, Any]]]],
                 records: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per fine-tuning method and n: its margins minus the best steering method's (by mean effect), paired over
    the seeds both have and the test items."""
    steering = [m for m, e in methods.items() if e["family"] == "steering"]
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for tuned in (m for m, e in methods.items() if e["family"] == "finetuning"):
        for n in groups[tuned]:
            rivals = [m for m in steering if n in methods[m]["by_n"]]
            if not rivals:
                continue
            rival = max(rivals, key=lambda m: methods[m]["by_n"][n]["effect"]["mean"])
            mine = {row["seed"]: _margins(records[row["key"]]) for row in groups[tuned][n]}
            theirs = {row["seed"]: _margins(records[row["key"]]) for row in groups[rival][n]}
            seeds = [seed for seed in mine if seed in theirs]
            if seeds:
                difference = paired_interval(torch.stack([mine[s] for s in seeds]),
                                             torch.stack([theirs[s] for s in seeds]))
                result.setdefault(tuned, {})[n] = {"rival": rival, **_interval(difference)}
    return result


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
