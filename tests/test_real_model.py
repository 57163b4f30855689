"""The steer adapter on the real bundled SmolLM2-135M-Instruct (marked `real`; CI runs these)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from steerft import SteerConfig
from steerft.data import PromptFormatter, contrast_pairs, load_behaviour, split_items
from steerft.extract import estimate, pair_activations
from steerft.metrics import generate_samples, preference
from steerft.models import load_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


def test_one_vector_at_one_layer_is_576_trainable_parameters(smollm2, capsys):
    model, _ = smollm2
    peft_model = get_peft_model(model, SteerConfig(layers=[12]))
    try:
        peft_model.print_trainable_parameters()
        assert "trainable params: 576 ||" in capsys.readouterr().out
    finally:
        peft_model.unload()


def test_caa_vector_moves_held_out_sentiment_and_disabling_restores_the_base(smollm2):
    model, tokenizer = smollm2
    fmt = PromptFormatter(tokenizer)
    splits = split_items(load_behaviour("sentiment").items, seed=0)
    train, test = contrast_pairs(splits.train[:32], fmt), contrast_pairs(splits.test[:16], fmt)
    direction = estimate("mean_diff", *pair_activations(model, tokenizer, train, [14]).at(14))
    base = preference(model, tokenizer, test)
    peft_model = get_peft_model(model, SteerConfig(layers=[14], init={14: direction.vector}, multiplier=1.0))
    try:
        towards = preference(peft_model, tokenizer, test)
        with peft_model.using_multiplier(-1.0):
            away = preference(peft_model, tokenizer, test)
        with peft_model.disable_adapter():
            torch.testing.assert_close(preference(peft_model, tokenizer, test).margins, base.margins)
        # Measured here: margin 8.7 at x0, 16.4 at x1, 3.6 at x-1 (large multipliers break the model instead).
        assert towards.mean_margin > base.mean_margin + 3.0 > away.mean_margin + 6.0
        prompt = [fmt.prompt("How was your weekend?")]
        steered = generate_samples(peft_model, tokenizer, prompt, max_new_tokens=20)
        assert steered[0].strip()
    finally:
        peft_model.unload()
