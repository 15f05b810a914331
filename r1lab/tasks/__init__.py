"""Verifiable tasks: each yields examples {"prompt", "answer", "verifier", ...} and owns its verifier.

    task = get_task("arithmetic", digits=3, ops="+")
    train = task.examples("train", 1000, seed=0)     # disjoint from task.examples("test", ...)
    verify("936", train[0])                            # dispatches on train[0]["verifier"]

Real data: get_task("dataset", path=..., verifier="math") (files and hub datasets, r1lab.tasks.datasets) and
get_task("reasoning_gym", name="basic_arithmetic").

Answers are read by ``extract_answer(response, example)``: the <answer> tags, else the last \\boxed{…}; an example
with ``answer_format: tags`` demands the tags (the dataset and reasoning_gym tasks take it as an option).

Task-specific metrics: ``task_metrics(task, examples, responses)`` returns ``task.metrics(examples, responses)`` for
a task that defines that hook (Countdown's self-checks, a mixture's accuracy per source task), else {}
(r1lab.tasks.registry).
"""

from __future__ import annotations

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
from r1lab.tasks.registry import TASKS, get_task, task_metrics
from r1lab.tasks.verifiers import ANSWER_FORMATS, SCORED_WITHOUT_REFERENCE, VERIFIERS, extract_answer, verify
from r1lab.tasks.verifiers_code import code_verifier
from r1lab.tasks.verifiers_math import math_verifier, multiple_choice_verifier

VERIFIERS.update({"math": math_verifier, "multiple_choice": multiple_choice_verifier, "code": code_verifier,
                  "reasoning_gym": reasoning_gym_verifier})
SCORED_WITHOUT_REFERENCE.add("reasoning_gym")  # its scorer reads the problem itself (rg_entry), not a reference

TASKS.update({"arithmetic": ArithmeticTask, "countdown": CountdownTask, "jsonl": JsonlTask, "dataset": DatasetTask,
              "reasoning_gym": ReasoningGymTask, "countdown_checks": CountdownChecksTask, "domain": DomainTask,
              "mixture": MixtureTask})


@dataclass
class TaskConfig:
    name: str = doc("arithmetic", "Task: arithmetic, countdown, countdown_checks, domain, mixture, jsonl, dataset, "
                                  "reasoning_gym (see r1lab.tasks).")
    options: dict[str, Any] = doc({}, "Task options, e.g. {digits: 3} or {train_path: data.jsonl}.")


__all__ = ["ANSWER_FORMATS", "SCORED_WITHOUT_REFERENCE", "TASKS", "TaskConfig", "VERIFIERS", "ArithmeticTask", "CountdownChecksTask", "CountdownTask", "DatasetTask",
           "DomainTask", "JsonlTask", "MixtureTask", "ReasoningGymTask", "extract_answer", "get_task", "task_metrics",
           "verify"]
