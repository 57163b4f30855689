"""Load-time hygiene (issues 9 and 13): encodings, broken gzip, duplicates, unusable dialogue rows,
length filter, answer-balanced splits, a user-supplied split, and atomic outputs."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pytest

from steerft.data import (
    BehaviourDataError,
    BehaviourItem,
    HeldOutIds,
    PromptFormatter,
    answer_key,
    content_key,
    length_filter,
    load_behaviour,
    load_held_out_ids,
    split_items,
    training_subset,
)
from steerft.data.hygiene import COMPLETION_TOO_LONG, DUPLICATE, PROMPT_TOO_LONG
from steerft.data.parse import EMPTY_REPLY, UNPARSEABLE_DIALOGUE
from steerft.io import TEMP_PREFIX, atomic_dir, atomic_write, sweep_temporaries, write_text

ROW = {"question": "Is the sky blue?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}


def write_rows(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- encodings and gzip -------------------------------------------------------------------------

def test_utf16_file_is_one_line_naming_file_and_fix(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "wide.jsonl", [ROW], encoding="utf-16")
    with pytest.raises(BehaviourDataError) as err:
        load_behaviour(path)
    assert str(path) in one_line(err) and "line 1" in str(err.value) and "re-save it as UTF-8" in str(err.value)


def test_latin1_byte_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    latin = json.dumps(ROW | {"question": "Caf\u00e9?"}, ensure_ascii=False).encode("latin-1")
    path.write_bytes(json.dumps(ROW).encode() + b"\n" + latin + b"\n")
    with pytest.raises(BehaviourDataError) as err:
        load_behaviour(path)
    assert f"{path}, line 2: not valid UTF-8" in one_line(err) and "re-save the file as UTF-8" in str(err.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bom.jsonl", [ROW, ROW | {"question": "Is grass green?"}], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [item.prompt for item in load_behaviour(path)] == ["Is the sky blue?", "Is grass green?"]


def test_gz_that_is_not_gzip_is_one_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "plain.jsonl.gz", [ROW])
    with pytest.raises(BehaviourDataError) as err:
        load_behaviour(path)
    assert str(path) in one_line(err) and "is not a gzip file" in str(err.value)


def test_truncated_gz_is_one_line(tmp_path: Path) -> None:
    whole = gzip.compress("".join(json.dumps(ROW | {"id": i}) + "\n" for i in range(200)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BehaviourDataError) as err:
        load_behaviour(path)
    assert str(path) in one_line(err) and "truncated or corrupt gzip" in str(err.value)


# --- duplicates and unusable rows -----------------------------------------------------------------

def test_duplicates_are_dropped_with_a_printed_count_and_never_cross_the_split(tmp_path: Path, capsys) -> None:
    rows = [ROW | {"question": f"Question {i}?"} for i in range(24)]
    path = write_rows(tmp_path / "doubled.jsonl", rows + rows + rows[:5])  # the bundled-file accident of issue 13
    dataset = load_behaviour(path)
    assert len(dataset) == 24 and dataset.dropped == {DUPLICATE: 29}
    assert "dropped 29 of 53 rows (29 duplicate item" in capsys.readouterr().out
    splits = split_items(dataset.items, seed=0, val_frac=0.25, test_frac=0.25)
    train_keys = {content_key(item) for item in splits.train}
    assert not train_keys & {content_key(item) for item in splits.test + splits.val}


def test_same_content_with_different_ids_is_a_duplicate(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "ids.jsonl", [ROW | {"id": "a"}, ROW | {"id": "b"}, ROW | {"question": "Other?"}])
    dataset = load_behaviour(path)
    assert [item.id for item in dataset] == ["a", "ids-2"] and dataset.dropped == {DUPLICATE: 1}


def test_broken_dialogues_and_empty_replies_are_dropped_and_counted(tmp_path: Path, capsys) -> None:
    good = "\n\nHuman: Hi there\n\nAssistant:"
    rows = [
        {"chosen": good + " Hello!", "rejected": good + " Go away."},
        # two Human turns in a row: not alternating, must not become one quoted user message
        {"chosen": "\n\nHuman: A\n\nHuman: B\n\nAssistant: Sure.",
         "rejected": "\n\nHuman: A\n\nHuman: B\n\nAssistant: No."},
        {"chosen": good, "rejected": good + " Something."},  # empty chosen reply
        {"prompt": "Say hi", "chosen": "   ", "rejected": "Hi"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": ""}],
         "rejected": [{"role": "assistant", "content": "Hello"}]},
    ]
    dataset = load_behaviour(write_rows(tmp_path / "hh.jsonl", rows))
    assert len(dataset) == 1 and dataset[0].prompt == [{"role": "user", "content": "Hi there"}]
    assert dataset.dropped == {UNPARSEABLE_DIALOGUE: 1, EMPTY_REPLY: 3}
    out = capsys.readouterr().out
    assert out.count("steerft data: hh: dropped 4 of 5 rows") == 1


def test_all_rows_dropped_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BehaviourDataError, match="no usable rows"):
        load_behaviour(write_rows(tmp_path / "empty_replies.jsonl", [{"prompt": "p", "chosen": "", "rejected": "x"}]))


# --- length filter ---------------------------------------------------------------------------------

class WordTokenizer:
    """Counts words: enough to check the filter counts the formatted text, with no model."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(range(len(text.split())))}


