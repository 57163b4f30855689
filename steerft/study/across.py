"""Many behaviours, one study: the summary across the behaviours a `datasets:` study ran.

Each behaviour is a study of its own (its own folder, points and report); here their summaries
are combined. Effects in nats are not on one scale across behaviours, so the comparison rests
on scale-free numbers: per (behaviour, n) cell the methods are ranked by mean effect (1 = best,
ties share the mean rank), a method's win rate is the share of cells it ranks first in, and the
pairwise win rate of A over B the share of cells where A's mean effect is above B's. A method
measured once (no n) takes its one value in every cell. "n to match the best": per behaviour, the
smallest n at which the method's mean effect reaches 80% of the best mean effect any method
reached at that behaviour's largest n (None: never). The mean effect across behaviours is shown
too, with that caveat, and the judged-behaviour change where generations were judged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import tracking
from ..io import write_json, write_text
from ..runconfig import as_dict

MATCH_FRACTION = 0.8


def _effects(summary: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """method -> n -> mean effect, a method measured once given at every n."""
    ns = summary["n"]
    out = {}
    for method, entry in summary["methods"].items():
        by_n = entry["by_n"]
        out[method] = ({n: by_n["all"]["effect"]["mean"] for n in ns} if entry["shared"]
                       else {n: by_n[str(n)]["effect"]["mean"] for n in ns if str(n) in by_n})
    return out


def _ranks(values: Mapping[str, float]) -> dict[str, float]:
    """1 = largest; tied values share the mean of their ranks."""
    ranks = {}
    for method, value in values.items():
        ahead = sum(1 for v in values.values() if v > value)
        tied = sum(1 for v in values.values() if v == value)
        ranks[method] = ahead + (tied + 1) / 2
    return ranks


def n_to_match(effects: Mapping[int, float], target: float, fraction: float = MATCH_FRACTION) -> int | None:
    """Smallest n whose mean effect reaches `fraction` of `target` (None: never, or no positive target)."""
    if target <= 0:
        return None
    return next((n for n in sorted(effects) if effects[n] >= fraction * target), None)


def across_summary(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The cross-behaviour summary of per-behaviour study summaries (`summary.json` of each)."""
    effects = {behaviour: _effects(summary) for behaviour, summary in summaries.items()}
    methods = [m for m in next(iter(summaries.values()))["methods"] if all(m in e for e in effects.values())]
    cells = sorted({(b, n) for b, e in effects.items() for n in e[methods[0]]}, key=str)
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    wins = {m: 0.0 for m in methods}
    beats = {a: {b: 0 for b in methods if b != a} for a in methods}
    for behaviour, n in cells:
        values = {m: effects[behaviour][m][n] for m in methods if n in effects[behaviour][m]}
        cell_ranks = _ranks(values)
        firsts = [m for m, r in cell_ranks.items() if min(cell_ranks.values()) == r]
        for m, r in cell_ranks.items():
            ranks[m].append(r)
            wins[m] += 1 / len(firsts) if m in firsts else 0
            for other in values:
                if other != m and values[m] > values[other]:
                    beats[m][other] += 1
    out: dict[str, Any] = {"behaviours": list(summaries), "cells": len(cells), "methods": {}}
    for m in methods:
        per_behaviour = {}
        for behaviour, e in effects.items():
            largest = max(summaries[behaviour]["n"])
            best = max(e[other][largest] for other in methods if largest in e[other])
            per_behaviour[behaviour] = {"effect_by_n": e[m], "n_to_match_best": n_to_match(e[m], best),
                                        "judged_behaviour_effect": _judged_effect(summaries[behaviour], m)}
        all_effects = [v for e in effects.values() for v in e[m].values()]
        out["methods"][m] = {
            "mean_effect": sum(all_effects) / len(all_effects),
            "mean_rank": sum(ranks[m]) / len(ranks[m]),
            "win_rate": wins[m] / len(cells),
            "pairwise_win_rate": {other: count / len(cells) for other, count in beats[m].items()},
            "behaviours": per_behaviour,
        }
    return out


def _judged_effect(summary: Mapping[str, Any], method: str) -> float | None:
    """Mean over n of the judged-behaviour change against `none` (None when not judged)."""
    by_n = summary.get("ledger", {}).get("methods", {}).get(method, {})
    values = [e["judged"]["behaviour_effect"]["mean"] for e in by_n.values() if e.get("judged")]
    return sum(values) / len(values) if values else None


def render_across(name: str, summary: Mapping[str, Any], folders: Mapping[str, Path]) -> str:
    behaviours = summary["behaviours"]
    header = ["method", "mean rank", "win rate", "mean effect (nats)", *(f"n to match ({b})" for b in behaviours),
              "Δ judged behaviour (mean over behaviours)"]
    body = []
    for method, entry in sorted(summary["methods"].items(), key=lambda item: item[1]["mean_rank"]):
        judged = [v["judged_behaviour_effect"] for v in entry["behaviours"].values()
                  if v["judged_behaviour_effect"] is not None]
        matches = [entry["behaviours"][b]["n_to_match_best"] for b in behaviours]
        body.append([method, f"{entry['mean_rank']:.2f}", f"{entry['win_rate']:.0%}", f"{entry['mean_effect']:+.2f}",
                     *("never" if n is None else str(n) for n in matches),
                     f"{sum(judged) / len(judged):+.3f}" if judged else ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    links = "\n".join(f"- [{b}]({Path(folders[b]).name}/report.md)" for b in behaviours)
    return (f"# Study `{name}` across behaviours: {', '.join(behaviours)}\n\n"
            f"{summary['cells']} (behaviour, n) cells. Ranks: 1 = largest mean test effect in a cell (ties share "
            "the mean rank); win rate: share of cells a method ranks first in; mean effect: over every cell, in nats, "
            "which are not on one scale across behaviours (rank and win rate are); n to match: the smallest n at which "
            f"the method reaches {MATCH_FRACTION:.0%} of the best mean effect any method reached at that behaviour's "
            "largest n; Δ judged behaviour: change of the generation judge's p(behaviour) against `none`, mean over n "
            "and behaviours.\n\n" + "\n".join(lines) + f"\n\nPer-behaviour reports:\n{links}\n")


def write_across(config, folders: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """summary.json and report.md across behaviours in `out`, from each behaviour folder's summary.json."""
    summaries = {b: json.loads((Path(folder) / "summary.json").read_text()) for b, folder in folders.items()}
    summary = across_summary(summaries)
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", render_across(config.name, summary, folders))
    if config.wandb:
        _log(config, summary)
    return summary


def _log(config, summary: Mapping[str, Any]) -> None:
    import wandb

    run = tracking.init_run(config.wandb_project, f"{config.name}-across", config.name, as_dict(config), "study")
    if run is None:
        return
    try:
        columns = ["method", "mean_rank", "win_rate", "mean_effect"]
        data = [[m, e["mean_rank"], e["win_rate"], e["mean_effect"]] for m, e in summary["methods"].items()]
        run.log({"across_behaviours": wandb.Table(columns=columns, data=data)})
    finally:
        run.finish()
