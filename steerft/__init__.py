"""steerft: steering vectors as a PEFT adapter — extract them, train them with TRL, and compare
them with LoRA, DPO and prompting.

Importing steerft is light (no torch, transformers or PEFT), so the `steerft` command answers
`--help` and config errors at once. The public names load on first use (PEP 562).

The PEFT method `steer` is registered whenever PEFT can need it, so `get_peft_model(model,
SteerConfig(...))`, `PeftModel.from_pretrained` and `AutoPeftModelForCausalLM` work for steering
adapters after `import steerft`, in either import order:
- `from steerft import SteerConfig` (any name of steerft.tuner) imports steerft.tuner, which registers;
- if PEFT is already imported, `import steerft` registers at once (PEFT's cost is paid already);
- otherwise `import steerft` leaves a one-shot import hook that registers right after `peft` is
  imported (by the user, TRL or transformers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

from .lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = ["Architecture", "MergeError", "SteerConfig", "SteerModel", "register_architecture", "__version__"]

# public name -> the submodule that defines it, imported on first access
_LAZY = {"Architecture": ".tuner", "MergeError": ".tuner", "SteerConfig": ".tuner", "SteerModel": ".tuner",
         "register_architecture": ".tuner"}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Gives the spec the other finders give for `peft`, with its loader set to register `steer` once
    the package has run. A lookup that does not import (transformers' `find_spec("peft")` check) changes
    nothing: only the spec that is executed registers."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "peft":
            return None
        others = (finder for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec"))
        spec = next((spec for finder in others if (spec := finder.find_spec(fullname, path, target))), None)
        if spec is None or spec.loader is None:
            return spec
        run_package = spec.loader.exec_module

        def run_then_register(module: Any) -> None:
            run_package(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            importlib.import_module(".tuner", __name__)  # registers the method

        spec.loader.exec_module = run_then_register
        return spec


def _register_with_peft() -> None:
    if "peft" in sys.modules:
        importlib.import_module(".tuner", __name__)
    elif not any(isinstance(finder, _RegisterAfterPeft) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeft())


_register_with_peft()
