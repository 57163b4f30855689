"""Every fast scoring path against the plain one (a full forward per row, the vector attached as an adapter)."""

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from steerft.batching import EncodedRow, encode
from steerft.metrics.logprobs import summed_logprobs
from steerft.metrics.site_cache import (
    Steering,
    record_base,
    record_bytes,
    shared_prompt_logprobs,
    site_logprobs,
    supports_site_cache,
)
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
    from steerft.study import select

    model, tokenizer = tiny_model("llama")
    ctx = _study_context(model, tokenizer, _items(), layers=[0, 2])
    config = ctx.config
    vectors = {layer: torch.randn(64, generator=torch.Generator().manual_seed(layer)) for layer in (0, 2)}
    replayed = select.choose_steering(ctx, model, ctx.fmt, vectors)
    assert ("record", "val") in ctx.base_memo  # replayed from the study's kept validation record
    attached = []
    for layer, vector in vectors.items():
        with steered(model, {layer: vector}, "completion") as peft_model:
            attached += select.multipliers_on(ctx, peft_model, ctx.fmt, layer, config.multipliers)[1 if attached else 0:]
    assert [(c.layer, c.multiplier, c.val_accuracy) for c in replayed.grid] == \
           [(c.layer, c.multiplier, c.val_accuracy) for c in attached]
    torch.testing.assert_close(torch.tensor([c.val_mean_margin for c in replayed.grid]),
                               torch.tensor([c.val_mean_margin for c in attached]), rtol=0, atol=1e-4)
    assert replayed.best == select.best_of(attached, "mean_margin").best or \
        abs(replayed.best.val_mean_margin - select.best_of(attached, "mean_margin").best.val_mean_margin) < 1e-4


def test_reply_cross_entropy_runs_the_shared_request_once_and_matches_the_plain_path():
    from steerft.metrics import cross_entropy

    model, tokenizer = tiny_model("gpt2")
    prompt = "Write a short paragraph.\n"
    texts = ["A short text.", "Another, somewhat longer piece of plain text.", "x"]
    rows = [encode(tokenizer, prompt, t) for t in texts]
    sums, counts = summed_logprobs(model, rows, batch_size=2, pad=tokenizer.pad_token_id)
    got = cross_entropy(model, tokenizer, texts, prompt=prompt, batch_size=2)
    assert got == pytest.approx((-sums.sum() / counts.sum()).item(), abs=1e-5)


def _plain_kl(model, tokenizer, base_prompts, method_prompts, continuations, padding_side):
    """KL(adapter-disabled || model) per the definition: one padded full forward, every position's logits, sliced."""
    from steerft.batching import collate
    from steerft.metrics._forward import inference, log_distributions

    def distributions(prompts):
        rows = [encode(tokenizer, p, c) for p, c in zip(prompts, continuations)]
        return log_distributions(model, collate(rows, range(len(rows)), tokenizer.pad_token_id, padding_side))

    with inference(model):
        with model.disable_adapter():
            base_logp, rows = distributions(base_prompts)
        method_logp, _ = distributions(method_prompts)
    base_logp, method_logp = base_logp.double(), method_logp.double()
    kl = (base_logp.exp() * (base_logp - method_logp)).sum(-1)
    return torch.stack([kl[rows == i].mean() for i in range(len(continuations))]).mean().item()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", "completion"])
