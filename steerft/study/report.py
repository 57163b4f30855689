"""report.md: effects by n, what they cost, and where fine-tuning overtakes steering, from the data.

Every statement is computed from the summary: the n at which a method reaches 80% of its own
best effect, and the crossover n from which a fine-tuning method's mean effect stays above the
best steering method's at every larger measured n (or a sentence saying there is none).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .config import StudyConfig
from .context import GENERAL_TEXT_REQUEST
from .ledger import ledger_sections

Stats = dict[str, float]


def render_report(config: StudyConfig, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    sections = [_header(config, summary), _baseline(summary), _effects(summary), _costs(summary, rows),
                _crossover(summary), _choices(rows), ledger_sections(summary["ledger"]),
                _definitions(config, list(summary["methods"]))]
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------- analysis


def curve(entry: dict[str, Any], metric: str) -> dict[int, Stats]:
    """n -> stats of a per-n method (empty for methods measured once)."""
    return {int(n): stats[metric] for n, stats in entry["by_n"].items() if n != "all"}


def n_to_fraction(effects: dict[int, float], fraction: float = 0.8) -> int | None:
    """Smallest n whose mean effect reaches `fraction` of the method's best; None if it never helps."""
    best = max(effects.values(), default=0.0)
    if best <= 0:
        return None
    return min(n for n, effect in effects.items() if effect >= fraction * best)


def crossover(tuned: dict[int, Stats], steering: dict[str, dict[int, Stats]]) -> dict[str, Any]:
    """Where `tuned` overtakes the best steering method (by mean effect) for good, over the common n.

    Returns {"kind": "never" | "always" | "at" | "mixed", "n": ..., "ns": ..., "ahead": {n: bool}, ...}.
    """
    ns = sorted(n for n in tuned if all(n in c for c in steering.values()))
    best = {n: max(steering, key=lambda name: steering[name][n]["mean"]) for n in ns}
    ahead = {n: tuned[n]["mean"] > steering[best[n]][n]["mean"] for n in ns}
    result: dict[str, Any] = {"ns": ns, "ahead": ahead, "best": best}
    if not any(ahead.values()):
        return {**result, "kind": "never"}
    if all(ahead.values()):
        return {**result, "kind": "always", "n": ns[0]}
    from_n = next((n for n in ns if all(ahead[m] for m in ns if m >= n)), None)
    if from_n is None or any(ahead[m] for m in ns if m < from_n):
        return {**result, "kind": "mixed"}
    return {**result, "kind": "at", "n": from_n}


# --------------------------------------------------------------------------- sections


def _header(config: StudyConfig, summary: dict[str, Any]) -> str:
    methods = ", ".join(summary["methods"])
    return (f"# Study `{config.name}`: {config.dataset} on {config.model}\n\n"
            f"Methods: {methods}. n = {', '.join(map(str, config.n))}; seeds = "
            f"{', '.join(map(str, config.seeds))}. Held-out test split: {summary['test_items']} items (the same for "
            f"every method; never used to choose anything). Layers and multipliers chosen on the validation split "
            f"by {config.select_by.replace('_', ' ')}. Trained methods: {config.train.budget()}, "
            "at every n.")


def _baseline(summary: dict[str, Any]) -> str:
    base = summary["baseline"]
    text = (f"## Base model\n\nTest completion preference: accuracy {base['accuracy']:.3f}, mean margin "
            f"{base['mean_margin']:+.3f} nats (log p(matching) - log p(non-matching)).")
    if base.get("letter_bias") is not None:
        text += (f" A/B answers: mean p(A) {base['letter_bias']:.3f} (0.5 = no letter bias); the matching answer "
                 f"is A in {base['a_matching_share']:.0%} of test items.")
    warning = base.get("competence_warning")
    return text + (f"\n\n> **Warning:** {warning}" if warning else
                   "\n\nCompetence check passed: the base model is not at chance on this metric.")


def _fmt(stats: Stats, digits: int = 2, signed: bool = True) -> str:
    sign = "+" if signed else ""
    if stats["ci_low"] == stats["ci_high"]:
        return f"{stats['mean']:{sign}.{digits}f}"
    return f"{stats['mean']:{sign}.{digits}f} [{stats['ci_low']:{sign}.{digits}f}, {stats['ci_high']:{sign}.{digits}f}]"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _effects(summary: dict[str, Any]) -> str:
    ns = sorted(summary["n"])
    body = []
    for name, entry in summary["methods"].items():
        effects = curve(entry, "effect")
        cells = [_fmt(effects[n]) if n in effects else "" for n in ns]
        shared = _fmt(entry["by_n"]["all"]["effect"]) if entry["shared"] else ""
        body.append([name, entry["family"], *cells, shared])
    return ("## Effect by n\n\nEffect = test mean margin minus the base model's (nats); mean [95% CI over seeds]. "
            "`any n`: measured once, since the method uses no training items.\n\n"
            + _table(["method", "family", *(f"n={n}" for n in ns), "any n"], body)
            + "\n\n![effect against n](curves.png)")


