"""The study runner end to end on a tiny random model: outputs, resuming, config errors, hygiene."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from steerft.batching import text_ids
from steerft.cli import main
from steerft.data import PromptFormatter, load_behaviour, split_items
from steerft.testing import tiny_model
from steerft.runconfig import ConfigError, build
from steerft.jobs.truth import TruthConfig, run_truth_study
from steerft.study import METHODS, StudyConfig, run_study
from steerft.study import runner, select
from steerft.study.outputs import CSV_COLUMNS
from steerft.study.config import EvalSettings
from steerft.study.context import load_data
from steerft.study.points import Point, PointLog, grid, read_points, unit_name, work_units
from steerft.study.report import crossover, n_to_fraction

pytestmark = pytest.mark.usefixtures("offline_wandb")

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def micro(tiny_dir: Path, out: Path, **overrides) -> dict:
    """A micro-study: 2 values of n, 2 seeds, caa + lora-sft (+ the implicit none): 9 points."""
    return {
        "name": "micro", "model": str(tiny_dir), "methods": ["caa", "lora-sft"], "n": [2, 4], "seeds": [0, 1],
        "layers": [1, 2], "multipliers": [1.0, 4.0], "wandb": False, "output_dir": str(out),
        "train": {"adapter": {"layers": [2]}, "trainer": {"max_steps": 2}, "multipliers": [1.0, 2.0]},
        "eval": {"test_items": 6, "val_items": 4, "neutral_prompts": 3, "general_texts": 2, "generation_prompts": 2,
                 "generation_tokens": 4, "reference_tokens": 4},
        **overrides,
    }


def results(out: Path) -> list[dict[str, str]]:
    """results.csv without the wall-time column (the one thing that differs between identical runs)."""
    with open(out / "results.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory) -> Path:
    """One uninterrupted micro-study with W&B on, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("micro")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(out))
        run_study(build(StudyConfig, micro(tiny_dir, out / "study", wandb=True)))
    return out / "study"


