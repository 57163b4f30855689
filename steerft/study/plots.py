"""Figures of a study: effect against n, and side effects against n, with a 95% interval at every point.

Every point has an error bar (paired over test items and seeds for effects, so one seed or one n
still has one). Methods measured once (`none`, `system-prompt`) are horizontal lines with their
interval as a band: they do not depend on n. The norm-matched random vector is drawn grey, as the
baseline every steering curve must clear, and a hatched band around 0 marks the noise level: the
median half-width of the effect intervals, the size of a difference this test split cannot resolve.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

from ..io import atomic_write

BASELINE_STYLE = {"none": dict(color="black", linestyle="--"), "random": dict(color="grey", linestyle=":")}


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """Effect on the test split (mean margin minus the base model's) against n, log x."""
    figure, axis = _figure(1)
    _panel(axis[0], summary, "effect", "effect on test mean margin (nats)")
    noise = noise_half_width(summary)
    if noise:
        axis[0].axhspan(-noise, noise, color="grey", alpha=0.12, hatch="//", linewidth=0,
                        label=f"noise: ±{noise:.2g} (median 95% half-width)", zorder=0)
        axis[0].legend(fontsize=8)
    title = title_of(summary)
    if not summary.get("interpretable", True):
        title += "\nBASE MODEL AT CHANCE: effects are not behaviour changes"
    axis[0].set_title(title, fontsize=10, color="black" if summary.get("interpretable", True) else "red")
    return _save(figure, path)


def title_of(summary: dict[str, Any], width: int = 70) -> str:
    """"name: dataset on model", a dataset path shortened to its file name and long titles wrapped."""
    dataset = Path(summary["dataset"]).name if any(sep in summary["dataset"] for sep in "/\\") else summary["dataset"]
    model = Path(summary["model"]).name if any(sep in summary["model"] for sep in "/\\") else summary["model"]
    return "\n".join(textwrap.wrap(f"{summary['name']}: {dataset} on {model}", width, break_long_words=True))


def noise_half_width(summary: dict[str, Any], metric: str = "effect") -> float | None:
    """The median half-width of a metric's 95% intervals over the study's non-baseline points."""
    widths = [(stats[metric]["ci_high"] - stats[metric]["ci_low"]) / 2
              for name, entry in summary["methods"].items() if name != "none" for stats in entry["by_n"].values()]
    return statistics.median(widths) if widths else None


def plot_side_effects(summary: dict[str, Any], path: Path) -> Path:
    """KL to the base on neutral prompts and delta cross-entropy on general text, against n."""
    figure, axes = _figure(2)
    _panel(axes[0], summary, "kl", "KL(base || method) on neutral prompts")
    _panel(axes[1], summary, "delta_ce", "delta cross-entropy on general text (nats)")
    return _save(figure, path)


def plot_compute(summary: dict[str, Any], path: Path) -> Path:
    """Effect against n beside effect against the compute that built each point (forward + backward
    tokens, `summary["ledger"]`); methods that cost no building compute are horizontal lines there."""
    figure, axes = _figure(2)
    _panel(axes[0], summary, "effect", "effect on test mean margin (nats)")
    axis = axes[1]
    for i, (name, entry) in enumerate(summary["methods"].items()):
        style = BASELINE_STYLE.get(name, dict(color=f"C{i % 10}", linestyle="-"))
        costs = summary["ledger"]["methods"][name]
        points = sorted((costs[n]["compute_tokens"], stats["effect"]["mean"]) for n, stats in entry["by_n"].items())
        if all(tokens == 0 for tokens, _ in points):
            axis.axhline(sum(e for _, e in points) / len(points), label=f"{name} (no building compute)",
                         linewidth=1.2, **{**style, "linestyle": "-."})
            continue
        axis.plot([t for t, _ in points], [e for _, e in points], marker="o", label=name, **style)
    axis.set_xscale("log")
    axis.set_xlabel("compute to build the point (forward + backward tokens)")
    axis.set_ylabel("effect on test mean margin (nats)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    return figure, axes[0]


def _panel(axis, summary: dict[str, Any], metric: str, label: str) -> None:
    ns = sorted(summary["n"])
    for i, (name, entry) in enumerate(summary["methods"].items()):
        style = BASELINE_STYLE.get(name, dict(color=f"C{i % 10}", linestyle="-"))
        if entry["shared"]:
            stats = entry["by_n"]["all"][metric]
            axis.axhline(stats["mean"], label=f"{name} (any n)", linewidth=1.2,
                         **{**style, "linestyle": style["linestyle"] if name in BASELINE_STYLE else "-."})
            axis.axhspan(stats["ci_low"], stats["ci_high"], color=style["color"], alpha=0.1, linewidth=0)
            continue
        points = [(n, entry["by_n"][str(n)][metric]) for n in ns if str(n) in entry["by_n"]]
        x = [n for n, _ in points]
        means = [s["mean"] for _, s in points]
        below = [max(m - s["ci_low"], 0.0) for m, (_, s) in zip(means, points)]
        above = [max(s["ci_high"] - m, 0.0) for m, (_, s) in zip(means, points)]
        axis.errorbar(x, means, yerr=[below, above], marker="o", capsize=3, label=name, **style)
    axis.set_xscale("log")
    axis.minorticks_off()
    axis.set_xticks(ns, [str(n) for n in ns])
    axis.set_xlabel("n training examples")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def _save(figure, path: Path) -> Path:
    from matplotlib import pyplot

    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
    pyplot.close(figure)
    return path
