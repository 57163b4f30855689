"""`datasets` as a source (objects, save_to_disk folders, hub options) and the bundled files a wheel carries;
all offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pytest

from steerft.data import load_behaviour
from steerft.data.items import BehaviourDataError
from steerft.data.sources import bundled_config, bundled_path, data_dir, read_source
from steerft.runconfig import load_config

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"question": f"Q{i}: pick one", "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}
    for i in range(3)
]


def test_load_behaviour_accepts_a_dataset_object():
    dataset = load_behaviour(datasets.Dataset.from_list(ROWS), name="ab")
    assert [item.prompt for item in dataset] == ["Q0: pick one", "Q1: pick one", "Q2: pick one"]
    assert {item.matching for item in dataset} == {" (A)"}
    assert dataset.name == "ab"


def test_a_dataset_dict_gives_the_chosen_split_and_names_the_others():
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                                   "test": datasets.Dataset.from_list(ROWS[2:])})
    assert [r.data["question"] for r in read_source(splits, split="test").records] == ["Q2: pick one"]
    with pytest.raises(BehaviourDataError, match="no split 'validation'; splits: train, test"):
        read_source(splits, split="validation")


def test_a_save_to_disk_folder_is_read_with_its_split(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
                         ).save_to_disk(tmp_path / "saved")
    assert len(load_behaviour(tmp_path / "saved")) == 3
    assert len(load_behaviour(str(tmp_path / "saved"), split="test")) == 1
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(tmp_path / "single")
    source = read_source(tmp_path / "single")
    assert (source.name, len(source.records), source.records[1].unit) == ("single", 2, "row")


def test_hub_options_reach_load_dataset(monkeypatch):
    seen = {}

    def fake_load_dataset(path, **kwargs):
        seen.update(path=path, **kwargs)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = read_source({"path": "org/evals", "config": "persona", "split": "test",
                          "data_files": {"test": "x.jsonl"}, "revision": "v1"})
    assert seen == {"path": "org/evals", "name": "persona", "split": "test", "data_files": {"test": "x.jsonl"},
                    "revision": "v1"}
    assert source.name == "evals" and "config" not in source.origin and "'persona'" in source.origin


def test_hub_options_with_an_unknown_key_are_refused():
    with pytest.raises(BehaviourDataError, match="takes the keys path, config, split, data_files, revision"):
        read_source({"path": "org/x", "subset": "y"})


def test_bundled_files_and_study_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    assert (data_dir() / "sentiment.jsonl").is_file()
    monkeypatch.chdir(tmp_path)
    for given in ("eval/studies/quick.yaml", "quick.yaml", "quick"):
        assert bundled_config(given) == bundled_path("studies", "quick.yaml")
    assert load_config("eval/studies/quick.yaml")["name"] == "quick"
    assert bundled_config("elsewhere/quick.yaml") == Path("elsewhere/quick.yaml")  # only bundled names resolve


_USE_INSTALLED = """
import steerft, sys
from steerft.data import load_behaviour
from steerft.runconfig import load_config
assert steerft.__file__.startswith(sys.argv[1]), steerft.__file__
print(len(load_behaviour("sentiment")), load_config("eval/studies/quick.yaml")["name"])
"""


def test_the_wheel_carries_the_bundled_data_and_study_configs(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    for folder in ("steerft", "eval"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, env={**os.environ, "PIP_NO_INDEX": "1"},
                   cwd=tmp_path)
    (wheel,) = tmp_path.glob("steerft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in sorted((ROOT / "eval" / "data").glob("*.json*")) + sorted((ROOT / "eval" / "studies").glob("*.yaml")):
        assert f"steerft/bundled/{path.parent.name}/{path.name}" in names
    assert "steerft/interop/llamacpp.py" in names

    installed = tmp_path / "site"  # installing a wheel is unpacking it; run from a directory without eval/
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", _USE_INSTALLED, str(installed)], check=True, cwd=elsewhere,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(installed)})
    assert result.stdout.split() == [str(len(load_behaviour("sentiment"))), "quick"]


def test_a_config_takes_hub_options_as_a_mapping(tmp_path):
    """`dataset: {path: json, data_files: ...}` in a YAML reaches `datasets.load_dataset` (here offline, a local file)."""
    from steerft.jobs.startup import load_splits
    from steerft.runconfig import build
    from steerft.study import StudyConfig

    rows = [{"question": f"Q{i}?", "answer_matching_behavior": f" yes {i}", "answer_not_matching_behavior": f" no {i}"}
            for i in range(20)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = build(StudyConfig, {"dataset": {"path": "json", "data_files": str(tmp_path / "rows.jsonl")}}, where="test")
    _, splits = load_splits(config)
    prompts = sorted(item.prompt for item in splits.train + splits.val + splits.test)
    assert len(prompts) == 20 and all(any(row["question"] in p for p in prompts) for row in rows)
