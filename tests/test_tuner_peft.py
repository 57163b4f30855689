"""The steer adapter in the paths PEFT and TRL users take: each works as it does for PEFT's own methods, or is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from steerft import MergeError, SteerConfig
from steerft.testing import tiny_model
from test_tuner import _ids, _random_vectors, _run_python, _steered

ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]


def _tiny_qwen3():
    config = transformers.Qwen3Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.Qwen3ForCausalLM(config).eval()


def _saved_adapter(tmp_path, arch="llama", **config):
    model, _ = _steered(arch, **config)
    model.save_pretrained(tmp_path / "adapter")
    return model


# 1. low_cpu_mem_usage


@pytest.mark.parametrize("arch", ARCHS)
def test_low_cpu_mem_usage_loads_meta_vectors_then_the_weights(arch, tmp_path):
    model = _saved_adapter(tmp_path, arch, layers=[1, 2])
    ids = _ids()
    expected = model(ids).logits
    base, _ = tiny_model(arch)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter", low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in loaded.parameters())
    assert torch.equal(loaded(ids).logits, expected)
    loaded.load_adapter(tmp_path / "adapter", adapter_name="second", low_cpu_mem_usage=True)
    loaded.set_adapter("second")
    assert torch.equal(loaded(ids).logits, expected)


# 2. merged models reload identically, or the merge is refused


MERGES = [("llama", "add"), ("gpt2", "add")] + [(arch, "ablate") for arch in ("llama", "qwen2", "qwen3", "mistral", "gpt2")]


def _merged(arch, operator):
    base = _tiny_qwen3() if arch == "qwen3" else tiny_model(arch)[0]
    if operator == "add":
        config = SteerConfig(layers=[0, 2], multiplier=1.5, init=_random_vectors(base, [0, 2]))
    else:
        config = SteerConfig(layers=list(range(4)), operator="ablate", init=_random_vectors(base, [0])[0])
    model = get_peft_model(base, config)
    expected = model(_ids()).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(_ids()).logits, expected, atol=1e-4, rtol=0)
    return merged, expected


def test_every_merge_in_the_table_reloads_identically_in_a_new_process(tmp_path):
    torch.save(_ids(), tmp_path / "ids.pt")
    for arch, operator in MERGES:
        merged, expected = _merged(arch, operator)
        merged.save_pretrained(tmp_path / f"{arch}-{operator}")
        torch.save(expected, tmp_path / f"{arch}-{operator}.pt")
    out = _run_python(f"""
        import torch
        from transformers import AutoModelForCausalLM
        folder = {str(tmp_path)!r}
        ids = torch.load(folder + "/ids.pt")
        for case in {[f"{arch}-{operator}" for arch, operator in MERGES]!r}:
            model = AutoModelForCausalLM.from_pretrained(folder + "/" + case)
            print(case, (model(ids).logits - torch.load(folder + "/" + case + ".pt")).abs().max().item())
    """)
    errors = dict(line.split() for line in out.strip().splitlines())
    assert len(errors) == len(MERGES) and all(float(error) < 1e-4 for error in errors.values()), errors


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "qwen3"])
def test_add_merge_that_would_not_reload_is_refused_at_merge_time(arch):
    base = _tiny_qwen3() if arch == "qwen3" else tiny_model(arch)[0]
    model = get_peft_model(base, SteerConfig(layers=[1], init=_random_vectors(base, [1])))
    with pytest.raises(MergeError, match="reload without the vector.*merge_adapter"):
        model.merge_and_unload()
    assert hasattr(model.base_model.model.model.layers[1], "steer")  # nothing was changed


# 3. safe_merge


def _poison(model, value=float("nan"), layer=1):
    model.base_model.model.model.layers[layer].steer.vector["default"].weight.data[3] = value


@pytest.mark.parametrize("how", ["merge_and_unload", "merge_adapter"])
def test_safe_merge_refuses_non_finite_weights_in_peft_words(how):
    model, _ = _steered("llama", layers=[1])
    _poison(model)
    with pytest.raises(ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"):
        getattr(model, how)(safe_merge=True)
    assert not any(layer.merged for layer in model.base_model._steer_layers())


def test_safe_merge_checks_the_merged_weights_not_only_the_vector():
    model, _ = _steered("gpt2", layers=[1])
    model.base_model.model.transformer.h[1].mlp.c_proj.bias.data.fill_(3e38)
    model.base_model.model.transformer.h[1].steer.vector["default"].weight.data.fill_(3e38)
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        model.merge_and_unload(safe_merge=True)


def test_ablation_merge_with_a_nan_vector_gives_the_real_reason():
    base, _ = tiny_model("llama")
    direction = _random_vectors(base, [0])[0]
    model = get_peft_model(base, SteerConfig(layers=list(range(4)), operator="ablate", init=direction))
    for layer in range(4):
        _poison(model, layer=layer)
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        model.merge_and_unload(safe_merge=True)


# 4. trainable ablation needs a direction


@pytest.mark.parametrize("operator", ["ablate", "ablate_add"])
def test_trainable_ablation_from_zeros_is_refused_at_config_time(operator):
    with pytest.raises(ValueError, match="can never train.*init='random'"):
        SteerConfig(layers=[1], operator=operator)
    assert SteerConfig(layers=[1], operator=operator, trainable=False).init == "zeros"
    assert SteerConfig(layers=[1], operator=operator, inference_mode=True).trainable  # as saved adapter configs say


@pytest.mark.parametrize("operator", ["ablate", "ablate_add"])
def test_trainable_ablation_from_random_gets_a_gradient(operator):
    base, _ = tiny_model("llama")
    model = get_peft_model(base, SteerConfig(layers=[1], operator=operator, init="random"))
    model.train()
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.base_model.model.model.layers[1].steer.vector["default"].weight.grad
    assert grad is not None and grad.abs().sum() > 0


# 5. modules_to_save and trainable_token_indices: the reward-model path


def _sequence_classifier(arch):
    config = tiny_model(arch)[0].config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_seq_cls_trains_vector_and_score_head_and_reloads_both(arch, tmp_path):
    model = get_peft_model(_sequence_classifier(arch), SteerConfig(task_type="SEQ_CLS", layers=[1], init="random"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    vectors = {name for name in trainable if "steer.vector.default" in name}
    head = {name for name in trainable if "modules_to_save.default" in name}
    assert len(vectors) == 1 and head and vectors | head == trainable, trainable
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    ids = _ids(batch=4)
    loss = torch.nn.functional.mse_loss(model(input_ids=ids).logits.squeeze(-1), torch.tensor([1.0, -1.0, 2.0, 0.0]))
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters() if p.requires_grad)
    model.eval()
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("steer.vector" in key for key in saved) and any("score" in key for key in saved), list(saved)
    reloaded = PeftModel.from_pretrained(_sequence_classifier(arch), tmp_path / "adapter")
    assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_trl_reward_trainer_trains_vector_and_head_and_the_saved_adapter_reloads(tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    _, tokenizer = tiny_model("llama")
    rows = Dataset.from_list([{"chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(8)])
    args = RewardConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, learning_rate=0.1, report_to=[],
        save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    config = SteerConfig(task_type="SEQ_CLS", layers=[1], init="random")
    trainer = RewardTrainer(
        model=_sequence_classifier("llama"), args=args, train_dataset=rows, processing_class=tokenizer, peft_config=config
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("steer.vector" in name for name in before) and any("score.modules_to_save" in name for name in before)
    trainer.train()
    assert all(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.model.save_pretrained(tmp_path / "adapter")
    ids = _ids()
    expected = trainer.model.eval()(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(_sequence_classifier("llama"), tmp_path / "adapter")
    assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_default_causal_lm_task_type_on_a_classifier_says_what_to_set():
    with pytest.raises(ValueError, match="task_type='SEQ_CLS'"):
        get_peft_model(_sequence_classifier("llama"), SteerConfig(layers=[1]))


def test_trainable_token_indices_trains_those_embeddings(tmp_path):
    base, _ = tiny_model("llama")
    model = get_peft_model(base, SteerConfig(layers=[1], trainable_token_indices=[5, 6]))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("token_adapter" in name for name in trainable) and any("steer.vector" in name for name in trainable)
    model.save_pretrained(tmp_path / "adapter")
    assert any("token_adapter" in key for key in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))


def test_modules_to_save_in_config_is_trained_and_saved(tmp_path):
    base, _ = tiny_model("llama")
    model = get_peft_model(base, SteerConfig(layers=[1], modules_to_save=["lm_head"]))
    assert any("lm_head.modules_to_save.default" in n for n, p in model.named_parameters() if p.requires_grad)


# 6. mixed adapter batches


def _two_adapters(arch):
    base, tokenizer = tiny_model(arch)
    model = get_peft_model(base, SteerConfig(layers=[1], init=_random_vectors(base, [1], seed=1)))
    model.add_adapter("other", SteerConfig(layers=[1, 2], init=_random_vectors(base, [1, 2], seed=2), multiplier=2.0))
    return model.eval(), tokenizer


def _with_adapter(model, name, fn):
    if name == "__base__":
        with model.disable_adapter():
            return fn()
    model.set_adapter(name)
    return fn()


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_adapter_batch_forward_steers_each_row_with_its_adapter(arch):
    model, _ = _two_adapters(arch)
    ids = _ids(batch=3)
    names = ["other", "__base__", "default"]
    mixed = model(input_ids=ids, adapter_names=names).logits
    for row, name in enumerate(names):
        single = _with_adapter(model, name, lambda: model(input_ids=ids[row : row + 1]).logits)
        torch.testing.assert_close(mixed[row : row + 1], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_beams", [1, 2])
def test_mixed_adapter_batch_generate_matches_one_by_one(arch, num_beams):
    model, _ = _two_adapters(arch)
    ids = _ids(batch=3)
    names = ["default", "other", "__base__"]
    settings = dict(max_new_tokens=4, do_sample=False, num_beams=num_beams, pad_token_id=0)
    mixed = model.generate(input_ids=ids, adapter_names=names, **settings)
    for row, name in enumerate(names):
        single = _with_adapter(model, name, lambda: model.generate(input_ids=ids[row : row + 1], **settings))
        assert torch.equal(mixed[row], single[0])


def test_mixed_adapter_batch_refusals_are_clear():
    model, _ = _two_adapters("llama")
    ids = _ids(batch=2)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['typo'\]"):
        model(input_ids=ids, adapter_names=["typo", "default"])
    with pytest.raises(ValueError, match="2 rows"):
        model(input_ids=ids, adapter_names=["default", "other", "default"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(input_ids=ids, adapter_names=["default", "other"])
    model.eval()
    model.set_adapter("default")
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged.*unmerge_adapter"):
        model(input_ids=ids, adapter_names=["default", "other"])


# 7. merge_adapter / unmerge_adapter


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_merge_adapter_is_exact_and_unmerge_restores_the_weights_bit_for_bit(arch):
    model, _ = _steered(arch, layers=[0, 2], multiplier=1.5)
    ids = _ids()
    expected = model(ids).logits
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.merge_adapter()
    assert all(layer.merged for layer in model.base_model._steer_layers())
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=0)
    with pytest.raises(MergeError, match="unmerge_adapter"):
        model.set_multiplier(2.0)
    model.unmerge_adapter()
    after = dict(model.named_parameters())
    assert set(after) == set(weights) and all(torch.equal(after[name], value) for name, value in weights.items())
    assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_disabling_a_merged_adapter_gives_the_base_model(arch):
    base, _ = tiny_model(arch)
    ids = _ids()
    reference = base(ids).logits
    model = get_peft_model(base, SteerConfig(layers=[1], init=_random_vectors(base, [1])))
    model.merge_adapter()
    with pytest.warns(UserWarning, match="Unmerging"), model.disable_adapter():
        assert torch.equal(model(ids).logits, reference)


@pytest.mark.parametrize(
    "arch, config, reason",
    [
        ("gemma3", dict(layers=[1]), "normalises"),
        ("llama", dict(layers=[1], positions="completion"), "positions='completion'"),
        ("llama", dict(layers=[0, 1, 2, 3], operator="ablate"), "unmerge cannot undo"),
        ("llama", dict(layers=[1], operator="ablate_add"), "unmerge cannot undo"),
    ],
)
def test_irreversible_merge_adapter_is_a_merge_error(arch, config, reason):
    model, _ = _steered(arch, **config)
    with pytest.raises(MergeError, match=reason):
        model.merge_adapter()


# 8. parameter naming


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_finds_exactly_the_vector_parameters(arch):
    model, _ = _steered(arch, layers=[1, 2])
    with_prefix = {name for name, _ in model.named_parameters() if model.prefix in name}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_prefix == trainable and len(with_prefix) == 2


def test_saved_keys_keep_their_format(tmp_path):
    _saved_adapter(tmp_path, layers=[1])
    assert list(load_file(tmp_path / "adapter" / "adapter_model.safetensors")) == [
        "base_model.model.model.layers.1.steer.vector.weight"
    ]


# Issue 13: multiplier values, strict loading, unreadable files


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None, "2"])
def test_set_multiplier_refuses_non_finite_and_non_numbers(value):
    model, _ = _steered(layers=[1])
    with pytest.raises(ValueError, match="multiplier must be a finite number"):
        model.set_multiplier(value)
    assert model.peft_config["default"].multiplier == 1.0


def test_loading_is_strict_about_which_blocks_have_vectors(tmp_path):
    _saved_adapter(tmp_path, layers=[1, 2])
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["layers"] = [1, 3]
    config_path.write_text(json.dumps(config))
    base, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=r"steers blocks \[1, 3\].*blocks \[1, 2\].*missing: \[3\]; unexpected: \[2\]"):
        PeftModel.from_pretrained(base, tmp_path / "adapter")


def test_loading_with_a_missing_vector_is_an_error(tmp_path):
    _saved_adapter(tmp_path, layers=[1, 2])
    weights_path = tmp_path / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_path)
    del weights["base_model.model.model.layers.2.steer.vector.weight"]
    save_file(weights, weights_path)
    base, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=r"missing: \[2\]; unexpected: \[\]"):
        PeftModel.from_pretrained(base, tmp_path / "adapter")


def test_non_finite_saved_vector_is_refused(tmp_path):
    _saved_adapter(tmp_path, layers=[1])
    weights_path = tmp_path / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_path)
    weights["base_model.model.model.layers.1.steer.vector.weight"][0] = math.inf
    save_file(weights, weights_path)
    with pytest.raises(ValueError, match="block 1 in the checkpoint contains NaN or inf"):
        PeftModel.from_pretrained(tiny_model("llama")[0], tmp_path / "adapter")


def test_truncated_weights_file_is_named(tmp_path):
    _saved_adapter(tmp_path, layers=[1])
    weights_path = tmp_path / "adapter" / "adapter_model.safetensors"
    weights_path.write_bytes(weights_path.read_bytes()[:-40])
    base, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is not a readable safetensors file"):
        PeftModel.from_pretrained(base, tmp_path / "adapter")
