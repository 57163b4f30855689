"""A fair fight (issue 11): budget that grows with n, tuning on validation only, compute on the record,
judged generations, many behaviours in one study, user splits, CAA's token reduction. Tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from steerft import SteerConfig
from steerft.data import PromptFormatter, load_behaviour, split_items, training_subset
from steerft.metrics import JudgeError
from steerft.runconfig import ConfigError, build
from steerft.study import StudyConfig, run_study
from steerft.study import judging, methods, runner, select
from steerft.study.across import across_summary, n_to_match
from steerft.study.context import load_data
from steerft.study.points import read_points
from steerft.testing import tiny_model
from steerft.training import epoch_steps, fit_measured, training_rows

pytestmark = pytest.mark.usefixtures("offline_wandb")


def study(tiny_dir: Path, out: Path, **overrides) -> StudyConfig:
    data = {
        "name": "fair", "model": str(tiny_dir), "methods": ["caa"], "n": [2], "seeds": [0], "layers": [1, 2],
        "multipliers": [1.0, 4.0], "wandb": False, "output_dir": str(out),
        "train": {"adapter": {"layers": [2]}, "trainer": {"per_device_train_batch_size": 2}, "epochs": 1.5,
                  "min_steps": 2, "learning_rates": {"steer": [0.01, 0.3], "lora": [1e-4, 1e-2]}},
        "eval": {"test_items": 6, "val_items": 4, "neutral_prompts": 2, "general_texts": 2, "generation_prompts": 1,
                 "generation_tokens": 3, "reference_tokens": 3, "judge_prompts": 3, "judge_samples": 2,
                 "judge_tokens": 4},
        **overrides,
    }
    return build(StudyConfig, data)


def points(out: Path) -> dict[str, dict]:
    return read_points([out / "points.jsonl"])


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize(("n", "epochs", "min_steps", "batch", "steps"),
                         [(1, 3, 4, 4, 4), (16, 3, 4, 4, 12), (17, 1, 0, 4, 5), (512, 2, 4, 8, 128)])
def test_budget_grows_with_n_from_a_floor(n, epochs, min_steps, batch, steps):
    assert epoch_steps(n, epochs=epochs, min_steps=min_steps, batch_size=batch) == steps
    settings = build(StudyConfig, {"train": {"epochs": epochs, "min_steps": min_steps,
                                             "trainer": {"per_device_train_batch_size": batch}}}).train
    assert settings.steps(n) == steps == max(min_steps, math.ceil(epochs * n / batch))
    fixed = build(StudyConfig, {"train": {"trainer": {"max_steps": 7}}}).train
    assert fixed.steps(n) == 7 and "fixed" in fixed.budget()


@pytest.mark.parametrize(("method", "adapter"), [("sft", "lora"), ("dpo", "steer")])
def test_recorded_budget_is_what_the_trainer_did(method, adapter, tmp_path):
    model, tokenizer = tiny_model("llama", n_layers=4)
    items = training_subset(split_items(load_behaviour("sentiment").items, 0).train, 5, 0)
    config = SteerConfig(layers=[2]) if adapter == "steer" else LoraConfig(r=2, target_modules=["q_proj"],
                                                                          task_type="CAUSAL_LM")
    steps = epoch_steps(len(items), epochs=3, min_steps=2, batch_size=2)
    trained, budget = fit_measured(model, tokenizer, training_rows(method, items, PromptFormatter(tokenizer)),
                                   method=method, peft_config=config,
                                   args={"output_dir": str(tmp_path), "max_steps": steps,
                                         "per_device_train_batch_size": 2, "learning_rate": 0.01})
    assert budget.steps == steps == 8
    assert budget.examples == 14  # batches of 2, 2, 1 per pass over 5 rows: 8 steps see 14 rows
    assert budget.tokens_backward > 0 and budget.wall_time_s > 0
    if method == "dpo":  # the adapter-disabled reference passes are forward-only
        assert budget.tokens_forward > budget.tokens_backward
    else:
        assert budget.tokens_forward == budget.tokens_backward


# --------------------------------------------------------------------------- tuning on validation only


def test_learning_rates_are_chosen_on_validation_only_and_recorded(tiny_dir, tmp_path, monkeypatch):
    seen: list[str] = []
    real = select.preference

    def spy(model, tokenizer, pairs, **kwargs):
        seen.extend(pair.id for pair in pairs)
        return real(model, tokenizer, pairs, **kwargs)

    monkeypatch.setattr(select, "preference", spy)
    config = study(tiny_dir, tmp_path / "s", methods=["steer-sft", "lora-sft"], n=[1, 4],
                   judge={"kind": "none"})
    run_study(config)
    splits = split_items(load_behaviour("sentiment").items, config.split_seed, config.val_frac, config.test_frac)
    assert seen and set(seen) <= {item.id for item in splits.val[: config.eval.val_items]}
    assert not set(seen) & {item.id for item in splits.test}
    for record in points(tmp_path / "s").values():
        if record["method"] == "none":
            continue
        choice = record["choice"]
        kind = "steer" if record["method"] == "steer-sft" else "lora"
        grid = choice["tuning_grid"]
        assert sorted({t["learning_rate"] for t in grid}) == config.train.learning_rates[kind]
        best = max(grid, key=lambda t: (t["val_mean_margin"], -abs(t["multiplier"])))
        assert choice["learning_rate"] == best["learning_rate"]
        assert choice["budget"]["steps"] == max(2, math.ceil(1.5 * record["n"] / 2))
        assert all(t["budget"]["steps"] == choice["budget"]["steps"] for t in grid)
        assert choice["compute"]["tokens_backward"] == sum(t["budget"]["tokens_backward"] for t in grid)
    report = (tmp_path / "s" / "report.md").read_text()
    assert "## Budget and compute" in report and "JUDGING SKIPPED" in report
    assert (tmp_path / "s" / "compute.png").read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- judged generations


def test_every_point_is_judged_once_the_judge_is_fitted(tiny_dir, tmp_path, monkeypatch):
    fitted = []
    real = judging.fit_judge
    monkeypatch.setattr(judging, "fit_judge", lambda *a, **k: fitted.append(1) or real(*a, **k))
    config = study(tiny_dir, tmp_path / "s")
    run_study(config)
    assert fitted == [1]  # once per study, not per point
    records = points(tmp_path / "s")
    val_ids = {i.id for i in load_data(config).val}
    for record in records.values():
        judged = record["judged"]
        assert len(judged["prompt_ids"]) == 3 and judged["n_replies"] == 6
        assert not set(judged["prompt_ids"]) & val_ids  # replies to held-out test prompts
        assert all(0 <= b <= 1 for b in judged["per_prompt"]["behaviour"])
        assert judged["judge_heldout_n"] > 0 and judged["judge_fit_split"] == "validation"
        assert len(record["per_token_margins"]) == len(record["margins"])
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    caa = summary["ledger"]["methods"]["caa"]["2"]
    assert caa["judged"]["behaviour_effect"]["ci_low"] <= caa["judged"]["behaviour_effect"]["mean"]
    assert "## Behaviour on generations" in (tmp_path / "s" / "report.md").read_text()


def test_a_judge_near_chance_is_refused_and_the_study_says_so(tiny_dir, tmp_path, monkeypatch, capsys):
    def near_chance(*args, **kwargs):
        raise JudgeError("the fitted judge is near chance")

    monkeypatch.setattr(judging, "fit_judge", near_chance)
    run_study(study(tiny_dir, tmp_path / "s"))
    assert "JUDGE REFUSED" in capsys.readouterr().out
    assert all(r["judged"] == {"skipped": "the fitted judge is near chance"} for r in points(tmp_path / "s").values())
    assert "JUDGING SKIPPED:** the fitted judge is near chance" in (tmp_path / "s" / "report.md").read_text()


def test_judge_config_is_checked():
    with pytest.raises(ConfigError, match="judge.kind"):
        build(StudyConfig, {"judge": {"kind": "gpt"}})
    with pytest.raises(ConfigError, match="name_or_path"):
        build(StudyConfig, {"judge": {"kind": "classifier"}})


# --------------------------------------------------------------------------- many behaviours


def _summary(ns: list[int], effects: dict[str, dict]) -> dict:
    methods = {}
    for name, by_n in effects.items():
        shared = "all" in by_n
        methods[name] = {"shared": shared, "by_n": {str(n): {"effect": {"mean": e}} for n, e in by_n.items()}}
    return {"n": ns, "methods": methods}


def test_summary_across_behaviours_ranks_and_win_rates():
    summaries = {
        "a": _summary([1, 4], {"none": {"all": 0.0}, "caa": {1: 5.0, 4: 6.0}, "lora": {1: 1.0, 4: 8.0}}),
        "b": _summary([1, 4], {"none": {"all": 0.0}, "caa": {1: 2.0, 4: 2.0}, "lora": {1: 2.0, 4: 1.0}}),
    }
    out = across_summary(summaries)["methods"]
    # cells: (a,1) caa 1st lora 2nd; (a,4) lora 1st caa 2nd; (b,1) caa/lora tie 1.5; (b,4) caa 1st lora 2nd
    assert out["caa"]["mean_rank"] == pytest.approx((1 + 2 + 1.5 + 1) / 4)
    assert out["lora"]["mean_rank"] == pytest.approx((2 + 1 + 1.5 + 2) / 4)
    assert out["none"]["mean_rank"] == 3
    assert out["caa"]["win_rate"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert out["caa"]["pairwise_win_rate"]["lora"] == pytest.approx(2 / 4)
    assert out["lora"]["pairwise_win_rate"]["caa"] == pytest.approx(1 / 4)
    assert out["caa"]["mean_effect"] == pytest.approx((5 + 6 + 2 + 2) / 4)
    # best at the largest n: a -> lora 8.0 (80% = 6.4: caa never); b -> caa 2.0 (80% = 1.6: lora at n=1)
    assert out["caa"]["behaviours"]["a"]["n_to_match_best"] is None
    assert out["lora"]["behaviours"]["a"]["n_to_match_best"] == 4
    assert out["lora"]["behaviours"]["b"]["n_to_match_best"] == 1
    assert n_to_match({1: 1.0}, 0.0) is None


def test_datasets_run_one_grid_per_behaviour_and_a_summary(tiny_dir, tmp_path):
    out = run_study(study(tiny_dir, tmp_path / "s", datasets=["sentiment", "formality"], judge={"kind": "none"}))
    for behaviour in ("sentiment", "formality"):
        assert (out / behaviour / "report.md").is_file()
        assert json.loads((out / behaviour / "summary.json").read_text())["dataset"] == behaviour
    summary = json.loads((out / "summary.json").read_text())
    assert summary["behaviours"] == ["sentiment", "formality"] and set(summary["methods"]) == {"none", "caa"}
    assert "across behaviours" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="split_file"):
        study(tiny_dir, tmp_path / "t", datasets=["sentiment"], split_file="x.json")


# --------------------------------------------------------------------------- reproducible comparisons


def test_split_file_fixes_test_and_validation(tmp_path):
    items = load_behaviour("sentiment").items
    chosen = {"test": [items[0].id, items[5].id, items[9].id], "validation": [items[3].id, items[7].id]}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(chosen))
    data = load_data(build(StudyConfig, {"split_file": str(path), "n": [2]}))
    assert [i.id for i in data.test] == chosen["test"] and [i.id for i in data.val] == chosen["validation"]
    assert not {i.id for i in data.train} & set(chosen["test"] + chosen["validation"])
    with pytest.raises(ConfigError, match="split"):
        load_data(build(StudyConfig, {"split_file": str(tmp_path / "missing.json")}))


def test_caa_reduce_is_recorded_and_changes_the_vector(tiny_dir, tmp_path):
    config = study(tiny_dir, tmp_path / "s", judge={"kind": "none"})
    ctx = runner._context(config, load_data(config), tmp_path / "s")
    vectors = {}
    for reduce in ("mean", "last"):
        ctx.config, ctx.memo = dataclasses.replace(config, caa_reduce=reduce), {}
        vectors[reduce] = methods._vectors(ctx, 2, 0, "mean_diff")[1]
        assert methods._extraction_record(ctx, 2, 0)["caa_reduce"] == reduce
    assert not torch.allclose(vectors["mean"], vectors["last"])
    with pytest.raises(ConfigError, match="caa_reduce"):
        study(tiny_dir, tmp_path / "t", caa_reduce="first")
