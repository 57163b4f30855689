"""Figures of a study: effect against n, and side effects against n, with 95% intervals over seeds.

Methods measured once (`none`, `system-prompt`) are horizontal lines: they do not depend on n. The
norm-matched random vector is drawn grey, as the baseline every steering curve must clear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write

BASELINE_STYLE = {"none": dict(color="black", linestyle="--"), "random": dict(color="grey", linestyle=":")}


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """Effect on the test split (mean margin minus the base model's) against n, log x."""
    figure, axis = _figure(1)
    _panel(axis[0], summary, "effect", "effect on test mean margin (nats)")
    axis[0].set_title(f"{summary['name']}: {summary['dataset']} on {summary['model']}", fontsize=10)
    return _save(figure, path)


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
            continue
        points = [(n, entry["by_n"][str(n)][metric]) for n in ns if str(n) in entry["by_n"]]
        x = [n for n, _ in points]
        axis.plot(x, [s["mean"] for _, s in points], marker="o", label=name, **style)
        axis.fill_between(x, [s["ci_low"] for _, s in points], [s["ci_high"] for _, s in points],
                          color=style["color"], alpha=0.15, linewidth=0)
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
