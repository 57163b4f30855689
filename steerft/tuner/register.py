"""Make `steer` a PEFT method: fill PEFT's method tables for the `STEER` member of `PeftType`.

This is what `peft.register_peft_method` does, which we cannot call: it insists that the member's
value equals its upper-cased name, and ours carries a hint for users instead (`tuner.peft_type`).
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .config import SteerConfig
from .model import SteerModel
from .peft_type import STEER_PEFT_TYPE


def register_steer_method() -> None:
    """Register SteerConfig/SteerModel with PEFT once per process."""
    PEFT_TYPE_TO_CONFIG_MAPPING[STEER_PEFT_TYPE] = SteerConfig
    PEFT_TYPE_TO_TUNER_MAPPING[STEER_PEFT_TYPE] = SteerModel
    PEFT_TYPE_TO_PREFIX_MAPPING[STEER_PEFT_TYPE] = SteerModel.prefix
