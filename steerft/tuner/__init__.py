"""The `steer` PEFT method: config, layer, model, and its registration with PEFT."""

from .arch import ARCHITECTURES, Architecture, register_architecture
from .config import OPERATORS, POSITIONS, SteerConfig
from .layer import SteerLayer, SteerVector
from .merge import MergeError
from .model import SteerModel, resolve_layers
from .register import STEER_PEFT_TYPE, register_steer_method

register_steer_method()

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "MergeError",
    "OPERATORS",
    "POSITIONS",
    "STEER_PEFT_TYPE",
    "SteerConfig",
    "SteerLayer",
    "SteerModel",
    "SteerVector",
    "register_architecture",
    "resolve_layers",
]
