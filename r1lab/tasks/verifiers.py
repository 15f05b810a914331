"""Answer checkers: `verifier(answer_text, example) -> bool`, looked up by the example's "verifier" field.

    verify(extract_answer(response, example), example)   # is a whole response's answer right?

Each task owns its verifier (integer: arithmetic, countdown: countdown); the generic ones for
user datasets (exact, number) live here, and so does `extract_answer`, the answer a response gives.

Where the answer is read depends on the example's "answer_format" (tasks set it; README, "Answers"):
    tags_or_boxed (default)  the last complete <answer>…</answer>, else the last \\boxed{…} (what math models write
                             without the R1 tags; the math verifier reads both)
    tags                     the <answer> tags only: a response that boxes its answer without tags scores 0
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

from r1lab.tasks.arithmetic import integer_verifier
from r1lab.tasks.verifiers_countdown import countdown_verifier

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_FORMATS = ("tags_or_boxed", "tags")
DEFAULT_ANSWER_FORMAT = "tags_or_boxed"

# Verifiers that judge an answer without a reference: reasoning-gym's own scorers (a problem such as
# propositional_logic has many right answers and no single reference). Filled in by r1lab.tasks.
SCORED_WITHOUT_REFERENCE: set[str] = set()

_BOXED = re.compile(r"\\boxed\s*\{")


def check_answer_format(answer_format: str) -> str:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    return answer_format


def tagged_answer(completion: str) -> str | None:
    """The stripped content of the last complete <answer>…</answer>, None when there is none."""
    end = completion.rfind(ANSWER_CLOSE)
    if end == -1:
        return None
    start = completion.rfind(ANSWER_OPEN, 0, end)
    if start == -1:
        return None
    return completion[start + len(ANSWER_OPEN) : end].strip()


def boxed_answer(completion: str) -> str | None:
    """The stripped content of the last \\boxed{…} whose braces balance (an escaped ``\\{`` or ``\\}`` is a literal
    brace and does not count), None when there is none; a box cut off before its closing brace is skipped."""
    for match in reversed(list(_BOXED.finditer(completion))):
        depth, position = 1, match.end()
        while position < len(completion):
            char = completion[position]
            if char == "\\":
                position += 2  # a command or an escaped character, \{ included
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                return completion[match.end():position].strip()
            position += 1
    return None


def extract_answer(completion: str, example: dict | None = None) -> str | None:
    """The answer a response gives, read as ``example["answer_format"]`` says (default tags_or_boxed: the answer
    tags, else the last \\boxed{…}; see the module docstring); None when it gives none."""
    answer_format = check_answer_format((example or {}).get("answer_format") or DEFAULT_ANSWER_FORMAT)
    answer = tagged_answer(completion)
    if answer is None and answer_format == "tags_or_boxed":
        answer = boxed_answer(completion)
    return answer


def exact_verifier(answer_text: str, example: dict) -> bool:
    """Equal strings once surrounding whitespace is stripped from both."""
    return answer_text.strip() == str(example["answer"]).strip()


# Plain integers or decimals ("12", "-0.5", ".5", "1,000", "1,234.5") or a simple fraction of integers ("3/4").
_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)/(\d+)")


def parse_number(text: str) -> Fraction | None:
    """An exact value for a number written as an integer, a decimal or a/b; None when it is none of these."""
    text = text.strip()
    if _DECIMAL.fullmatch(text):
        return Fraction(text.replace(",", ""))
    match = _FRACTION.fullmatch(text)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    return None


def number_verifier(answer_text: str, example: dict) -> bool:
    """Numerically equal within a relative tolerance of 1e-6 (exact for 0)."""
    reference = parse_number(str(example["answer"]))
    if reference is None:
        raise ValueError(f"reference answer {example['answer']!r} is not a number the 'number' verifier reads")
    value = parse_number(answer_text)
    if value is None:
        return False
    return abs(value - reference) <= Fraction(1, 10**6) * max(abs(value), abs(reference))


VERIFIERS: dict[str, Callable[[str, dict], bool]] = {
    "integer": integer_verifier,
    "countdown": countdown_verifier,
    "exact": exact_verifier,
    "number": number_verifier,
}


def verify(answer_text: str | None, example: dict) -> bool:
    """Check an extracted answer with the verifier the example names; a missing answer (None) is wrong."""
    if "verifier" not in example:
        raise ValueError(f"example has no 'verifier' field (keys: {', '.join(sorted(example))})")
    name = example["verifier"]
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; known verifiers: {', '.join(sorted(VERIFIERS))}")
    if answer_text is None:
        return False
    return bool(VERIFIERS[name](answer_text, example))
