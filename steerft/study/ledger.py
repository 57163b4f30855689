"""What each point cost and how its generations were judged: the summary part and report sections.

From the point records: the training budget each point actually got (optimizer steps, examples
seen, forward/backward tokens) and the compute its whole tuning grid took; the learning rate (and
beta) chosen on validation; behaviour of sampled replies (judged), fluency, their harmonic mean,
and the per-token margin, each with an interval paired over prompts (or test items) and seeds
against the `none` baseline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..metrics import paired_interval
from .judging import GENERATION_METRICS
from .points import Point

ALL_N = "all"


def compute_tokens(record: dict[str, Any]) -> int:
    """Forward plus backward tokens a point's method cost to build (training grid or extraction; 0 for prompting)."""
    compute = record.get("choice", {}).get("compute", {})
    return int(compute.get("tokens_forward", 0) + compute.get("tokens_backward", 0))


def ledger_summary(points: Sequence[Point], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method and n: budget, compute, chosen hyperparameters, judged behaviour and per-token margin."""
    base = records[Point("none").key]
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        record = records[point.key]
        groups[point.method][ALL_N if point.n is None else str(point.n)].append(record)
    methods = {method: {n: _entry(group, base) for n, group in by_n.items()} for method, by_n in groups.items()}
    judged = base.get("judged", {})
    judge = {"skipped": judged["skipped"]} if "skipped" in judged else {
        k: v for k, v in judged.items() if k.startswith("judge")}
    return {"judge": judge, "methods": methods}


def _entry(records: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    choices = [r.get("choice", {}) for r in records]
    budgets = [c["budget"] for c in choices if "budget" in c]
    entry: dict[str, Any] = {
        "compute_tokens": _mean([compute_tokens(r) for r in records]),
        "wall_time_s": _mean([r["wall_time_s"] for r in records]),
        "learning_rates": [c["learning_rate"] for c in choices if "learning_rate" in c],
        "betas": [c["beta"] for c in choices if c.get("beta") is not None],
        "per_token_effect": _paired([r["per_token_margins"] for r in records], base["per_token_margins"]),
    }
    for key in ("steps", "examples", "tokens_forward", "tokens_backward"):
        entry[key] = _mean([b[key] for b in budgets]) if budgets else None
    entry["judged"] = _judged(records, base)
    return entry


def _judged(records: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any] | None:
    if any("skipped" in r["judged"] for r in records + [base]):
        return None
    ids = base["judged"]["prompt_ids"]
    if any(r["judged"]["prompt_ids"] != ids for r in records):
        raise ValueError("judged prompts differ between points of one study; recompute them with one config.")
    out: dict[str, Any] = {}
    for metric in GENERATION_METRICS:
        values = [r["judged"]["per_prompt"][metric] for r in records]
        out[metric] = _interval(paired_interval(values))
    out["behaviour_effect"] = _paired([r["judged"]["per_prompt"]["behaviour"] for r in records],
                                      base["judged"]["per_prompt"]["behaviour"])
    out["prompts"], out["replies"] = len(ids), sum(r["judged"]["n_replies"] for r in records)
    return out


def _paired(method: list[list[float]], baseline: list[float]) -> dict[str, float]:
    """Mean difference from the baseline on the same items, bootstrapped over items and seeds."""
    return _interval(paired_interval(method, [baseline] * len(method)))


def _interval(interval) -> dict[str, float]:
    mean, low, high = interval
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --------------------------------------------------------------------------- report sections


def _cell(stats: dict[str, float] | None, digits: int = 2) -> str:
    if stats is None:
        return ""
    return f"{stats['mean']:+.{digits}f} [{stats['ci_low']:+.{digits}f}, {stats['ci_high']:+.{digits}f}]"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _rows(ledger: dict[str, Any]):
    for method, by_n in ledger["methods"].items():
        for n in sorted(by_n, key=lambda k: (k != ALL_N, int(k) if k != ALL_N else 0)):
            yield method, n, by_n[n]


def ledger_sections(ledger: dict[str, Any]) -> str:
    """The report's 'Budget and compute' and 'Behaviour on generations' sections."""
    return "\n\n".join([_budget_section(ledger), _judge_section(ledger)])


def _budget_section(ledger: dict[str, Any]) -> str:
    body = []
    for method, n, e in _rows(ledger):
        def number(key: str) -> str:
            return "" if e[key] is None else f"{e[key]:,.0f}"

        chosen = ", ".join(f"{lr:g}" for lr in e["learning_rates"])
        if e["betas"]:
            chosen += " (beta " + ", ".join(f"{b:g}" for b in e["betas"]) + ")"
        body.append([method, "any" if n == ALL_N else n, number("steps"), number("examples"),
                     number("tokens_forward"), number("tokens_backward"), f"{e['compute_tokens']:,.0f}", chosen,
                     f"{e['wall_time_s']:.1f}"])
    return ("## Budget and compute\n\nWhat each trained point actually got (means over seeds): optimizer steps, "
            "training examples seen, and forward / backward token positions of the chosen run. `compute`: forward + "
            "backward tokens of everything run to build the method (every run of its learning-rate grid, or the "
            "extraction pass). `lr chosen`: the learning rate (and DPO beta) each seed's validation score picked. "
            "Wall time covers building and scoring the point.\n\n"
            + _table(["method", "n", "steps", "examples", "tokens fwd", "tokens bwd", "compute (tokens)", "lr chosen",
                      "s / point"], body)
            + "\n\n![effect against n and against compute](compute.png)")


def _judge_section(ledger: dict[str, Any]) -> str:
    judge = ledger["judge"]
    if "skipped" in judge:
        return f"## Behaviour on generations\n\n> **JUDGING SKIPPED:** {judge['skipped']}"
    low, high = judge.get("judge_heldout_ci_low", 0.0), judge.get("judge_heldout_ci_high", 1.0)
    head = (f"## Behaviour on generations\n\nJudge: {judge.get('judge')} (checked on the validation split), held-out "
            f"accuracy {judge.get('judge_heldout_accuracy', float('nan')):.3f} [{low:.3f}, {high:.3f}] on "
            f"{judge.get('judge_heldout_n')} completions. Replies sampled "
            "for held-out test prompts under each method's own prompt; behaviour = the judge's p(behaviour); fluency = "
            "the base model's per-token likelihood relative to its own replies times (1 - repetition); aggregate = "
            "their harmonic mean per reply. Intervals: 95%, over prompts (and seeds); `Δ behaviour` and `per-token "
            "effect` are paired against `none` on the same prompts / test items.")
    body = []
    for method, n, e in _rows(ledger):
        j = e["judged"] or {}
        body.append([method, "any" if n == ALL_N else n, _cell(j.get("behaviour")), _cell(j.get("behaviour_effect")),
                     _cell(j.get("fluency")), _cell(j.get("repetition")), _cell(j.get("aggregate")),
                     _cell(e["per_token_effect"], 3)])
    return head + "\n\n" + _table(["method", "n", "behaviour", "Δ behaviour", "fluency", "repetition", "aggregate",
                                   "per-token effect (nats/token)"], body)
