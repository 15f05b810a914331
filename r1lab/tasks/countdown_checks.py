"""Countdown with checks a tiny model can compute locally (issue 6, the "aha moment" in miniature).

Same problems and verifier as `countdown`, but the pretraining traces are written so that checking a candidate needs
no long-range arithmetic (REFERENCE.md §5: with "3*5+7=22 ok" marks a tiny base model's checks were at chance):

    <think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>

- the target is restated at the start of the reasoning, so it sits close to every check;
- each candidate is written with its value, then the check as a difference to the target: the mark is "ok" exactly
  when that difference is 0, so the mark is a local function of the two integers just written;
- with `int_tokens`, every integer 0..`int_token_max` is one token (`extra_tokens`, used by the tiny tokenizer), so a
  difference is a lookup on two tokens instead of digit-by-digit arithmetic.

Styles: "search" (candidates each checked, stopping at the first "ok", which is answered), "guess" (one unchecked
candidate, answered whether right or not), "search_wrong_mark" (a search whose last check is written wrongly: a miss
with difference "0" and "ok", answered; corpus noise for measuring how reliably the model checks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from r1lab.tasks.countdown import CountdownTask, _candidate, _format_value

_INT_TOKEN_CAP = 2000  # largest vocabulary of integer tokens a tiny model is given


@dataclass(frozen=True)
class CountdownChecksTask(CountdownTask):
    """Countdown (options as `countdown`, ops from "+-*") with locally computable checks in its corpus."""

    max_misses: int = 4  # search traces check 0..max_misses wrong candidates before the hit
    guess_hit_rate: float = 0.5  # share of "guess" traces whose single candidate is the reference solution
    int_tokens: bool = True  # every integer 0..int_token_max is a single token of the tiny tokenizer
    int_token_max: int = 0  # largest integer token (0: the largest absolute value a candidate can take, capped)

    name: ClassVar[str] = "countdown_checks"
    styles: ClassVar[tuple[str, ...]] = ("search", "guess", "search_wrong_mark")
    default_corpus_styles: ClassVar[dict[str, float]] = {"search": 0.5, "guess": 0.5}

    def __post_init__(self) -> None:
        super().__post_init__()
        if "/" in self.ops:
            raise ValueError("countdown_checks supports ops from '+-*' only (differences must be integers)")
        if not isinstance(self.max_misses, int) or self.max_misses < 0:
            raise ValueError(f"max_misses must be a non-negative integer, got {self.max_misses!r}")
        if not 0.0 <= self.guess_hit_rate <= 1.0:
            raise ValueError(f"guess_hit_rate must be in [0, 1], got {self.guess_hit_rate!r}")
        if not isinstance(self.int_token_max, int) or self.int_token_max < 0:
            raise ValueError(f"int_token_max must be a non-negative integer, got {self.int_token_max!r}")

    def largest_value(self) -> int:
        """The largest absolute value a candidate or a difference to a target can take."""
        biggest = self.max_number ** self.num_count if "*" in self.ops else self.max_number * self.num_count
        return biggest + max(abs(self.max_target), abs(self.min_target))

    @property
    def extra_tokens(self) -> list[str] | None:
        """Whole-word tokens for the tiny tokenizer: the integers 0..int_token_max (longest match wins)."""
        if not self.int_tokens:
            return None
        top = self.int_token_max or min(self.largest_value(), _INT_TOKEN_CAP)
        return [str(i) for i in range(top + 1)]

    def _miss(self, numbers: list[int], target: int, rng: random.Random, seen: set[str]) -> tuple[str, int] | None:
        for _ in range(20):  # a new random candidate that misses; None when there is hardly any left
            text, value = _candidate(numbers, self.ops, rng)
            if value != target and text not in seen:
                seen.add(text)
                return text, int(value)
        return None

    def corpus_document(self, example: dict, rng: random.Random, style: str) -> str:
        """The assistant response text of one pretraining document in `style` (see the module docstring)."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name!r}; styles: {', '.join(self.styles)}")
        numbers, target, solution = example["numbers"], example["target"], example["answer"]
        head = f"target {target}"
        if style == "guess":
            if rng.random() < self.guess_hit_rate:
                text, value = solution, target
            else:
                text, value = _candidate(numbers, self.ops, rng)
            return f"<think>{head} {text}={_format_value(value)}</think><answer>{text}</answer>"
        parts = [head]
        misses = rng.randint(0, self.max_misses)
        if style == "search_wrong_mark":
            misses = max(1, misses)
        seen: set[str] = set()
        for i in range(misses):
            drawn = self._miss(numbers, target, rng, seen)
            if drawn is None:
                break
            text, value = drawn
            if style == "search_wrong_mark" and i == misses - 1:
                parts.append(f"{text}={value} {value}-{target}=0 ok")  # the written-wrong check, answered
                return f"<think>{' '.join(parts)}</think><answer>{text}</answer>"
            parts.append(f"{text}={value} {value}-{target}={value - target} no")
        parts.append(f"{solution}={target} {target}-{target}=0 ok")
        return f"<think>{' '.join(parts)}</think><answer>{solution}</answer>"
