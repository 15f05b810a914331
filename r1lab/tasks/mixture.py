"""Several tasks as one prompt source, e.g. reasoning and non-reasoning prompts for R1's all-scenario RL (§2.3.4).

    get_task("mixture", parts=[{"name": "arithmetic", "options": {"digits": 2}, "weight": 3},
                               {"name": "domain", "weight": 1}])

Each example keeps its own ``task`` and ``verifier`` fields, so verifiers, rewards and ``rewards_by_task`` routing
see where it came from. A draw of n examples has each part's share of n (largest remainders), shuffled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from r1lab.tasks.splits import check_split


@dataclass(frozen=True)
class MixtureTask:
    """Examples drawn from several tasks in proportion to their weights."""

    parts: tuple = ()  # [{"name": task, "options": {...}, "weight": w}, ...]

    name: ClassVar[str] = "mixture"
    styles: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        from r1lab.tasks import get_task  # the registry imports this module

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
