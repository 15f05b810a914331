"""Answer checkers for real datasets: math answers through math-verify, and multiple choice.

math: the reference and the answer are parsed into sympy objects by math-verify (Hugging Face; the checker of
open-r1) and compared: "\\frac{1}{2}", "0.5" and "1/2" agree, so do "\\{1,2\\}" and "\\{2, 1\\}", "(0,1]" and "(0, 1]",
"x = 3" and "3", "2\\sqrt{2}" and "\\sqrt{8}". The answer may be boxed (``\\boxed{...}``), in $...$, or bare LaTeX
(the content of the answer tags). Needs ``pip install r1lab[math]``.

multiple_choice: the reference is a letter A-J; the answer counts when it names that letter and no other: "B",
"(B)", "B) 42", "B.", "**B**", "\\boxed{B}", "The answer is B", "Answer: (b)", or the text of choice B when the
example lists its ``choices``.
"""

from __future__ import annotations

import functools
import re
import threading

_LETTERS = "ABCDEFGHIJ"


def _math_verify():
    try:
        import math_verify
    except ImportError as error:
        raise ImportError("the 'math' verifier needs math-verify: pip install 'r1lab[math]'") from error
    return math_verify


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may set; elsewhere run without a timeout.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    """Parse a math answer: boxed or $-delimited text as it is, anything else as LaTeX first, then as plain text."""
    mv = _math_verify()
    timeout = _timeout()
    if "\\boxed" in text or "$" in text or "\\(" in text or "\\[" in text:
        return tuple(mv.parse(text, parsing_timeout=timeout))
    return tuple(mv.parse(f"${text}$", parsing_timeout=timeout) or mv.parse(text, parsing_timeout=timeout))


def math_verifier(answer_text: str, example: dict) -> bool:
    """The answer is mathematically equal to the reference (math-verify); an unreadable answer is wrong."""
    gold = _parse(str(example["answer"]).strip())
    if not gold:
        raise ValueError(f"math-verify cannot read the reference answer {example['answer']!r}")
    answer = _parse(answer_text.strip()) if answer_text.strip() else ()
    if not answer:
        return False
    return bool(_math_verify().verify(list(gold), list(answer), timeout_seconds=_timeout()))


# Where a letter may stand: alone with optional brackets / punctuation, at the start before ")" "." ":" "]",
# or after a phrase such as "the answer is", "answer:", "option", "choice".
_ALONE = re.compile(r"\(?\[?([A-Ja-j])\]?\)?[.:]?")
_LEADING = re.compile(r"(?:\(([A-J])\)|\[([A-J])\]|([A-J])[).:\]])(?:\s|$)")
_PHRASE = re.compile(r"(?i:answer\s*(?:is|:)?|option|choice)\s*:?\s*"
                     r"(?:\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-J])\b)")  # lower case only in brackets: "is a prime"
_DECORATION = re.compile(r"\\boxed\{([^{}]*)\}|\\text(?:bf)?\{([^{}]*)\}|\*\*|\$|`")


def _clean(text: str) -> str:
    text = _DECORATION.sub(lambda m: m.group(1) or m.group(2) or "", text)
    return " ".join(text.split())


def choice_letter(text: str, choices: list[str] | None = None) -> str | None:
    """The one letter (A-J) that ``text`` names as its choice, None when it names none or several."""
    text = _clean(text)
    if not text:
        return None
    match = _ALONE.fullmatch(text)
    if match:
        return match.group(1).upper()
    match = _LEADING.match(text)
    if match:
        return next(g for g in match.groups() if g)
    found = {next(g for g in m.groups() if g).upper() for m in _PHRASE.finditer(text)}
    if len(found) == 1:
        return found.pop()
    if choices and not found:  # the text of a choice, e.g. "Paris" for "B) Paris"
        normal = text.lower().rstrip(".")
        hits = [i for i, choice in enumerate(choices) if _clean(str(choice)).lower().rstrip(".") == normal]
        if len(hits) == 1 and hits[0] < len(_LETTERS):
            return _LETTERS[hits[0]]
    return None


def multiple_choice_verifier(answer_text: str, example: dict) -> bool:
    """The answer names the reference letter and no other."""
    gold = choice_letter(str(example["answer"]))
    if gold is None:
        raise ValueError(f"multiple-choice reference {example['answer']!r} is not a letter A-J")
    return choice_letter(answer_text, example.get("choices")) == gold
