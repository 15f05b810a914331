"""Weighted sum of several rewards over a batch, robust to rewards that fail.

A user's reward that raises or returns NaN must not stop a training run: the value counts as 0 in the total,
the failures are counted per reward (a metric to log), and the first failure of each reward is logged once.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

from r1lab.rewards.registry import get_reward

logger = logging.getLogger("r1lab")
_already_warned: set[str] = set()


@dataclass
class ScoreResult:
    total: list[float]  # weighted sum per completion; None and failures count as 0
    per_reward: dict[str, list[float | None]]  # each reward's raw value per completion (None: n/a or failed)
    errors: dict[str, int]  # per reward, how many completions it failed on (raised, non-number, NaN/inf)


def _warn_once(spec: str, message: str, *args, exc_info: BaseException | None = None) -> None:
    if spec in _already_warned:
        return
    _already_warned.add(spec)
    logger.warning(
        f"reward %r {message}; counted as 0 (later failures of this reward are only counted)",
        spec,
        *args,
        exc_info=exc_info,
    )


def score_completions(completions: list[str], examples: list[dict], rewards: dict[str, float],
                      rewards_by_task: dict[str, dict[str, float]] | None = None) -> ScoreResult:
    """Score each completion against its example with every reward spec, weighted by `rewards[spec]`.

    `rewards_by_task`: examples whose "task" field is a key here are scored with that reward set instead (R1's
    all-scenario RL: rule rewards for reasoning prompts, a reward model for general ones); a reward outside an
    example's set is None for it.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples; they must pair up")
    by_task = rewards_by_task or {}
    weight_sets = [by_task.get(example.get("task"), rewards) for example in examples]
    specs = list(dict.fromkeys([*rewards, *(spec for weights in by_task.values() for spec in weights)]))
    functions = {spec: get_reward(spec) for spec in specs}
    total = [0.0] * len(completions)
    per_reward: dict[str, list[float | None]] = {}
    errors: dict[str, int] = {}
    for spec in specs:
        values: list[float | None] = []
        failures = 0
        for index, (completion, example) in enumerate(zip(completions, examples)):
            if spec not in weight_sets[index]:
                values.append(None)
                continue
            try:
                value = functions[spec](completion, example)
            except Exception as error:
                failures += 1
                _warn_once(spec, "raised %s: %s on completion %d", type(error).__name__, error, index, exc_info=error)
                values.append(None)
                continue
            if value is None:
                values.append(None)
                continue
            if not isinstance(value, numbers.Real):
                failures += 1
                _warn_once(spec, "returned a %s (%r), not a number", type(value).__name__, value)
                values.append(None)
                continue
            value = float(value)
            if not math.isfinite(value):
                failures += 1
                _warn_once(spec, "returned %s on completion %d", value, index)
                values.append(None)
                continue
            values.append(value)
            total[index] += weight_sets[index][spec] * value
        per_reward[spec] = values
        errors[spec] = failures
    return ScoreResult(total=total, per_reward=per_reward, errors=errors)
