"""Where the residual stream lives in each supported architecture.

Steering needs three facts about a model: the list of decoder blocks (the *sites* are their
outputs), the modules whose outputs are added into the residual stream (for exact directional
ablation), and a bias into which an added vector can be folded (for merging). They differ per
architecture, so they live in one table that users can extend with `register_architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Residual-stream layout of one model family.

    blocks: dotted path of the decoder block list, relative to the `*ForCausalLM` model.
    embeddings: modules whose outputs sum to the residual stream entering block 0.
    writers: per-block modules whose outputs are added to the residual stream.
    bias_target: per-block linear projection whose output is added to the residual stream unnormalised,
        so that a constant vector can be folded into its bias; None when a norm follows it.
    bias_flag: config attribute that makes the architecture create that bias on reload (e.g. llama's
        `mlp_bias`), with the sibling projections that the flag also gives a bias. Without a flag, a merge
        for good needs the projection to have a bias already (gpt2); otherwise it is refused.
    """

    blocks: str
    embeddings: tuple[str, ...] = ()
    writers: tuple[str, ...] = ()
    bias_target: str | None = None
    bias_flag: str | None = None
    bias_siblings: tuple[str, ...] = ()

    @property
    def writers_are_projections(self) -> bool:
        return bool(self.writers) and self.bias_target is not None


_LLAMA_LIKE = Architecture(
    blocks="model.layers",
    embeddings=("model.embed_tokens",),
    writers=("self_attn.o_proj", "mlp.down_proj"),
    bias_target="mlp.down_proj",
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        blocks="model.layers",
        embeddings=("model.embed_tokens",),
        writers=("self_attn.o_proj", "mlp.down_proj"),
        bias_target="mlp.down_proj",
        bias_flag="mlp_bias",
        bias_siblings=("mlp.gate_proj", "mlp.up_proj"),
    ),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    # Gemma 3 normalises each sub-layer output after its projection, so neither a bias fold nor
    # weight orthogonalisation reproduces the hooked model: both merges are refused.
    "gemma3_text": Architecture(
        blocks="model.layers",
        embeddings=("model.embed_tokens",),
        writers=("post_attention_layernorm", "post_feedforward_layernorm"),
    ),
    "gpt2": Architecture(
        blocks="transformer.h",
        embeddings=("transformer.wte", "transformer.wpe"),
        writers=("attn.c_proj", "mlp.c_proj"),
        bias_target="mlp.c_proj",
    ),
}
ARCHITECTURES["gemma3"] = ARCHITECTURES["gemma3_text"]


def register_architecture(model_type: str, architecture: Architecture) -> None:
    """Teach steerft a new model family (keyed by `config.model_type`)."""
    ARCHITECTURES[model_type] = architecture


def architecture_of(model: nn.Module, blocks_path: str | None = None) -> Architecture:
    """The layout for `model`; `blocks_path` overrides the block list of any architecture."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = ARCHITECTURES.get(model_type)
    if blocks_path is not None:
        return Architecture(blocks=blocks_path) if known is None else _with_blocks(known, blocks_path)
    if known is not None:
        return known
    guessed = _guess_blocks_path(model)
    if guessed is None:
        raise ValueError(
            f"steerft does not know where the decoder blocks of {type(model).__name__} "
            f"(model_type={model_type!r}) are. Pass SteerConfig(blocks_path='<dotted path of the block "
            f"ModuleList>', ...) or call steerft.register_architecture({model_type!r}, Architecture(...)). "
            f"Known model types: {sorted(ARCHITECTURES)}."
        )
    return Architecture(blocks=guessed)


def _with_blocks(arch: Architecture, blocks_path: str) -> Architecture:
    return Architecture(blocks_path, arch.embeddings, arch.writers, arch.bias_target, arch.bias_flag, arch.bias_siblings)


def _guess_blocks_path(model: nn.Module) -> str | None:
    """The first ModuleList as long as the config's layer count: how most decoders store blocks."""
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n_layers is None:
        return None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return name
    return None


def decoder_blocks(model: nn.Module, arch: Architecture) -> nn.ModuleList:
    """The block list named by `arch`, with a clear error when the path is wrong."""
    try:
        blocks = model.get_submodule(arch.blocks)
    except AttributeError as err:
        raise ValueError(
            f"{type(model).__name__} has no module at blocks_path={arch.blocks!r}; point SteerConfig.blocks_path "
            "at the ModuleList of decoder blocks."
        ) from err
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"blocks_path={arch.blocks!r} is a {type(blocks).__name__}, expected an nn.ModuleList.")
    return blocks


def block_stack(model: nn.Module, arch: Architecture) -> nn.Module:
    """The module that owns the block list; its forward sees the cache and the attention mask."""
    parent, _, _ = arch.blocks.rpartition(".")
    return model.get_submodule(parent) if parent else model


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream, from the (text) config."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        raise ValueError(f"Cannot read the hidden size from the config of {type(model).__name__}.")
    return int(size)
