"""report.md: effects by n, what they cost, and where fine-tuning overtakes steering, from the data.

The report never says more than the data do. When the base model is not measurably above chance
on the test metric (`metrics.competence_check`, answer bias removed), its first lines say so and
no method is reported as steering the behaviour: effects are shown, labelled not interpretable.
Every effect carries a paired interval over test items (and seeds); a method is said to move the
behaviour only when that interval excludes 0 and its change is not an answer shift. The n at which
a method reaches 80% of its own best effect and the crossover n from which a fine-tuning method
stays above the best steering method are reported only where the differences behind them are
distinguishable from zero; otherwise the report says "not distinguishable at this test size".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..metrics import distinguishable_from_zero
from .config import StudyConfig
from .context import GENERAL_TEXT_REQUEST
from .ledger import ledger_sections

Stats = dict[str, float]

NOT_DISTINGUISHABLE = "not distinguishable at this test size"
NOT_INTERPRETABLE = "not interpretable (base model at chance)"


def render_report(config: StudyConfig, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    sections = [_header(config, summary), _data(summary), _baseline(summary), _effects(summary),
                _costs(summary, rows), _crossover(summary), _choices(rows), ledger_sections(summary["ledger"]),
                _definitions(config, list(summary["methods"]))]
    if not summary["interpretable"]:
        sections.insert(0, competence_alarm(summary))
    return "\n\n".join(s for s in sections if s) + "\n"


def competence_alarm(summary: dict[str, Any]) -> str:
    """The loud first lines of a report whose base model is at chance (also the W&B alert text)."""
    return ("> **WARNING: THE BASE MODEL IS AT CHANCE ON THIS METRIC. NO RESULT BELOW IS A BEHAVIOUR CHANGE.**\n>\n"
            f"> {summary['baseline']['competence']['message']}\n>\n"
            "> Effects are shown for inspection only and labelled not interpretable; no method is reported as "
            "steering the behaviour, and no n-to-80% or crossover is computed.")


def reading(summary: dict[str, Any], name: str, stats: dict[str, Any]) -> str:
    """What one (method, n) effect may be read as: the only claim the report makes about it."""
    if name == "none":
        return "baseline"
    if not summary["interpretable"]:
        return NOT_INTERPRETABLE
    shift = stats.get("answer_shift") or {}
    if shift.get("seeds_shifted", 0) * 2 > shift.get("seeds", 0):
        return f"answer shift toward {shift['toward']!r}, not the behaviour"
    effect = stats["effect"]
    if not distinguishable_from_zero((effect["mean"], effect["ci_low"], effect["ci_high"])):
        return NOT_DISTINGUISHABLE
    return "moves the behaviour " + ("up" if effect["mean"] > 0 else "down")


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
    trained = f" Trained methods: {config.train.budget()}, at every n." if _trained_any(summary) else ""
    return (f"# Study `{config.name}`: {summary['dataset']} on {summary['model']}\n\n"
            f"Methods: {methods}. n = {', '.join(map(str, config.n))}; seeds = "
            f"{', '.join(map(str, config.seeds))}. Held-out test split: {summary['test_items']} items (the same for "
            f"every method; never used to choose anything). Layers and multipliers chosen on the validation split "
            f"by {config.select_by.replace('_', ' ')}: {_selection_rules(config)}{trained}")


def _trained_any(summary: dict[str, Any]) -> bool:
    """Whether any point of the grid trained: its record carries the training budget it got (the ledger's steps)."""
    return any(entry["steps"] is not None for by_n in summary["ledger"]["methods"].values() for entry in by_n.values())


def _selection_rules(config: StudyConfig) -> str:
    caps = ", ".join(f"{name} <= {cap:g}" for name, cap in config.select_caps.items())
    return ("multiplier 0 (don't steer) always competes" + (f", candidates over the side-effect caps ({caps}) are "
            "excluded" if caps else ", no side-effect caps") + ", and a gentler candidate wins when its paired "
            "validation difference to the best is not distinguishable from zero.")


def _data(summary: dict[str, Any]) -> str:
    data = summary.get("data") or {}
    lines = []
    if data.get("dropped"):
        lines.append("- Dropped at load: " + ", ".join(f"{count} {reason}" for reason, count in data["dropped"].items())
                     + ".")
    if data.get("length_filter"):
        lines.append("- Dropped by the length filter (" + ", ".join(f"{k}={v}" for k, v in data["limits"].items())
                     + "): " + ", ".join(f"{count} {reason}" for reason, count in data["length_filter"].items()) + ".")
    if data.get("balance"):
        lines.append(f"- Splits by matching answer: {data['balance']}.")
    if data.get("chat_template"):
        lines.append(f"- Prompt format: {data['chat_template']}.")
    return "## Data\n\n" + "\n".join(lines) if lines else ""


def _baseline(summary: dict[str, Any]) -> str:
    base = summary["baseline"]
    text = (f"## Base model\n\nTest completion preference: accuracy {base['accuracy']:.3f}, mean margin "
            f"{base['mean_margin']:+.3f} nats (log p(matching) - log p(non-matching)).")
    if base.get("letter_bias") is not None:
        text += (f" A/B answers: mean p(A) {base['letter_bias']:.3f} (0.5 = no letter bias); the matching answer "
                 f"is A in {base['a_matching_share']:.0%} of test items.")
    if base.get("answer_counts"):
        text += " Test items by matching answer: " + ", ".join(
            f"{answer} {count}" for answer, count in sorted(base["answer_counts"].items())) + "."
    competence = base["competence"]
    if competence["passed"] or not competence.get("gating", True):
        return text + f"\n\n{competence['message']}"
    return text + f"\n\n> **Warning:** {competence['message']}"


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
    answers = sorted(summary["baseline"].get("answer_counts") or {})
    by_answer = len(answers) == 2
    body, shifts = [], []
    for name, entry in summary["methods"].items():
        for n in (["all"] if entry["shared"] else [str(n) for n in ns if str(n) in entry["by_n"]]):
            stats = entry["by_n"][n]
            cells = [name, "any" if n == "all" else n, str(stats["seeds"]), _fmt(stats["effect"])]
            if by_answer:
                cells += [_fmt(stats["effect_by_answer"][a]) for a in answers]
            cells += [_fmt(stats["accuracy"], 3, signed=False), f"{stats['flipped']['mean']:.1f}",
                      _fmt(stats["kl"], 3, signed=False), reading(summary, name, stats)]
            body.append(cells)
            message = (stats.get("answer_shift") or {}).get("message")
            if message and name != "none":
                shifts.append(f"- **{name}** (n={cells[1]}, {stats['answer_shift']['seeds_shifted']} of "
                              f"{stats['seeds']} seeds): {message}")
    header = ["method", "n", "seeds", "effect"] + [f"effect on {a}-matching" for a in answers if by_answer]
    header += ["accuracy", "items flipped", "KL", "reading"]
    intro = ("## Effect by n\n\nEffect = test mean margin minus the base model's (nats); mean [95% interval, paired "
             f"over the {summary['test_items']} test items and over seeds: a bootstrap of the per-item differences to "
             "`none`]. A method is read as moving the behaviour only when that interval excludes 0 and its change is "
             "not an answer shift. `any`: measured once, since the method uses no training items. Items flipped: "
             "test items whose chosen answer differs from the base model's (mean over seeds).")
    text = intro + "\n\n" + _table(header, body)
    if shifts:
        text += "\n\nAnswer shifts (most items moved toward one answer whichever answer matches):\n\n" + "\n".join(shifts)
    return text + "\n\n![effect against n](curves.png)"


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
            best, reach = _best_and_reach(summary, name, entry)
        body.append([name, best, reach, _fmt(stats["kl"], 3, signed=False), _fmt(stats["delta_ce"], 3),
                     _fmt(stats["anti_steerable_fraction"], 2, signed=False), f"{entry['params']:,}",
                     f"{sum(wall[name]) / len(wall[name]):.1f}"])
    return (f"## Cost\n\nSide effects at the largest n ({largest}; `any n` methods at their one point). "
            "n to 80%: the smallest n whose mean effect reaches 80% of the method's own best, given only when that "
            "best effect is distinguishable from zero and readable as a behaviour change.\n\n"
            + _table(["method", "best effect", "n to 80%", "KL", "delta CE", "anti-steerable", "params",
                      "s / point"], body)
            + "\n\n![side effects against n](side_effects.png)")


def _best_and_reach(summary: dict[str, Any], name: str, entry: dict[str, Any]) -> tuple[str, str]:
    effects = curve(entry, "effect")
    best_n = max(effects, key=lambda n: effects[n]["mean"])
    best = f"{_fmt(effects[best_n])} (n={best_n})"
    claim = reading(summary, name, entry["by_n"][str(best_n)])
    if not claim.startswith("moves the behaviour"):
        return best, claim
    reach = n_to_fraction({n: s["mean"] for n, s in effects.items()})
    return best, "never" if reach is None else str(reach)


def _crossover(summary: dict[str, Any]) -> str:
    methods = summary["methods"]
    steering = {m: curve(e, "effect") for m, e in methods.items() if e["family"] == "steering"}
    tuned = {m: curve(e, "effect") for m, e in methods.items() if e["family"] == "finetuning"}
    title = "## Where fine-tuning overtakes steering\n\n"
    if not steering or not tuned:
        missing = "steering" if not steering else "fine-tuning"
        return title + f"Not measured: the study has no {missing} method."
    if not summary["interpretable"]:
        return title + "Not reported: the base model is at chance on this metric (see the warning at the top)."
    differences = summary.get("crossover", {})
    return title + "\n".join(f"- {_crossover_sentence(name, tuned[name], steering, differences.get(name, {}))}"
                              for name in tuned)


def _crossover_sentence(name: str, tuned: dict[int, Stats], steering: dict[str, dict[int, Stats]],
                        differences: dict[str, Stats]) -> str:
    """The crossover by means, claimed only where the paired difference to the best steering method is
    distinguishable from zero at every n it rests on (`differences`: n -> paired interval of tuned - rival)."""
    found = crossover(tuned, steering)
    ns = found["ns"]
    span = f"n = {ns[0]}..{ns[-1]}" if len(ns) > 1 else f"n = {ns[0]}"
    unclear = [n for n in ns if str(n) not in differences or not distinguishable_from_zero(
        (differences[str(n)]["mean"], differences[str(n)]["ci_low"], differences[str(n)]["ci_high"]))]
    if found["kind"] in ("at", "always") and any(n >= found["n"] for n in unclear):
        return (f"**{name}** is ahead of the best steering method by mean from n = {found['n']}, but the paired "
                f"difference is {NOT_DISTINGUISHABLE} at n = {', '.join(str(n) for n in unclear if n >= found['n'])}: "
                "no crossover claimed.")
    if found["kind"] == "mixed" and unclear:
        return (f"**{name}** and steering trade places by mean in {span}; the differences are {NOT_DISTINGUISHABLE} "
                f"at n = {', '.join(map(str, unclear))}: no crossover claimed.")
    if found["kind"] == "never":
        return f"**{name}** does not overtake steering in the measured range ({span}): no crossover."
    if found["kind"] == "mixed":
        ahead = [n for n in ns if found["ahead"][n]]
        return (f"**{name}** and steering trade places ({name} ahead at n = {', '.join(map(str, ahead))} only): "
                f"no stable crossover in {span}.")
    n = found["n"]
    rival = found["best"][n]
    mine, theirs = tuned[n], steering[rival][n]
    difference = differences[str(n)]
    lead = (f"effect {mine['mean']:+.2f} vs {theirs['mean']:+.2f} for {rival}; paired difference "
            f"{_fmt(difference)}")
    if found["kind"] == "always":
        return f"**{name}** is ahead of the best steering method at every measured n, from n = {n} ({lead})."
    return f"**{name}** overtakes steering at n = {n} and stays ahead up to n = {ns[-1]} ({lead})."


def _choices(rows: list[dict[str, Any]]) -> str:
    chosen: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    excluded: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in sorted((r for r in rows if r["layer"] is not None), key=lambda r: (r["n"], r["seed"])):
        chosen[row["method"]][row["n"]].append(f"L{row['layer']} x{row['multiplier']:g}")
        excluded[row["method"]][0] += row.get("excluded_candidates", 0)
        excluded[row["method"]][1] += row.get("candidates", 0)
    if not chosen:
        return "## Choices made on validation\n\nNo method chose a layer or multiplier."
    lines = [f"- **{method}**: " + "; ".join(f"n={n}: {', '.join(picks)}" for n, picks in by_n.items())
             + (f" ({excluded[method][0]} of {excluded[method][1]} candidates over a side-effect cap)"
                if excluded[method][1] else "") for method, by_n in chosen.items()]
    return ("## Choices made on validation\n\nLayer and multiplier per seed (x0: not steering won; every candidate, "
            "with its validation KL, delta CE and any exclusion, is in points.jsonl):\n\n" + "\n".join(lines))


def _definitions(config: StudyConfig, methods: list[str]) -> str:
    lines = [
        "- **margin**: log p(matching completion) - log p(non-matching completion) of a test item, under the "
        "method's model and prompt; accuracy is the share of positive margins.",
        "- **effect**: mean test margin minus the `none` baseline's, with a 95% percentile-bootstrap interval over "
        "test items (one draw shared by all seeds, the items being shared) and seeds, on the per-item differences to "
        "`none`; with one seed it is an item-level interval. **anti-steerable**: share of test items whose margin "
        "the method lowered (Tan et al. 2024).",
        "- **answer shift**: on two-answer formats (A/B, Yes/No), a change that moves at least 80% of the items of "
        "each matching answer toward the same answer: a preference for an answer (e.g. a letter direction), not the "
        "behaviour. **effect on X-matching**: the effect on the test items whose matching answer is X.",
        "- **competence**: the base model is judged on balanced accuracy for two-answer formats (answer bias "
        "removed), accuracy otherwise, with a one-sided exact test against chance at this test size.",
        "- **KL**: KL(base || method) of next-token distributions along the base model's greedy continuations of "
        "neutral prompts, each under its own prompt (prompting methods keep their system prompt or demonstrations).",
        f"- **delta CE**: cross-entropy of general text scored as the reply to \"{GENERAL_TEXT_REQUEST}\" under "
        "the method's prompt and model, minus the base model's (the same tokens for every method).",
        "- **KL** and **wall time** intervals are t-intervals over seeds clipped at 0 (neither can be negative).",
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
