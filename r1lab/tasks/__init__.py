"""Verifiable tasks: each yields examples {"prompt", "answer", "verifier", ...} and owns its verifier.

    task = get_task("arithmetic", digits=3, ops="+")
    train = task.examples("train", 1000, seed=0)     # disjoint from task.examples("test", ...)
    verify("936", train[0])                            # dispatches on train[0]["verifier"]
"""

from __future__ import annotations

import dataclasses

from r1lab.tasks.arithmetic import ArithmeticTask
from r1lab.tasks.countdown import CountdownTask
from r1lab.tasks.jsonl import JsonlTask
from r1lab.tasks.verifiers import VERIFIERS, verify

TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "jsonl": JsonlTask}


def get_task(name: str, **options):
    """Build a task by name; options are the task's dataclass fields."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    task_class = TASKS[name]
    known = [f.name for f in dataclasses.fields(task_class) if f.init]
    unknown = [key for key in options if key not in known]
    if unknown:
        raise TypeError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; options: {', '.join(known)}")
    return task_class(**options)


__all__ = ["TASKS", "VERIFIERS", "ArithmeticTask", "CountdownTask", "JsonlTask", "get_task", "verify"]
