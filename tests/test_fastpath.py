"""Every fast scoring path against the plain one (a full forward per row, the vector attached as an adapter)."""

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from steerft.batching import encode
from steerft.metrics.logprobs import summed_logprobs
from steerft.metrics.site_cache import Steering, shared_prompt_logprobs, site_logprobs, supports_site_cache
from steerft.testing import tiny_model
from steerft.study.scorable import steered

ARCHS = ["llama", "gpt2", "gemma3"]
PROMPTS = ["hello there friend", "a b", "the quick brown fox jumps over it"]
COMPLETIONS = [" yes indeed", " no", "maybe so, ok then", " x"]


def _rows(tokenizer):
    rows = [encode(tokenizer, p, c) for p in PROMPTS for c in COMPLETIONS[:2]]
    return rows + [encode(tokenizer, PROMPTS[0], COMPLETIONS[2]), encode(tokenizer, PROMPTS[2], COMPLETIONS[3])]


def _plain(model, rows, pad, padding_side="right"):
    return summed_logprobs(model, rows, batch_size=3, pad=pad, padding_side=padding_side)[0]


def _attached(model, rows, pad, steering, padding_side="right"):
    with steered(model, {steering.layer: steering.vector}, steering.positions) as peft_model:
        with peft_model.using_multiplier(steering.multiplier):
            return _plain(peft_model, rows, pad, padding_side)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_shared_prompt_matches_one_pass_per_row(arch, padding_side):
    model, tokenizer = tiny_model(arch)
    rows = _rows(tokenizer)
    fast = shared_prompt_logprobs(model, rows, batch_size=3, pad=tokenizer.pad_token_id)
    torch.testing.assert_close(fast, _plain(model, rows, tokenizer.pad_token_id, padding_side), rtol=0, atol=1e-4)


@pytest.mark.parametrize("positions", ["all", "prompt", "completion"])
def test_shared_prompt_keeps_a_steer_adapters_positions(positions):
    """A pass over a non-empty cache is completion, as `labels` would say: the adapter steers the same tokens."""
    model, tokenizer = tiny_model("llama")
    rows = _rows(tokenizer)
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with steered(model, {1: vector}, positions) as peft_model:
        fast = shared_prompt_logprobs(peft_model, rows, batch_size=4, pad=tokenizer.pad_token_id)
        plain = _plain(peft_model, rows, tokenizer.pad_token_id)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    assert (plain - _plain(model, rows, tokenizer.pad_token_id)).abs().max() > 1e-3  # the vector did steer


@pytest.mark.parametrize("arch", ARCHS)
def test_replay_from_the_site_matches_an_attached_vector(arch):
    model, tokenizer = tiny_model(arch)
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    vector = torch.randn(64, generator=torch.Generator().manual_seed(2))
    candidates = [None] + [Steering(layer, vector, m, positions) for layer in (0, 2, 3) for m in (1.5, -3.0)
                           for positions in ("all", "prompt", "completion")]
    fast = site_logprobs(model, rows, candidates, batch_size=4, pad=pad)
    for steering, got in zip(candidates, fast):
        want = _plain(model, rows, pad) if steering is None else _attached(model, rows, pad, steering, "left")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=f"{arch} {steering}")


def test_replay_leaves_the_model_untouched_and_batches_do_not_matter():
    model, tokenizer = tiny_model("llama")
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    steering = Steering(1, torch.ones(64), 2.0, "completion")
    before = _plain(model, rows, pad)
    one = site_logprobs(model, rows, [steering], batch_size=1, pad=pad)
    many = site_logprobs(model, rows, [steering], batch_size=16, pad=pad)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-5)
    torch.testing.assert_close(_plain(model, rows, pad), before, rtol=0, atol=0)


def test_the_replay_refuses_models_it_cannot_replay_and_replays_lora_layers_inside_blocks():
    """A steer layer reads token positions from a hook the replay bypasses; LoRA layers run inside the blocks."""
    model, tokenizer = tiny_model("llama")
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    with steered(model, {1: torch.ones(64)}, "completion") as peft_model:
        assert not supports_site_cache(peft_model) and not supports_site_cache(model)
        with pytest.raises(ValueError, match="without a PEFT wrapper or steer layers"):
            site_logprobs(model, rows, [None], batch_size=4, pad=pad)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    assert not supports_site_cache(lora) and supports_site_cache(model)  # PEFT put LoRA layers into `model`
    steering = Steering(2, torch.ones(64), 1.0, "all")
    torch.testing.assert_close(site_logprobs(model, rows, [None, steering], batch_size=4, pad=pad),
                               torch.stack([_plain(lora, rows, pad), _attached(model, rows, pad, steering)]),
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(shared_prompt_logprobs(lora, rows, batch_size=4, pad=pad), _plain(lora, rows, pad),
                               rtol=0, atol=1e-4)  # the shared-prompt path applies to any model


def test_study_selection_by_replay_equals_selection_by_attaching():
    from steerft.data import BehaviourItem, PromptFormatter
    from steerft.study import select

    model, tokenizer = tiny_model("llama")
    items = [BehaviourItem(id=str(i), prompt=p, matching="yes, gladly", not_matching="no thanks")
             for i, p in enumerate(PROMPTS)]
    config = SimpleNamespace(multipliers=[1.0, 4.0], positions="completion", select_by="mean_margin",
                             select_caps={}, eval=SimpleNamespace(batch_size=4))
    ctx = SimpleNamespace(tokenizer=tokenizer, config=config, data=SimpleNamespace(val=items))
    fmt = PromptFormatter(tokenizer)
    vectors = {layer: torch.randn(64, generator=torch.Generator().manual_seed(layer)) for layer in (0, 2)}
    replayed = select.choose_steering(ctx, model, fmt, vectors)
    attached = []
    for layer, vector in vectors.items():
        with steered(model, {layer: vector}, "completion") as peft_model:
            attached += select.multipliers_on(ctx, peft_model, fmt, layer, config.multipliers)[1 if attached else 0:]
    assert [(c.layer, c.multiplier, c.val_accuracy) for c in replayed.grid] == \
           [(c.layer, c.multiplier, c.val_accuracy) for c in attached]
    torch.testing.assert_close(torch.tensor([c.val_mean_margin for c in replayed.grid]),
                               torch.tensor([c.val_mean_margin for c in attached]), rtol=0, atol=1e-4)
    assert replayed.best == select.best_of(attached, "mean_margin").best or \
        abs(replayed.best.val_mean_margin - select.best_of(attached, "mean_margin").best.val_mean_margin) < 1e-4


def test_reply_cross_entropy_runs_the_shared_request_once_and_matches_the_plain_path():
    from steerft.data import PromptFormatter
    from steerft.study.context import GENERAL_TEXT_REQUEST
    from steerft.study.evaluate import reply_cross_entropy
    from steerft.study.scorable import Scorable

    model, tokenizer = tiny_model("gpt2")
    scorable = Scorable(model, PromptFormatter(tokenizer))
    texts = ["A short text.", "Another, somewhat longer piece of plain text.", "x"]
    rows = [encode(tokenizer, scorable.prompt(GENERAL_TEXT_REQUEST), scorable.fmt.completion(t)) for t in texts]
    sums, counts = summed_logprobs(model, rows, batch_size=2, pad=tokenizer.pad_token_id)
    got = reply_cross_entropy(scorable, tokenizer, texts, batch_size=2)
    assert got == pytest.approx((-sums.sum() / counts.sum()).item(), abs=1e-5)
