"""Steer adapters outside steerft: llama.cpp control vectors, repeng and steering-vectors imports,
merged checkpoints, and Hub-ready folders.

Every format maps to one convention: a vector for block L (0-based) is added, times the multiplier,
to that block's output at every token.
"""

from .adapter import InteropError, SteerAdapter, read_adapter
from .base import base_model_of, load_with_adapter
from .card import prepare_for_hub
from .foreign import import_repeng, import_steering_vector, repeng_vectors, steering_vectors_vectors
from .hub import push_adapter, upload_files
from .llamacpp import export_control_vector, import_control_vector, read_control_vector
from .merged import export_merged

__all__ = [
    "InteropError",
    "SteerAdapter",
    "base_model_of",
    "export_control_vector",
    "export_merged",
    "import_control_vector",
    "import_repeng",
    "import_steering_vector",
    "load_with_adapter",
    "prepare_for_hub",
    "push_adapter",
    "read_adapter",
    "read_control_vector",
    "repeng_vectors",
    "steering_vectors_vectors",
    "upload_files",
]
