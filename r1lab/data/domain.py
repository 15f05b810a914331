"""Non-reasoning "domain" data (DeepSeek-R1 §2.3.3: ~200k writing, QA, translation samples added to the SFT set).

Simple writing and formatting tasks whose answer the generator knows, so no verifier or model is needed. Rows are
in the R1 output format, a brief think block then the answer, ready for an SFT stage:

    domain_examples(2, seed=0)
    # [{"prompt": "uppercase: red fox", "completion": "<think>each letter in capitals</think><answer>RED FOX</answer>",
    #   "answer": "RED FOX", "source": {"generator": "domain", "kind": "uppercase"}}, ...]
"""

from __future__ import annotations

import random

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


def domain_examples(n: int, seed: int = 0, kinds: tuple[str, ...] = tuple(DOMAIN_KINDS)) -> list[dict]:
    """``n`` rows ``{prompt, completion, answer, source}``, kinds in turn, 2–4 random words each."""
    unknown = [kind for kind in kinds if kind not in DOMAIN_KINDS]
    if unknown:
        raise ValueError(f"unknown domain kind {unknown[0]!r}; choose from {', '.join(DOMAIN_KINDS)}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        prompt, thought, answer = DOMAIN_KINDS[kind]([rng.choice(WORDS) for _ in range(rng.randint(2, 4))])
        rows.append({"prompt": prompt, "completion": f"<think>{thought}</think><answer>{answer}</answer>",
                     "answer": answer, "source": {"generator": "domain", "kind": kind}})
    return rows