def test_micro_study_writes_every_output(finished):
    with open(finished / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert len(rows) == 1 + 2 * 2 * 2
    assert {r["method"] for r in rows} == {"none", "caa", "lora-sft"}
    assert [r for r in rows if r["method"] == "none"][0]["shared"] == "True"
    assert all(r["layer"] and r["multiplier"] for r in rows if r["method"] == "caa")
    assert all(int(r["params"]) == 64 for r in rows if r["method"] == "caa")  # one vector, hidden size 64

    summary = json.loads((finished / "summary.json").read_text())
    assert list(summary["methods"]) == ["none", "caa", "lora-sft"]
    assert set(summary["methods"]["caa"]["by_n"]) == {"2", "4"}
    assert set(summary["methods"]["none"]["by_n"]) == {"all"}
    stats = summary["methods"]["lora-sft"]["by_n"]["4"]
    effects = [float(r["effect"]) for r in rows if r["method"] == "lora-sft" and r["n"] == "4"]
    assert stats["seeds"] == 2 and stats["effect"]["mean"] == pytest.approx(sum(effects) / 2, rel=1e-12)

    for figure in ("curves.png", "side_effects.png"):
        assert (finished / figure).read_bytes().startswith(PNG_MAGIC)
    report = (finished / "report.md").read_text()
    for method in ("none", "caa", "lora-sft"):
        assert f"| {method} |" in report
    # free completions have no answer format to fail: the base model's preference is reported, not an alarm
    competence = summary["baseline"]["competence"]
    assert competence["gating"] is False and summary["interpretable"] is True
    assert not report.startswith("> **WARNING") and competence["message"] in report
    generations = sorted(p.name for p in (finished / "generations").iterdir())
    assert len(generations) == 9 and "caa_n2_seed0.json" in generations
    sample = json.loads((finished / "generations" / "caa_n2_seed0.json").read_text())
    assert len(sample["samples"]) == 2 and all(isinstance(s["generation"], str) for s in sample["samples"])
    runs = list((finished.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # one W&B run per method


def test_killed_study_resumes_without_losing_or_repeating_a_point(tiny_dir, finished, tmp_path, monkeypatch, capsys):
    computed: list[str] = []
    real = runner.compute_point

    class Killed(Exception):
        pass

    def counting(ctx, point, stop_after=None):
        if stop_after is not None and len(computed) == stop_after:
            raise Killed
        record = real(ctx, point)
        computed.append(point.key)
        return record

    config = build(StudyConfig, micro(tiny_dir, tmp_path / "study"))
    monkeypatch.setattr(runner, "compute_point", lambda ctx, point: counting(ctx, point, stop_after=3))
    with pytest.raises(Killed):
        run_study(config)
    assert len(read_points([tmp_path / "study" / "points.jsonl"])) == 3
    with open(tmp_path / "study" / "points.jsonl", "ab") as handle:  # a write torn by the kill
        handle.write(b'{"key": "caa|n=4|seed=1", "accur')

    monkeypatch.setattr(runner, "compute_point", counting)
    capsys.readouterr()
    run_study(config)
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 9
    printed = capsys.readouterr().out
    assert "of the study's 9 points (9 work units), 3 already done" in printed
    assert [line.split("]")[0] for line in printed.splitlines() if line.startswith("[")] == [
        f"[{k}/9" for k in range(4, 10)]
    assert results(tmp_path / "study") == results(finished)


def test_resuming_under_other_settings_is_refused(tiny_dir, finished, tmp_path):
    config = micro(tiny_dir, tmp_path / "study", n=[2])
    run_study(build(StudyConfig, config))
    with pytest.raises(ConfigError, match="multipliers"):
        run_study(build(StudyConfig, {**config, "multipliers": [2.0]}))


@pytest.mark.parametrize("overrides, message", [
    ({"methods": ["caa", "steering-magic"]}, r"methods: unknown method 'steering-magic'; allowed values: none, random"),
    ({"n": []}, r"n is empty"),
    ({"seeds": []}, r"seeds is empty"),
    ({"methods": ["pca"], "n": [1, 4]}, r"'pca' needs n >= 2"),
    ({"train": {"trainer": {"steps": 4}}}, r"train.trainer.steps is not a setting of TRL's SFTConfig / DPOConfig"),
    ({"train": {"adapter": {"positions": "prompt"}}}, r"train.adapter.positions='prompt'.*top level"),
    ({"train": {"adapter": {"kind": "lora"}}}, r"method names set the adapter kind"),
    ({"train": {"learning_rates": {"lora_lr": 0.01}}}, r"train.learning_rates.lora_lr: not an adapter kind"),
    ({"eval": {"test_items": 0}}, r"eval.test_items=0 must be positive"),
])
def test_bad_config_fails_at_once_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(StudyConfig, {"model": "/nonexistent", **overrides})


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("methods: [caa]\nn: [2, 8]\n")
    assert main(["study", "--config", str(config), "n=[]"]) == 2
    assert "n is empty" in capsys.readouterr().err


def test_layer_and_multiplier_are_chosen_on_validation_items_only(tiny_dir, tmp_path, monkeypatch):
    """Every prompt selection scores, attached (`preference`) or replayed (`site_logprobs`), is a validation item's."""
    seen: set[tuple[int, ...]] = set()
    real_preference, real_replay = select.preference, select.site_logprobs

    def recording_preference(model, tokenizer, pairs, **kwargs):
        seen.update(tuple(text_ids(tokenizer, pair.prompt)) for pair in pairs)
        return real_preference(model, tokenizer, pairs, **kwargs)

    def recording_replay(model, rows, candidates, **kwargs):
        seen.update(tuple(row.ids[: row.prompt_length]) for row in rows)
        return real_replay(model, rows, candidates, **kwargs)

    monkeypatch.setattr(select, "preference", recording_preference)
    monkeypatch.setattr(select, "site_logprobs", recording_replay)
    config = build(StudyConfig, micro(tiny_dir, tmp_path / "study", n=[2], seeds=[0],
                                      methods=["random", "caa", "steer-sft", "caa+system-prompt"]))
    run_study(config)
    dataset = load_behaviour("sentiment")
    splits = split_items(dataset.items, config.split_seed, config.val_frac, config.test_frac)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    formatters = [PromptFormatter(tokenizer), PromptFormatter(tokenizer, system_prompt=dataset.system_prompt)]

    def prompts(items) -> set[tuple[int, ...]]:
        return {tuple(text_ids(tokenizer, fmt.prompt(item))) for item in items for fmt in formatters}

    assert seen and seen <= prompts(splits.val[: config.eval.val_items])
    assert not seen & prompts(splits.test)
    rows = {r["method"]: r for r in results(tmp_path / "study")}
    assert (rows["random"]["layer"], rows["random"]["multiplier"]) == (rows["caa"]["layer"], rows["caa"]["multiplier"])


def test_point_log_drops_a_torn_last_line_and_refuses_a_broken_middle(tmp_path):
    path = tmp_path / "points.jsonl"
    log = PointLog(path)
    log.append({"key": "a"})
    log.append({"key": "b"})
    with open(path, "ab") as handle:
        handle.write(b'{"key": "c", "acc')
    assert list(read_points([path])) == ["a", "b"]
    PointLog(path).append({"key": "d"})
    assert list(read_points([path])) == ["a", "b", "d"]
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_points([path])


def test_crossover_and_sample_efficiency_come_from_the_curves():
    def stats(values: dict[int, float]) -> dict[int, dict[str, float]]:
        return {n: {"mean": v, "ci_low": v - 1, "ci_high": v + 1} for n, v in values.items()}

    steering = {"caa": stats({2: 3.0, 8: 4.0, 32: 4.5}), "steer-sft": stats({2: 1.0, 8: 5.0, 32: 5.0})}
    assert crossover(stats({2: 0.0, 8: 1.0, 32: 9.0}), steering)["n"] == 32
    assert crossover(stats({2: 0.0, 8: 1.0, 32: 2.0}), steering)["kind"] == "never"
    assert crossover(stats({2: 5.0, 8: 6.0, 32: 7.0}), steering)["kind"] == "always"
    assert crossover(stats({2: 5.0, 8: 1.0, 32: 7.0}), steering)["kind"] == "mixed"
    assert n_to_fraction({2: 1.0, 8: 8.5, 32: 10.0}) == 8
    assert n_to_fraction({2: -1.0, 8: -0.5}) is None


def test_every_registered_method_has_a_known_family():
    from steerft.study.methods import FAMILIES

    assert {m.family for m in METHODS.values()} <= set(FAMILIES)
    assert {name for name, m in METHODS.items() if m.shared} == {"none", "system-prompt"}


def test_work_units_keep_shared_work_together_and_put_training_first():
    """Methods sharing memoised work (caa and random read one choice; caa+lora-sft reuses lora-sft) form one
    unit; independent methods of one (n, seed) are units of their own. Units that train come first."""
    points = [Point("none")] + [Point(m, n, 0) for n in (1, 4, 16)
                                for m in ("random", "caa", "steer-sft", "few-shot", "lora-sft", "caa+lora-sft")]
    units = work_units(points)
    trained = [["random", "caa", "lora-sft", "caa+lora-sft"], ["steer-sft"]]
    assert [[p.method for p in unit] for unit in units] == [*trained * 3, ["none"], *[["few-shot"]] * 3]
    assert [unit[0].n for unit in units] == [1, 1, 4, 4, 16, 16, None, 1, 4, 16]  # grid order within each class
    assert sorted((p for unit in units for p in unit), key=points.index) == points
    assert len({unit_name(unit) for unit in units}) == len(units)
    assert unit_name(units[0]) == "n1.seed0.random,caa,lora-sft,caa+lora-sft" and unit_name(units[6]) == "shared.none"


def _share(tiny_dir: Path, out: Path, rank: int) -> tuple[list[Point], list[str]]:
    """Rank `rank` of two walks a 3-point study (none, caa, lora-sft at one n and seed) with no other rank
    running; returns the points and the keys in this rank's own log."""
    config = build(StudyConfig, micro(tiny_dir, out, n=[2], seeds=[0]))
    points = grid(config)
    runner._compute_share(config, load_data(config), points, out, rank, 2)
    return points, list(read_points([out / f"points.rank{rank}.jsonl"]))


def test_a_rank_alone_computes_every_unit(tiny_dir, tmp_path):
    _, mine = _share(tiny_dir, tmp_path / "study", rank=1)
    assert mine == ["lora-sft|n=2|seed=0", "none|shared", "caa|n=2|seed=0"]  # the trained unit first


def test_a_unit_held_by_another_process_is_skipped_and_taken_once_its_holder_dies(tiny_dir, tmp_path):
    out = tmp_path / "study"
    held = out / runner.CLAIMS_DIR / "n2.seed0.lora-sft.lock"
    held.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"import sys; from filelock import FileLock; lock = FileLock("
                               f"{str(held)!r}); lock.acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        points, mine = _share(tiny_dir, out, rank=0)
        assert mine == ["none|shared", "caa|n=2|seed=0"]
    finally:
        holder.kill()  # the system frees a dead holder's lock: a killed study resumes
        holder.wait()
    _, mine = _share(tiny_dir, out, rank=0)
    assert sorted(mine) == sorted(p.key for p in points)


def test_two_local_workers_split_the_grid_and_match_one_process(tiny_dir, finished, tmp_path, capfd):
    run_study(build(StudyConfig, micro(tiny_dir, tmp_path / "two", workers=2, threads=1)))
    out = capfd.readouterr().out
    assert "[rank 0]" in out and "[rank 1]" in out
    assert "] [9/9] " in out  # the rank that finishes the study's last point counts every rank's points
    assert not list((tmp_path / "two").glob("points.rank*.jsonl"))  # merged into points.jsonl
    assert not (tmp_path / "two" / runner.CLAIMS_DIR).exists()  # every rank has ended
    assert results(tmp_path / "two") == results(finished)


@pytest.mark.distributed
def test_two_launched_processes_split_the_grid_and_match_one(tiny_dir, finished, tmp_path):
    config = tmp_path / "micro.yaml"
    config.write_text(json.dumps(micro(tiny_dir, tmp_path / "two")))  # JSON is YAML
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([*launch, str(REPO / "recipes" / "study.py"), "--config", str(config), "threads=1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 1]" in done.stdout and "[rank 0]" in done.stdout
    assert not list((tmp_path / "two").glob("points.rank*.jsonl"))  # merged into points.jsonl
    assert results(tmp_path / "two") == results(finished)


def test_truth_study_writes_curves_for_every_estimator_and_layer(tmp_path, monkeypatch):
    """The truth kind: label-free and supervised directions scored on held-out statements."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model, tokenizer = tiny_model("llama", n_layers=4)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    config = TruthConfig(model=str(tmp_path / "tiny"), dataset="truth", n=[2, 8], seeds=[0, 1], layers=[1, 3],
                         estimators=["ccs", "pca", "mean_diff"], output_dir=str(tmp_path / "out"), wandb=False,
                         threads=1, test_items=16)
    out = run_truth_study(config)
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2 * 3  # n x seeds x layers x estimators
    assert {r["supervised"] for r in rows if r["estimator"] in ("ccs", "pca")} == {"False"}
    for row in rows:  # a share of the 16 test statements; the flipped direction gets the other ones right
        accuracy = float(row["accuracy"])
        assert (accuracy * 16).is_integer() and float(row["accuracy_best_sign"]) == max(accuracy, 1 - accuracy)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_statements"] == 16 and (summary["zero_shot_accuracy"] * 16).is_integer()
    assert set(summary["curves"]) == {"ccs", "pca", "mean_diff"}
    assert (out / "truth.png").stat().st_size > 0 and "| ccs |" in (out / "report.md").read_text()


def test_truth_study_refuses_n_below_two_and_unknown_estimators():
    with pytest.raises(ConfigError, match="n >= 2"):
        TruthConfig(n=[1, 4])
    with pytest.raises(ConfigError, match="estimators"):
        TruthConfig(estimators=["svm"])


@pytest.mark.parametrize("path", sorted((REPO / "eval" / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_config_passes_the_checks(path):
    """A shipped config that fails its own checks would greet a user with an error."""
    from steerft.runconfig import load_config
    from steerft.study.config import check

    if path.name == "truth.yaml":  # `steerft truth`'s config, checked when built
        build(TruthConfig, load_config(path))
        return
    config = build(StudyConfig, load_config(path))
    check(config)
    # and its held-out splits hold the items it asks to score (a shorter split is scored whole, with a note)
    data = load_data(config)
    for asked, split in ((config.eval.val_items, data.val), (config.eval.test_items, data.test)):
        assert asked is None or len(split) == asked, (asked, len(split))


def test_a_held_out_split_shorter_than_asked_is_said_in_one_line(capsys):
    config = StudyConfig(dataset="sentiment", n=[4], eval=EvalSettings(test_items=10_000, val_items=3))
    data = load_data(config)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(data.val) == 3 and 0 < len(data.test) < 10_000
    assert lines == [f"steerft study: eval.test_items=10000, but only {len(data.test)} are available; using those "
                     f"{len(data.test)}. Raise test_frac (now 0.2) or give split_file to hold more."]
