"""The study never misleads (issue 9): one test per way it used to, on data built for it.

Report tests use constructed point records (no model); selection and wiring tests use the tiny
random model, which is at chance on everything.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from steerft.metrics import competence_check
from steerft.runconfig import ConfigError, build
from steerft.study import StudyConfig, run_study
from steerft.study.context import check_system_prompt, load_data, prompt_format
from steerft.study.evaluate import TEST_METRIC
from steerft.study.outputs import point_rows, summarise
from steerft.study.plots import plot_curves, title_of
from steerft.study.points import Point, grid
from steerft.study.report import NOT_DISTINGUISHABLE, NOT_INTERPRETABLE, render_report
from steerft.study.select import Candidate, best_of
from steerft.testing import tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- constructed point records


def config(**overrides) -> StudyConfig:
    return build(StudyConfig, {"name": "honest", "model": "/nonexistent", "methods": ["caa", "lora-sft",
                               "system-prompt"], "n": [4, 16], "seeds": [0], "wandb": False, **overrides})


def record(point: Point, margins: list[float], *, kl: float = 0.1, ce: float = 2.0, family: str = "steering",
           **extra) -> dict:
    shared = point.n is None
    return {"key": point.key, "method": point.method, "family": family, "n": point.n, "seed": point.seed,
            "shared": shared, "accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins), "margins": margins, "kl": kl, "ce": ce, "params": 0,
            "choice": {}, "generations": [], "wall_time_s": 1.0, "per_token_margins": margins,
            "judged": {"skipped": "not judged in this test"}, **extra}


def baseline(margins: list[float], answers: list[str | None]) -> dict:
    """The `none` record as evaluate.measure writes it: margins, matching answers and the verdict."""
    verdict = competence_check(margins, answers, metric_name=TEST_METRIC)
    return record(Point("none"), margins, kl=0.0, family="baseline", matching_answers=answers,
                  competence=verdict.as_dict())


def study(cfg: StudyConfig, base: dict, margins_of, choice_of=lambda point: {}) -> tuple[dict, str]:
    """summary and report.md for `cfg`'s grid, each point's margins from `margins_of(point)` and its recorded
    choice (e.g. the training budget it got) from `choice_of(point)`."""
    families = {"caa": "steering", "lora-sft": "finetuning", "system-prompt": "prompting"}
    records = {base["key"]: base}
    for point in grid(cfg):
        if point.method != "none":
            records[point.key] = record(point, margins_of(point), family=families[point.method],
                                        choice=choice_of(point))
    points = grid(cfg)
    rows = point_rows(points, records)
    summary = summarise(cfg, points, rows, records)
    return summary, render_report(cfg, summary, rows)


def test_an_ab_set_at_chance_with_a_letter_bias_warns_first_and_claims_no_steering():
    # the model says (A) on every item (a strong letter bias) and so knows nothing: balanced accuracy 0.5
    answers = ["A", "B"] * 15
    base = baseline([2.0 if a == "A" else -2.0 for a in answers], answers)
    # a vector that pushes every item to (B): a letter direction, moved hard
    summary, report = study(config(), base, lambda p: [-1.0 if a == "A" else 3.0 for a in answers])
    assert not summary["interpretable"]
    assert report.startswith("> **WARNING: THE BASE MODEL IS AT CHANCE ON THIS METRIC")
    assert "balanced accuracy 0.500" in report.splitlines()[2]
    assert "moves the behaviour" not in report
    assert report.count(NOT_INTERPRETABLE) >= 4  # every non-baseline point of the effect table
    assert "ANSWER SHIFT" in report and "toward 'B'" in report
    assert "Not reported: the base model is at chance" in report


def test_a_model_giving_one_answer_to_every_item_gets_its_exact_chance_level_not_a_band_of_zero_width():
    answers = ["Yes", "No"] * 15
    base = baseline([1.5 if a == "No" else -1.5 for a in answers], answers)  # "No" to every item
    _, report = study(config(), base, lambda p: base["margins"])
    assert "balanced accuracy 0.500" in report and "chance band" not in report
    assert re.search(r"(\d\.\d{3})-\1(?!\d)", report) is None  # no "0.500-0.500"
    assert "a model that gives one answer to every item, as this one does, scores exactly 0.500" in report
    assert "'No' on 100% of items" in report


def test_the_header_names_a_training_budget_only_when_a_point_trained():
    base = baseline([1.0 + 0.1 * i for i in range(10)], [None] * 10)
    _, report = study(config(methods=["caa", "system-prompt"]), base, lambda p: base["margins"])
    assert "Trained methods" not in report
    cfg = config()
    budget = {"steps": 4, "examples": 16, "tokens_forward": 320, "tokens_backward": 320}
    _, report = study(cfg, base, lambda p: base["margins"],
                      lambda p: {"budget": budget, "learning_rate": 1e-3} if p.method == "lora-sft" else {})
    header = report.split("\n\n## ")[0]
    assert f"Trained methods: {cfg.train.budget()}, at every n." in header


def test_always_no_on_a_57_43_yes_no_split_is_not_a_positive_behaviour_effect():
    answers = ["No"] * 17 + ["Yes"] * 13  # 57% / 43%
    base = baseline([1.5 if a == "No" else -1.5 for a in answers], answers)
    assert base["accuracy"] == pytest.approx(17 / 30)  # accuracy = the split's share of "No"
    # "say No more": a positive mean effect with no item changing its answer
    summary, report = study(config(), base, lambda p: [3.5 if a == "No" else -3.5 for a in answers])
    effect = summary["methods"]["caa"]["by_n"]["4"]["effect"]
    assert effect["mean"] > 0 and summary["methods"]["caa"]["by_n"]["4"]["flipped"]["mean"] == 0
    assert not summary["interpretable"] and "moves the behaviour up" not in report
    by_answer = summary["methods"]["caa"]["by_n"]["4"]["effect_by_answer"]
    assert by_answer["No"]["mean"] > 0 > by_answer["Yes"]["mean"]
    assert "| effect on No-matching | effect on Yes-matching |" in report


def test_a_competent_base_model_still_gets_an_answer_shift_called_out():
    answers = ["A", "B"] * 20
    base = baseline([1.0 + 0.1 * (i % 3) for i in range(40)], answers)  # prefers the matching answer
    assert base["competence"]["passed"]
    summary, report = study(config(), base, lambda p: [m + (3.0 if a == "A" else -3.0)
                                                       for m, a in zip(base["margins"], answers)])
    assert summary["interpretable"] and not report.startswith(">")
    assert "answer shift toward 'A', not the behaviour" in report
    assert "moves the behaviour" not in report


def test_one_seed_and_shared_methods_get_item_level_intervals():
    answers = [None] * 30
    rng = random.Random(0)
    base = baseline([2.0 + rng.gauss(0, 1) for _ in range(30)], answers)
    summary, report = study(config(), base, lambda p: [m + 1.0 + rng.gauss(0, 3) for m in base["margins"]])
    for name, n in (("caa", "4"), ("lora-sft", "16"), ("system-prompt", "all")):
        effect = summary["methods"][name]["by_n"][n]["effect"]
        assert summary["methods"][name]["by_n"][n]["seeds"] == 1
        assert effect["ci_low"] < effect["mean"] < effect["ci_high"]
    assert "| system-prompt | any | 1 | +" in report and " [" in report.split("| system-prompt | any |")[1]


def test_n_to_80_percent_and_crossover_only_where_distinguishable():
    answers = [None] * 30
    base = baseline([1.0 + 0.01 * i for i in range(30)], answers)
    rng = random.Random(1)
    noise = {key: [rng.gauss(0, 5) for _ in range(30)] for key in ("caa", "lora-sft")}

    def noisy(point: Point) -> list[float]:  # effects far inside the item noise
        return [m + 0.1 + e for m, e in zip(base["margins"], noise.get(point.method, [0.0] * 30))]

    summary, report = study(config(), base, noisy)
    assert summary["interpretable"]
    cost = report.split("## Cost")[1]
    assert "| caa | " in cost and NOT_DISTINGUISHABLE in cost.split("| caa | ")[1].split("\n")[0]
    assert "no crossover claimed" in report or "does not overtake" in report

    def clear(point: Point) -> list[float]:  # lora-sft far ahead of caa at every n, on every item
        lift = {"caa": 1.0, "lora-sft": 5.0 if point.n == 16 else 0.5}.get(point.method, 0.0)
        return [m + lift for m in base["margins"]]

    summary, report = study(config(), base, clear)
    assert "| caa | +1.00 (n=4) | 4 |" in report
    assert "**lora-sft** overtakes steering at n = 16" in report and "paired difference +4.00" in report


def test_report_and_figure_titles_survive_a_long_dataset_path(tmp_path):
    path = "/very/long/path/to/a/folder/of/public/model-written-evals/advanced-ai-risk/" + "x" * 40 + ".jsonl"
    answers = [None] * 10
    cfg = config(dataset=path)
    base = baseline([float(i % 3) for i in range(10)], answers)
    summary, report = study(cfg, base, lambda p: [m + 1 for m in base["margins"]])
    title = title_of(summary)
    assert "x" * 40 + ".jsonl" in title.replace("\n", "") and "/very/long" not in title
    assert max(len(line) for line in title.splitlines()) <= 70
    assert plot_curves(summary, tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------- selection


def candidate(multiplier: float, margins: list[float], *, kl: float | None = None, excluded: str | None = None,
              layer: int = 1) -> Candidate:
    values = torch.tensor(margins)
    return Candidate(layer, multiplier, (values > 0).double().mean().item(), values.mean().item(), kl, None,
                     excluded, tuple(margins))


def test_a_candidate_that_breaks_the_model_never_wins():
    zero = candidate(0.0, [0.1] * 20, kl=0.0)
    broken = candidate(40.0, [50.0] * 20, kl=7.1, excluded="kl 7.1 > cap 1")
    choice = best_of([zero, broken], "mean_margin")
    assert choice.best is zero
    assert choice.as_dict()["select_by_grid"][1]["excluded"] == "kl 7.1 > cap 1"


def test_not_steering_wins_when_nothing_helps():
    rng = random.Random(2)
    base = [rng.gauss(0, 2) for _ in range(32)]
    zero = candidate(0.0, base, kl=0.0)
    worse = candidate(4.0, [m - 1 for m in base], kl=0.3)
    # better by mean by a hair (+0.05 nats), inside the item-to-item spread of its change (2 nats)
    noise = candidate(2.0, [m + 0.05 + (2.0 if i % 2 else -2.0) for i, m in enumerate(base)], kl=0.2)
    assert best_of([zero, worse], "mean_margin").best is zero
    choice = best_of([zero, worse, noise], "mean_margin")
    assert noise.val_mean_margin > zero.val_mean_margin and choice.best is zero and "not distinguishable" in choice.reason


def test_a_clearly_better_candidate_wins_over_gentler_ones():
    base = [0.1 * i for i in range(32)]
    zero, mild = candidate(0.0, base, kl=0.0), candidate(2.0, [m + 0.5 for m in base], kl=0.1)
    strong = candidate(4.0, [m + 3.0 for m in base], kl=0.4)
    assert best_of([zero, mild, strong], "mean_margin").best is strong


def test_side_effects_are_measured_only_where_the_choice_needs_them():
    measured: list[float] = []

    def measure(c: Candidate) -> Candidate:
        measured.append(c.multiplier)
        broken = c.multiplier == 8
        return replace(c, val_kl=5.0 if broken else 0.1, excluded="kl 5 > cap 1" if broken else None)

    base = [0.1 * i for i in range(32)]
    grid_ = [candidate(m, [x + lift for x in base]) for m, lift in ((0.0, 0.0), (2.0, 1.0), (4.0, 2.0), (8.0, 9.0))]
    choice = best_of(grid_, "mean_margin", measure)
    assert choice.best.multiplier == 4.0 and measured == [8.0, 4.0]  # x8 scores best but breaks the model
    assert choice.grid[3].excluded == "kl 5 > cap 1" and choice.grid[0].val_kl is None  # never needed


@pytest.fixture()
def ab_file(tmp_path) -> Path:
    """Arbitrary A/B items a model cannot know (random facts), matching letter balanced."""
    rng = random.Random(0)
    rows = []
    for i in range(60):
        fact = f"Is the code of box {i} the number {rng.randint(100, 999)}?"
        match = "A" if i % 2 else "B"
        rows.append({"question": f"{fact}\n\nChoices:\n (A) yes\n (B) no\n\nAnswer:",
                     "answer_matching_behavior": f" ({match})",
                     "answer_not_matching_behavior": f" ({'B' if match == 'A' else 'A'})"})
    path = tmp_path / "random_facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_study_on_an_unanswerable_ab_set_checks_competence_with_the_letters(tiny_dir, ab_file, tmp_path, capsys):
    out = tmp_path / "study"
    # x1e5 swamps the residual stream; the tiny random model's outputs hardly depend on it (KL ~0.02 at most),
    # so the cap sits below that
    run_study(build(StudyConfig, {
        "name": "ab", "model": str(tiny_dir), "dataset": str(ab_file), "methods": ["caa"], "n": [2], "seeds": [0],
        "layers": [1], "multipliers": [-100000.0, 100000.0], "train": {"adapter": {"layers": [2]}}, "wandb": False,
        "output_dir": str(out), "select_caps": {"kl": 0.005},
        "eval": {"test_items": 12, "val_items": 8, "neutral_prompts": 2, "general_texts": 2, "generation_prompts": 1,
                 "generation_tokens": 2, "reference_tokens": 4}}))
    assert "BASE MODEL AT CHANCE" in capsys.readouterr().out  # said in the terminal at the end
    summary = json.loads((out / "summary.json").read_text())
    competence = summary["baseline"]["competence"]
    assert competence["statistic_name"] == "balanced accuracy" and set(competence["per_answer_accuracy"]) == {"A", "B"}
    assert summary["baseline"]["answer_counts"] == {"A": 6, "B": 6}
    report = (out / "report.md").read_text()
    assert report.startswith("> **WARNING") and "Splits by matching answer: test 12 (A 6, B 6)" in report
    caa = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()][1]
    grid_ = caa["choice"]["select_by_grid"]
    assert grid_[0]["multiplier"] == 0.0 and [c["multiplier"] for c in grid_[1:]] == [-100000.0, 100000.0]
    better = [c for c in grid_[1:] if c["val_mean_margin"] > grid_[0]["val_mean_margin"]]
    assert better and all(c["excluded"].startswith("kl ") for c in better)  # scored better, broke the model
    assert caa["choice"]["multiplier"] == 0.0


# --------------------------------------------------------------------------- config, prompt format, load hygiene


@pytest.mark.parametrize("overrides, message", [
    ({"select_caps": {"perplexity": 2.0}}, r"select_caps.perplexity: not a side effect; allowed keys: kl, delta_ce"),
    ({"select_caps": {"kl": -1}}, r"select_caps.kl=-1 must be a positive number"),
    ({"chat_template": "/no/such/template.jinja"}, r"chat_template='/no/such/template.jinja': use auto, none"),
    ({"max_prompt_tokens": 0}, r"max_prompt_tokens=0 must be positive"),
])
def test_honesty_keys_fail_at_once_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_base_models_get_plain_text_unless_asked(tmp_path):
    _, tokenizer = tiny_model("llama", n_layers=1)
    own = tokenizer.chat_template
    assert "own chat template" in prompt_format(config(), tokenizer) and tokenizer.chat_template == own
    assert "gemma3-270m is a base model" in prompt_format(config(model="gemma3-270m"), tokenizer)
    assert tokenizer.chat_template is None
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>")
    assert str(template) in prompt_format(config(chat_template=str(template)), tokenizer)
    assert tokenizer.chat_template == template.read_text()
    assert prompt_format(config(chat_template="none"), tokenizer).startswith("plain text")


def test_a_template_without_a_system_role_refuses_the_system_prompt_method():
    _, tokenizer = tiny_model("llama", n_layers=1)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role "
                               "not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ConfigError, match="refuses one .*System role not supported"):
        check_system_prompt(config(), tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(ConfigError, match="drops the system message"):
        check_system_prompt(config(), tokenizer)
    check_system_prompt(config(methods=["caa"]), tokenizer)  # no system-prompt method: nothing to refuse


def test_the_length_filter_drops_and_counts_long_items(tiny_dir, capsys):
    data = load_data(config(model=str(tiny_dir), max_completion_tokens=100, n=[2], methods=["caa"]))
    assert data.hygiene["limits"] == {"max_completion_tokens": 100}
    dropped = data.hygiene["length_filter"]["completion longer than max_completion_tokens"]
    assert 0 < dropped < 400 and f"dropped {dropped} of 400 rows" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="the length filter .* dropped all 400 items; raise the limits"):
        load_data(config(model=str(tiny_dir), max_completion_tokens=4, n=[2], methods=["caa"]))
