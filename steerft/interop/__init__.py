"""Steer adapters outside steerft: llama.cpp control vectors, repeng and steering-vectors imports,
merged checkpoints, and Hub-ready folders.

Every format maps to one convention: a vector for block L (0-based) is added, times the multiplier,
to that block's output at every token.

The names load on first use (PEP 562), so the `steerft` command builds its parser without torch.
"""

from ..lazy import lazy_attributes


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

# public name -> the submodule that defines it
_LAZY = {"InteropError": ".adapter", "SteerAdapter": ".adapter", "read_adapter": ".adapter",
         "base_model_of": ".base", "load_with_adapter": ".base", "prepare_for_hub": ".card",
         "import_repeng": ".foreign", "import_steering_vector": ".foreign", "repeng_vectors": ".foreign",
         "steering_vectors_vectors": ".foreign", "push_adapter": ".hub", "upload_files": ".hub",
         "export_control_vector": ".llamacpp", "import_control_vector": ".llamacpp",
         "read_control_vector": ".llamacpp", "export_merged": ".merged"}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
