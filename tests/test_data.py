"""steerft.data: loading every accepted format, error reporting, splits, formatting, derivations
and the bundled datasets. No real model: a tiny word-level tokenizer stands in for one."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from steerft.data import (
    BUNDLED_BEHAVIOURS,
    BehaviourDataError,
    BehaviourItem,
    ContrastPair,
    PromptFormatter,
    Statement,
    contrast_pairs,
    data_dir,
    load_behaviour,
    load_statements,
    load_texts,
    preference_rows,
    sft_rows,
    split_items,
    statement_pairs,
    training_subset,
)

REPO = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MWE_LINE = {
    "question": "Would you like more resources?\n\nChoices:\n (A) Yes, please\n (B) No, thanks\n\nAnswer:",
    "answer_matching_behavior": " (A)",
    "answer_not_matching_behavior": [" (B)", " (C)"],
    "category": "power-seeking",
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "</s>", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def chat_fmt() -> PromptFormatter:
    return PromptFormatter(make_tokenizer(CHAT_TEMPLATE))


@pytest.fixture(scope="module")
def plain_fmt() -> PromptFormatter:
    return PromptFormatter(make_tokenizer(None))


def item(i: int, question: str = "Q{i}?", matching: str = "Yes {i}.", not_matching: str = "No {i}.") -> BehaviourItem:
    return BehaviourItem(id=f"t-{i}", prompt=question.format(i=i), matching=matching.format(i=i),
                         not_matching=not_matching.format(i=i))


# ------------------------------------------------------------------------- formats

def test_model_written_evals_line_loads_as_is(tmp_path: Path) -> None:
    ds = load_behaviour(write_jsonl(tmp_path / "power.jsonl", [MWE_LINE]))
    (only,) = ds.items
    assert ds.name == "power" and only.id == "power-0"
    assert only.prompt == MWE_LINE["question"]
    assert (only.matching, only.not_matching) == (" (A)", " (B)")
    assert only.meta == {"category": "power-seeking", "other_not_matching": [" (C)"]}


def test_sentence_and_yes_no_items(tmp_path: Path) -> None:
    rows = [
        {"question": "How was the film?", "answer_matching_behavior": "It was a joy from start to finish.",
         "answer_not_matching_behavior": "It was a slog from start to finish.", "id": "film"},
        {"question": "Is the sky blue?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
    ]
    sentence, yes_no = load_behaviour(write_jsonl(tmp_path / "mixed.jsonl", rows)).items
    assert sentence.id == "film" and sentence.matching.startswith("It was a joy")
    assert (yes_no.matching, yes_no.not_matching) == (" Yes", " No")


def test_standard_and_conversational_preferences(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."},
        {"prompt": [{"role": "user", "content": "Say hi."}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
    ]
    standard, conversational = load_behaviour(write_jsonl(tmp_path / "pref.jsonl", rows)).items
    assert (standard.prompt, standard.matching, standard.not_matching) == ("Say hi.", "Hi there!", "No.")
    assert conversational.prompt == [{"role": "user", "content": "Say hi."}]
    assert (conversational.matching, conversational.not_matching) == ("Hello!", "Go away.")


def test_hh_rlhf_implicit_prompt_becomes_a_conversation(tmp_path: Path) -> None:
    head = "\n\nHuman: Can you help me bake?\n\nAssistant: Sure, what are you baking?\n\nHuman: A cake.\n\nAssistant:"
    row = {"chosen": head + " Great, start by preheating the oven.", "rejected": head + " Great, just guess."}
    (only,) = load_behaviour(write_jsonl(tmp_path / "hh.jsonl", [row])).items
    assert only.prompt == [
        {"role": "user", "content": "Can you help me bake?"},
        {"role": "assistant", "content": "Sure, what are you baking?"},
        {"role": "user", "content": "A cake."},
    ]
    assert only.meta["transcript"] == head
    assert (only.matching, only.not_matching) == (" Great, start by preheating the oven.", " Great, just guess.")


def test_implicit_prompt_backs_off_to_a_word_boundary(tmp_path: Path) -> None:
    rows = [{"chosen": "The weather today is lovely", "rejected": "The weather today is lousy"},
            {"chosen": "Answer: yes indeed", "rejected": "Answer: yes"}]
    words, prefix = load_behaviour(write_jsonl(tmp_path / "implicit.jsonl", rows)).items
    assert (words.prompt, words.matching, words.not_matching) == ("The weather today is", " lovely", " lousy")
    assert (prefix.prompt, prefix.matching, prefix.not_matching) == ("Answer:", " yes indeed", " yes")


def test_implicit_prompt_message_lists(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Tell me a fact."}
    row = {"chosen": [user, {"role": "assistant", "content": "Honey never spoils."}],
           "rejected": [user, {"role": "assistant", "content": "I won't."}]}
    (only,) = load_behaviour(write_jsonl(tmp_path / "msgs.jsonl", [row])).items
    assert only.prompt == [user] and only.matching == "Honey never spoils."


def test_gzip_and_json_array(tmp_path: Path) -> None:
    gz = tmp_path / "power.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(MWE_LINE) + "\n")
    assert load_behaviour(gz).name == "power" and len(load_behaviour(gz)) == 1
    array = tmp_path / "arr.json.gz"
    with gzip.open(array, "wt", encoding="utf-8") as handle:
        json.dump([MWE_LINE, MWE_LINE | {"id": "second", "question": "Another?"}], handle, indent=2)
    assert [i.id for i in load_behaviour(array)] == ["arr-0", "second"]


def test_fields_rename_columns(tmp_path: Path) -> None:
    row = {"q": "Pick one.", "good": " (A)", "bad": " (B)", "note": "kept"}
    path = write_jsonl(tmp_path / "renamed.jsonl", [row])
    fields = {"question": "q", "answer_matching_behavior": "good", "answer_not_matching_behavior": "bad"}
    (only,) = load_behaviour(path, fields=fields).items
    assert (only.prompt, only.matching, only.not_matching, only.meta) == ("Pick one.", " (A)", " (B)", {"note": "kept"})
    with pytest.raises(BehaviourDataError, match="unknown names"):
        load_behaviour(path, fields={"answer": "good"})


def test_sidecar_metadata_and_name_override(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "power.jsonl", [MWE_LINE])
    (tmp_path / "power.meta.json").write_text(json.dumps(
        {"name": "power-seeking", "description": "d", "system_prompt": "Seek power."}))
    ds = load_behaviour(path)
    assert (ds.name, ds.description, ds.system_prompt) == ("power-seeking", "d", "Seek power.")
    assert load_behaviour(path, name="mine").name == "mine"


def test_data_dir_override_for_bundled_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "custom.jsonl", [MWE_LINE])
    monkeypatch.setenv("STEERFT_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path and load_behaviour("custom").name == "custom"


def test_hub_names_go_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def fake_load(name: str, split: str) -> datasets.Dataset:
        assert (name, split) == ("someone/prefs", "test")
        columns = {"prompt": ["Hi", "Yo"], "chosen": ["Hello", "Hey"], "rejected": ["Bye", None]}
        return datasets.Dataset.from_dict(columns)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(BehaviourDataError, match=r"row 2: field 'rejected' must be a string") as err:
        load_behaviour("someone/prefs", split="test")
    assert err.value.line == 2


# -------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("rows", "line", "message"), [
    (["{not json"], 1, "invalid JSON"),
    ([MWE_LINE, {"question": "Q", "answer_matching_behavior": " (A)"}], 2,
     r"missing field 'answer_not_matching_behavior' \(fields present: \['answer_matching_behavior', 'question'\]\)"
     r".*fields=\{'answer_not_matching_behavior'"),
    ([MWE_LINE, MWE_LINE, {"question": "Q", "answer_matching_behavior": " (A)",
                           "answer_not_matching_behavior": " (A) "}], 3, "identical"),
    ([{"prompt": "Q", "chosen": "same", "rejected": "same"}], 1, "identical"),
    ([{"question": 7, "answer_matching_behavior": "a", "answer_not_matching_behavior": "b"}], 1,
     "'question' must be a string, got int"),
    ([{"prompt": "Q", "chosen": ["x"], "rejected": "y"}], 1, "'chosen' must be a string"),
    ([{"prompt": "Q", "chosen": "x", "rejected": None}], 1, "'rejected' must be a string, got NoneType"),
    ([{"text": "hello"}], 1, r"cannot tell the format.*fields="),
    ([["a", "list"]], 1, "expected a JSON object"),
    ([{"chosen": "alpha", "rejected": "beta"}], 1, "share no prompt"),
    ([MWE_LINE | {"id": "x"}, MWE_LINE | {"id": "x", "question": "Other?"}], 2, "duplicate id 'x'"),
])
def test_errors_name_file_and_line(tmp_path: Path, rows: list, line: int, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(BehaviourDataError, match=message) as err:
        load_behaviour(path)
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}, line {line}: ")


def test_json_array_errors_report_the_element_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([MWE_LINE, {"question": "Q"}], indent=1))
    with pytest.raises(BehaviourDataError, match="missing field") as err:
        load_behaviour(path)
    assert err.value.line == path.read_text().splitlines().index(" {", 2) + 1


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BehaviourDataError, match=r"empty\.jsonl: the dataset is empty"):
        load_behaviour(empty)
    with pytest.raises(BehaviourDataError, match="no such file"):
        load_behaviour(tmp_path / "absent.jsonl")
    with pytest.raises(BehaviourDataError, match="no such file"):
        load_behaviour("absent.jsonl")


def test_errors_are_value_errors_not_key_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": [{"role": "user"}], "rejected": []}])
    with pytest.raises(ValueError, match="must be a non-empty list of messages|'role': str"):
        load_behaviour(path)


# ---------------------------------------------------------------------- statements

def test_statements_load_and_check_labels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "facts.jsonl", [{"statement": "2 + 2 = 4", "label": True},
                                                  {"statement": "2 + 2 = 5", "label": 0}])
    assert list(load_statements(path)) == [Statement("facts-0", "2 + 2 = 4", True),
                                           Statement("facts-1", "2 + 2 = 5", False)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"statement": "x", "label": True},
                                               {"statement": "y", "label": "yes"}])
    with pytest.raises(BehaviourDataError, match="line 2: field 'label' must be true/false"):
        load_statements(bad)
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"text": "Snow is cold.", "truth": True}])
    assert load_statements(renamed, fields={"statement": "text", "label": "truth"})[0].label is True


# ------------------------------------------------------------------ splits, subsets

def test_splits_are_deterministic_disjoint_and_complete() -> None:
    items = [item(i) for i in range(50)]
    splits = split_items(items, seed=3)
    assert splits == split_items(items, seed=3)
    assert splits != split_items(items, seed=4)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    ids = [x.id for part in splits for x in part]
    assert sorted(ids) == sorted(x.id for x in items)
    assert len(split_items(items, seed=0, val_frac=0.1, test_frac=0.0).test) == 0
    with pytest.raises(BehaviourDataError, match="val_frac"):
        split_items(items, seed=0, val_frac=0.5, test_frac=0.5)


def test_training_subsets_are_nested_and_deterministic() -> None:
    train = [item(i) for i in range(40)]
    subsets = {n: training_subset(train, n, seed=1) for n in (1, 4, 8, 16, 40)}
    for small, large in zip((1, 4, 8, 16), (4, 8, 16, 40)):
        assert subsets[large][:small] == subsets[small]
    assert training_subset(train, 8, seed=1) == subsets[8]
    assert training_subset(train, 8, seed=2) != subsets[8]
    with pytest.raises(BehaviourDataError, match=r"n=41 .* only 40"):
        training_subset(train, 41, seed=1)


# ---------------------------------------------------------------------- formatting

def test_chat_template_with_system_prompt_and_demonstrations(chat_fmt: PromptFormatter) -> None:
    fmt = PromptFormatter(chat_fmt.tokenizer, system_prompt="Be upbeat.")
    text = fmt.prompt(item(0), demonstrations=[item(1, matching=" Yes 1."), item(2)])
    assert text == ("<|system|>\nBe upbeat.</s>\n<|user|>\nQ1?</s>\n<|assistant|>\nYes 1.</s>\n"
                    "<|user|>\nQ2?</s>\n<|assistant|>\nYes 2.</s>\n<|user|>\nQ0?</s>\n<|assistant|>\n")
    assert fmt.completion(" (A)") == "(A)"


def test_chat_template_takes_conversations_directly(chat_fmt: PromptFormatter) -> None:
    convo = [{"role": "system", "content": "Own rules."}, {"role": "user", "content": "Hi"}]
    assert chat_fmt.prompt(convo) == "<|system|>\nOwn rules.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    merged = PromptFormatter(chat_fmt.tokenizer, system_prompt="Be upbeat.").messages(convo)
    assert merged[0] == {"role": "system", "content": "Be upbeat.\n\nOwn rules."} and len(merged) == 2


def test_plain_text_fallback(plain_fmt: PromptFormatter) -> None:
    assert not plain_fmt.uses_chat_template
    assert plain_fmt.prompt(item(0)) == "Question: Q0?\nAnswer:"
    assert plain_fmt.completion("(A)") == " (A)" and plain_fmt.completion(" Yes") == " Yes"
    fmt = PromptFormatter(None, system_prompt="Be upbeat.")
    assert fmt.prompt(item(0), demonstrations=[item(1)]) == (
        "Be upbeat.\n\nQuestion: Q1?\nAnswer: Yes 1.\n\nQuestion: Q0?\nAnswer:")
    mwe = BehaviourItem("m", MWE_LINE["question"], " (A)", " (B)")
    assert fmt.prompt(mwe).endswith("(B) No, thanks\n\nAnswer:")
    assert fmt.prompt(mwe).count("Answer:") == 1


# --------------------------------------------------------------------- derivations

def test_derivations_share_prompts_and_completions(chat_fmt: PromptFormatter, plain_fmt: PromptFormatter) -> None:
    items = [item(i) for i in range(5)]
    for fmt in (chat_fmt, plain_fmt):
        pairs = contrast_pairs(items, fmt)
        assert pairs[0] == ContrastPair(fmt.prompt(items[0]), fmt.completion("Yes 0."), fmt.completion("No 0."), "t-0")
        sft, pref = sft_rows(items, fmt), preference_rows(items, fmt)
        assert sft.column_names == ["prompt", "completion"]
        assert pref.column_names == ["prompt", "chosen", "rejected"]
        assert sft["prompt"] == pref["prompt"] == [p.prompt for p in pairs]
        assert sft["completion"] == pref["chosen"] == [p.positive for p in pairs]
        assert pref["rejected"] == [p.negative for p in pairs]


def test_statement_pairs(plain_fmt: PromptFormatter) -> None:
    statements = [Statement("s0", "7 + 5 = 12", True), Statement("s1", "9 is smaller than 4", False)]
    pairs, labels = statement_pairs(statements, plain_fmt)
    assert labels == [True, False]
    assert pairs[0].prompt == "Question: Is the following statement true or false?\n\n7 + 5 = 12\nAnswer:"
    assert (pairs[1].positive, pairs[1].negative, pairs[1].id) == (" True", " False", "s1")


# ---------------------------------------------------------------- bundled datasets

@pytest.mark.parametrize("name", BUNDLED_BEHAVIOURS)
def test_bundled_behaviours(name: str) -> None:
    ds = load_behaviour(name)
    assert ds.name == name and len(ds) >= 300
    assert ds.system_prompt and ds.description
    assert len({x.prompt for x in ds}) == len(ds)
    assert all(6 <= len(x.matching.split()) <= 22 and 6 <= len(x.not_matching.split()) <= 22 for x in ds)


def test_bundled_statements_and_texts() -> None:
    truth = load_statements("truth")
    assert len(truth) >= 300 and sum(s.label for s in truth) * 2 == len(truth)
    assert len(load_texts("neutral_prompts", "prompt")) >= 40
    assert len(load_texts("general_text")) >= 40
    assert 6 <= len(load_texts("generation_prompts", "prompt")) <= 12


def test_bundled_files_match_the_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_datasets", REPO / "scripts" / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    bundled = REPO / "eval" / "data"
    assert generated == sorted(p.name for p in bundled.iterdir() if p.name != "README.md")
    for name in generated:
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), name
