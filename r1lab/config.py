"""Typed configs read from YAML recipes.

Every field carries a one-line doc (``doc(default, "...")``), unknown keys are errors that name the key and the file,
and ``key=value`` overrides from the command line address any field by its dotted path (``stages.grpo.lr=1e-5``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be read; the message names the file, key and problem."""


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and the one-line doc every config field must have."""
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: doc}`` for a config dataclass (its top-level fields; ``describe_fields`` goes into sections)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------------------------------
# field listings for ``r1lab run --help-config``


def describe_fields(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, doc)`` for every field of config dataclass ``cls``, nested ones as dotted keys.

    A nested config (``lora: LoraConfig``) gets a row of its own, type "section", then its fields (``lora.r``, ...),
    whose defaults are those of the enclosing field's default (a stage's ``task`` defaults to an empty name, not to
    the run's task). Defaults are written as JSON, which is also YAML, so they read as a recipe or an override would
    spell them. ``defaults``: an instance whose values are the defaults (nested sections).
    """
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, hint, text = prefix + f.name, hints[f.name], f.metadata.get("doc", "")
        value = getattr(defaults, f.name) if defaults is not None else _default_value(f)
        if dataclasses.is_dataclass(hint):
            rows.append((key, "section", "", text))
            rows.extend(describe_fields(hint, prefix=key + ".", defaults=value))
        else:
            text_default = "(required)" if value is dataclasses.MISSING else json.dumps(
                to_dict(value), ensure_ascii=False, default=str)
            rows.append((key, type_text(hint), text_default, text))
    return rows


def type_text(hint: Any) -> str:
    """A type annotation as a recipe writer reads it: ``float | None``, ``dict[str, float]``, ``a|b`` (a choice)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is typing.Literal:  # compact: a choice of three names would otherwise take a whole column
        return "|".join(str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(arg) for arg in args)}]" if args else name
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _default_value(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def render_fields(rows: list[tuple[str, str, str, str]], *, indent: str = "  ") -> str:
    """Plain-text table, one field per line: key, type, default, doc in aligned columns (long cells push on)."""
    if not rows:
        return ""
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in enumerate((40, 28, 24))]
    lines = []
    for key, type_, default, text in rows:
        cells = [cell.ljust(width) for cell, width in zip((key, type_, default), widths)]
        lines.append((indent + "  ".join(cells + [text])).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def from_dict(cls: type, data: Any, *, where: str = "config", source: str = "<recipe>") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; ``where`` is the dotted path for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{_join(where, unknown[0])}'. Known keys in '{where}': {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where=_join(where, name), source=source)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{source}: in '{where}': {err}") from None
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(f"{source}: in '{where}': {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, *, where: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where=where, source=source)
            except ConfigError as err:
                errors.append(str(err))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{source}: '{where}': {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{where}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where, source=source)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {k: _coerce(value_type, v, where=f"{where}.{k}", source=source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        (item_type,) = args if args else (Any,)
        return [_coerce(item_type, v, where=f"{where}[{i}]", source=source) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{where}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: '{where}' must be a string, got {value!r}")
    return value


def to_dict(config: Any) -> Any:
    """Plain dict/list form of a config (what ``config.yaml`` in a run folder holds)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, list):
        return [to_dict(v) for v in config]
    return config


# ---------------------------------------------------------------------------------------------------------------
# YAML files and command-line overrides


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. stages.grpo.steps=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data
