"""The truth-direction study (`steerft truth`): do label-free directions find what a model represents as true?

On true/false statements (x+ = statement answered "True", x- = answered "False"), CCS and
PCA see no labels; mean_diff and logistic do. Each is fitted on n training statements for several
seeds and scored on one fixed held-out split, per layer, next to the model's own zero-shot answer.
Activations are read once for every statement any seed needs; every (n, seed) fit reuses them. Each
finished fit is a line of points.jsonl (steerft.study.points), so a rerun resumes where a killed one stopped.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import torch

from .. import tracking
from ..data import PromptFormatter, load_statements, statement_pairs, training_subset
from ..extract import PairActivations, pair_activations, truth_directions
from ..io import atomic_write, write_json, write_text
from ..metrics import chance_band, completion_logprobs, mean_ci95
from ..models import model_info
from ..runconfig import ConfigError, as_dict
from ..study import points
from .config import TruthConfig, check_truth
from .startup import check_output_dir, layers_of, load_job_model, load_splits, set_threads

COLUMNS = ("estimator", "supervised", "layer", "n", "seed", "accuracy", "accuracy_best_sign")
# Keys that do not change a fit: a resumed study may differ in them (the grid axes n and seeds may grow).
NOT_IN_SETTINGS = ("name", "n", "seeds", "batch_size", "output_dir", "wandb", "wandb_project", "threads")


def run_truth_study(config: TruthConfig) -> Path:
    """Fit every estimator at every layer for every (n, seed); write CSV, summary, figure and report."""
    check_truth(config)
    out = check_output_dir(config.output_dir)
    set_threads(config.threads)
    started = time.perf_counter()
    _, splits = load_splits(config, load_statements)
    if max(config.n) > len(splits.train):
        raise ConfigError(f"n={max(config.n)} exceeds the {len(splits.train)} training statements of {config.dataset!r}.")
    test = splits.test[: config.test_items] if config.test_items else splits.test
    model, tokenizer = load_job_model(config.model)
    layers = layers_of(model, config.layers)
    fmt = PromptFormatter(tokenizer)
    needed = sorted({i for seed in config.seeds for i in _subset_index(splits.train, max(config.n), seed)})
    read = dict(reduce="last", batch_size=config.batch_size, progress=True)
    train_pairs, train_labels = statement_pairs([splits.train[i] for i in needed], fmt)
    train_acts = pair_activations(model, tokenizer, train_pairs, layers, **read)
    test_pairs, test_labels = statement_pairs(test, fmt)
    test_acts = pair_activations(model, tokenizer, test_pairs, layers, **read)
    row_of = {index: row for row, index in enumerate(needed)}
    log, done = _point_log(config, out)
    for n in config.n:
        for seed in config.seeds:
            key = f"n={n}|seed={seed}"
            if key in done:
                continue
            chosen = [row_of[i] for i in _subset_index(splits.train, n, seed)]
            fits = truth_directions(_rows(train_acts, chosen), [train_labels[i] for i in chosen], test_acts,
                                    test_labels, config.estimators)
            done[key] = {"key": key, "settings": _settings(config), "rows": [
                {"estimator": name, "supervised": result["supervised"], "layer": layer, "n": n, "seed": seed,
                 "accuracy": result["accuracy"], "accuracy_best_sign": result["accuracy_best_sign"]}
                for (name, layer), result in fits.items()]}
            log.append(done[key])
            print(f"truth study: n={n} seed={seed} done ({time.perf_counter() - started:.0f}s)", flush=True)
    rows = [row for n in config.n for seed in config.seeds for row in done[f"n={n}|seed={seed}"]["rows"]]
    zero_shot = _zero_shot_accuracy(model, tokenizer, test_pairs, test_labels, config.batch_size)
    summary = _summary(config, rows, zero_shot, len(test), model_info(model), time.perf_counter() - started)
    _write(config, rows, summary, out)
    return out


def _settings(config: TruthConfig) -> dict[str, Any]:
    return {key: value for key, value in as_dict(config).items() if key not in NOT_IN_SETTINGS}


def _point_log(config: TruthConfig, out: Path) -> tuple[points.PointLog, dict[str, dict[str, Any]]]:
    """The resumable log of finished (n, seed) fits (one JSON line each, as a study's points.jsonl)."""
    done = points.read_points([out / points.POINTS_FILE] if (out / points.POINTS_FILE).is_file() else [])
    settings = _settings(config)
    for record in done.values():
        if record.get("settings") != settings:
            changed = sorted(k for k in settings if (record.get("settings") or {}).get(k) != settings[k])
            raise ConfigError(f"output_dir={str(out)!r} holds a truth study with other settings ({', '.join(changed)}"
                              "); its fits cannot be resumed. Use a new output_dir or restore those settings.")
    return points.PointLog(out / points.POINTS_FILE), done


def _subset_index(train: list, n: int, seed: int) -> list[int]:
    """Indices into `train` of the nested n-statement subset for `seed`."""
    position = {id(item): i for i, item in enumerate(train)}
    return [position[id(item)] for item in training_subset(train, n, seed)]


def _rows(acts: PairActivations, rows: list[int]) -> PairActivations:
    return PairActivations({k: v[rows] for k, v in acts.positive.items()}, {k: v[rows] for k, v in acts.negative.items()})


def _zero_shot_accuracy(model, tokenizer, pairs, labels, batch_size: int) -> float:
    """The model's own answer: is "True" more likely than "False" after the question?"""
    prompts = [p.prompt for p in pairs]
    true = completion_logprobs(model, tokenizer, prompts, [p.positive for p in pairs], batch_size=batch_size)
    false = completion_logprobs(model, tokenizer, prompts, [p.negative for p in pairs], batch_size=batch_size)
    return float(((true > false) == torch.tensor(labels)).double().mean())


def _summary(config: TruthConfig, rows: list[dict], zero_shot: float, n_test: int, info: dict, seconds: float) -> dict:
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for name in config.estimators:
        for layer in sorted({r["layer"] for r in rows}):
            curve = {}
            for n in config.n:
                picked = [r for r in rows if r["estimator"] == name and r["layer"] == layer and r["n"] == n]
                curve[str(n)] = {key: dict(zip(("mean", "ci_low", "ci_high"), mean_ci95([r[key] for r in picked])))
                                 for key in ("accuracy", "accuracy_best_sign")}
            curves.setdefault(name, {})[str(layer)] = curve
    return {"kind": "truth", "config": as_dict(config), "model": info, "test_statements": n_test,
            "zero_shot_accuracy": zero_shot, "curves": curves, "seconds": seconds}


def _write(config: TruthConfig, rows: list[dict], summary: dict, out: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", text.getvalue())
    write_json(out / "summary.json", summary)
    _plot(summary, out / "truth.png")
    write_text(out / "report.md", _report(config, summary))
    if config.wandb:
        _log(config, rows, summary)


def _plot(summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    layers = list(next(iter(summary["curves"].values())))
    figure = Figure(figsize=(4 * len(layers), 3.4), layout="constrained")
    axes = figure.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    for axis, layer in zip(axes, layers):
        for name, by_layer in summary["curves"].items():
            curve = by_layer[layer]
            ns = [int(n) for n in curve]
            mean = [curve[str(n)]["accuracy"]["mean"] for n in ns]
            low = [curve[str(n)]["accuracy"]["ci_low"] for n in ns]
            high = [curve[str(n)]["accuracy"]["ci_high"] for n in ns]
            style = "-" if name not in ("pca", "ccs") else "--"
            axis.plot(ns, mean, style, marker="o", label=name)
            axis.fill_between(ns, low, high, alpha=0.15)
        axis.axhline(summary["zero_shot_accuracy"], color="black", lw=1, label="zero-shot answer")
        axis.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        axis.set_xscale("log", base=2)
        axis.set_title(f"layer {layer}")
        axis.set_xlabel("training statements n")
    axes[0].set_ylabel("held-out truth accuracy")
    axes[-1].legend(fontsize=7, loc="lower right")
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110))


def _report(config: TruthConfig, summary: dict) -> str:
    best = {}
    for name, by_layer in summary["curves"].items():
        largest = str(max(config.n))
        layer, curve = max(by_layer.items(), key=lambda item: item[1][largest]["accuracy"]["mean"])
        best[name] = (layer, curve)
    lines = [f"# Truth directions: {config.dataset} on {config.model}", "",
             f"{summary['test_statements']} held-out statements; seeds {config.seeds}; "
             f"the model's own zero-shot True/False answer is right on {summary['zero_shot_accuracy']:.1%}.",
             "CCS and PCA never see a label (their sign is chosen without labels; the better-sign accuracy is in "
             "brackets); mean_diff and logistic are supervised. Accuracy at each estimator's best layer "
             "(chosen at the largest n; per-layer curves in truth.png and summary.json):", "",
             "| estimator | layer | " + " | ".join(f"n={n}" for n in config.n) + " |",
             "|---|---|" + "---|" * len(config.n)]
    for name, (layer, curve) in best.items():
        cells = [f"{curve[str(n)]['accuracy']['mean']:.2f} ({curve[str(n)]['accuracy_best_sign']['mean']:.2f})"
                 for n in config.n]
        lines.append(f"| {name} | {layer} | " + " | ".join(cells) + " |")
    low, high = chance_band(summary["test_statements"])
    if low <= summary["zero_shot_accuracy"] <= high:
        lines += ["", f"**Warning: the model answers these statements at chance ({low:.2f}-{high:.2f} is the 95% band "
                      "of random answers).** Directions cannot find a truth the model does not compute; treat the "
                      "comparison of estimators above as uninformative for this model."]
    return "\n".join(lines) + "\n"


def _log(config: TruthConfig, rows: list[dict], summary: dict) -> None:
    import wandb

    run = tracking.init_run(config.wandb_project, f"{config.name}-truth", config.name, as_dict(config), "truth-study")
    if run is None:
        return
    try:
        run.log({"results": wandb.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])})
        run.summary.update({"zero_shot_accuracy": summary["zero_shot_accuracy"]})
    finally:
        run.finish()
