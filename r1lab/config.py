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


@dataclass
class Problem:
    """One setting that cannot be used: its dotted key (relative to the config that found it, until the config
    reader prefixes where that config sits), its value and what is allowed. ``text`` replaces the usual
    "key = value: allowed" where the problem is not one value (an unknown key, a field left out)."""

    key: str
    value: Any
    allowed: str
    text: str = ""

    def at(self, where: str) -> "Problem":
        """The same problem, its key seen from ``where`` (``top_p`` in ``stages.grpo`` -> ``stages.grpo.top_p``)."""
        return dataclasses.replace(self, key=_join(where, self.key) if self.key else where)

    def describe(self) -> str:
        return self.text or f"{self.key} = {show_value(self.value)}: {self.allowed}"


class ConfigProblems(ConfigError):
    """Every problem found in a recipe or a config, reported together. With a ``source`` (the recipe file) each line
    also says where its value came from: the file, or the command line for a ``key=value`` override (``overrides``:
    overridden key -> the override as typed, from ``override_keys``)."""

    def __init__(self, problems: list[Problem], *, source: str = "", overrides: dict[str, str] | None = None):
        self.problems = list(problems)
        self.source = source
        self.overrides = dict(overrides or {})
        super().__init__(self.render())

    def origin(self, key: str) -> str:
        """Where the value of ``key`` came from: "command line: <override>" or the recipe file."""
        for overridden, item in self.overrides.items():
            if key == overridden or key.startswith(overridden + ".") or key.startswith(overridden + "["):
                return f"command line: {item}"
        return self.source

    def render(self) -> str:
        if not self.source:  # a config built in code: there is no file to name
            return "; ".join(problem.describe() for problem in self.problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = [f"  {problem.describe()}  [{self.origin(problem.key)}]" for problem in self.problems]
        return f"{self.source}: {count}; nothing has run:\n" + "\n".join(lines)


def show_value(value: Any) -> str:
    """A value as a recipe spells it: strings quoted, the rest as YAML/JSON writes them (true, null, [0.9, 1.2])."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def raise_problems(problems: list[Problem]) -> None:
    """The end of a config's ``__post_init__``: every problem it found, in one ``ConfigProblems``."""
    if problems:
        raise ConfigProblems(problems)


# --- the checks configs share (each returns the problems of the fields named) -------------------------------------


def at_least(config: Any, minimum: float, *names: str, why: str = "") -> list[Problem]:
    """Fields of ``config`` that must be >= ``minimum``."""
    return [Problem(name, getattr(config, name), f"must be at least {minimum}{why}") for name in names
            if getattr(config, name) < minimum]


def positive(config: Any, *names: str, why: str = "") -> list[Problem]:
    """Fields of ``config`` that must be > 0."""
    return [Problem(name, getattr(config, name), f"must be > 0{why}") for name in names
            if not getattr(config, name) > 0]


def within(config: Any, name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False,
           why: str = "") -> list[Problem]:
    """A field that must lie between ``low`` and ``high`` (an open end excludes that bound)."""
    value = getattr(config, name)
    fits = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return [] if fits else [Problem(name, value, f"must be in {interval}{why}")]


def adam_betas_problems(config: Any) -> list[Problem]:
    """AdamW's (β1, β2): two numbers in [0, 1)."""
    betas = config.adam_betas
    if len(betas) == 2 and all(0 <= beta < 1 for beta in betas):
        return []
    return [Problem("adam_betas", betas, "must be two numbers in [0, 1) (AdamW's β1, β2)")]


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


def from_dict(cls: type, data: Any, *, where: str = "config", source: str = "<recipe>",
              overrides: dict[str, str] | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and the config's own ``__post_init__`` checks;
    every problem is reported at once in a ``ConfigProblems``. ``where``: the dotted path of the mapping, for
    messages; ``overrides``: see ``ConfigProblems``."""
    config, problems = collect_config(cls, data, where=where)
    if problems:
        raise ConfigProblems(problems, source=source, overrides=overrides)
    return config


def collect_config(cls: type, data: Any, *, where: str = "") -> tuple[Any, list[Problem]]:
    """``(config, problems)``: dataclass ``cls`` built from ``data`` and every problem found on the way (keys as
    dotted paths below ``where``). A field with a bad value is left at its default so that the config's own checks
    still look at all the others. With problems, ``config`` is built without its own checks (good enough for the
    checks across stages to read its other fields), or None when it cannot be built at all."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [Problem(where, data, "must be a mapping")]
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems = [Problem(_join(where, key), value, "", text=f"unknown key '{_join(where, key)}'; known keys in "
                        f"'{where or 'the top level'}': {', '.join(sorted(known))}")
                for key, value in data.items() if key not in known]
    kwargs, bad = {}, set()
    for name, value in data.items():
        if name not in known:
            continue
        value, found = _coerce(hints[name], value, where=_join(where, name))
        if found:
            problems += found
            bad.add(name)
        else:
            kwargs[name] = value
    try:
        config = cls(**kwargs)
    except ConfigProblems as err:  # the config's own checks; those about a field already reported are left out
        problems += [p.at(where) for p in err.problems if p.key.split(".")[0] not in bad]
        config = _unchecked(cls, kwargs)
    except TypeError as err:  # a required field is missing
        problems.append(Problem(where, None, "", text=f"in '{where}': {err}"))
        config = None
    except ValueError as err:  # a __post_init__ check that raises on its own
        problems.append(Problem(where, None, "", text=f"in '{where}': {err}"))
        config = _unchecked(cls, kwargs)
    return config, problems


def _unchecked(cls: type, kwargs: dict) -> Any:
    """``cls(**kwargs)`` without its ``__post_init__`` checks (None when a field has no value)."""
    config = object.__new__(cls)
    for f in dataclasses.fields(cls):
        value = kwargs.get(f.name, _default_value(f))
        if value is dataclasses.MISSING:
            return None
        object.__setattr__(config, f.name, value)
    return config


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, *, where: str) -> tuple[Any, list[Problem]]:
    """``(value converted to hint, problems)``; on a problem the value is None."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value, []
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, []
        tried = []
        for arg in args:
            if arg is type(None):
                continue
            converted, found = _coerce(arg, value, where=where)
            if not found:
                return converted, []
            tried.append(found)
        if len(tried) == 1:
            return None, tried[0]
        return None, [Problem(where, value, f"must be {type_text(hint)}")]
    if origin is typing.Literal:
        return (value, []) if value in args else (None, [Problem(where, value, f"must be one of {list(args)}")])
    if dataclasses.is_dataclass(hint):
        return collect_config(hint, value, where=where)
    if origin is dict:
        if not isinstance(value, dict):
            return None, [Problem(where, value, "must be a mapping")]
        _, value_type = args if args else (Any, Any)
        converted, problems = {}, []
        for key, item in value.items():
            converted[key], found = _coerce(value_type, item, where=f"{where}.{key}")
            problems += found
        return (converted if not problems else None), problems
    if origin is list:
        if not isinstance(value, list):
            return None, [Problem(where, value, "must be a list")]
        (item_type,) = args if args else (Any,)
        converted, problems = [], []
        for i, item in enumerate(value):
            item, found = _coerce(item_type, item, where=f"{where}[{i}]")
            converted.append(item)
            problems += found
        return (converted if not problems else None), problems
    if hint is bool:
        if isinstance(value, bool):
            return value, []
        return None, [Problem(where, value, "must be true or false")]
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, []
        if isinstance(value, float) and value.is_integer():
            return int(value), []
        return None, [Problem(where, value, "must be an integer")]
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), []
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value), []
            except ValueError:
                pass
        return None, [Problem(where, value, "must be a number")]
    if hint is str:
        if isinstance(value, str):
            return value, []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), []
        return None, [Problem(where, value, "must be a string")]
    return value, []


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


def _missing_recipe_hint(path: Path) -> str:
    """Where r1lab's own recipe of that relative name is, for a user who ran the command outside the checkout."""
    if path.is_absolute():
        return ""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / path).is_file():
        return f" (here is r1lab's own: {checkout / path})"
    if path.parts and path.parts[0] == "recipes":
        return " (r1lab's example recipes come with its repository, in its recipes/ folder, not with the package)"
    return ""


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}{_missing_recipe_hint(path)}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping at the top level")
    return data


def override_keys(overrides: list[str]) -> dict[str, str]:
    """Dotted key -> the override as typed, for every ``key=value`` override (a later one of a key wins), so that a
    problem can say its value came from the command line."""
    return {item.split("=", 1)[0].strip(): item for item in overrides if "=" in item}


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
        if isinstance(value, dict) and any(isinstance(k, str) and ":" in k and v is None for k, v in value.items()):
            # "{accuracy:1.0}" is YAML for {"accuracy:1.0": null}: a colon starts a key only before a space
            fixed = ", ".join(f"{k.rsplit(':', 1)[0]}: {k.rsplit(':', 1)[1]}" if v is None and ":" in str(k)
                              else f"{k}: {v}" for k, v in value.items())
            raise ConfigError(f"override '{item}': in YAML a colon needs a space after it; write "
                              f"'{key}={{{fixed}}}' (quoted for the shell)")
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