def test_length_filter_drops_counts_and_prints(capsys) -> None:
    items = [BehaviourItem("short", "Hi?", "Yes", "No"),
             BehaviourItem("long-prompt", "word " * 50, "Yes", "No"),
             BehaviourItem("long-reply", "Hi?", "Yes " * 30, "No")]
    fmt = PromptFormatter(WordTokenizer())
    kept, dropped = length_filter(items, fmt, max_prompt_tokens=20, max_completion_tokens=10)
    assert [item.id for item in kept] == ["short"]
    assert dropped == {PROMPT_TOO_LONG: 1, COMPLETION_TOO_LONG: 1}
    assert "length filter: dropped 2 of 3 rows" in capsys.readouterr().out
    assert length_filter(items, fmt) == (items, {})
    with pytest.raises(BehaviourDataError, match="max_prompt_tokens=0 must be a positive integer"):
        length_filter(items, fmt, max_prompt_tokens=0)
    with pytest.raises(BehaviourDataError, match="needs the model's tokenizer"):
        length_filter(items, PromptFormatter(None), max_prompt_tokens=5)


# --- answer-balanced splits ---------------------------------------------------------------------------

def _ab_items(n: int, a_share: float) -> list[BehaviourItem]:
    n_a = round(n * a_share)
    return [BehaviourItem(f"q{i}", f"Question {i}?", " (A)" if i < n_a else " (B)", " (B)" if i < n_a else " (A)")
            for i in range(n)]


@pytest.mark.parametrize("matching, not_matching, key", [
    (" (A)", " (B)", "A"), ("(B)", "(A)", "B"), (" Yes", " No", "Yes"), ("no.", "Yes", "No"),
    ("A cheerful reply", "A gloomy reply", None), (" (A)", " (A) ", None)])
def test_answer_key(matching: str, not_matching: str, key: str | None) -> None:
    assert answer_key(matching, not_matching) == key


def test_two_answer_splits_are_balanced_printed_and_nested(capsys) -> None:
    items = _ab_items(200, a_share=0.7)  # a strongly unbalanced file
    splits = split_items(items, seed=0)
    for part in (splits.test, splits.val):
        counts = [sum(answer_key(i.matching, i.not_matching) == k for i in part) for k in "AB"]
        assert sum(counts) == 40 and counts == [20, 20]
    assert {i.id for i in splits.train} | {i.id for i in splits.val + splits.test} == {i.id for i in items}
    assert "answer-balanced splits: test 40 (A 20, B 20), validation 40 (A 20, B 20), train 120 (A 100, B 20)" \
        in capsys.readouterr().out
    assert split_items(items, seed=0) == splits
    small, large = training_subset(splits.train, 8, seed=1), training_subset(splits.train, 32, seed=1)
    assert large[:8] == small


