"""The task registry and the optional hooks of the task protocol.

A task is a class with ``name``, ``styles``, ``examples(split, n, seed)`` and ``corpus_document(example, rng, style)``;
``r1lab.tasks`` registers the built-in ones in ``TASKS``. Optional hook:

    metrics(self, examples: list[dict], responses: list[str]) -> dict[str, float]

task-specific numbers about a batch of responses (``responses[i]`` is the whole response the rewards see for
``examples[i]``; an example appears once per sample). Callers go through ``task_metrics``, which gives {} for a task
without the hook: the rollout logs these numbers as they are, the held-out evaluation adds them to its summary.
"""

from __future__ import annotations

import dataclasses

TASKS: dict[str, type] = {}  # filled by r1lab.tasks (this module imports no task, so every task may import it)


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


def task_metrics(task, examples: list[dict], responses: list[str]) -> dict[str, float]:
    """``task.metrics(examples, responses)`` when the task defines that hook, else {} (see the module docstring)."""
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses; they must pair up")
    hook = getattr(task, "metrics", None)
    if not callable(hook) or not examples:
        return {}
    return dict(hook(examples, responses))
