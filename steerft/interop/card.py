"""Hub-ready adapter folders: the base model's Hub id in `adapter_config.json` and a real model card.

The card is a `huggingface_hub.ModelCard`, PEFT's own mechanism: PEFT's `save_pretrained` loads an
existing README.md and only adds its tags and version lines, so a later save keeps this card.
What it says comes from the folder: the adapter config (site) and the run files steerft leaves beside
an adapter: a `steerft train` folder's `subset_ids.json`, `config.yaml` and `metrics.json`, or a
`steerft extract` run's `run.json` and `report.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from steerft.io import write_json, write_text
from steerft.models import builtin_hub_ids

from .adapter import CONFIG_FILE, SteerAdapter, read_adapter

CARD_FILE = "README.md"


def prepare_for_hub(folder: str | Path, *, base_model: str | None = None, made_with: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, repo_id: str | None = None) -> ModelCard:
    """Make `folder` ready to share: record the base model's Hub id and write its model card.

    base_model: Hub id to record (default: the one in adapter_config.json; a built-in name becomes its Hub id).
    made_with: how the vector was made, e.g. {"method": "caa", "dataset": "sentiment", "n": 16, "seed": 0};
        merged over what the folder's run files say.
    metrics: evaluation numbers; merged over the folder's metrics.json.
    """
    folder = Path(folder)
    adapter = read_adapter(folder)
    hub_id = _hub_id(base_model or adapter.base_model)
    if hub_id != adapter.base_model:
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["base_model_name_or_path"] = hub_id
        write_json(folder / CONFIG_FILE, config)
        adapter.config["base_model_name_or_path"] = hub_id
    made, measured = _run_records(folder)
    card = model_card(adapter, {**made, **(made_with or {})}, {**measured, **(metrics or {})}, repo_id or folder.name)
    write_text(folder / CARD_FILE, str(card))
    return card


def _hub_id(name: str | None) -> str | None:
    return builtin_hub_ids().get(name, name) if name else None


def model_card(adapter: SteerAdapter, made_with: dict[str, Any], metrics: dict[str, Any], repo_id: str) -> ModelCard:
    base = adapter.base_model
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=sorted({"steerft", "steering-vector", "peft", *([f"base_model:adapter:{base}"] if base else [])}),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + _body(adapter, made_with, metrics, repo_id))


def _body(adapter: SteerAdapter, made_with: dict[str, Any], metrics: dict[str, Any], repo_id: str) -> str:
    config = adapter.config
    layers = sorted(adapter.vectors)
    norms = ", ".join(f"{layer}: {adapter.vectors[layer].norm():.3g}" for layer in layers)
    lines = [
        f"# {repo_id}",
        "",
        f"A steering vector for `{adapter.base_model or 'an unrecorded base model'}`, saved as a PEFT adapter of "
        "steerft's `steer` method: one vector per steered decoder block, "
        f"{sum(v.numel() for v in adapter.vectors.values())} parameters in all.",
        "",
        "## Site",
        "",
        "| blocks (0-based) | positions | operator | multiplier | vector norms |",
        "|---|---|---|---|---|",
        f"| {', '.join(map(str, layers))} | {config.get('positions', 'all')} | {config.get('operator', 'add')} "
        f"| {adapter.multiplier:g} | {norms} |",
        "",
        "The vector acts on the output of each listed block (what `output_hidden_states[L + 1]` reports).",
        "",
        "## How it was made",
        "",
        *(_bullets(made_with) or ["Not recorded: pass `made_with=` to `prepare_for_hub`."]),
        "",
        "## Evaluation",
        "",
        *(_bullets(metrics) or ["No evaluation numbers were recorded with this adapter."]),
        "",
        "## Usage",
        "",
        "```python",
        "import steerft  # registers the `steer` PEFT method",
        "from peft import AutoPeftModelForCausalLM",
        "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
        "model.set_multiplier(2.0)  # change the strength without reloading",
        "```",
        "",
        "Elsewhere: `steerft export gguf ADAPTER vector.gguf` writes a llama.cpp control vector "
        "(`llama-cli -m MODEL.gguf --control-vector-scaled vector.gguf 1.0`), and "
        "`steerft export merged ADAPTER OUT_DIR` a plain transformers checkpoint (where merging is exact).",
        "",
    ]
    return "\n".join(lines)


def _bullets(values: dict[str, Any]) -> list[str]:
    return [f"- {key}: {_short(value)}" for key, value in values.items() if not isinstance(value, (dict, list))]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_records(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """How the adapter was made and its numbers, from the run files steerft leaves beside it."""
    if (folder / "subset_ids.json").is_file():  # a `steerft train` run folder
        subset, run_config = _read_json(folder / "subset_ids.json"), _read_yaml(folder / "config.yaml")
        made = {key: run_config[key] for key in ("method", "adapter", "model", "lr", "steps") if key in run_config}
        made |= {key: subset[key] for key in ("dataset", "n", "seed") if key in subset}
        return made, _read_json(folder / "metrics.json")
    run_dir = folder.parent.parent  # `steerft extract`: <run>/adapters/<estimator>-layer<L>
    run = _read_json(run_dir / "run.json").get("config", {})
    report = next((r for r in _read_json(run_dir / "report.json").get("reports", [])
                   if f"{r.get('estimator')}-layer{r.get('layer')}" == folder.name), None)
    if not run or report is None:
        return {}, _read_json(folder / "metrics.json")
    made = {"method": f"extraction ({report['estimator']})", "model": run.get("model"), "dataset": run.get("dataset"),
            "n": report.get("n_train"), "seed": run.get("seed"), "read at block": report.get("layer")}
    numbers = {key: report[key] for key in ("train_accuracy", "heldout_accuracy", "norm") if report.get(key) is not None}
    return made, numbers


def _read_json(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text()) if path.is_file() else {}
    return loaded if isinstance(loaded, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return loaded if isinstance(loaded, dict) else {}
