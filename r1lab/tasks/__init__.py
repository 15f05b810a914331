"""Verifiable tasks: each yields examples {"prompt", "answer", "verifier", ...} and owns its verifier.

    task = get_task("arithmetic", digits=3, ops="+")
    train = task.examples("train", 1000, seed=0)     # disjoint from task.examples("test", ...)
    verify("936", train[0])                            # dispatches on train[0]["verifier"]

Real data: get_task("dataset", path=..., verifier="math") (files and hub datasets, r1lab.tasks.datasets) and
get_task("reasoning_gym", name="basic_arithmetic").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from r1lab.config import doc

from r1lab.tasks.arithmetic import ArithmeticTask
from r1lab.tasks.countdown import CountdownTask
from r1lab.tasks.countdown_checks import CountdownChecksTask
from r1lab.tasks.datasets import DatasetTask, ReasoningGymTask, reasoning_gym_verifier
from r1lab.tasks.domain import DomainTask
from r1lab.tasks.mixture import MixtureTask
from r1lab.tasks.jsonl import JsonlTask
from r1lab.tasks.verifiers import VERIFIERS, verify
from r1lab.tasks.verifiers_math import math_verifier, multiple_choice_verifier


def code_verifier(answer_text: str, example: dict) -> bool:
    """The "code" verifier of r1lab.rewards.code, imported on first use (only code tasks need the sandbox)."""
    from r1lab.rewards.code import code_verifier as run_code_tests

    return run_code_tests(answer_text, example)


VERIFIERS.update({"math": math_verifier, "multiple_choice": multiple_choice_verifier, "code": code_verifier,
                  "reasoning_gym": reasoning_gym_verifier})

TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "jsonl": JsonlTask, "dataset": DatasetTask,
         "reasoning_gym": ReasoningGymTask}
TASKS["countdown_checks"] = CountdownChecksTask
TASKS["domain"] = DomainTask

TASKS["mixture"] = MixtureTask


@dataclass
class TaskConfig:
    name: str = doc("arithmetic", "Task: arithmetic, countdown, countdown_checks, domain, mixture, jsonl, dataset, "
                                  "reasoning_gym (see r1lab.tasks).")
    options: dict[str, Any] = doc({}, "Task options, e.g. {digits: 3} or {train_path: data.jsonl}.")


def get_task(name: str, /, **options):
    """Build a task by name; options are the task's dataclass fields."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    task_class = TASKS[name]
    known = [f.name for f in dataclasses.fields(task_class) if f.init]
    unknown = [key for key in options if key not in known]
    if unknown:
        raise TypeError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; options: {', '.join(known)}")
    return task_class(**options)


__all__ = ["TASKS", "TaskConfig", "VERIFIERS", "ArithmeticTask", "CountdownTask", "DatasetTask", "JsonlTask", "ReasoningGymTask",
           "get_task", "verify"]
