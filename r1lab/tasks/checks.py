"""Reading the self-checks in Countdown completions: pure functions, no model.

A completion's reasoning is read word by word:

- a candidate is a word ``EXPR=VALUE`` ("3*5+7=22"), or ``EXPR=...=VALUE`` evaluated one operation at a time
  ("3*5+7=15+7=22"): the first expression is the candidate, the last number the value it claims;
- right after a candidate, a word ``A-B=D`` whose A is the claimed value or whose B is the target is its written
  difference to the target ("22-22=0"), not a new candidate;
- a word "ok" or "no" marks the latest unmarked candidate: that candidate is a check.

Both Countdown corpora are read this way ("3*5+7=22 ok" in `countdown`, with the difference in `countdown_checks`).
A check is a real hit when its expression passes the Countdown verifier (the given numbers, each once, reaching the
target); its mark is correct when "ok" goes with a real hit and "no" with a real miss.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple

from r1lab.tasks.verifiers import extract_answer, verify
from r1lab.tasks.verifiers_countdown import countdown_verifier, evaluate_countdown_expression

_CANDIDATE = re.compile(r"^([0-9+\-*/()]*[0-9)])(?:=[0-9+\-*/()]*[0-9)])*=(-?\d+(?:/\d+)?)$")
_DIFFERENCE = re.compile(r"^(-?\d+)-(-?\d+)=(-?\d+)$")
_MARKS = ("ok", "no")
CHECK_TASKS = ("countdown", "countdown_checks")  # example["task"] values whose completions are read for checks


class Check(NamedTuple):
    expression: str
    claimed: str  # the value written after "=" (text, as the model wrote it)
    value: Fraction | None  # the expression's true value (None: not a valid expression)
    mark: str  # "ok" or "no"
    mark_is_correct: bool
    is_real_hit: bool


class _Candidate:
    __slots__ = ("expression", "claimed", "difference", "mark")

    def __init__(self, expression: str, claimed: str):
        self.expression, self.claimed, self.difference, self.mark = expression, claimed, None, None


def reasoning_text(completion: str) -> str:
    """The part of a completion that holds the reasoning: inside <think>...</think>, else before <answer>."""
    start = completion.find("<think>")
    text = completion[start + len("<think>"):] if start >= 0 else completion
    for end_tag in ("</think>", "<answer>"):
        end = text.find(end_tag)
        if end >= 0:
            text = text[:end]
    return text


def _candidates(completion: str, example: dict) -> list[_Candidate]:
    target = str(example["target"])
    found: list[_Candidate] = []
    for word in reasoning_text(completion).split():
        word = word.strip(".,;:")
        last = found[-1] if found else None
        if word in _MARKS:
            if last is not None and last.mark is None:
                last.mark = word
            continue
        difference = _DIFFERENCE.match(word)
        if (difference and last is not None and last.mark is None and last.difference is None
                and (difference.group(1) == last.claimed or difference.group(2) == target)):
            last.difference = word
            continue
        candidate = _CANDIDATE.match(word)
        if candidate and any(op in candidate.group(1)[1:] for op in "+-*/"):
            found.append(_Candidate(candidate.group(1), candidate.group(2)))
    return found


def _true_value(expression: str) -> Fraction | None:
    try:
        return evaluate_countdown_expression(expression)[0]
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def parse_checks(completion: str, example: dict) -> list[Check]:
    """Every marked candidate in the completion's reasoning, in order (see the module docstring)."""
    checks = []
    for c in _candidates(completion, example):
        if c.mark is None:
            continue
        hit = countdown_verifier(c.expression, example)
        checks.append(Check(c.expression, c.claimed, _true_value(c.expression), c.mark, (c.mark == "ok") == hit, hit))
    return checks


def count_revisions(completion: str, example: dict) -> int:
    """New candidates written after a candidate marked "no"."""
    marks = [c.mark for c in _candidates(completion, example)]
    return sum(1 for before in marks[:-1] if before == "no")


def summarize_checks(completions: list[str], examples: list[dict], correct: list[bool] | None = None) -> dict:
    """Check counts over completions (``examples`` aligned with them).

    checks_per_completion, revisions_per_completion; ok_marks / no_marks and ok_precision (share of "ok" marks on
    real hits) / no_precision (share of "no" marks on real misses), None when there is no such mark; with
    ``correct`` (one flag per completion), accuracy_by_checks: {n_checks: {"pass_rate", "count"}}.
    """
    if len(completions) != len(examples) or (correct is not None and len(correct) != len(completions)):
        raise ValueError("completions, examples (and correct) must have the same length")
    if not completions:
        raise ValueError("no completions to summarize")
    per_completion = [parse_checks(c, e) for c, e in zip(completions, examples)]
    revisions = [count_revisions(c, e) for c, e in zip(completions, examples)]
    ok = [check for checks in per_completion for check in checks if check.mark == "ok"]
    no = [check for checks in per_completion for check in checks if check.mark == "no"]
    summary = {
        "checks_per_completion": sum(map(len, per_completion)) / len(completions),
        "revisions_per_completion": sum(revisions) / len(completions),
        "ok_marks": len(ok),
        "no_marks": len(no),
        "ok_precision": sum(c.is_real_hit for c in ok) / len(ok) if ok else None,
        "no_precision": sum(not c.is_real_hit for c in no) / len(no) if no else None,
    }
    if correct is not None:
        buckets: dict[int, list[bool]] = {}
        for checks, is_correct in zip(per_completion, correct):
            buckets.setdefault(len(checks), []).append(bool(is_correct))
        summary["accuracy_by_checks"] = {n: {"pass_rate": sum(v) / len(v), "count": len(v)}
                                         for n, v in sorted(buckets.items())}
    return summary


def check_metrics(examples: list[dict], responses: list[str]) -> dict[str, float]:
    """The Countdown tasks' metrics (``task.metrics``): self-checking in the responses of check-task examples.

    Only examples whose ``"task"`` is in ``CHECK_TASKS`` count; empty when there is none. Keys:
    checks/per_completion, checks/revisions_per_completion, checks/ok_precision and checks/no_precision (only when
    such marks exist), accuracy/by_checks/{0,1,2,3+} (the pass rate of the completions with that many checks, only
    for buckets that have completions; correct: ``verify(extract_answer(response), example)``).
    """
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses; they must pair up")
    index = [i for i, example in enumerate(examples) if example.get("task") in CHECK_TASKS]
    if not index:
        return {}
    examples = [examples[i] for i in index]
    responses = [responses[i] for i in index]
    correct = [bool(verify(extract_answer(response), example)) for response, example in zip(responses, examples)]
    summary = summarize_checks(responses, examples, correct)
    metrics = {"checks/per_completion": summary["checks_per_completion"],
               "checks/revisions_per_completion": summary["revisions_per_completion"]}
    for key in ("ok_precision", "no_precision"):
        if summary[key] is not None:
            metrics[f"checks/{key}"] = summary[key]
    buckets: dict[str, list[int]] = {}  # "0", "1", "2", "3+" -> [correct, count]
    for n, entry in summary["accuracy_by_checks"].items():
        bucket = buckets.setdefault(str(n) if n < 3 else "3+", [0, 0])
        bucket[0] += round(entry["pass_rate"] * entry["count"])
        bucket[1] += entry["count"]
    for name, (hits, count) in buckets.items():
        metrics[f"accuracy/by_checks/{name}"] = hits / count
    return metrics
