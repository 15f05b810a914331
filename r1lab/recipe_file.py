"""Reading a recipe file: YAML, overrides, every setting checked (each config's own checks, then those across
stages), every problem reported at once. Nothing here imports torch, so a mistake in a recipe is reported in a
fraction of the time a run takes to start (README, "Running it")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from r1lab.config import (ConfigError, ConfigProblems, Problem, apply_overrides, collect_config, describe_fields,
                          override_keys, read_yaml, render_fields, to_dict)
from r1lab.recipe import RunConfig
from r1lab.recipe_checks import check_recipe
from r1lab.stage_configs import STAGE_KINDS


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """Read a recipe, apply overrides and check every setting (each config's own checks, then those across stages,
    ``r1lab.recipe_checks``); returns the run config and the typed stage configs. Every problem is reported at once,
    in one ``ConfigProblems`` that names each key, value, what is allowed and where the value came from."""
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    run, problems = collect_config(RunConfig, data, where="")
    raw_stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    stages, kinds = {}, {}
    for name, raw in raw_stages.items():
        if not isinstance(raw, dict):
            continue  # reported by RunConfig's reading: a stage must be a mapping
        if "kind" not in raw or raw["kind"] not in STAGE_KINDS:
            text = (f"stage '{name}' needs a 'kind'" if "kind" not in raw else
                    f"stage '{name}' has unknown kind '{raw['kind']}'")
            problems.append(Problem(f"stages.{name}.kind", raw.get("kind"), "",
                                    text=f"{text}; choose one of {', '.join(STAGE_KINDS)}"))
            continue
        kinds[name] = raw["kind"]
        cfg, found = collect_config(STAGE_KINDS[raw["kind"]], raw, where=f"stages.{name}")
        problems += found
        if cfg is not None:
            stages[name] = cfg
    if not raw_stages:
        problems.append(Problem("stages", data.get("stages"), "", text="the recipe has no stages"))
    if run is not None:
        problems += check_recipe(run, stages, kinds)
    if problems:
        raise ConfigProblems(problems, source=str(path), overrides=override_keys(overrides))
    return run, stages


def split_run_arguments(items: list[str]) -> tuple[list[str], list[str]]:
    """``r1lab run`` arguments: recipes (paths) and key=value overrides, in any order."""
    recipes = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    return recipes, overrides


def overrides_for(recipe: str, overrides: list[str], recipes: list[str]) -> list[str]:
    """The overrides that apply to ``recipe``: plain ``key=value`` ones go to every recipe, ``NAME:key=value`` ones only
    to the recipe whose file stem (``aha`` for recipes/tiny/aha.yaml) or path is NAME. A NAME that matches no recipe
    of the command is an error naming the ones there are."""
    names = {recipe_name for r in recipes for recipe_name in (Path(r).stem, r)}
    chosen = []
    for item in overrides:
        key, _, value = item.partition("=")
        target, colon, own_key = key.partition(":")
        if not colon or (target not in names and "." in target):  # a dotted key with a colon in it (a reward spec)
            chosen.append(item)
            continue
        if target not in names:
            raise ConfigError(f"override '{item}': '{target}' is not one of the recipes of this command "
                              f"({', '.join(Path(r).stem for r in recipes)}); write NAME:key=value with NAME a "
                              f"recipe's file name without .yaml, or key=value for all of them")
        if target in (Path(recipe).stem, recipe):
            chosen.append(f"{own_key}={value}")
    return chosen


def check_recipes(items: list[str]) -> None:
    """``r1lab run``'s recipes read and checked with their overrides (``items``: recipes and key=value overrides),
    the problems of all of them in one ``ConfigError``; before anything imports torch."""
    recipes, overrides = split_run_arguments(items)
    if not recipes:
        raise ConfigError("r1lab run needs a recipe (a YAML file), e.g. r1lab run recipes/tiny/r1_zero.yaml")
    errors = []
    for recipe in recipes:
        try:
            load_recipe(recipe, overrides_for(recipe, overrides, recipes))
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))


def help_config(kind: str = "") -> str:
    """``r1lab run --help-config [KIND]``: every recipe key with its type, default and doc; KIND: that stage only."""
    if kind and kind not in STAGE_KINDS:
        raise ConfigError(f"--help-config: unknown stage kind '{kind}'; known kinds: {', '.join(STAGE_KINDS)}")
    parts = []
    if not kind:
        parts.append("Run-level keys (top level of a recipe; override as key=value, e.g. eval.k=8):\n"
                     + render_fields(describe_fields(RunConfig)))
    for name in [kind] if kind else STAGE_KINDS:
        parts.append(f"Stage kind '{name}' (keys of a stage with kind: {name}; override as "
                     f"stages.<stage>.<key>=value):\n" + render_fields(describe_fields(STAGE_KINDS[name])))
    return "\n\n".join(parts)


def resolved_recipe(path: str, overrides: list[str]) -> str:
    """``r1lab run RECIPE --dry-run``: the recipe as it would run, every field of the run and of each stage with its
    value (defaults filled in, overrides applied), after every check; as YAML that ``r1lab run`` reads back."""
    run, stages = load_recipe(path, overrides)
    resolved = {**to_dict(run), "stages": {name: to_dict(cfg) for name, cfg in stages.items()}}
    return f"# {path}, resolved ({' '.join(overrides) or 'no overrides'}); nothing was run\n" + yaml.safe_dump(
        resolved, sort_keys=False, allow_unicode=True)