def test_kl_from_one_prompt_pass_matches_full_forwards(arch, padding_side, positions):
    from steerft.metrics import kl_to_base

    model, tokenizer = tiny_model(arch)
    base_prompts = PROMPTS
    method_prompts = ["Be brief. " + p for p in PROMPTS]
    continuations = COMPLETIONS[:3]
    vector = torch.randn(64, generator=torch.Generator().manual_seed(3))
    with steered(model, {1: vector}, positions) as peft_model:
        with peft_model.disable_adapter():
            fast = kl_to_base(peft_model, tokenizer, base_prompts, method_prompts, continuations, batch_size=2)
            plain = _plain_kl(peft_model, tokenizer, base_prompts, method_prompts, continuations, padding_side)
        assert fast == pytest.approx(plain, abs=1e-5) and fast > 1e-4  # the prompts alone moved it
        fast = kl_to_base(peft_model, tokenizer, base_prompts, base_prompts, continuations, batch_size=2)
        plain = _plain_kl(peft_model, tokenizer, base_prompts, base_prompts, continuations, padding_side)
    assert fast == pytest.approx(plain, abs=1e-5) and fast > 1e-4  # the vector moved it


def test_a_precomputed_kl_reference_gives_the_same_kl_and_must_fit_the_continuations():
    from steerft.metrics import kl_to_base
    from steerft.metrics.side_effects import base_log_distributions

    model, tokenizer = tiny_model("llama")
    continuations = COMPLETIONS[:3]
    with steered(model, {2: torch.ones(64)}, "all") as peft_model:
        with peft_model.disable_adapter():  # the base kl_to_base uses (the bare model differs by float rounding)
            reference = base_log_distributions(peft_model, tokenizer, PROMPTS, continuations, batch_size=2)
        computed = kl_to_base(peft_model, tokenizer, PROMPTS, PROMPTS, continuations, batch_size=2)
        reused = kl_to_base(peft_model, tokenizer, PROMPTS, PROMPTS, continuations, batch_size=2, reference=reference)
        assert reused == computed > 1e-4
        with pytest.raises(ValueError, match="reference does not match"):
            kl_to_base(peft_model, tokenizer, PROMPTS, PROMPTS, COMPLETIONS[1:4], reference=reference)


def _study_context(model, tokenizer, items, positions="completion", layers=(1,), train_layers=(1,)):
    from steerft.study.context import StudyContext, StudyData

    config = SimpleNamespace(multipliers=[1.0, 4.0], positions=positions, select_by="mean_margin",
                             select_caps={}, eval=SimpleNamespace(batch_size=3))
    return StudyContext(config, model, tokenizer, StudyData(items, items[:2], items, None), PROMPTS[:2],
                        [" yes indeed", " no"], ["A text."], PROMPTS[:1], list(layers), list(train_layers))


def _items():
    from steerft.data import BehaviourItem

    return [BehaviourItem(id=str(i), prompt=p, matching="yes, gladly", not_matching="no thanks")
            for i, p in enumerate(PROMPTS)]


def test_base_scores_are_computed_once_per_study_and_equal_a_fresh_computation(monkeypatch):
    from steerft.metrics import kl_to_base, preference
    from steerft.study import context
    from steerft.study.scorable import Scorable, attach

    model, tokenizer = tiny_model("gpt2")
    ctx = _study_context(model, tokenizer, _items())
    calls = []
    monkeypatch.setattr(context, "record_base", lambda *a, **k: calls.append(1) or record_base(*a, **k))
    first = context.base_preference(ctx, "test")
    ctx.memo.clear()  # what the runner does between (n, seed) groups
    assert context.base_preference(ctx, "test") is first and len(calls) == 1
    fresh = preference(model, tokenizer, Scorable(model, ctx.fmt).pairs(ctx.data.test), batch_size=3)
    torch.testing.assert_close(first.margins, fresh.margins, rtol=0, atol=1e-5)
    assert context.base_preference(ctx, "val").n == 2 and len(calls) == 2
    monkeypatch.setattr(context, "supports_site_cache", lambda model: False)  # blocks a replay could not run
    ctx.base_memo.clear()
    torch.testing.assert_close(context.base_preference(ctx, "test").margins, fresh.margins, rtol=0, atol=0)
    assert len(calls) == 2
    base_prompts = [ctx.fmt.prompt(p) for p in ctx.neutral_prompts]
    assert context.base_kl_reference(ctx) is context.base_kl_reference(ctx)
    vector = 10 * torch.randn(64, generator=torch.Generator().manual_seed(5))
    method = attach(ctx.fresh_model(), {1: vector}, 1.0, "all")
    assert kl_to_base(method, tokenizer, base_prompts, base_prompts, ctx.references, base_model=model,
                      batch_size=3, reference=context.base_kl_reference(ctx)) == \
        kl_to_base(method, tokenizer, base_prompts, base_prompts, ctx.references, base_model=model, batch_size=3) > 1e-4


