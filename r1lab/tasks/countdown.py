"""Countdown ("3 5 7 -> 22"): combine every given number exactly once with + - * (/) to reach the target.

Problems are made by drawing numbers and a random expression over all of them, so each one is solvable;
that expression is kept as the reference "answer". The verifier accepts any other valid expression.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from r1lab.tasks.checks import check_metrics
from r1lab.tasks.splits import check_split, check_test_fraction, draw_examples, split_rng
# The verifier lives in its own module (the check reader needs it too); its names stay importable from here.
from r1lab.tasks.verifiers_countdown import countdown_verifier, evaluate_countdown_expression

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM_PRECEDENCE = 3
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _format_value(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def random_expression(numbers: list[int], ops: str, rng: random.Random) -> tuple[str, Fraction] | None:
    """A random expression using each number once, with minimal parentheses; None on a division by zero."""
    # Items are (text, value, precedence); merging random neighbours gives random tree shapes.
    items = [(str(n), Fraction(n), _ATOM_PRECEDENCE) for n in rng.sample(numbers, len(numbers))]
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        (left, left_value, left_prec), (right, right_value, right_prec) = items[i], items[i + 1]
        op = rng.choice(ops)
        if op == "/" and right_value == 0:
            return None
        prec = _PRECEDENCE[op]
        if left_prec < prec:
            left = f"({left})"
        # a-(b+c) and a/(b*c) need their parentheses; a+(b+c) and a*(b*c) do not.
        if right_prec < prec or (right_prec == prec and op in "-/"):
            right = f"({right})"
        items[i : i + 2] = [(f"{left}{op}{right}", _APPLY[op](left_value, right_value), prec)]
    text, value, _ = items[0]
    return text, value


def _candidate(numbers: list[int], ops: str, rng: random.Random) -> tuple[str, Fraction]:
    while True:  # only a division by a zero sub-result is rejected, so this ends quickly
        drawn = random_expression(numbers, ops, rng)
        if drawn is not None:
            return drawn


@dataclass(frozen=True)
class CountdownTask:
    """Reach a target by combining `num_count` numbers from 1..`max_number`, each once, with `ops`."""

    num_count: int = 3  # how many numbers each problem gives
    max_number: int = 9  # numbers are drawn from 1..max_number (repeats allowed)
    ops: str = "+-*"  # operators used to build problems, a subset of "+-*/"
    min_target: int = 1  # smallest target kept
    max_target: int = 100  # largest target kept
    test_fraction: float = 0.1  # share of the problem space held out for the test split

    name: ClassVar[str] = "countdown"
    styles: ClassVar[tuple[str, ...]] = ("search", "guess", "plain")

    def __post_init__(self) -> None:
        if not isinstance(self.num_count, int) or not 2 <= self.num_count <= 8:
            raise ValueError(f"num_count must be an integer from 2 to 8, got {self.num_count!r}")
        if not isinstance(self.max_number, int) or self.max_number < 1:
            raise ValueError(f"max_number must be a positive integer, got {self.max_number!r}")
        if not self.ops or set(self.ops) - set("+-*/") or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be distinct characters from '+-*/', got {self.ops!r}")
        if self.min_target > self.max_target:
            raise ValueError(f"min_target {self.min_target} is larger than max_target {self.max_target}")
        check_test_fraction(self.test_fraction)

    def make_example(self, numbers: list[int], target: int, solution: str) -> dict:
        return {
            "prompt": f"{' '.join(str(n) for n in numbers)} -> {target}",
            "answer": solution,
            "verifier": "countdown",
            "task": self.name,
            "numbers": list(numbers),
            "target": target,
        }

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        check_split(split)

        def draw(rng: random.Random) -> dict | None:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.num_count)]
            drawn = random_expression(numbers, self.ops, rng)
            if drawn is None:
                return None
            solution, value = drawn
            if value.denominator != 1 or not self.min_target <= value <= self.max_target:
                return None
            return self.make_example(numbers, int(value), solution)

        def key_of(example: dict) -> str:
            # The same numbers in another order are the same problem.
            return f"{','.join(str(n) for n in sorted(example['numbers']))}->{example['target']}"

        return draw_examples(draw, key_of, split, n, split_rng(self.name, split, seed), self.test_fraction)

    def metrics(self, examples: list[dict], responses: list[str]) -> dict[str, float]:
        """Self-checking in the responses (``r1lab.tasks.checks.check_metrics``): checks and revisions per completion,
        the precision of the "ok"/"no" marks and accuracy by number of checks."""
        return check_metrics(examples, responses)

    def corpus_document(self, example: dict, rng: random.Random, style: str) -> str:
        """The assistant response text of one pretraining document in `style` (see `styles`).

        search: candidates marked "ok"/"no", stopping at the first hit (at most 3 misses, then the reference);
        guess: one unchecked candidate, the reference half of the time, given as the answer whether right or not;
        plain: the reference expression and its value, untagged.
        """
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name!r}; styles: {', '.join(self.styles)}")
        numbers, target, solution = example["numbers"], example["target"], example["answer"]
        if style == "plain":
            return f"{solution}={target}"
        if style == "guess":
            guess = solution if rng.random() < 0.5 else _candidate(numbers, self.ops, rng)[0]
            value, _ = evaluate_countdown_expression(guess)
            return f"<think>{guess}={_format_value(value)}</think><answer>{guess}</answer>"
        lines = []
        for _ in range(rng.randint(0, 3)):
            text, value = _candidate(numbers, self.ops, rng)
            hit = value == target
            lines.append(f"{text}={_format_value(value)} {'ok' if hit else 'no'}")
            if hit:
                return f"<think>{' '.join(lines)}</think><answer>{text}</answer>"
        lines.append(f"{solution}={target} ok")
        return f"<think>{' '.join(lines)}</think><answer>{solution}</answer>"
