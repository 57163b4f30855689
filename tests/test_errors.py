"""Issue 13: no silent wrong results, one clear line per bad input, nothing left behind (tiny models)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback

from steerft import cli
from steerft.io import TEMP_PREFIX, atomic_dir
from steerft.jobs import train, truth
from steerft.jobs.train import TrainConfig, run_training
from steerft.jobs.truth import TruthConfig, run_truth_study
from steerft import models
from steerft.models import AdapterLoadError, load_model
from steerft.runconfig import ConfigError, as_dict, build
from steerft.study import StudyConfig, run_study
from steerft.study import outputs, runner

pytestmark = pytest.mark.usefixtures("offline_wandb")

ROOT = Path(__file__).resolve().parents[1]


def train_config(tiny_dir: Path, out: Path, **overrides) -> TrainConfig:
    settings = {"model": str(tiny_dir), "n": 4, "eval_items": 0, "wandb": False, "output_dir": str(out),
                "adapter": {"layers": [2]}, "trainer": {"max_steps": 2, "per_device_train_batch_size": 2},
                **overrides}
    return build(TrainConfig, settings)


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; the one stderr line of a refused config."""
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("kind", ["steer", "lora"])
def test_load_model_of_a_run_folder_returns_the_trained_model(tiny_dir, tmp_path, kind):
    run_dir = run_training(train_config(tiny_dir, tmp_path, adapter={"kind": kind, "layers": [2]}))
    model, tokenizer = load_model(str(run_dir))
    assert isinstance(model, PeftModel) and not model.training
    trained = {k: v for k, v in model.state_dict().items() if ("steer" in k or "lora_B" in k)}
    assert trained and any(v.abs().sum() > 0 for v in trained.values())  # steer inits at 0, LoRA B too
    base, _ = load_model(str(tiny_dir))
    ids = tokenizer("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)


def test_load_model_of_a_broken_adapter_names_the_file(tiny_dir, tmp_path):
    run_dir = run_training(train_config(tiny_dir, tmp_path))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (run_dir / name).unlink(missing_ok=True)
    model, tokenizer = load_model(str(run_dir))  # no tokenizer in the folder: the base model's
    assert isinstance(model, PeftModel) and tokenizer.pad_token is not None
    (run_dir / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterLoadError, match="adapter_config.json is not valid JSON"):
        load_model(str(run_dir))


def test_rows_cut_by_max_length_are_counted_and_announced(tiny_dir, tmp_path):
    """The tiny tokenizer spells rows out: prompts of 85-100 tokens, whole rows of 151-173."""
    with pytest.warns(UserWarning, match=r"max_length=160: TRL dropped 0 of 4 training rows .* and cut 1 more"):
        run_dir = run_training(train_config(tiny_dir, tmp_path, trainer={"max_steps": 1, "max_length": 160}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["rows_given"], metrics["rows_trained"], metrics["rows_cut"], metrics["n_train"]) == (4, 4, 1, 4)
    with pytest.raises(ConfigError, match="max_length=50 leaves none of the 4 training rows"):
        run_training(train_config(tiny_dir, tmp_path, trainer={"max_steps": 1, "max_length": 50}, overwrite=True))


def test_adapter_flag_gets_its_kinds_learning_rate(capsys):
    args = cli.parse(["train", "--config", str(ROOT / "recipes/configs/sft_steer.yaml"), "--adapter", "lora"])
    resolved, *_ = train._resolve(build(TrainConfig, cli.config_data(args)))
    assert resolved.trainer["learning_rate"] == 1e-3
    args = cli.parse(["train", "--config", str(ROOT / "recipes/configs/sft_steer.yaml"), "--adapter", "lora",
                      "trainer.learning_rate=0.05"])
    resolved, *_ = train._resolve(build(TrainConfig, cli.config_data(args)))
    assert resolved.trainer["learning_rate"] == 0.05


def test_nonnegative_summaries_never_go_below_zero():
    rows = [{"key": str(i), "kl": v, "delta_ce": v, "wall_time_s": v} for i, v in enumerate((0.0, 0.0, 0.3))]
    records = {str(i): {"margins": [m, -m, 0.5]} for i, m in enumerate((1.0, -2.0, 0.3))}
    stats = outputs._stats(rows, records, {"margins": [0.0, 0.0, 0.0]}, None)
    assert stats["kl"]["ci_low"] == 0.0 and stats["wall_time_s"]["ci_low"] == 0.0
    assert stats["delta_ce"]["ci_low"] < 0.0  # signed quantities keep the plain t-interval


# --------------------------------------------------------------------------- one clear line


@pytest.mark.parametrize("argv, expected", [
    (["study", "n=[1,4"], r"Override 'n=\[1,4': the value is not valid YAML"),
    (["study", "multipliers=[4,big]"], r"the element 'big' is not a number"),
    (["extract", "estimators=[mean_diff,cca]"], r"unknown estimator 'cca'; allowed values: mean_diff"),
    (["extract", "reduce=max"], r"'max' is not one of: last, mean"),
    (["extract", "n=1"], r"n=1: estimator\(s\) pca, logistic need at least 2 pairs"),
    (["extract", "n=-5"], r"n=-5 must be >= 1"),
    (["train", "seed=-1"], r"seed=-1 must be >= 0"),
    (["extract", "seed=-1"], r"seed=-1 must be >= 0"),
    (["truth", "seeds=[-1]"], r"seeds=\[-1\] must be >= 0"),
])
def test_bad_values_get_one_line_naming_them(capsys, argv, expected):
    assert re.search(expected, cli_error(capsys, argv))


@pytest.mark.parametrize("job", ["train", "study", "extract", "truth"])
def test_an_output_dir_that_is_a_file_or_unwritable_is_refused(capsys, tmp_path, job):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is a file" in cli_error(capsys, [job, f"output_dir={blocker}"])
    assert "is a file" in cli_error(capsys, [job, f"output_dir={blocker / 'below'}"])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root ignores permissions
        assert "no permission to write" in cli_error(capsys, [job, f"output_dir={locked / 'out'}"])


def test_a_corrupt_point_log_is_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "points.jsonl").write_text('{"key": "none|shared"}\n{broken\n{"key": "x"}\n')
    line = cli_error(capsys, ["study", f"model={tiny_dir}", f"output_dir={out}", "wandb=false"])
    assert "points.jsonl, line 2: not a point record" in line


def test_a_corrupt_init_adapter_names_the_file(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "vector"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("[1, 2")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert "adapter_config.json is not valid JSON" in cli_error(capsys, ["train", f"adapter.init={folder}"])
    (folder / "adapter_config.json").write_text('{"peft_type": "STEER"}')
    assert "adapter_model.safetensors is not a readable safetensors file" in cli_error(
        capsys, ["train", f"adapter.init={folder}"])


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_job", interrupted)
    assert cli.main(["study"]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


def test_train_help_lists_the_config_keys():
    help_text = subprocess.run([sys.executable, "-m", "steerft.cli", "train", "--help"], capture_output=True,
                               text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "adapter.layers=[14]" in help_text and "resume=False" in help_text and "trainer={}" in help_text


# --------------------------------------------------------------------------- files left behind


def micro_study(tiny_dir: Path, out: Path, **overrides) -> StudyConfig:
    return build(StudyConfig, {
        "model": str(tiny_dir), "methods": ["caa"], "n": [2], "seeds": [0], "layers": [1], "multipliers": [1.0],
        "wandb": False, "output_dir": str(out), "train": {"adapter": {"layers": [2]}},
        "eval": {"test_items": 4, "val_items": 4, "neutral_prompts": 2,
                 "general_texts": 2, "generation_prompts": 1,
                 "generation_tokens": 2, "reference_tokens": 2},
        **overrides})


def test_a_study_refused_for_its_layers_writes_nothing_and_never_blocks_the_next(tiny_dir, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(ConfigError, match="layers"):
        run_study(micro_study(tiny_dir, out, layers=[99]))
    assert not (out / runner.STUDY_FILE).exists()
    (out / runner.STUDY_FILE).write_text(json.dumps({"fingerprint": {"layers": [99]}}))  # a stale one, no points
    run_study(micro_study(tiny_dir, out))
    assert (out / "report.md").is_file() and not list(out.glob(".study.owner"))


def test_a_second_study_on_one_folder_is_refused_naming_the_holder(tiny_dir, tmp_path):
    out = tmp_path / "study"
    with runner._study_lock(out):
        with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on "):
            run_study(micro_study(tiny_dir, out))


def test_a_dead_writers_generations_folder_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    left = tmp_path / f"{TEMP_PREFIX}{socket.gethostname()}~{dead.pid}~abcd~generations"
    left.mkdir()
    (left / "caa.json").write_text("{}")
    with atomic_dir(tmp_path / "generations") as folder:  # what outputs._write_generations writes through
        (folder / "none.json").write_text("{}")
    assert not left.exists() and (tmp_path / "generations" / "none.json").is_file()


class StopAt(TrainerCallback):
    """A kill after `step` optimiser steps (their checkpoints written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt


def test_a_killed_train_run_resumes_and_a_finished_one_is_not_overwritten(tiny_dir, tmp_path, monkeypatch):
    config = train_config(tiny_dir, tmp_path, run_name="run",
                          trainer={"max_steps": 3, "save_steps": 1, "per_device_train_batch_size": 2})
    build_trainer = train.build_trainer
    monkeypatch.setattr(train, "build_trainer", lambda *a, **k: build_trainer(*a, **k, callbacks=[StopAt(2)]))
    with pytest.raises(KeyboardInterrupt):
        run_training(config)
    monkeypatch.setattr(train, "build_trainer", build_trainer)
    run_dir = tmp_path / "run"
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    with pytest.raises(ConfigError, match="checkpoints of an interrupted run; set resume=true"):
        run_training(config)
    run_training(build(TrainConfig, {**as_dict(config), "resume": True}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and not list(run_dir.glob("checkpoint-*"))
    with pytest.raises(ConfigError, match="holds a finished run; choose another run_name, or set overwrite=true"):
        run_training(config)
    run_training(build(TrainConfig, {**as_dict(config), "overwrite": True}))


def test_truth_study_resumes_from_its_point_log(tmp_path, tiny_dir, monkeypatch):
    config = TruthConfig(model=str(tiny_dir), n=[2], seeds=[0], layers=[1], estimators=["mean_diff"], test_items=8,
                         output_dir=str(tmp_path / "truth"), wandb=False)
    out = run_truth_study(config)
    first = (out / "results.csv").read_text()
    fitted = []
    real = truth.truth_directions
    monkeypatch.setattr(truth, "truth_directions", lambda *a, **k: fitted.append(1) or real(*a, **k))
    run_truth_study(config)
    assert fitted == [] and (out / "results.csv").read_text() == first
    run_truth_study(TruthConfig(**{**as_dict(config), "seeds": [0, 1]}))
    assert len(fitted) == 1  # only the new seed
    with pytest.raises(ConfigError, match="holds a truth study with other settings"):
        run_truth_study(TruthConfig(**{**as_dict(config), "layers": [2]}))


def test_an_adapter_trained_on_a_builtin_reloads_on_another_machine(tmp_path, monkeypatch):
    """A built-in base is recorded as its cache path; where that path does not exist, the name is used."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "STEER", "base_model_name_or_path": "/elsewhere/cache/smollm2-135m-instruct"}))
    asked = []

    def fake_load(name, **kwargs):
        asked.append(name)
        raise FileNotFoundError(name)

    monkeypatch.setattr(models, "load_model", fake_load)
    with pytest.raises(FileNotFoundError):
        models._load_adapter(folder)
    assert asked == ["smollm2-135m-instruct"]
