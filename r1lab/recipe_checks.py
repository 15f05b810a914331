"""The checks of a whole recipe that no single config can make, run by ``r1lab.pipeline.load_recipe`` before any
stage starts: every name a stage refers to (the model it starts from, its data, its rewards, its task) and what a
stage needs from the stages before it.

Each config checks its own values in its ``__post_init__`` (``steps`` >= 1, ``0 < top_p <= 1``, ...); what is here
needs the other stages or the disk:

- ``init:``, ``value_init:``, ``few_shot_from:``: an earlier stage's name, "model" (the run's model), an existing
  folder, or only then a hub id (``org/name``). A misspelt stage name is an error that lists the stages, instead of
  a download of a model that does not exist;
- a stage that would start from ``model: tiny`` needs a pretrain stage before it;
- ``data:``: an existing file or an earlier stage that writes one;
- rewards: every name, module or file resolvable (``r1lab.rewards.get_reward``), and ``reward_model:<stage>`` an
  earlier reward_model stage or an existing folder;
- task names and option names known;
- stage names that are plain folder names.

Nothing here imports torch: a recipe is checked in milliseconds (README, "Recipes").
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import TYPE_CHECKING, Any

from r1lab.config import Problem
from r1lab.rewards import get_reward
from r1lab.rewards.registry import REWARD_MODEL_PREFIX
from r1lab.tasks import TASKS

if TYPE_CHECKING:
    from r1lab.recipe import RunConfig

# What each stage kind hands the next stages (tests/test_recipe_checks.py holds these to r1lab.pipeline.STAGES):
DATA_KINDS = frozenset({"rejection_sampling", "cold_start", "preference_pairs"})  # a data file, not a model
PASS_THROUGH_KINDS = frozenset({"reward_model", "check_gate"})  # their init model, unchanged
REWARD_MODEL_KINDS = frozenset({"reward_model"})  # a reward model, named by later stages as reward_model:<stage>

# A hub id as the hub spells one: owner/name, letters, digits, '-', '_' and '.'.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MODEL_REFERENCES = ("init", "value_init", "few_shot_from")  # the fields that name a model to load


def check_recipe(run: RunConfig, stages: dict[str, Any], kinds: dict[str, str]) -> list[Problem]:
    """Every problem of the recipe that needs more than one config. ``kinds``: every stage's kind, in recipe order;
    ``stages``: the typed configs of those that could be read (a stage with problems of its own is only known by its
    name and kind here). Keys are dotted paths from the top of the recipe."""
    problems = _model_problems("model", run.model, allow_tiny=True)
    problems += _task_problems("task", run.task.name, run.task.options)
    earlier: dict[str, str] = {}  # name -> kind of the stages before the one being checked
    model_after: dict[str, str] = {}  # name -> the model an earlier stage hands on ("stage:<name>", or its init's)
    last_model = run.model  # what a stage without init: starts from
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun
    for name, kind in kinds.items():
        where = f"stages.{name}"
        problems += _stage_name_problems(name)
        cfg = stages.get(name)
        if cfg is not None and hasattr(cfg, "prompts_per_step") and cfg.prompts_per_step % processes:
            problems.append(Problem(f"{where}.prompts_per_step", cfg.prompts_per_step,
                                    f"cannot be split evenly over {processes} processes (each samples whole groups "
                                    f"for an equal share of the prompts): make it a multiple of {processes}"))
        start = last_model
        if cfg is not None:
            context = _Context(where, earlier, list(kinds), run.model, model_after)
            for field in MODEL_REFERENCES:
                if hasattr(cfg, field):
                    problems += context.model_reference(field, getattr(cfg, field))
            if hasattr(cfg, "init"):
                start = context.start_model(cfg.init, default=last_model)
                if start == "tiny" and kind != "pretrain":
                    problems.append(Problem(
                        f"{where}.init", cfg.init, f"the stage would start from model 'tiny'{_via(cfg.init)}, which "
                        f"only a pretrain stage builds: add a stage with kind: pretrain before it, or set model: to "
                        f"a checkpoint"))
            if hasattr(cfg, "data"):
                problems += context.data_reference(cfg.data)
            if getattr(cfg, "written_data", ""):
                if not os.path.isfile(cfg.written_data):
                    problems.append(Problem(f"{where}.written_data", cfg.written_data,
                                            f"must be an existing JSONL file (none at "
                                            f"{os.path.abspath(cfg.written_data)})"))
            for weights_key, weights in _reward_sets(cfg):
                problems += [problem for spec in weights for problem in context.reward(f"{where}.{weights_key}", spec)]
            task = getattr(cfg, "task", None)
            if task is not None and task.name:  # empty: the run's task
                problems += _task_problems(f"{where}.task", task.name, task.options)
        earlier[name] = kind
        if kind not in DATA_KINDS:
            model_after[name] = start if kind in PASS_THROUGH_KINDS else f"stage:{name}"
            last_model = model_after[name]
    return problems


@dataclasses.dataclass
class _Context:
    """What a stage's references are checked against: the stages before it, all stage names, the run's model."""

    where: str  # "stages.<name>"
    earlier: dict[str, str]  # name -> kind
    names: list[str]  # every stage, in order
    run_model: str
    model_after: dict[str, str]  # name -> the model that stage hands on

    def later(self, ref: str) -> bool:
        return ref in self.names and ref not in self.earlier

    def earlier_list(self, kinds: frozenset | None = None, *, exclude: frozenset = frozenset()) -> str:
        names = [n for n, kind in self.earlier.items() if (kinds is None or kind in kinds) and kind not in exclude]
        return ", ".join(names) if names else "none before this stage"

    def model_reference(self, field: str, ref: str) -> list[Problem]:
        """``init``-like fields: empty, "model", an earlier model stage, an existing folder, else a hub id."""
        key = f"{self.where}.{field}"
        if ref == "model" and self.run_model == "tiny" and field != "init":  # init: see the start-model check
            return [Problem(key, ref, "the run's model is 'tiny', which only a pretrain stage builds: name that "
                                      f"stage instead ({self.earlier_list(exclude=DATA_KINDS)})")]
        if not ref or ref == "model":
            return []
        if ref in self.earlier:
            if self.earlier[ref] in DATA_KINDS:
                return [Problem(key, ref, f"'{ref}' is a {self.earlier[ref]} stage: its output is a data file, not a "
                                          f"model (read it with data:); models: 'model', "
                                          f"{self.earlier_list(exclude=DATA_KINDS)}")]
            return []
        if self.later(ref):
            return [Problem(key, ref, f"stage '{ref}' runs after this one; a stage starts from an earlier one: "
                                      f"{self.earlier_list(exclude=DATA_KINDS)}")]
        if os.path.isdir(ref):
            return []
        if os.path.exists(ref):
            return [Problem(key, ref, "is a file; give a model folder (the one holding config.json)")]
        if HUB_ID.match(ref):
            return []  # only the hub can tell; the stage reports a missing one
        return [Problem(key, ref, f"must be an earlier stage ({self.earlier_list(exclude=DATA_KINDS)}), 'model' (the "
                                  f"run's model: {self.run_model}), an existing model folder or a hub id like "
                                  f"org/name; {ref!r} is none of these{_did_you_mean(ref, self.names)}")]

    def start_model(self, ref: str, *, default: str) -> str:
        """The model a stage with ``init: ref`` starts from ("stage:<name>" for an earlier stage's output)."""
        if not ref:
            return default
        if ref == "model":
            return self.run_model
        return self.model_after.get(ref, ref)

    def data_reference(self, ref: str) -> list[Problem]:
        """``data:``: an existing file, or an earlier stage that writes one."""
        key = f"{self.where}.data"
        writers = self.earlier_list(DATA_KINDS)
        if not ref:
            return [Problem(key, ref, f"set data: to a JSONL file or to an earlier stage that writes one ({writers})")]
        if ref in self.earlier:
            if self.earlier[ref] not in DATA_KINDS:
                return [Problem(key, ref, f"'{ref}' is a {self.earlier[ref]} stage: its output is a model, not a "
                                          f"data file (start from it with init:); data stages: {writers}")]
            return []
        if self.later(ref):
            return [Problem(key, ref, f"stage '{ref}' runs after this one; data comes from an earlier stage: "
                                      f"{writers}")]
        if os.path.isfile(ref):
            return []
        return [Problem(key, ref, f"must be an existing JSONL file or an earlier stage that writes one ({writers}); "
                                  f"there is no file at {os.path.abspath(ref)}{_did_you_mean(ref, self.names)}")]

    def reward(self, key: str, spec: str) -> list[Problem]:
        """A reward spec: ``reward_model:<earlier reward_model stage or folder>``, else what ``get_reward`` finds."""
        if spec.startswith(REWARD_MODEL_PREFIX):
            ref = spec[len(REWARD_MODEL_PREFIX):]
            trainers = self.earlier_list(REWARD_MODEL_KINDS)
            if ref in self.earlier:
                if self.earlier[ref] in REWARD_MODEL_KINDS:
                    return []
                return [Problem(key, spec, f"'{ref}' is a {self.earlier[ref]} stage, not a reward_model stage "
                                           f"(reward_model stages before this one: {trainers})")]
            if self.later(ref):
                return [Problem(key, spec, f"stage '{ref}' runs after this one; a reward model comes from an "
                                           f"earlier reward_model stage: {trainers}")]
            if ref and os.path.isdir(ref):
                return []
            return [Problem(key, spec, f"must name an earlier reward_model stage ({trainers}) or an existing "
                                       f"reward-model folder{_did_you_mean(ref, self.names)}")]
        try:
            get_reward(spec)
        except Exception as err:  # noqa: BLE001  (a user's reward file may raise anything when it is loaded)
            return [Problem(key, spec, str(err))]
        return []


def _reward_sets(cfg) -> list[tuple[str, dict[str, float]]]:
    """(key below the stage, reward -> weight) of a stage: ``rewards`` and each ``rewards_by_task`` entry."""
    sets = [("rewards", cfg.rewards)] if hasattr(cfg, "rewards") else []
    by_task = getattr(cfg, "rewards_by_task", {})
    return sets + [(f"rewards_by_task.{task}", weights) for task, weights in by_task.items()]


def _model_problems(key: str, model: str, *, allow_tiny: bool) -> list[Problem]:
    """The run's ``model``: 'tiny', an existing folder or a hub id."""
    if (allow_tiny and model == "tiny") or os.path.isdir(model) or (HUB_ID.match(model) and not os.path.exists(model)):
        return []
    if os.path.exists(model):
        return [Problem(key, model, "is a file; give a model folder (the one holding config.json)")]
    return [Problem(key, model, "must be 'tiny' (built by a pretrain stage), an existing model folder or a hub id "
                                "like org/name")]


def _task_problems(key: str, name: str, options: dict) -> list[Problem]:
    """A task name the registry knows, with option names its dataclass has (the task is built when the run starts)."""
    if name not in TASKS:
        return [Problem(f"{key}.name", name, f"must be one of {', '.join(TASKS)}{_did_you_mean(name, list(TASKS))}")]
    known = {f.name for f in dataclasses.fields(TASKS[name]) if f.init} if dataclasses.is_dataclass(TASKS[name]) \
        else None
    if known is None:
        return []
    return [Problem(f"{key}.options.{option}", value, f"task {name!r} has no such option; its options: "
                                                      f"{', '.join(sorted(known))}")
            for option, value in options.items() if option not in known]


def _stage_name_problems(name: str) -> list[Problem]:
    """A stage's name is its folder in the run folder, and init: model means the run's model."""
    if name == "model":
        return [Problem(f"stages.{name}", name, "", text="stage name 'model' is taken: init: model means the run's "
                                                         "model; rename the stage")]
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        return [Problem(f"stages.{name}", name, "", text=f"stage name {name!r} must be a plain folder name (no '/', "
                                                         f"not starting with '.'): it is the stage's folder")]
    return []


def _via(ref: str) -> str:
    return f" (init: {ref})" if ref else " (no init: the run's model or the previous stage's)"


def _did_you_mean(ref: str, names: list[str]) -> str:
    close = difflib.get_close_matches(ref, names, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
