"""Several tasks as one prompt source, e.g. reasoning and non-reasoning prompts for R1's all-scenario RL (§2.3.4).

    get_task("mixture", parts=[{"name": "arithmetic", "options": {"digits": 2}, "weight": 3},
                               {"name": "domain", "weight": 1}])

Each example keeps its own ``task`` and ``verifier`` fields, so verifiers, rewards and ``rewards_by_task`` routing
see where it came from. A draw of n examples has each part's share of n (largest remainders), shuffled.

Metrics (``task_metrics``): the accuracy per source task when a batch mixes tasks, and each part's own metrics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean
from typing import ClassVar

from r1lab.tasks.registry import get_task, task_metrics
from r1lab.tasks.splits import check_split
from r1lab.tasks.verifiers import extract_answer, verify


@dataclass(frozen=True)
class MixtureTask:
    """Examples drawn from several tasks in proportion to their weights."""

    parts: tuple = ()  # [{"name": task, "options": {...}, "weight": w}, ...]

    name: ClassVar[str] = "mixture"
    styles: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("mixture needs parts: [{name: ..., options: {...}, weight: ...}, ...]")
        tasks, weights = [], []
        for i, part in enumerate(self.parts):
            if not isinstance(part, dict) or "name" not in part or set(part) - {"name", "options", "weight"}:
                raise ValueError(f"mixture part {i} must be a mapping with 'name' and optional 'options', 'weight'; "
                                 f"got {part!r}")
            weight = part.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"mixture part {i} ({part['name']}): weight must be a positive number, got {weight!r}")
            tasks.append(get_task(part["name"], **part.get("options", {})))
            weights.append(float(weight))
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "_tasks", tuple(tasks))
        object.__setattr__(self, "_weights", tuple(w / sum(weights) for w in weights))

    def counts(self, n: int) -> list[int]:
        """Each part's number of examples out of n: its share, rounded by largest remainder (they sum to n)."""
        exact = [n * w for w in self._weights]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
        for i in by_remainder[: n - sum(counts)]:
            counts[i] += 1
        return counts

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        check_split(split)
        drawn = [ex for task, count in zip(self._tasks, self.counts(n)) for ex in task.examples(split, count, seed)]
        random.Random(f"mixture:{split}:{seed}").shuffle(drawn)
        return drawn

    def metrics(self, examples: list[dict], responses: list[str]) -> dict[str, float]:
        """accuracy/task_<name> per source task (``example["task"]``; correct: ``verify(extract_answer(response),
        example)``, whatever the rewards were) when the examples mix at least two tasks, plus each part's own
        metrics on the examples it produced (parts sharing one ``metrics`` implementation, such as countdown and
        countdown_checks, get their examples together, so their keys do not overwrite each other)."""
        result: dict[str, float] = {}
        if len({str(example.get("task")) for example in examples}) >= 2:
            by_task: dict[str, list[bool]] = {}
            for example, response in zip(examples, responses):
                by_task.setdefault(str(example.get("task")), []).append(bool(verify(extract_answer(response), example)))
            result.update({f"accuracy/task_{name}": fmean(flags) for name, flags in sorted(by_task.items())})
        for task, names in self._metric_groups():
            index = [i for i, example in enumerate(examples) if example.get("task") in names]
            if index:
                result.update(task_metrics(task, [examples[i] for i in index], [responses[i] for i in index]))
        return result

    def source_names(self) -> set[str]:
        """The ``task`` values of the examples this mixture draws (nested mixtures included)."""
        return set().union(*(_source_names(task) for task in self._tasks))

    def _metric_groups(self) -> list[tuple[object, set[str]]]:
        """(a part that has a metrics hook, the task names whose examples it gets), one per implementation."""
        groups: dict[object, tuple[object, set[str]]] = {}
        for task in self._tasks:
            implementation = getattr(type(task), "metrics", None)
            if implementation is None:
                continue
            key = id(task) if isinstance(task, MixtureTask) else implementation
            groups.setdefault(key, (task, set()))[1].update(_source_names(task))
        return list(groups.values())


def _source_names(task) -> set[str]:
    return task.source_names() if isinstance(task, MixtureTask) else {task.name}
