"""Per-layer extraction report: one JSON and one figure that show where a behaviour lives.

The extraction pipeline builds a :class:`LayerReport` per (layer, estimator), usually with
:meth:`LayerReport.from_direction`, and calls :func:`write_report` once per run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..io import atomic_write
from .estimators import Direction, explained_variance
from .scoring import cosine_similarity_matrix, pair_accuracy, relative_norm

Tensor = torch.Tensor

# Heatmap cells are annotated with their value only while they stay legible.
_MAX_ANNOTATED = 12


@dataclass(frozen=True)
class LayerReport:
    """How one estimator's direction at one layer scores.

    Accuracies are pair accuracies (see ``pair_accuracy``); truth accuracies on statement
    data are the truth study's (``pipeline.truth_directions``).
    ``explained_variance`` is the uncentred fraction of the training differences along the
    direction; ``relative_norm`` is ‖vector‖ over the residual-stream norm at the site.
    """

    layer: int
    estimator: str
    n_train: int
    train_accuracy: float
    heldout_accuracy: float | None
    norm: float
    relative_norm: float
    explained_variance: float
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_direction(
        cls,
        layer: int,
        direction: Direction,
        *,
        train: tuple[Tensor, Tensor],
        residual_norm: float,
        heldout: tuple[Tensor, Tensor] | None = None,
    ) -> LayerReport:
        """Score ``direction`` on the (pos, neg) pairs it was fitted on and, if given, held-out pairs."""
        pos, neg = train
        return cls(
            layer=layer,
            estimator=direction.info["estimator"],
            n_train=len(pos),
            train_accuracy=pair_accuracy(direction, pos, neg),
            heldout_accuracy=None if heldout is None else pair_accuracy(direction, *heldout),
            norm=float(direction.vector.norm()),
            relative_norm=relative_norm(direction.vector, residual_norm),
            explained_variance=explained_variance(pos - neg, direction),
            info=dict(direction.info),
        )


def write_report(
    reports: Sequence[LayerReport],
    vectors: Mapping[str, Tensor],
    out_dir: str | os.PathLike[str],
    *,
    title: str,
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.png`` into ``out_dir``; returns their paths.

    ``vectors`` names the vectors to compare in the cosine heatmap, e.g.
    ``{"mean_diff/L12": v, ...}``. Each file is written to a temporary file in the same
    directory and moved into place, so readers never see a half-written report.
    """
    if not reports:
        raise ValueError("reports is empty")
    names, cosines = cosine_similarity_matrix(vectors)
    payload = {
        "title": title,
        "reports": [asdict(report) for report in reports],
        "cosine_similarity": {"names": names, "matrix": cosines.tolist()},
    }
    text = json.dumps(payload, indent=2, allow_nan=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = _figure(reports, names, cosines, title)
    json_path = atomic_write(out / "report.json", lambda f: f.write(text.encode()))
    png_path = atomic_write(out / "report.png", lambda f: figure.savefig(f, format="png", dpi=120))
    return json_path, png_path


def _by_estimator(reports: Sequence[LayerReport]) -> dict[str, list[LayerReport]]:
    grouped: dict[str, list[LayerReport]] = {}
    for report in sorted(reports, key=lambda r: r.layer):
        grouped.setdefault(report.estimator, []).append(report)
    return grouped


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _figure(reports: Sequence[LayerReport], names: list[str], cosines: Tensor, title: str) -> Figure:
    """Accuracy and relative norm against layer per estimator, and the cosine heatmap.

    Colour is the estimator (keyed in the norm panel), line style the accuracy kind
    (keyed in the accuracy panel). A bare ``Figure`` renders with Agg and touches no
    pyplot global state.
    """
    figure = Figure(figsize=(16, 5), layout="constrained")
    figure.suptitle(title)
    accuracy_ax, norm_ax, cosine_ax = figure.subplots(1, 3)
    series = (
        ("train pairs", "--", "train_accuracy"),
        ("held-out pairs", "-", "heldout_accuracy"),
    )
    shown: dict[str, str] = {}
    for estimator, rows in _by_estimator(reports).items():
        layers = [row.layer for row in rows]
        (line,) = norm_ax.plot(layers, [row.relative_norm for row in rows], marker="o", label=estimator)
        for label, style, attribute in series:
            values = [getattr(row, attribute) for row in rows]
            if any(value is not None for value in values):
                points = [_nan(value) for value in values]
                accuracy_ax.plot(layers, points, style, marker="o", color=line.get_color())
                shown[label] = style
    accuracy_ax.axhline(0.5, color="grey", linewidth=0.8)
    accuracy_ax.set(xlabel="layer", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    style_key = [Line2D([], [], color="black", linestyle=style) for style in shown.values()]
    accuracy_ax.legend(style_key, list(shown), fontsize="small")
    norm_ax.set(xlabel="layer", ylabel="‖v‖ / ‖h‖", title="relative norm")
    norm_ax.legend(fontsize="small")
    for ax in (accuracy_ax, norm_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _heatmap(figure, cosine_ax, names, cosines)
    return figure


def _heatmap(figure: Figure, ax: Axes, names: list[str], cosines: Tensor) -> None:
    image = ax.imshow(cosines.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize="small")
    ax.set_yticks(ticks, names, fontsize="small")
    ax.set_title("cosine similarity")
    if len(names) <= _MAX_ANNOTATED:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{cosines[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
    figure.colorbar(image, ax=ax, shrink=0.8)
