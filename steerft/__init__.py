"""steerft: steering vectors as a PEFT adapter — extract them, train them with TRL, and compare
them with LoRA, DPO and prompting.

Importing steerft registers the PEFT method `steer`, so `get_peft_model(model, SteerConfig(...))`,
`PeftModel.from_pretrained` and `AutoPeftModelForCausalLM` work for steering adapters.
"""

from .tuner import MergeError, SteerConfig, SteerModel, register_architecture, Architecture

__version__ = "0.1.0"

__all__ = ["Architecture", "MergeError", "SteerConfig", "SteerModel", "register_architecture", "__version__"]