def _costs(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    wall: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        wall[row["method"]].append(row["wall_time_s"])
    largest = max(summary["n"])
    body = []
    for name, entry in summary["methods"].items():
        at = "all" if entry["shared"] else str(largest)
        stats = entry["by_n"][at]
        if entry["shared"]:
            best, reach = _fmt(stats["effect"]), "any n"
        else:
            effects = {n: s["mean"] for n, s in curve(entry, "effect").items()}
            best_n = max(effects, key=effects.get)
            reach = n_to_fraction(effects)
            best, reach = f"{effects[best_n]:+.2f} (n={best_n})", "never" if reach is None else str(reach)
        body.append([name, best, reach, _fmt(stats["kl"], 3, signed=False), _fmt(stats["delta_ce"], 3),
                     _fmt(stats["anti_steerable_fraction"], 2, signed=False), f"{entry['params']:,}",
                     f"{sum(wall[name]) / len(wall[name]):.1f}"])
    return (f"## Cost\n\nSide effects at the largest n ({largest}; `any n` methods at their one point). "
            "n to 80%: the smallest n whose mean effect reaches 80% of the method's own best.\n\n"
            + _table(["method", "best effect", "n to 80%", "KL", "delta CE", "anti-steerable", "params",
                      "s / point"], body)
            + "\n\n![side effects against n](side_effects.png)")


def _crossover(summary: dict[str, Any]) -> str:
    methods = summary["methods"]
    steering = {m: curve(e, "effect") for m, e in methods.items() if e["family"] == "steering"}
    tuned = {m: curve(e, "effect") for m, e in methods.items() if e["family"] == "finetuning"}
    title = "## Where fine-tuning overtakes steering\n\n"
    if not steering or not tuned:
        missing = "steering" if not steering else "fine-tuning"
        return title + f"Not measured: the study has no {missing} method."
    return title + "\n".join(f"- {_crossover_sentence(name, tuned[name], steering)}" for name in tuned)


def _crossover_sentence(name: str, tuned: dict[int, Stats], steering: dict[str, dict[int, Stats]]) -> str:
    found = crossover(tuned, steering)
    ns = found["ns"]
    span = f"n = {ns[0]}..{ns[-1]}" if len(ns) > 1 else f"n = {ns[0]}"
    if found["kind"] == "never":
        return f"**{name}** does not overtake steering in the measured range ({span}): no crossover."
    if found["kind"] == "mixed":
        ahead = [n for n in ns if found["ahead"][n]]
        return (f"**{name}** and steering trade places ({name} ahead at n = {', '.join(map(str, ahead))} only): "
                f"no stable crossover in {span}.")
    n = found["n"]
    rival = found["best"][n]
    mine, theirs = tuned[n], steering[rival][n]
    separated = mine["ci_low"] > theirs["ci_high"]
    lead = (f"effect {mine['mean']:+.2f} vs {theirs['mean']:+.2f} for {rival}; the 95% CIs "
            f"{'do not overlap' if separated else 'overlap'}")
    if found["kind"] == "always":
        return f"**{name}** is ahead of the best steering method at every measured n, from n = {n} ({lead})."
    return f"**{name}** overtakes steering at n = {n} and stays ahead up to n = {ns[-1]} ({lead})."


def _choices(rows: list[dict[str, Any]]) -> str:
    chosen: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted((r for r in rows if r["layer"] is not None), key=lambda r: (r["n"], r["seed"])):
        chosen[row["method"]][row["n"]].append(f"L{row['layer']} x{row['multiplier']:g}")
    if not chosen:
        return "## Choices made on validation\n\nNo method chose a layer or multiplier."
    lines = [f"- **{method}**: " + "; ".join(f"n={n}: {', '.join(picks)}" for n, picks in by_n.items())
             for method, by_n in chosen.items()]
    return "## Choices made on validation\n\nLayer and multiplier per seed:\n\n" + "\n".join(lines)


def _definitions(config: StudyConfig, methods: list[str]) -> str:
    lines = [
        "- **margin**: log p(matching completion) - log p(non-matching completion) of a test item, under the "
        "method's model and prompt; accuracy is the share of positive margins.",
        "- **effect**: mean test margin minus the `none` baseline's. **anti-steerable**: share of test items whose "
        "margin the method lowered (Tan et al. 2024).",
        "- **KL**: KL(base || method) of next-token distributions along the base model's greedy continuations of "
        "neutral prompts, each under its own prompt (prompting methods keep their system prompt or demonstrations).",
        f"- **delta CE**: cross-entropy of general text scored as the reply to \"{GENERAL_TEXT_REQUEST}\" under "
        "the method's prompt and model, minus the base model's (the same tokens for every method).",
        "- **params**: trainable (trained methods) or fitted (extracted vectors) parameters; 0 for prompting.",
    ]
    if "random" in methods:
        lines.append("- **random**: a random direction with the CAA vector's norm, layer and multiplier at the same "
                     "(n, seed).")
    if "few-shot" in methods:
        lines.append(f"- **few-shot**: the first min(n, {config.max_demonstrations}) of the n training items as "
                     "demonstrations.")
    if any("+" in m for m in methods):
        lines.append("- **stacked** methods reuse the base model's CAA vector and re-choose layer and multiplier on "
                     "validation with the other method in place.")
    return "\n".join(["## Definitions", "", *lines])
