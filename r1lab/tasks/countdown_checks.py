"""Countdown with checks a tiny model can compute locally (the "aha moment" in miniature, DeepSeek-R1 arXiv
2501.12948 §2.2.4).

Same problems and verifier as `countdown`, but the pretraining traces are written so that checking a candidate needs
no long-range arithmetic (with "3*5+7=22 ok" marks a tiny base model's checks were at chance; README, "The aha
moment in miniature"):

    <think>target 22 3+5+7=8+7=15 15-22=-7 no 3*5+7=15+7=22 22-22=0 ok</think><answer>3*5+7</answer>

- the target is restated at the start of the reasoning, so it sits close to every check;
- each candidate is evaluated one operation at a time ("3*5+7=15+7=22", with `stepwise`), so every number written
  is a lookup on two numbers just before it, never a whole expression at once;
- then the check as a difference to the target: the mark is "ok" exactly when that difference is 0, so the mark is
  a local function of the two integers just written;
- with `int_tokens`, every integer 0..`int_token_max` is one token (`extra_tokens`, used by the tiny tokenizer), so a
  difference is a lookup on two tokens instead of digit-by-digit arithmetic.

Styles: "search" (candidates each checked, stopping at the first "ok", which is answered), "guess" (one unchecked
candidate, answered whether right or not), "search_wrong_mark" (a search whose last check is written wrongly: a miss
with difference "0" and "ok", answered; corpus noise for measuring how reliably the model checks).
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from r1lab.tasks.countdown import _APPLY, _PRECEDENCE, CountdownTask, _candidate, _format_value

_INT_TOKEN_CAP = 2000  # largest vocabulary of integer tokens a tiny model is given
_WORDS = ("target", "ok", "no")  # one token each for the tiny tokenizer


def _chain_text(node, parent_prec: int = 0, right_side: bool = False, parent_op: str = "") -> str:
    if isinstance(node, int):
        return str(node) if node >= 0 or not right_side else f"({node})"  # 3-(-4), but -4+2
    op, left, right = node
    prec = _PRECEDENCE[op]
    text = f"{_chain_text(left, prec, False, op)}{op}{_chain_text(right, prec, True, op)}"
    # minimal parentheses: a lower-precedence child, or an equal one on the right of - (a-(b+c))
    if prec < parent_prec or (right_side and prec == parent_prec and parent_op in "-/"):
        return f"({text})"
    return text


def _reduce_once(node):
    """The tree with its first operation (left to right, innermost first) replaced by its value."""
    op, left, right = node
    if isinstance(left, tuple):
        return (op, _reduce_once(left), right)
    if isinstance(right, tuple):
        return (op, left, _reduce_once(right))
    return int(_APPLY[op](Fraction(left), Fraction(right)))


def evaluation_chain(expression: str) -> list[str]:
    """["3*5+7", "15+7", "22"]: the expression, then one operation evaluated at a time (ops from "+-*")."""
    def tree(node):
        if isinstance(node, ast.BinOp):
            return ({ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)], tree(node.left), tree(node.right))
        return int(node.value)

    node = tree(ast.parse(expression, mode="eval").body)
    chain = [expression]
    while isinstance(node, tuple):
        node = _reduce_once(node)
        chain.append(_chain_text(node))
    return chain


@dataclass(frozen=True)
class CountdownChecksTask(CountdownTask):
    """Countdown (options as `countdown`, ops from "+-*") with locally computable checks in its corpus."""

    max_misses: int = 4  # search traces check 0..max_misses wrong candidates before the hit
    guess_hit_rate: float = 0.5  # share of "guess" traces whose single candidate is the reference solution
    int_tokens: bool = True  # every integer 0..int_token_max is a single token of the tiny tokenizer
    int_token_max: int = 0  # largest integer token (0: the largest absolute value a candidate can take, capped)
    stepwise: bool = True  # write each candidate's evaluation one operation at a time ("3*5+7=15+7=22")

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
        """Whole-word tokens for the tiny tokenizer: the reasoning's words and, with int_tokens, the integers
        0..int_token_max (longest match wins)."""
        if not self.int_tokens:
            return list(_WORDS)
        top = self.int_token_max or min(self.largest_value(), _INT_TOKEN_CAP)
        return list(_WORDS) + [str(i) for i in range(top + 1)]

    def written(self, expression: str, value) -> str:
        """A candidate as written in the reasoning: "3*5+7=15+7=22" (stepwise) or "3*5+7=22"."""
        if self.stepwise:
            return "=".join(evaluation_chain(expression))
        return f"{expression}={_format_value(value)}"

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
            return f"<think>{head} {self.written(text, value)}</think><answer>{text}</answer>"
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
                wrong = self.written(text, value).rsplit("=", 1)[0]
                parts.append(f"{wrong}={value} {value}-{target}=0 ok")  # the written-wrong check, answered
                return f"<think>{' '.join(parts)}</think><answer>{text}</answer>"
            parts.append(f"{self.written(text, value)} {value}-{target}={value - target} no")
        parts.append(f"{self.written(solution, target)} {target}-{target}=0 ok")
        return f"<think>{' '.join(parts)}</think><answer>{solution}</answer>"
