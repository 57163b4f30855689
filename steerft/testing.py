"""Test fixtures: tiny random causal LMs of real architectures, built in code (no download).

For tests and examples only; models a user runs come from `steerft.models.load_model`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .models import _TRANSFORMERS_LOCK

__all__ = ["tiny_model"]


# arch -> (config class, model class), looked up lazily: importing five modeling
# files up front would slow every `import steerft.models`.
_TINY_ARCHS: dict[str, tuple[str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}
_TINY_VOCAB = 320  # 256 bytes + 3 specials, padded like real vocabularies
_TINY_CONTEXT = 512
_TINY_HEADS = 4
_TINY_SPECIALS = {"pad_token": "<|pad|>", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level tokenizer built in code: round-trips any text, needs no download."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # one symbol per byte
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in _TINY_SPECIALS.values()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=_TINY_CHAT_TEMPLATE,
        model_max_length=_TINY_CONTEXT,
        **_TINY_SPECIALS,
    )


def _tiny_config_kwargs(arch: str, n_layers: int, hidden_size: int) -> dict[str, Any]:
    if arch == "gpt2":
        return {
            "n_layer": n_layers,
            "n_embd": hidden_size,
            "n_head": _TINY_HEADS,
            "n_inner": 2 * hidden_size,
            "n_positions": _TINY_CONTEXT,
        }
    kwargs: dict[str, Any] = {
        "num_hidden_layers": n_layers,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_attention_heads": _TINY_HEADS,
        "num_key_value_heads": _TINY_HEADS // 2,  # exercise grouped-query attention
        "max_position_embeddings": _TINY_CONTEXT,
    }
    if arch == "gemma3":
        head_dim = hidden_size // _TINY_HEADS
        kwargs |= {
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": 64,
            # Alternate local and global layers, as real Gemma 3 does (5:1 there).
            "layer_types": ["sliding_attention", "full_attention"] * (n_layers // 2)
            + ["sliding_attention"] * (n_layers % 2),
        }
    return kwargs


def tiny_model(
    arch: str = "llama",
    *,
    n_layers: int = 4,
    hidden_size: int = 64,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """For tests and examples: a randomly initialised small causal LM and a tokenizer.

    Real transformers architectures (llama, mistral, qwen2, gemma3, gpt2) at toy
    size, so code that walks layers or hooks blocks sees the real module layout.
    The byte-level tokenizer has pad/bos/eos tokens and a ChatML chat template.
    Weights depend only on the arguments; the global torch RNG is left untouched.
    """
    if arch not in _TINY_ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(_TINY_ARCHS)}")
    if n_layers < 1 or hidden_size % (2 * _TINY_HEADS):
        raise ValueError(f"Need n_layers >= 1 and hidden_size divisible by {2 * _TINY_HEADS}")
    import transformers

    config_name, model_name = _TINY_ARCHS[arch]
    tokenizer = _tiny_tokenizer()
    config = getattr(transformers, config_name)(
        vocab_size=_TINY_VOCAB,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_tiny_config_kwargs(arch, n_layers, hidden_size),
    )
    # The lock also keeps threads from racing on the global RNG we fork here.
    with _TRANSFORMERS_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config)
    return model.eval(), tokenizer
