"""What is trained, as one small spec: a steering vector, LoRA, any PEFT config, or all weights.

`AdapterSpec` is the `adapter:` section of a train config and of a study's `train:` settings;
`peft_config(spec)` is the one place that turns it into what TRL receives as `peft_config=`.
The spec is plain data, checked without torch or PEFT (the CLI validates configs before loading
them); the functions that build PEFT configs import PEFT when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .runconfig import ConfigError

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

    from .tuner import SteerConfig

KINDS = ("steer", "lora", "full")
STEER_INITS = ("zeros", "random")

# A steering vector is a handful of parameters in activation units and needs a far larger step than
# low-rank or full weight updates; any other PEFT method gets the LoRA rate.
_DEFAULT_LEARNING_RATE = {"steer": 1e-1, "lora": 1e-3, "full": 1e-5}


@dataclass
class AdapterSpec:
    """The adapter section (YAML keys = field names)."""

    kind: str = "steer"  # steer | lora | full
    peft: dict | None = None  # any PEFT config as a mapping with `peft_type`; overrides `kind`
    # steer
    layers: list[int] = field(default_factory=lambda: [14])
    positions: str = "all"  # all | prompt | completion
    multiplier: float = 1.0
    init: str = "zeros"  # zeros | random | path of a saved steer adapter (e.g. an extracted vector)
    # lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.peft is None and self.kind not in KINDS:
            raise ConfigError(f"adapter.kind={self.kind!r} is not supported; allowed values: {', '.join(KINDS)} "
                              "(or give any PEFT config as an `adapter.peft:` mapping).")
        for key in ("lora_r", "lora_alpha"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"adapter.{key}={getattr(self, key)!r} must be positive.")


def peft_config(spec: AdapterSpec) -> PeftConfig | None:
    """The PEFT config the trainer receives: steer, LoRA, one given as a `peft` mapping, or None (full)."""
    from peft import LoraConfig

    from .tuner import SteerConfig

    if spec.peft is not None:
        return _peft_from_mapping(spec.peft)
    if spec.kind == "steer":
        init = spec.init if spec.init in STEER_INITS else _given_vectors(spec.init)
        try:
            return SteerConfig(layers=list(spec.layers), positions=spec.positions, multiplier=spec.multiplier,
                               init=init)
        except ValueError as err:
            raise ConfigError(f"steer adapter (adapter.layers, positions, multiplier, init): {err}") from err
    if spec.kind == "lora":
        return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, target_modules=list(spec.lora_target_modules),
                          task_type="CAUSAL_LM")
    return None


def _given_vectors(path: str) -> dict:
    from .tuner import load_steer_vectors

    try:
        return load_steer_vectors(path)
    except ValueError as err:
        raise ConfigError(f"adapter.init={path!r} is neither one of {', '.join(STEER_INITS)} nor usable: {err}") from err


def _peft_from_mapping(mapping: dict) -> PeftConfig:
    """Any registered PEFT method from YAML: `{peft_type: LORA, r: 16, target_modules: [q_proj]}`."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils.peft_types import PeftType

    options = dict(mapping)
    name = str(options.pop("peft_type", "")).upper()
    if name not in PeftType.__members__ or PeftType[name] not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(m for m in PeftType.__members__ if PeftType[m] in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise ConfigError(f"adapter.peft.peft_type={mapping.get('peft_type')!r} is not a PEFT method; "
                          f"allowed values: {known}.")
    options.setdefault("task_type", "CAUSAL_LM")
    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name]](**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter.peft: {err}") from err


def fixed_vectors(vectors: dict[int, torch.Tensor], multiplier: float = 1.0, positions: str = "all") -> SteerConfig:
    """A frozen steer adapter that applies given vectors `{block: vector}` (extracted, or chosen by a study)."""
    from .tuner import SteerConfig

    return SteerConfig(layers=sorted(vectors), init=vectors, multiplier=multiplier, positions=positions,
                       trainable=False)


def adapter_kind(config: PeftConfig | None) -> str:
    """Short name of what is trained: steer, lora, full, or the PEFT method's name."""
    from .tuner import SteerConfig

    if config is None:
        return "full"
    if isinstance(config, SteerConfig):
        return "steer"
    return str(config.peft_type.name).lower()


def default_learning_rate(kind: str) -> float:
    """The learning rate a trainer gets unless `trainer.learning_rate` is set."""
    return _DEFAULT_LEARNING_RATE.get(kind, _DEFAULT_LEARNING_RATE["lora"])
