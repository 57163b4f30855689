"""Activation reading and the extraction job, on tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from steerft.batching import encode
from steerft.data import ContrastPair
from steerft.extract import pair_activations, read_activations, save_adapter
from steerft.jobs.extract import ExtractConfig, run_extraction
from steerft.testing import tiny_model
from steerft.runconfig import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about your day.", "How is the weather?", "What did you eat?", "Any plans?", "Hi!"]
COMPLETIONS = ["It was lovely, thanks!", "Sunny and warm.", "Soup.", "Sleeping all weekend long, I hope.", "Hey"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", n_layers=6)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_early_exit_activations_equal_full_forward_hidden_states(tiny, reduce):
    model, tokenizer = tiny
    acts = read_activations(model, tokenizer, PROMPTS, COMPLETIONS, [1, 3], reduce=reduce, batch_size=2)
    for i, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS)):
        row = encode(tokenizer, prompt, completion)
        hidden = model(torch.tensor([row.ids]), output_hidden_states=True).hidden_states
        for layer in (1, 3):
            answer = hidden[layer + 1][0, row.prompt_length :]
            expected = answer[-1] if reduce == "last" else answer.mean(0)
            torch.testing.assert_close(acts[layer][i], expected, atol=1e-5, rtol=0)


def test_early_exit_runs_no_block_above_the_deepest(tiny):
    model, tokenizer = tiny
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(model.model.layers)]
    try:
        read_activations(model, tokenizer, PROMPTS[:1], COMPLETIONS[:1], [2])
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1, 2]


def test_left_and_right_padding_agree(tiny):
    model, tokenizer = tiny
    right = read_activations(model, tokenizer, PROMPTS, COMPLETIONS, [2], batch_size=5, padding_side="right")
    left = read_activations(model, tokenizer, PROMPTS, COMPLETIONS, [2], batch_size=5, padding_side="left")
    torch.testing.assert_close(left[2], right[2], atol=1e-5, rtol=0)


def test_mean_diff_equals_a_plain_reference(tiny):
    model, tokenizer = tiny
    pairs = [ContrastPair(p, c, c[::-1], str(i)) for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS))]
    acts = pair_activations(model, tokenizer, pairs, [3], reduce="last")
    reference = []
    for pair in pairs:
        rows = [encode(tokenizer, pair.prompt, text) for text in (pair.positive, pair.negative)]
        last = [model(torch.tensor([r.ids]), output_hidden_states=True).hidden_states[4][0, -1] for r in rows]
        reference.append(last[0] - last[1])
    from steerft.extract import estimate

    vector = estimate("mean_diff", *acts.at(3)).vector
    torch.testing.assert_close(vector, torch.stack(reference).mean(0), atol=1e-5, rtol=0)


def test_saved_adapter_loads_with_peft_and_holds_the_vector(tiny, tmp_path):
    model, _ = tiny
    vector = torch.randn(64)
    save_adapter(model, {2: vector}, tmp_path / "adapter", multiplier=3.0)
    assert not hasattr(model.model.layers[2], "steer")  # the caller's model is left clean
    fresh, _ = tiny_model("llama", n_layers=6)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    torch.testing.assert_close(loaded.get_vectors()[2], vector)
    assert loaded.peft_config["default"].multiplier == 3.0


def test_run_extraction_writes_adapters_report_and_vectors(tiny_dir, tmp_path):
    out = run_extraction(ExtractConfig(model=str(tiny_dir), layers=[1, -2], n=16, output_dir=str(tmp_path / "x"),
                                       estimators=["mean_diff", "pca"], progress=False))
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        "mean_diff-layer1", "mean_diff-layer4", "pca-layer1", "pca-layer4"]
    report = json.loads((out / "report.json").read_text())
    assert sorted((r["estimator"], r["layer"]) for r in report["reports"]) == [
        ("mean_diff", 1), ("mean_diff", 4), ("pca", 1), ("pca", 4)]
    assert {r["n_train"] for r in report["reports"]} == {16}
    vectors = load_file(out / "vectors.safetensors")
    assert set(vectors) == {"mean_diff.1", "mean_diff.4", "pca.1", "pca.4"}
    names, matrix = report["cosine_similarity"]["names"], torch.tensor(report["cosine_similarity"]["matrix"])
    first, second = (vectors[name.replace("@", ".")] for name in names[:2])
    assert matrix[0, 1].item() == pytest.approx(torch.nn.functional.cosine_similarity(first, second, dim=0).item(),
                                                abs=1e-5)
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "run.json").read_text())["n_train"] == 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(layers=[6]), "layers"),
        (dict(estimators=["svm"]), "estimators"),
    ],
)
def test_bad_extraction_config_is_refused_before_any_work(tiny_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_extraction(ExtractConfig(model=str(tiny_dir), output_dir=str(tmp_path / "x"), progress=False, **overrides))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "answer_matching_behavior": "same", "answer_not_matching_behavior": "same"}', "identical"),
        ('{"question": "q", "answer_matching_behavior": "a"}', "answer_not_matching_behavior"),
    ],
)
def test_bad_pairs_name_the_file_and_line(tiny_dir, tmp_path, line, message):
    data = tmp_path / "bad.jsonl"
    good = '{"question": "q0", "answer_matching_behavior": "yes", "answer_not_matching_behavior": "no"}'
    data.write_text(good + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl.*line 2|line 2.*bad.jsonl") as err:
        run_extraction(ExtractConfig(model=str(tiny_dir), dataset=str(data), output_dir=str(tmp_path / "x")))
    assert message in str(err.value)


def test_empty_dataset_is_refused(tiny_dir, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        run_extraction(ExtractConfig(model=str(tiny_dir), dataset=str(data), output_dir=str(tmp_path / "x")))


@pytest.mark.distributed
def test_two_processes_give_the_same_vectors_as_one(tiny_dir, tmp_path):
    args = [f"model={tiny_dir}", "layers=[1,3]", "n=24", "threads=1", "progress=false", "estimators=[mean_diff,pca,logistic]"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    script = [str(REPO / "recipes" / "extract.py"), "--config", str(REPO / "recipes" / "configs" / "extract.yaml")]
    two = subprocess.run([*launch, *script, *args, f"output_dir={tmp_path / 'two'}"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    run_extraction(ExtractConfig(model=str(tiny_dir), layers=[1, 3], n=24, output_dir=str(tmp_path / "one"),
                                 progress=False))
    one, two_vectors = load_file(tmp_path / "one" / "vectors.safetensors"), load_file(tmp_path / "two" / "vectors.safetensors")
    assert set(one) == set(two_vectors)
    for key in one:
        torch.testing.assert_close(two_vectors[key], one[key], atol=1e-5, rtol=0)
