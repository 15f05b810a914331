"""Non-reasoning "domain" prompts (DeepSeek-R1 §2.3.3 adds ~200k writing, QA and translation samples to its SFT set).

Simple writing and formatting tasks whose answer the generator knows: "uppercase: red fox" -> "RED FOX",
"reverse the words: red fox" -> "fox red", "count the letters in: red fox" -> "6". The answer is known, so rows need
no verifier or model to be written (``completion``: a brief think block then the answer), and the task can be
evaluated exactly; in all-scenario RL a recipe scores these prompts with a trained reward model instead
(``rewards_by_task: {domain: {"reward_model:<stage>": 1.0}}``), as R1 did for general data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from r1lab.tasks.splits import check_split, check_test_fraction, draw_examples, split_rng

WORDS = ("red", "fox", "blue", "sky", "cat", "sun", "tree", "rain", "moon", "bird", "road", "fish", "milk", "star")


def _uppercase(words: list[str]) -> tuple[str, str, str]:
    text = " ".join(words)
    return f"uppercase: {text}", "each letter in capitals", text.upper()


def _reverse_words(words: list[str]) -> tuple[str, str, str]:
    return f"reverse the words: {' '.join(words)}", "last word first", " ".join(reversed(words))


def _count_letters(words: list[str]) -> tuple[str, str, str]:
    text = " ".join(words)
    counts = " ".join(f"{word}={len(word)}" for word in words)
    return f"count the letters in: {text}", f"{counts}, spaces do not count", str(sum(map(len, words)))


DOMAIN_KINDS = {"uppercase": _uppercase, "reverse_words": _reverse_words, "count_letters": _count_letters}


def corrupted_answer(example: dict, rng: random.Random) -> str:
    """A plausible wrong answer for a domain example (the rejected side of a synthetic preference pair)."""
    answer, kind = example["answer"], example["kind"]
    words = answer.split()
    if kind == "count_letters":
        return str(int(answer) + rng.choice((-2, -1, 1, 2)))
    if kind == "uppercase":
        i = rng.randrange(len(words))
        return " ".join(w.lower() if j == i else w for j, w in enumerate(words))
    in_prompt_order = " ".join(reversed(words))  # reverse_words: not reversed, or one word dropped
    return in_prompt_order if in_prompt_order != answer and rng.random() < 0.5 else " ".join(words[:-1])


@dataclass(frozen=True)
class DomainTask:
    """Writing and formatting prompts of `kinds` with 2–4 words from a fixed list; exact-match verifier."""

    kinds: tuple[str, ...] = tuple(DOMAIN_KINDS)  # which of uppercase, reverse_words, count_letters
    test_fraction: float = 0.1  # share of the problem space held out for the test split

    name: ClassVar[str] = "domain"
    styles: ClassVar[tuple[str, ...]] = ("answer",)

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        unknown = [kind for kind in kinds if kind not in DOMAIN_KINDS]
        if not kinds or unknown:
            raise ValueError(f"unknown domain kind {unknown[0] if unknown else None!r}; "
                             f"choose from {', '.join(DOMAIN_KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        check_test_fraction(self.test_fraction)

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        check_split(split)

        def draw(rng: random.Random) -> dict:
            kind = rng.choice(self.kinds)
            prompt, thought, answer = DOMAIN_KINDS[kind]([rng.choice(WORDS) for _ in range(rng.randint(2, 4))])
            return {"prompt": prompt, "answer": answer, "verifier": "exact", "task": self.name, "kind": kind,
                    "thought": thought}

        return draw_examples(draw, lambda ex: ex["prompt"], split, n, split_rng(self.name, split, seed),
                             self.test_fraction)

    def corpus_document(self, example: dict, rng: random.Random, style: str = "answer") -> str:
        """The reference response: a brief think block, then the answer."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name!r}; styles: {', '.join(self.styles)}")
        return f"<think>{example['thought']}</think><answer>{example['answer']}</answer>"