def test_yes_no_split_balanced_to_within_one(capsys) -> None:
    items = [BehaviourItem(f"s{i}", f"Statement {i}", "Yes" if i % 7 < 4 else "No", "No" if i % 7 < 4 else "Yes")
             for i in range(105)]  # 60/45 Yes/No
    splits = split_items(items, seed=3, val_frac=0.1, test_frac=0.2)
    yes = sum(answer_key(i.matching, i.not_matching) == "Yes" for i in splits.test)
    assert len(splits.test) == 21 and yes in (10, 11)


def test_free_completions_split_as_before() -> None:
    items = [BehaviourItem(f"f{i}", f"Prompt {i}", f"good {i}", f"bad {i}") for i in range(50)]
    splits = split_items(items, seed=2)
    assert [len(splits.test), len(splits.val), len(splits.train)] == [10, 10, 30]


def test_user_supplied_split_file(tmp_path: Path) -> None:
    items = _ab_items(20, 0.5)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"test": ["q0", "q1"], "validation": ["q2", 3]}))
    held_out = load_held_out_ids(path)
    assert held_out == HeldOutIds(test=("q0", "q1"), val=("q2", "3"))
    with pytest.raises(BehaviourDataError, match=r"the validation ids \['3'\] are not in the dataset"):
        split_items(items, seed=0, held_out=held_out)
    splits = split_items(items, seed=0, held_out=HeldOutIds(test=("q0", "q1"), val=("q2",)))
    assert [i.id for i in splits.test] == ["q0", "q1"] and [i.id for i in splits.val] == ["q2"]
    assert len(splits.train) == 17
    with pytest.raises(BehaviourDataError, match="in both test and validation"):
        split_items(items, seed=0, held_out=HeldOutIds(test=("q0",), val=("q0",)))
    path.write_text(json.dumps({"test": ["q0"]}))
    with pytest.raises(BehaviourDataError, match="'test' and 'validation'"):
        load_held_out_ids(path)


# --- atomic outputs ----------------------------------------------------------------------------------

def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        text = write_text(tmp_path / "out" / "report.md", "hello\n")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inner.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out"]


def test_a_dead_writers_temporaries_are_swept_by_the_next_write(tmp_path: Path) -> None:
    from steerft.io import _temp_name

    mine = _temp_name(tmp_path / "generations")
    mine.mkdir()
    dead_pid = 2 ** 22 + 1  # above Linux's pid_max default, so no process has it
    dead = tmp_path / mine.name.replace(f"~{os.getpid()}~", f"~{dead_pid}~")
    (dead / "sub").mkdir(parents=True)
    stranger = tmp_path / f"{TEMP_PREFIX}otherhost~{dead_pid}~abcd~x"
    stranger.write_text("another machine's, maybe live")
    atomic_write(tmp_path / "results.csv", lambda f: f.write(b"a,b\n"))
    assert not dead.exists() and mine.exists() and stranger.exists()
    assert sweep_temporaries(tmp_path) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def explode(handle):
        handle.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", explode)
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d"):
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_split_refuses_repeated_items() -> None:
    items = [BehaviourItem(f"f{i}", f"Prompt {i % 9}", "good", "bad") for i in range(10)]
    with pytest.raises(BehaviourDataError, match="1 items repeat another item's prompt"):
        split_items(items, seed=0)


def test_repeated_statements_are_dropped(tmp_path: Path, capsys) -> None:
    from steerft.data import load_statements

    rows = [{"statement": "Water is wet.", "label": True}, {"statement": "Fire is cold.", "label": False},
            {"statement": "Water is wet.", "label": True}]
    dataset = load_statements(write_rows(tmp_path / "facts.jsonl", rows))
    assert [s.text for s in dataset] == ["Water is wet.", "Fire is cold."] and dataset.dropped == {DUPLICATE: 1}
    assert "dropped 1 of 3 rows" in capsys.readouterr().out
