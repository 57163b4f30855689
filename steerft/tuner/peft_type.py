"""The `PeftType` member of the `steer` method.

PEFT keys its method tables by members of its closed `PeftType` enum, so an out-of-tree method
must add one. This is the one place where steerft does (`steerft.tuner.register` fills the tables).

The member's value is what `save_pretrained` writes as `peft_type` in `adapter_config.json`. A
process that loads such an adapter without `import steerft` fails in PEFT with `KeyError(<value>)`,
so the value itself tells the user what to do.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

STEER_NAME = "steer"
STEER_VALUE = "STEER (run `import steerft` before loading this adapter)"


def _add_peft_type_member(name: str, value: str) -> PeftType:
    """Append a member to the closed `PeftType` enum (idempotent)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, value)
    member._name_ = name
    member._value_ = value
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses new members
    return member


STEER_PEFT_TYPE = _add_peft_type_member(STEER_NAME.upper(), STEER_VALUE)