def _scored_one_by_one(ctx, model, fmt, multipliers):
    """The plain path: the adapter attached, the validation items scored at each multiplier."""
    from steerft.study import select
    from steerft.study.scorable import Scorable

    scores = []
    for multiplier in multipliers:
        with model.using_multiplier(multiplier):
            scores.append(select.score(ctx, Scorable(model, fmt)))
    return scores


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("positions", ["all", "completion"])
def test_trained_vector_multipliers_by_replay_equal_scoring_it_attached(arch, positions, monkeypatch):
    from steerft.study import select
    from steerft.study.scorable import attach

    model, tokenizer = tiny_model(arch)
    ctx = _study_context(model, tokenizer, _items())
    trained = attach(tiny_model(arch)[0], {2: torch.randn(64, generator=torch.Generator().manual_seed(4))}, 1.0,
                     positions)
    ctx.train_layers = [2]
    replays = []
    monkeypatch.setattr(select, "site_logprobs", lambda *a, **k: replays.append(1) or site_logprobs(*a, **k))
    candidates = select.multipliers_on(ctx, trained, ctx.fmt, 2, [0.5, -2.0, 3.0])
    assert ("record", "val") in ctx.base_memo and not replays  # the same weights: the study's kept record
    assert trained.peft_config["default"].multiplier == 1.0
    plain = _scored_one_by_one(ctx, trained, ctx.fmt, [0.0, 0.5, -2.0, 3.0])  # "don't steer" is tried first
    assert [c.val_accuracy for c in candidates] == [accuracy for accuracy, _ in plain]
    torch.testing.assert_close(torch.tensor([c.val_mean_margin for c in candidates]),
                               torch.tensor([margin for _, margin in plain]), rtol=0, atol=1e-4)
    assert len({round(c.val_mean_margin, 3) for c in candidates}) == 4  # the multipliers did differ


def test_multipliers_on_falls_back_to_attached_scoring_where_a_replay_cannot_apply(monkeypatch):
    """Two steered blocks, or an ablation, are not one added vector: scored attached, same as before."""
    from steerft.study import select
    from steerft.study.scorable import attach
    from steerft.tuner import SteerConfig
    from peft import get_peft_model

    model, tokenizer = tiny_model("llama")
    ctx = _study_context(model, tokenizer, _items())
    monkeypatch.setattr(select, "site_logprobs", lambda *a, **k: pytest.fail("replayed a model it cannot replay"))
    two_blocks = attach(tiny_model("llama")[0], {1: torch.ones(64), 2: -torch.ones(64)}, 1.0, "all")
    ablation = get_peft_model(tiny_model("llama")[0], SteerConfig(layers=[1], operator="ablate_add",
                                                                  init={1: torch.ones(64)}))
    for steered_model in (two_blocks, ablation):
        candidates = select.multipliers_on(ctx, steered_model, ctx.fmt, 1, [1.0, 2.0])
        assert [(c.val_accuracy, c.val_mean_margin) for c in candidates] == \
            _scored_one_by_one(ctx, steered_model, ctx.fmt, [0.0, 1.0, 2.0])


