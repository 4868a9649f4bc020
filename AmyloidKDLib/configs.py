"""Dataclass configs from and to plain nested dicts: the one loader every config goes through.

``from_dict(PrepConfig, values)`` builds a config from JSON, YAML or command-line overrides:

- an unknown key raises :class:`ConfigError` naming it (with its dotted path) and the valid keys;
- a missing key keeps the field's default;
- each value is checked and coerced by the field's type hint: nested dataclasses recurse;
  ``int``/``float`` accept number-like strings (PyYAML reads ``1e-3`` as a string; only
  ``1.0e-3`` is a float to it) and ints widen to float; ``tuple``/``list``/``dict`` convert
  their items; ``Optional``/``X | None`` allow None; ``Literal`` checks the choice.

``to_dict(config)`` is the inverse: a JSON-ready nested dict (tuples become lists).

Presets are data: ``resources/presets/<group>/<name>.json`` (``group`` is ``model`` or ``prep``),
read with :func:`load_preset` and listed with :func:`preset_names`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from AmyloidKDLib.errors import ConfigError

__all__ = ["DictConfig", "from_dict", "to_dict", "merge", "load_preset", "preset_names"]

PRESET_DIR = Path(__file__).resolve().parent / "resources" / "presets"

T = TypeVar("T")


class DictConfig:
    """Base of the dataclass configs: ``to_dict()`` and ``from_dict(values)`` through this module."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (tuples become lists)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
        """Build from a nested dict: unknown keys are errors naming them, values are typed."""
        return from_dict(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied; nested mappings are merged key by key, not replaced."""
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        merged[key] = (merge(current, value) if isinstance(value, Mapping)
                       and isinstance(current, Mapping) else value)
    return merged


def preset_names(group: str) -> list[str]:
    """Names of the presets shipped for ``group`` (``model`` or ``prep``)."""
    return sorted(p.stem for p in (PRESET_DIR / group).glob("*.json"))


def load_preset(group: str, name: str) -> dict[str, Any]:
    """The values of preset ``name`` of ``group`` (a prep preset is a valid ``--config`` file).

    Raises:
        ConfigError: no such preset; the message lists the available ones.
    """
    path = PRESET_DIR / group / f"{name}.json"
    if not name or "/" in name or not path.is_file():
        raise ConfigError(f"unknown {group} preset {name!r}; choose one of "
                          f"{', '.join(preset_names(group))}.")
    return json.loads(path.read_text(encoding="utf-8"))


def from_dict(cls: type[T], values: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from the nested mapping ``values``, checking every key and type.

    Args:
        cls: a dataclass type.
        values: a mapping of field names to values (an instance of ``cls`` is returned as is).
        where: dotted prefix of this section in error messages (e.g. ``"teacher."``).

    Raises:
        ConfigError: not a mapping, an unknown key, or a value of the wrong type; the message
            names the key by its dotted path.
    """
    if isinstance(values, cls):
        return values
    section = where.rstrip(".") or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {section} must be a mapping, "
                          f"got {type(values).__name__}.")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(where + k for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(known))}.")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(hints[key], value, where + key) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad config section {section}: {exc}.") from None


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """``value`` checked against and converted to type ``hint``; ``name`` is its dotted path."""
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, name + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{name} does not fit {hint}: {'; '.join(errors)}")
    if origin is typing.Literal:
        for choice in args:
            try:
                candidate = _coerce(type(choice), value, name)
            except ConfigError:
                continue
            if candidate == choice:
                return choice
        raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}.")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}.")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} values, got {len(value)}.")
            items = [_coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}.")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(key_type, k, name): _coerce(value_type, v, f"{name}.{k}")
                for k, v in value.items()}
    return _coerce_scalar(hint, value, name)


def _coerce_scalar(hint: Any, value: Any, name: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}.")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}.")
        if hint is int:
            if isinstance(value, int):
                return value
            if not value.is_integer():
                raise ConfigError(f"{name} must be a whole number, got {value!r}.")
            return int(value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be text, got {value!r}.")
        return value
    return value
