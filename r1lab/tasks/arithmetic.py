"""Multi-digit arithmetic ("347+589" -> "936"), with column-by-column worked solutions for pretraining.

Prompts are compact because the tiny model reads characters: every character costs a token.
The corpus styles give a from-scratch model partial skill (README, "Stability"): worked solutions with and
without tags, some with one plausible human mistake that propagates to a wrong final answer. The "worked_words"
and "worked_mixed" styles put reasoning words between the steps, in English or drawn from English and Spanish
within one chain of thought, so that the tiny model can learn to mix languages and the language-consistency reward
(R1 §2.3.2) has something to fix.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from r1lab.tasks.splits import check_split, check_test_fraction, draw_examples, split_rng

_INTEGER = re.compile(r"[+-]?\d+")

# The same three reasoning words in two languages (ASCII so that the tiny tokenizer covers them); index i of every
# language means the same thing: start of the working, between two steps, before the result.
REASONING_WORDS: dict[str, tuple[str, ...]] = {"en": ("sum", "then", "so"), "es": ("suma", "luego", "asi")}
# Whole-word tokens for build_tiny_tokenizer(extra_words=...): each reasoning word is one token.
EXTRA_TOKENS: list[str] = [word for words in REASONING_WORDS.values() for word in words]


def integer_verifier(answer_text: str, example: dict) -> bool:
    """The answer is one integer (optional sign, surrounding spaces) equal to the reference."""
    text = answer_text.strip()
    if not _INTEGER.fullmatch(text):
        return False
    return int(text) == int(example["answer"])


def _digits_low_to_high(number: int, width: int) -> list[int]:
    return [int(ch) for ch in reversed(str(number).zfill(width))]


def _addition_steps(a: int, b: int, rng: random.Random, with_error: bool) -> tuple[list[str], int]:
    """Right-to-left column sums, the carry written as "+1": 347+589 -> 7+9=16 4+8+1=13 3+5+1=9."""
    width = max(len(str(a)), len(str(b)))
    a_digits, b_digits = _digits_low_to_high(a, width), _digits_low_to_high(b, width)
    mistake = None
    if with_error:
        true_carries, carry = [], 0
        for da, db in zip(a_digits, b_digits):
            true_carries.append(carry)
            carry = (da + db + carry) // 10
        forgettable = [i for i, c in enumerate(true_carries) if c]
        # Forgetting a carry is the classic slip; otherwise one column sum is off by one.
        if forgettable and rng.random() < 0.5:
            mistake = (rng.choice(forgettable), "forgot_carry")
        else:
            mistake = (rng.randrange(width), "off_by_one")

    steps, result_digits, carry = [], [], 0
    for i, (da, db) in enumerate(zip(a_digits, b_digits)):
        add_carry = carry == 1 and mistake != (i, "forgot_carry")
        column_sum = da + db + (1 if add_carry else 0)
        if mistake == (i, "off_by_one"):
            # Stay within 0..19 so the carry remains 0 or 1 and the trace keeps its shape.
            column_sum += 1 if column_sum == 0 else -1 if column_sum == 19 else rng.choice((-1, 1))
        steps.append(f"{da}+{db}{'+1' if add_carry else ''}={column_sum}")
        result_digits.append(column_sum % 10)
        carry = column_sum // 10
    if carry:
        result_digits.append(carry)
    return steps, int("".join(str(d) for d in reversed(result_digits)))


def _subtraction_steps(a: int, b: int, rng: random.Random, with_error: bool) -> tuple[list[str], int]:
    """Column differences, a borrow shown as 10 added above and "-1" below: 347-189 -> 17-9=8 14-8-1=5 3-1-1=1.

    When a < b the trace first notes "a<b", works b-a and the answer takes a minus sign.
    """
    negative = a < b
    top, bottom = (b, a) if negative else (a, b)
    width = len(str(top))
    top_digits, bottom_digits = _digits_low_to_high(top, width), _digits_low_to_high(bottom, width)
    mistake = None
    if with_error:
        true_borrows, borrow = [], 0
        for dt, db in zip(top_digits, bottom_digits):
            true_borrows.append(borrow)
            borrow = 1 if dt - db - borrow < 0 else 0
        forgettable = [i for i, c in enumerate(true_borrows) if c]
        if forgettable and rng.random() < 0.5:
            mistake = (rng.choice(forgettable), "forgot_borrow")
        else:
            mistake = (rng.randrange(width), "off_by_one")

    steps = [f"{a}<{b}"] if negative else []
    result_digits, borrow = [], 0
    for i, (dt, db) in enumerate(zip(top_digits, bottom_digits)):
        take_borrow = borrow == 1 and mistake != (i, "forgot_borrow")
        difference = dt - db - (1 if take_borrow else 0)
        left = dt
        borrow = 0
        if difference < 0:
            left, difference, borrow = dt + 10, difference + 10, 1
        if mistake == (i, "off_by_one"):
            # Only the written digit is wrong; the borrow was decided correctly.
            difference += 1 if difference == 0 else -1 if difference == 9 else rng.choice((-1, 1))
        steps.append(f"{left}-{db}{'-1' if take_borrow else ''}={difference}")
        result_digits.append(difference)
    magnitude = int("".join(str(d) for d in reversed(result_digits)))
    return steps, -magnitude if negative else magnitude


def _multiplication_steps(a: int, b: int, rng: random.Random, with_error: bool) -> tuple[list[str], int]:
    """One partial product per digit of b, then their sum: 347*589 -> 347*9=3123 347*80=27760 347*500=173500
    3123+27760+173500=204383."""
    multipliers = [d * 10**place for place, d in enumerate(_digits_low_to_high(b, len(str(b))))]
    partials = [a * m for m in multipliers]
    has_sum_step = len(partials) > 1
    mistake = None
    if with_error:
        # A slip is one digit off by one, either in a partial product or in the final sum.
        if has_sum_step and rng.random() < 0.3:
            mistake = ("sum", None)
        else:
            mistake = ("partial", rng.randrange(len(partials)))

    def off_by_one_digit(value: int, lowest_place: int) -> int:
        # Change exactly one written digit by one, never through a borrow or carry or to a leading 0.
        top_place = max(len(str(value)) - 1, lowest_place)
        place = rng.randint(lowest_place, top_place)
        digit = value // 10**place % 10
        can_lower = digit >= 2 or (digit == 1 and place < top_place)
        can_raise = digit <= 8
        lower = can_lower and (not can_raise or rng.random() < 0.5)
        return value - 10**place if lower else value + 10**place

    written = list(partials)
    if mistake and mistake[0] == "partial":
        place = mistake[1]
        written[place] = off_by_one_digit(partials[place], place)
    steps = [f"{a}*{m}={p}" for m, p in zip(multipliers, written)]
    total = sum(written)
    if has_sum_step:
        if mistake and mistake[0] == "sum":
            total = off_by_one_digit(total, 0)
        steps.append(f"{'+'.join(str(p) for p in written)}={total}")
    return steps, total


_STEP_WRITERS = {"+": _addition_steps, "-": _subtraction_steps, "*": _multiplication_steps}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class ArithmeticTask:
    """Integer arithmetic on two `digits`-digit operands, one operator drawn from `ops` per problem."""

    digits: int = 3  # digits of each operand (1 allows 0..9)
    ops: str = "+"  # operators to draw from, a subset of "+-*"
    test_fraction: float = 0.1  # share of the problem space held out for the test split

    name: ClassVar[str] = "arithmetic"
    styles: ClassVar[tuple[str, ...]] = ("worked", "worked_error", "plain", "plain_error", "answer_only",
                                         "worked_words", "worked_mixed")
    # The tiny tokenizer makes each reasoning word of the worked_words / worked_mixed styles one token.
    extra_tokens: ClassVar[list[str]] = EXTRA_TOKENS
    word_styles: ClassVar[tuple[str, ...]] = ("worked_words", "worked_mixed")  # the styles that use EXTRA_TOKENS

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 12:
            raise ValueError(f"digits must be an integer from 1 to 12, got {self.digits!r}")
        if not self.ops or set(self.ops) - set("+-*") or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be distinct characters from '+-*', got {self.ops!r}")
        check_test_fraction(self.test_fraction)

    def make_example(self, a: int, op: str, b: int) -> dict:
        return {
            "prompt": f"{a}{op}{b}",
            "answer": str(_APPLY[op](a, b)),
            "verifier": "integer",
            "task": self.name,
            "operands": [a, b],
            "op": op,
        }

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        check_split(split)
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        high = 10**self.digits - 1

        def draw(rng: random.Random) -> dict:
            return self.make_example(rng.randint(low, high), rng.choice(self.ops), rng.randint(low, high))

        def key_of(example: dict) -> str:
            a, b = example["operands"]
            # a+b and b+a are the same problem: they must share a split.
            if example["op"] in "+*":
                a, b = sorted((a, b))
            return f"{a}{example['op']}{b}"

        return draw_examples(draw, key_of, split, n, split_rng(self.name, split, seed), self.test_fraction)

    def corpus_document(self, example: dict, rng: random.Random, style: str) -> str:
        """The assistant response text of one pretraining document in `style` (see `styles`)."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name!r}; styles: {', '.join(self.styles)}")
        a, b = example["operands"]
        op = example["op"]
        if style == "answer_only":
            return str(example["answer"])
        steps, result = _STEP_WRITERS[op](a, b, rng, with_error=style.endswith("_error"))
        if style in ("worked_words", "worked_mixed"):
            trace = _trace_with_words(steps, result, rng, mixed=style == "worked_mixed")
            return f"<think>{trace}</think><answer>{result}</answer>"
        trace = " ".join(steps)
        if style.startswith("worked"):
            return f"<think>{trace}</think><answer>{result}</answer>"
        return f"{trace} so {result}"


def _trace_with_words(steps: list[str], result: int, rng: random.Random, *, mixed: bool) -> str:
    """"sum 7+9=16 then 4+8+1=13 then 3+5+1=9 so 936"; mixed: each word's language drawn at random, with at least
    one word of each language (there are always at least two words: the first and the one before the result)."""
    meanings = [0] + [1] * (len(steps) - 1) + [2]
    languages = ["en"] * len(meanings)
    if mixed:
        languages = [rng.choice(("en", "es")) for _ in meanings]
        if len(set(languages)) == 1:
            languages[rng.randrange(len(languages))] = "es" if languages[0] == "en" else "en"
    words = [REASONING_WORDS[language][meaning] for language, meaning in zip(languages, meanings)]
    parts = [words[0]]
    for i, step in enumerate(steps):
        parts += [step, words[i + 1]]
    return " ".join(parts + [str(result)])