def _dpo_trainer(arch, peft_config, tmp_path, **args):
    from steerft.data import PromptFormatter, load_behaviour, split_items, training_subset
    from steerft.training import build_trainer, training_rows

    items = training_subset(split_items(load_behaviour("sentiment").items, seed=0).train, 6, seed=0)
    model, tokenizer = tiny_model(arch, seed=0)
    rows = training_rows("dpo", items, PromptFormatter(tokenizer))
    # fp32 on the CPU wherever the tests run: they compare against fp32 CPU scoring to 1e-5 (a GPU would train in bf16)
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, seed=0, learning_rate=0.05,
                    disable_tqdm=True, use_cpu=True, bf16=False, **args)
    return build_trainer(model, tokenizer, rows, method="dpo", peft_config=peft_config, args=settings), tokenizer


def test_dpo_references_are_precomputed_only_for_runs_longer_than_one_pass_over_the_rows():
    """A fixed max_steps over many rows would precompute references for rows it never trains on."""
    from steerft.training import trainer_settings
    from steerft.tuner import SteerConfig

    def precompute(n_rows, method="dpo", config=SteerConfig(layers=[2]), **args):
        return trainer_settings(method, config, {"output_dir": "unused", **args}, n_rows).get("precompute_ref_log_probs")

    assert precompute(128, max_steps=16) is False  # 64 examples of 128 rows
    assert precompute(32, max_steps=16) is True  # 64 examples over 32 rows: each reference used twice
    assert precompute(32, max_steps=16, per_device_train_batch_size=1) is False
    assert precompute(64, max_steps=4, gradient_accumulation_steps=4) is False  # 64 examples, 64 rows
    assert precompute(8, num_train_epochs=2) is True and precompute(8, num_train_epochs=1) is False
    assert precompute(8) is True  # TRL's default of 3 epochs
    assert precompute(128, max_steps=16, precompute_ref_log_probs=True) is True  # the user's setting wins
    assert precompute(8, config=LoraConfig(r=2, task_type="CAUSAL_LM"), num_train_epochs=2) is True
    assert precompute(8, method="sft", num_train_epochs=2) is None
    assert precompute(8, config=None, num_train_epochs=2) is None  # full fine-tuning: a frozen copy, TRL's way


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("adapter", ["steer", "lora"])
def test_dpo_reference_logprobs_are_precomputed_once_from_the_adapter_disabled_model(arch, adapter, tmp_path):
    """The adapter starts away from zero, so reference log-probs taken with it enabled would differ."""
    from steerft.tuner import SteerConfig

    config = (SteerConfig(layers=[2], init={2: 3 * torch.ones(64)}) if adapter == "steer" else
              LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    trainer, tokenizer = _dpo_trainer(arch, config, tmp_path, max_steps=4)  # 8 examples over 6 rows
    assert trainer.args.precompute_ref_log_probs
    rows = trainer.train_dataset
    bare, _ = tiny_model(arch, seed=0)
    for side in ("chosen", "rejected"):
        encoded = [EncodedRow(p + c, len(p)) for p, c in zip(rows["prompt_ids"], rows[f"{side}_ids"])]
        with trainer.model.disable_adapter():
            disabled = summed_logprobs(trainer.model, encoded, batch_size=4, pad=tokenizer.pad_token_id)[0]
        enabled = summed_logprobs(trainer.model, encoded, batch_size=4, pad=tokenizer.pad_token_id)[0]
        precomputed = torch.tensor(rows[f"ref_{side}_logps"], dtype=torch.float64)
        torch.testing.assert_close(precomputed, disabled, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(precomputed, _plain(bare, encoded, tokenizer.pad_token_id), rtol=1e-5, atol=1e-3)
        assert (enabled - disabled).abs().max() > 0.1


def test_dpo_trains_the_same_vector_with_and_without_precomputed_references(tmp_path):
    from steerft.tuner import SteerConfig

    def trained(precompute: bool) -> tuple[torch.Tensor, list[float]]:
        config = SteerConfig(layers=[2], init={2: torch.ones(64)})
        trainer, _ = _dpo_trainer("llama", config, tmp_path / str(precompute), num_train_epochs=2, logging_steps=1,
                                  precompute_ref_log_probs=precompute)
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        return trainer.model.get_vectors()[2], losses

    (vector, losses), (plain_vector, plain_losses) = trained(True), trained(False)
    assert len(losses) == 6 and not torch.equal(vector, torch.ones(64))
    torch.testing.assert_close(vector, plain_vector, rtol=0, atol=1e-5)
    assert losses == pytest.approx(plain_losses, abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", "completion"])
def test_a_kept_record_replays_like_a_per_call_record_and_an_attached_vector(arch, padding_side, positions):
    model, tokenizer = tiny_model(arch)
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    vector = torch.randn(64, generator=torch.Generator().manual_seed(6))
    candidates = [None] + [Steering(layer, vector, m, positions) for layer in (0, 2) for m in (0.0, 2.0, -1.5)]
    kept = record_base(model, rows, [0, 2], prompt_cache=positions == "completion", batch_size=4, pad=pad)
    assert kept.kept and 0 < kept.nbytes <= record_bytes(model, rows, [0, 2], prompt_cache=positions == "completion",
                                                         batch_size=4, pad=pad)
    first = kept.logprobs(candidates)
    torch.testing.assert_close(kept.logprobs(candidates[::-1]), first.flip(0), rtol=0, atol=0)  # replays leave no trace
    torch.testing.assert_close(first, site_logprobs(model, rows, candidates, batch_size=4, pad=pad), rtol=0, atol=1e-5)
    for steering, got in zip(candidates, first):
        want = _plain(model, rows, pad, padding_side) if steering is None or steering.multiplier == 0 else \
            _attached(model, rows, pad, steering, padding_side)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=f"{arch} {steering}")


def test_a_kept_record_holds_only_the_recorded_layers_and_refuses_others():
    model, tokenizer = tiny_model("llama")
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    high = record_base(model, rows, [2], prompt_cache=True, batch_size=4, pad=pad)
    low = record_base(model, rows, [0], prompt_cache=True, batch_size=4, pad=pad)
    assert 0 < high.nbytes < low.nbytes  # the prompt cache only above the lowest layer, and fewer blocks' arguments
    with pytest.raises(ValueError, match="layer 1 is not recorded"):
        high.logprobs([Steering(1, torch.ones(64), 1.0)])
    without_cache = record_base(model, rows, [2], prompt_cache=False, batch_size=4, pad=pad)
    steering = Steering(2, torch.ones(64), 3.0, "completion")  # re-runs the prompt above block 2 for its cache
    torch.testing.assert_close(without_cache.logprobs([steering]), high.logprobs([steering]), rtol=0, atol=1e-5)
    assert without_cache.nbytes < high.nbytes


def test_a_record_over_its_memory_cap_is_recorded_per_call_with_the_same_numbers(monkeypatch):
    from steerft.metrics import site_cache

    model, tokenizer = tiny_model("gemma3")
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    estimate = record_bytes(model, rows, [1], prompt_cache=True, batch_size=4, pad=pad)
    capped = record_base(model, rows, [1], prompt_cache=True, batch_size=4, pad=pad, max_bytes=estimate - 1)
    kept = record_base(model, rows, [1], prompt_cache=True, batch_size=4, pad=pad, max_bytes=estimate)
    assert kept.kept and not capped.kept and capped.nbytes == 0
    recorded = []
    real = site_cache._RecordedBatch.__init__
    monkeypatch.setattr(site_cache._RecordedBatch, "__init__", lambda *a, **k: recorded.append(1) or real(*a, **k))
    candidates = [None, Steering(1, torch.ones(64), 2.0, "completion"), Steering(1, torch.ones(64), -1.0, "all")]
    torch.testing.assert_close(capped.logprobs(candidates), kept.logprobs(candidates), rtol=0, atol=1e-5)
    batches = len(recorded)
    assert batches > 0
    capped.logprobs(candidates)
    assert len(recorded) == 2 * batches  # recorded again in each call; the kept one never


def _study_config(tiny_dir, out, positions):
    from steerft.runconfig import build
    from steerft.study.config import StudyConfig

    return build(StudyConfig, {
        "model": str(tiny_dir), "methods": ["caa", "random"], "n": [2, 4], "seeds": [0], "layers": [1, 2],
        "multipliers": [1.0, 4.0], "positions": positions, "wandb": False, "output_dir": str(out),
        "train": {"adapter": {"layers": [2]}}, "judge": {"kind": "none"},
        "eval": {"test_items": 5, "val_items": 4, "neutral_prompts": 2, "general_texts": 2, "generation_prompts": 1,
                 "generation_tokens": 2, "reference_tokens": 2}})


@pytest.mark.parametrize("positions", ["all", "completion"])
def test_a_study_records_each_split_once_and_scores_extracted_vectors_on_test_like_attached(
        tiny_dir, tmp_path, monkeypatch, positions):
    from steerft.metrics import preference
    from steerft.study import context, evaluate, select
    from steerft.study.runner import run_study

    recorded, replayed = [], []
    monkeypatch.setattr(context, "record_base", lambda model, rows, *a, **k: recorded.append(rows) or
                        record_base(model, rows, *a, **k))
    real = evaluate.replayed_preference

    def spy(ctx, model, split, pairs):
        result = real(ctx, model, split, pairs)
        replayed.append((result, preference(model, ctx.tokenizer, pairs, batch_size=3)))
        return result

    monkeypatch.setattr(evaluate, "replayed_preference", spy)
    selection_splits = []
    real_replay = select.replayed_logprobs
    monkeypatch.setattr(select, "replayed_logprobs", lambda ctx, model, split, *a: selection_splits.append(split) or
                        real_replay(ctx, model, split, *a))
    run_study(_study_config(tiny_dir, tmp_path / "study", positions))
    assert set(selection_splits) == {"val"}  # selection replays validation items only, never test
    assert len(recorded) == len({tuple(map(tuple, (r.ids for r in rows))) for rows in recorded}) >= 2
    assert len(replayed) == 4  # caa and random at n = 2 and 4: every one from the kept test record
    for result, attached in replayed:
        assert result is not None
        torch.testing.assert_close(result.margins, attached.margins, rtol=0, atol=1e-4)


@pytest.mark.parametrize("positions", ["all", "completion"])
def test_general_text_cross_entropy_by_replay_equals_scoring_the_vector_attached(positions):
    """Selection's delta_ce cap and a point's CE read the kept record of the general texts; the same numbers as
    `reply_cross_entropy` with the vector attached (in place on the base model, as selection attaches it)."""
    from steerft.study import select
    from steerft.study.evaluate import reply_cross_entropy, study_cross_entropy
    from steerft.study.scorable import Scorable

    model, tokenizer = tiny_model("llama")
    ctx = _study_context(model, tokenizer, _items(), positions=positions, layers=[0, 2])
    ctx.general_texts = ["A short text.", "Another, somewhat longer piece of plain text."]
    ctx.config.select_caps = {"delta_ce": 100.0}
    vectors = {layer: 3 * torch.randn(64, generator=torch.Generator().manual_seed(layer)) for layer in (0, 2)}
    choice = select.choose_steering(ctx, model, ctx.fmt, vectors)
    assert ("record", "general") in ctx.base_memo

    def attached(layer, multiplier):
        with steered(model, {layer: vectors[layer]}, positions) as peft_model:
            with peft_model.using_multiplier(multiplier):
                assert study_cross_entropy(ctx, Scorable(peft_model, ctx.fmt)) == pytest.approx(
                    reply_cross_entropy(Scorable(peft_model, ctx.fmt), tokenizer, ctx.general_texts, batch_size=3),
                    abs=1e-5)
                return reply_cross_entropy(Scorable(peft_model, ctx.fmt), tokenizer, ctx.general_texts, batch_size=3)

    base = reply_cross_entropy(Scorable(model, ctx.fmt), tokenizer, ctx.general_texts, batch_size=3)
    measured = [c for c in choice.grid if c.val_delta_ce is not None]
    assert measured
    for candidate in measured:
        want = attached(candidate.layer, candidate.multiplier) - base if candidate.multiplier else 0.0
        assert candidate.val_delta_ce == pytest.approx(want, abs=1e-5)
    assert abs(attached(2, 4.0) - base) > 1e-3  # the vector did move it


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("positions", ["all", "completion"])
def test_kl_by_replay_equals_kl_with_the_vector_attached(arch, positions):
    from steerft.data import PromptFormatter
    from steerft.metrics import kl_to_base
    from steerft.study import select
    from steerft.study.context import base_kl_reference
    from steerft.study.evaluate import replayed_kl, study_kl
    from steerft.study.scorable import Scorable, attach

    model, tokenizer = tiny_model(arch)
    ctx = _study_context(model, tokenizer, _items(), positions=positions, layers=[2])
    vector = 4 * torch.randn(64, generator=torch.Generator().manual_seed(7))
    prompts = [ctx.fmt.prompt(p) for p in ctx.neutral_prompts]
    method = attach(ctx.fresh_model(), {2: vector}, 1.5, positions)  # a point's model
    replayed = replayed_kl(ctx, Scorable(method, ctx.fmt))
    assert replayed == study_kl(ctx, Scorable(method, ctx.fmt)) > 1e-4
    assert replayed == pytest.approx(kl_to_base(method, tokenizer, prompts, prompts, ctx.references, batch_size=3,
                                                base_model=model), abs=1e-5)
    other_prompt = PromptFormatter(tokenizer, system_prompt="Be brief.")
    assert replayed_kl(ctx, Scorable(method, other_prompt)) is None  # another prompt: scored attached
    with steered(model, {2: vector}, positions) as peft_model:  # selection attaches in place on the base model
        with peft_model.using_multiplier(1.5):
            in_place = select._kl_to_unsteered(ctx, peft_model, ctx.fmt)
            assert in_place == pytest.approx(kl_to_base(peft_model, tokenizer, prompts, prompts, ctx.references,
                                                        batch_size=3), abs=1e-5)
    assert in_place == pytest.approx(replayed, abs=1e-6) and ("record", "neutral") in ctx.base_memo
    assert base_kl_reference(ctx) is base_kl_reference(ctx)


def test_a_study_over_its_record_cap_replays_from_records_made_per_call_with_the_same_choice(monkeypatch):
    from steerft.study import context, select

    model, tokenizer = tiny_model("llama")
    vectors = {layer: torch.randn(64, generator=torch.Generator().manual_seed(layer)) for layer in (0, 2)}
    kept_ctx = _study_context(model, tokenizer, _items(), layers=[0, 2])
    kept = select.choose_steering(kept_ctx, model, kept_ctx.fmt, vectors)
    assert context.base_record(kept_ctx, "val").kept
    capped_ctx = _study_context(model, tokenizer, _items(), layers=[0, 2])
    first = context.base_record(capped_ctx, "test").nbytes
    monkeypatch.setattr(context, "DEFAULT_RECORD_CAP", first + 1)  # one study-wide budget: the test record took it
    capped = select.choose_steering(capped_ctx, model, capped_ctx.fmt, vectors)
    assert not context.base_record(capped_ctx, "val").kept
    assert [(c.layer, c.multiplier, c.val_accuracy) for c in capped.grid] == \
        [(c.layer, c.multiplier, c.val_accuracy) for c in kept.grid] and capped.best == kept.best
    torch.testing.assert_close(torch.tensor([c.val_mean_margin for c in capped.grid]),
                               torch.tensor([c.val_mean_margin for c in kept.grid]), rtol=0, atol=1e-5)
