"""The steer adapter as a PEFT method, on tiny random models of each supported architecture."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model

import steerft
from steerft import MergeError, SteerConfig
from steerft.testing import tiny_model

ARCHS = ["llama", "gemma3", "qwen2", "mistral", "gpt2"]
MERGEABLE_ADD = ["llama", "gpt2"]  # the others cannot save the bias: see test_tuner_peft.py


def _ids(batch: int = 2, seq: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _random_vectors(model, layers, seed=1, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.get_text_config().hidden_size
    return {layer: scale * torch.randn(size, generator=generator) for layer in layers}


def _steered(arch="llama", **config):
    base, tokenizer = tiny_model(arch)
    reference = base  # shares weights; PEFT wraps in place
    config.setdefault("layers", [1])
    config.setdefault("init", _random_vectors(base, config["layers"]))
    return get_peft_model(reference, SteerConfig(**config)), tokenizer


@pytest.mark.parametrize("arch", ARCHS)
def test_disabled_zero_and_multiplier_zero_give_exact_base_logits(arch):
    base, _ = tiny_model(arch)
    ids = _ids()
    expected = base(ids).logits
    model = get_peft_model(base, SteerConfig(layers=[1, 2], init=_random_vectors(base, [1, 2])))
    assert not torch.equal(model(ids).logits, expected)
    with model.disable_adapter():
        assert torch.equal(model(ids).logits, expected)
    with model.using_multiplier(0.0):
        assert torch.equal(model(ids).logits, expected)
    base2, _ = tiny_model(arch)
    zero = get_peft_model(base2, SteerConfig(layers=[1]))
    assert torch.equal(zero(ids).logits, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_hidden_state_includes_vector(arch):
    base, _ = tiny_model(arch)
    ids = _ids()
    before = base(ids, output_hidden_states=True).hidden_states
    vectors = _random_vectors(base, [2])
    model = get_peft_model(base, SteerConfig(layers=[2], init=vectors, multiplier=3.0))
    after = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(after[2], before[2])  # below the site: untouched
    torch.testing.assert_close(after[3] - before[3], (3.0 * vectors[2]).expand_as(before[3]))


def test_print_trainable_parameters_counts_one_vector(capsys):
    model, _ = _steered(layers=[2], init="zeros")
    model.print_trainable_parameters()
    assert "trainable params: 64 ||" in capsys.readouterr().out
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["base_model.model.model.layers.2.steer.vector.default.weight"]


def test_set_multiplier_changes_output_without_reloading():
    model, _ = _steered(layers=[1])
    ids = _ids()
    with model.disable_adapter():
        base = model(ids, output_hidden_states=True).hidden_states[2]
    model.set_multiplier(2.0)
    two = model(ids, output_hidden_states=True).hidden_states[2] - base
    model.set_multiplier(-1.0)
    minus_one = model(ids, output_hidden_states=True).hidden_states[2] - base
    torch.testing.assert_close(two, -2.0 * minus_one)
    assert model.peft_config["default"].multiplier == -1.0


def _left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _right_pad(rows, pad_id, fill=None):
    width = max(len(r) for r in rows)
    fill = pad_id if fill is None else fill
    ids = torch.tensor([r + [fill] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


PROMPTS = [[5, 17, 99, 42], [8, 9], [70, 71, 72, 73, 74, 75]]
COMPLETIONS = [[11, 12, 13], [21, 22, 23, 24, 25], [31]]


@pytest.mark.parametrize("positions", ["all", "prompt", "completion"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_forward_equals_one_by_one(positions, side):
    model, tokenizer = _steered(layers=[1, 2], positions=positions)
    pad = tokenizer.pad_token_id
    rows = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    label_rows = [[-100] * len(p) + c for p, c in zip(PROMPTS, COMPLETIONS)]
    padder = _left_pad if side == "left" else _right_pad
    ids, mask = padder(rows, pad)
    labels, _ = padder(label_rows, -100)
    batched = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), labels=labels).logits
    for i, (row, label_row) in enumerate(zip(rows, label_rows)):
        single = model(input_ids=torch.tensor([row]), labels=torch.tensor([label_row])).logits[0]
        real = mask[i].bool()
        torch.testing.assert_close(batched[i][real], single, atol=1e-5, rtol=0)


def test_positions_steer_exactly_the_intended_tokens():
    prompt, completion = PROMPTS[0], COMPLETIONS[0]
    ids = torch.tensor([prompt + completion])
    labels = torch.tensor([[-100] * len(prompt) + completion])
    deltas = {}
    for positions in ("prompt", "completion"):
        model, _ = _steered(layers=[1], positions=positions)
        with model.disable_adapter():
            base = model(ids, output_hidden_states=True).hidden_states[2]
        steered = model(ids, labels=labels, output_hidden_states=True).hidden_states[2]
        deltas[positions] = (steered - base).norm(dim=-1)[0]
    n = len(prompt)
    assert (deltas["prompt"][:n] > 0).all() and (deltas["prompt"][n:] == 0).all()
    assert (deltas["completion"][:n] == 0).all() and (deltas["completion"][n:] > 0).all()


def test_explicit_steer_mask_overrides_positions():
    model, _ = _steered(layers=[1], positions="all")
    ids = _ids(batch=1, seq=6)
    steer_mask = torch.tensor([[False, True, False, True, False, False]])
    with model.disable_adapter():
        base = model(ids, output_hidden_states=True).hidden_states[2]
    steered = model(ids, steer_mask=steer_mask, output_hidden_states=True).hidden_states[2]
    assert torch.equal((steered - base).norm(dim=-1) > 0, steer_mask)


@pytest.mark.parametrize("positions", ["all", "prompt", "completion"])
def test_batched_generate_with_cache_equals_one_by_one(positions):
    model, tokenizer = _steered(layers=[1], positions=positions, multiplier=4.0)
    pad = tokenizer.pad_token_id
    ids, mask = _left_pad(PROMPTS, pad)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=None, output_scores=True,
                  return_dict_in_generate=True)
    batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        single = model.generate(input_ids=torch.tensor([prompt]), **kwargs)
        assert batched.sequences[i, ids.shape[1]:].tolist() == single.sequences[0, len(prompt):].tolist()
        for step_batched, step_single in zip(batched.scores, single.scores):
            torch.testing.assert_close(step_batched[i], step_single[0], atol=1e-5, rtol=0)


def test_completion_positions_in_generate_match_a_labelled_forward():
    """What generate steers (tokens after the prompt) is what a labelled forward steers."""
    model, _ = _steered(layers=[1], positions="completion", multiplier=4.0)
    prompt = torch.tensor([PROMPTS[0]])
    out = model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, eos_token_id=None,
                         output_scores=True, return_dict_in_generate=True)
    full = out.sequences
    labels = full.clone()
    labels[:, : prompt.shape[1]] = -100
    logits = model(input_ids=full, labels=labels).logits[0]
    for step, score in enumerate(out.scores):
        torch.testing.assert_close(score[0], logits[prompt.shape[1] - 1 + step], atol=1e-5, rtol=0)


def test_gradients_reach_only_the_vector_and_stop_at_the_steered_block():
    model, _ = _steered(layers=[2], init="zeros")
    blocks = model.base_model.model.model.layers
    visited = []
    for index, block in enumerate(blocks):
        block.register_full_backward_hook(lambda module, gin, gout, index=index: visited.append(index))
    ids = _ids()
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"base_model.model.model.layers.2.steer.vector.default.weight"}
    assert min(visited) >= 2 and 0 not in visited and 1 not in visited


def test_multiple_named_adapters_set_and_delete():
    base, _ = tiny_model("llama")
    ids = _ids()
    expected = base(ids).logits
    model = get_peft_model(base, SteerConfig(layers=[1], init=_random_vectors(base, [1], seed=1)))
    model.add_adapter("other", SteerConfig(layers=[2], init=_random_vectors(base, [2], seed=2)))
    first = model(ids).logits
    model.set_adapter("other")
    other = model(ids).logits
    assert not torch.allclose(first, other)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["base_model.model.model.layers.2.steer.vector.other.weight"]
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    model.set_adapter("default")
    torch.testing.assert_close(model(ids).logits, first)
    assert not hasattr(model.base_model.model.model.layers[2], "steer")
    assert not torch.equal(first, expected)


def _save_base(tmp_path, arch="llama"):
    base, tokenizer = tiny_model(arch)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return base


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result.stdout


def test_save_and_load_in_a_new_process_gives_identical_logits(tmp_path):
    base = _save_base(tmp_path)
    base = type(base).from_pretrained(tmp_path / "base")
    model = get_peft_model(base, SteerConfig(layers=[1, -1], init="random", multiplier=2.5, positions="completion"))
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    ids = _ids()
    labels = ids.clone()
    labels[:, :4] = -100
    expected = model(input_ids=ids, labels=labels).logits
    torch.save({"ids": ids, "labels": labels}, tmp_path / "inputs.pt")
    _run_python(f"""
        import torch, steerft
        from peft import AutoPeftModelForCausalLM, PeftModel
        from transformers import AutoModelForCausalLM
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        base = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'base')!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / 'adapter')!r})
        torch.save(model(input_ids=inputs['ids'], labels=inputs['labels']).logits, {str(tmp_path / 'a.pt')!r})
        auto = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / 'adapter')!r})
        torch.save(auto(input_ids=inputs['ids'], labels=inputs['labels']).logits, {str(tmp_path / 'b.pt')!r})
    """)
    assert torch.equal(torch.load(tmp_path / "a.pt"), expected)
    assert torch.equal(torch.load(tmp_path / "b.pt"), expected)


def test_loading_without_import_steerft_says_what_to_do(tmp_path):
    base = _save_base(tmp_path)
    get_peft_model(base, SteerConfig(layers=[1])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(AssertionError, match="import steerft"):
        _run_python(f"""
            from peft import PeftConfig
            PeftConfig.from_pretrained({str(tmp_path / 'adapter')!r})
        """)


def test_hidden_size_mismatch_on_load_is_a_clear_error(tmp_path):
    small, _ = tiny_model("llama", hidden_size=32)
    get_peft_model(small, SteerConfig(layers=[1], init="random")).save_pretrained(tmp_path / "adapter")
    big, _ = tiny_model("llama", hidden_size=64)
    with pytest.raises(ValueError, match="hidden size is 64"):
        PeftModel.from_pretrained(big, tmp_path / "adapter")


@pytest.mark.parametrize("arch", MERGEABLE_ADD)
def test_merge_add_equals_hooked(arch, tmp_path):
    model, _ = _steered(arch, layers=[0, 2], multiplier=1.5)
    ids = _ids()
    expected = model(ids).logits
    merged = model.merge_and_unload()
    assert not any("steer" in name for name, _ in merged.named_modules())
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=0)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = type(merged).from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_merge_ablation_at_every_block_equals_orthogonalised_weights(arch):
    base, _ = tiny_model(arch)
    n_blocks = base.config.num_hidden_layers
    direction = _random_vectors(base, [0])[0]
    model = get_peft_model(base, SteerConfig(layers=list(range(n_blocks)), operator="ablate", init=direction))
    ids = _ids()
    out = model(ids, output_hidden_states=True)
    unit = direction / direction.norm()
    for hidden in out.hidden_states[1:-1]:  # every block output except the final-normed one
        assert (hidden @ unit).abs().max() < 1e-4
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, out.logits, atol=1e-4, rtol=0)


def test_ablation_at_one_block_removes_the_direction_at_its_site():
    model, _ = _steered(layers=[2], operator="ablate")
    direction = model.get_vectors()[2]
    hidden = model(_ids(), output_hidden_states=True).hidden_states[3]
    assert (hidden @ (direction / direction.norm())).abs().max() < 1e-4


def test_ablate_add_sets_the_component_to_the_multiplier_times_the_norm():
    model, _ = _steered(layers=[1], operator="ablate_add", multiplier=3.0)
    direction = model.get_vectors()[1]
    unit = direction / direction.norm()
    hidden = model(_ids(), output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(hidden @ unit, torch.full(hidden.shape[:2], 3.0 * direction.norm().item()), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "arch, config, reason",
    [
        ("gemma3", dict(layers=[1]), "normalises"),
        ("llama", dict(layers=[1], positions="prompt"), "positions='prompt'"),
        ("llama", dict(layers=[1], positions="completion"), "positions='completion'"),
        ("llama", dict(layers=[1, 2], operator="ablate"), "every"),
        ("gemma3", dict(layers=[0, 1, 2, 3], operator="ablate"), "normalises"),
        ("llama", dict(layers=[1], operator="ablate_add"), "ablate_add"),
    ],
)
def test_unmergeable_cases_say_why(arch, config, reason):
    model, _ = _steered(arch, **config)
    if config.get("operator") == "ablate" and len(config["layers"]) == 4:
        model.set_vectors({i: model.get_vectors()[0] for i in range(4)})
    with pytest.raises(MergeError, match=reason):
        model.merge_and_unload()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(positions="middle"), "positions"),
        (dict(operator="scale"), "operator"),
        (dict(init="ones"), "init"),
        (dict(layers="3"), "layers"),
        (dict(layers=[]), "layers"),
        (dict(multiplier=float("nan")), "multiplier"),
        (dict(init=[float("inf")] * 64), "NaN or inf"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SteerConfig(**kwargs)


def test_allowed_values_are_listed():
    with pytest.raises(ValueError, match="all, prompt, completion"):
        SteerConfig(positions="answer")
    with pytest.raises(ValueError, match="add, ablate, ablate_add"):
        SteerConfig(operator="mul")


def test_layer_out_of_range_names_the_allowed_range():
    base, _ = tiny_model("llama", n_layers=4)
    with pytest.raises(ValueError, match=r"layers contains 4.*-4\.\.3"):
        get_peft_model(base, SteerConfig(layers=[4]))


def test_given_vector_of_wrong_size_is_refused():
    base, _ = tiny_model("llama", hidden_size=64)
    with pytest.raises(ValueError, match="hidden size is 64"):
        get_peft_model(base, SteerConfig(layers=[1], init=torch.ones(32)))


def test_unknown_architecture_names_the_class_and_the_fix():
    base, _ = tiny_model("llama")
    base.config.model_type = "mystery"
    base.config.num_hidden_layers = 99  # defeat the block-list guess too
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*blocks_path"):
        get_peft_model(base, SteerConfig(layers=[1]))
    steered = get_peft_model(base, SteerConfig(layers=[1], blocks_path="model.layers"))
    assert list(steered.get_vectors()) == [1] and steered.get_vectors()[1].shape == (64,)


def test_saved_config_does_not_carry_given_vectors(tmp_path):
    model, _ = _steered(layers=[1])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init"] == "given" and "given_vectors" not in saved
    assert saved["peft_type"].startswith("STEER")
    assert steerft.SteerConfig.from_pretrained(tmp_path).layers == [1]
