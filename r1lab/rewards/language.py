"""Language consistency (DeepSeek-R1 §2.3.2): the share of chain-of-thought words in the target language.

R1 added it to the reasoning-RL reward because R1-Zero's chains of thought mixed Chinese and English; it costs a
little accuracy and buys readability. Two kinds of language:

- word lists: the tiny corpus's two vocabularies for the same reasoning words (``REASONING_WORDS`` of the arithmetic
  task: "en" sum/then/so, "es" suma/luego/asi). Only words of some list count; numbers and unknown words do not.
- scripts, for real text: "latin" (ASCII-letter words) and "cjk" (each CJK character is one word), the rule R1
  needed for Chinese/English mixing.

The target is ``example["language"]`` when present, else ``DEFAULT_LANGUAGE``.
"""

from __future__ import annotations

import re

from r1lab.rewards.registry import register_reward
from r1lab.tasks.arithmetic import REASONING_WORDS

DEFAULT_LANGUAGE = "en"
WORD_LISTS: dict[str, frozenset[str]] = {name: frozenset(words) for name, words in REASONING_WORDS.items()}
_SCRIPT_WORD = {"latin": re.compile(r"[A-Za-z]+"), "cjk": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}
_ANY_SCRIPT_WORD = re.compile(r"[A-Za-z]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def think_text(completion: str) -> str | None:
    """The content of all <think>…</think> blocks joined, None when there is none."""
    blocks = _THINK.findall(completion)
    return " ".join(blocks) if blocks else None


def language_share(text: str, language: str) -> float | None:
    """Share of the words of ``text`` that are in ``language``; None when ``text`` has no word that counts."""
    if language in WORD_LISTS:
        known = frozenset().union(*WORD_LISTS.values())
        words = [w.lower() for w in re.findall(r"[A-Za-z]+", text) if w.lower() in known]
        in_target = sum(word in WORD_LISTS[language] for word in words)
    elif language in _SCRIPT_WORD:
        words = _ANY_SCRIPT_WORD.findall(text)
        in_target = sum(bool(_SCRIPT_WORD[language].fullmatch(word)) for word in words)
    else:
        raise ValueError(f"unknown language {language!r}; word lists: {', '.join(WORD_LISTS)}; "
                         f"scripts: {', '.join(_SCRIPT_WORD)}")
    return in_target / len(words) if words else None


@register_reward("language_consistency")
def language_consistency_reward(completion: str, example: dict) -> float | None:
    """Share of chain-of-thought words in ``example["language"]`` (default "en"); None without a think block or
    without words that count."""
    thought = think_text(completion)
    if thought is None:
        return None
    return language_share(thought, example.get("language") or DEFAULT_LANGUAGE)


@register_reward("language_consistency_latin")
def latin_consistency_reward(completion: str, example: dict) -> float | None:
    """Share of chain-of-thought words in Latin script (the rule R1 needed against Chinese/English mixing), whatever
    the example's language; None without a think block or without words."""
    thought = think_text(completion)
    return None if thought is None else language_share(thought, "latin")
