"""Rule rewards of DeepSeek-R1 (arXiv 2501.12948 §2.2.2): answer accuracy and the think/answer format.

Completions are whole assistant responses; a `<think>` pre-filled in the prompt has been prepended by the trainer.
"""

from __future__ import annotations

import re

from r1lab.rewards.registry import register_reward
# extract_answer belongs to the tasks (their metrics read answers too); imported from here as well.
from r1lab.tasks.verifiers import ANSWER_CLOSE, ANSWER_OPEN, SCORED_WITHOUT_REFERENCE, extract_answer, verify

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Block contents may not contain any of the four tags, so "exactly one think and one answer block" holds.
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)*"
_STRICT_FORMAT = re.compile(rf"\s*<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>\s*", re.DOTALL)


@register_reward("accuracy")
def accuracy_reward(completion: str, example: dict) -> float | None:
    """1.0 when the response's answer passes the example's verifier, else 0.0. The answer is the last <answer>
    block, else the last \\boxed{…}, unless the example's answer_format is "tags" (``extract_answer``). None
    without a reference, except for verifiers that judge answers on their own (reasoning-gym's scorers)."""
    if example.get("answer") is None and example.get("verifier") not in SCORED_WITHOUT_REFERENCE:
        return None
    return 1.0 if verify(extract_answer(completion, example), example) else 0.0


@register_reward("format")
def format_reward(completion: str, example: dict) -> float:
    """1.0 iff the completion is exactly <think>…</think> then <answer>…</answer>, whitespace around only.

    An empty think block is well-formed (1.0); guarding against that collapse is the trainer's job.
    """
    return 1.0 if _STRICT_FORMAT.fullmatch(completion) else 0.0


@register_reward("format_soft")
def soft_format_reward(completion: str, example: dict) -> float:
    """0.25 for each of the four tags that appears exactly once and after the tags credited before it."""
    score, last_position = 0.0, -1
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        position = completion.find(tag)
        if completion.count(tag) == 1 and position > last_position:
            score += 0.25
            last_position = position
    return score
