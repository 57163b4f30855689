"""YAML run configs with command-line overrides, validated into dataclasses.

Every recipe and CLI subcommand reads its settings the same way: a YAML file, then `key=value`
overrides (dotted keys reach into nested sections; values are parsed as YAML, so `n=8`,
`layers=[6,12]` and `wandb=false` work). Unknown keys fail at once, naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A run config is invalid; the message names the key and the fix."""


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML at `path` (or {}) with `key=value` overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        from .data import bundled_config  # bundled study configs resolve from any directory

        path = bundled_config(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start}); save it as "
                              "UTF-8.") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(loaded).__name__}.")
        data = loaded or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override {override!r} must look like key=value.")
        _set_dotted(data, key.strip().lstrip("-").replace("-", "_"), _override_value(override, raw))
    return data


def _override_value(override: str, raw: str) -> Any:
    """The YAML value of one `key=value` override, or ConfigError quoting it."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"Override {override!r}: the value is not valid YAML ({problem}); quote it or close its "
                          "brackets, e.g. n=[1,4].") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"Cannot set {key!r}: {part!r} is not a section.")
    data[leaf] = value


def build(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Instantiate dataclass `cls` from `data`, refusing unknown keys and wrong types by name."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(_plain(hint)) and isinstance(value, Mapping):
            value = build(_plain(hint), value, where=f"{where}.{name}")
        values[name] = checked_value(value, hint, f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def checked_value(value: Any, hint: Any, key: str) -> Any:
    """`value` as a `hint` (YAML's `1e-3` string read as a float), or ConfigError naming `key`."""
    value = _coerce_number(value, hint)
    _check_type(value, hint, key)
    return value


def _coerce_number(value: Any, hint: Any) -> Any:
    """YAML reads `1e-3` (no dot) as a string; accept it where a float is expected."""
    if isinstance(value, str) and float in (hint, *typing.get_args(hint)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _plain(hint: Any) -> Any:
    """`X | None` -> X, for nested sections."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if _is_union(hint) and len(args) == 1 else hint


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _check_type(value: Any, hint: Any, key: str) -> None:
    if _matches(value, hint):
        return
    element = _element_hint(hint)
    if element is not None and isinstance(value, (list, tuple)):
        bad = next(v for v in value if not _matches(v, element))
        raise ConfigError(f"{key} = {value!r}: the element {bad!r} is not {_describe(element)}; "
                          f"expected {_describe(hint)}.")
    raise ConfigError(f"{key} = {value!r} is not {_describe(hint)}.")


def _element_hint(hint: Any) -> Any:
    """The element type of a list hint (also inside `list[X] | None`), else None."""
    for option in typing.get_args(hint) if _is_union(hint) else (hint,):
        if typing.get_origin(option) in (list, Sequence, tuple) and typing.get_args(option):
            return typing.get_args(option)[0]
    return None


def non_negative(config: Any, *keys: str) -> None:
    """Refuse negative integers (seeds, counts) under `keys` of `config`, naming the key."""
    for key in keys:
        value = getattr(config, key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and v < 0 for v in values):
            raise ConfigError(f"{key}={value!r} must be >= 0.")


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if _is_union(hint):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, Sequence, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    """A type in words: "one of: last, mean" for a Literal, "an int or null" for `int | None`."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(hint)))
    if _is_union(hint):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (list, Sequence, tuple):
        args = typing.get_args(hint)
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if typing.get_origin(hint) in (dict, Mapping) or hint is dict:
        return "a mapping (key: value)"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint) or getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def as_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data (for run folders and W&B)."""
    return dataclasses.asdict(config)
