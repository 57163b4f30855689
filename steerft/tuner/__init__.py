"""The `steer` PEFT method: config, layer, model, and its registration with PEFT."""

from .arch import ARCHITECTURES, Architecture, hidden_size, register_architecture
from .below_site import BelowSiteCache, ReplayCounts, steer_site
from .blocks import block_count, block_indices, block_list
from .config import OPERATORS, POSITIONS, SteerConfig
from .layer import SteerLayer, SteerVector, hidden_of
from .merge import MergeError
from .model import SteerModel, resolve_layers
from .register import STEER_PEFT_TYPE, register_steer_method
from .vectors import load_steer_vectors

register_steer_method()

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BelowSiteCache",
    "MergeError",
    "OPERATORS",
    "POSITIONS",
    "ReplayCounts",
    "STEER_PEFT_TYPE",
    "SteerConfig",
    "SteerLayer",
    "SteerModel",
    "SteerVector",
    "block_count",
    "block_indices",
    "block_list",
    "hidden_of",
    "hidden_size",
    "load_steer_vectors",
    "register_architecture",
    "resolve_layers",
    "steer_site",
]
