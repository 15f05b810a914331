"""The tags, the R1-Zero template's text and the tiny tokenizer's alphabet: plain constants and checks that need
no torch (the templates and the recipe checks use them before any model loads)."""

from __future__ import annotations

from r1lab.config import ConfigError

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"

# The R1-Zero template (DeepSeek-R1 paper, table 1), split around the user prompt.
R1_ZERO_PREFIX = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: "
)
R1_ZERO_SUFFIX = ". Assistant:"

# Characters the tiny tokenizer knows: printable ASCII and newline (the synthetic tasks need no more).
TINY_ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]


class UnknownCharactersError(ConfigError):
    """Text holds characters the tiny model's tokenizer has no token for; the message names them and the text."""


def is_tiny_tokenizer(tokenizer) -> bool:
    return bool(getattr(tokenizer, "_r1lab_tiny", False))


def known_characters(tokenizer) -> frozenset[str]:
    """The single characters a tokenizer has tokens for (for the tiny one: ``TINY_ALPHABET``), cached on it."""
    known = getattr(tokenizer, "_r1lab_known_characters", None)
    if known is None:
        known = frozenset(token for token in tokenizer.get_vocab() if len(token) == 1)
        tokenizer._r1lab_known_characters = known
    return known


def _describe_characters(characters) -> str:
    return ", ".join(f"{c!r} (U+{ord(c):04X})" for c in sorted(characters))


def check_tiny_characters(tokenizer, text: str, what: str = "text") -> None:
    """Raise ``UnknownCharactersError`` when ``text`` has characters the tiny tokenizer cannot encode (tokenizers
    would fail with "WordLevel error: Missing [UNK] token"); nothing to check for any other tokenizer (real
    tokenizers fall back to bytes). ``what`` says what the text is, e.g. "data.jsonl:3: the prompt"."""
    if not is_tiny_tokenizer(tokenizer):
        return
    unknown = set(text) - known_characters(tokenizer)
    if unknown:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UnknownCharactersError(
            f"{what} has characters the tiny model's tokenizer does not know: {_describe_characters(unknown)} "
            f"(in {shown!r}). The tiny model only knows printable ASCII and newline: write the data in ASCII, or "
            f"train a real model (set model: to a Hugging Face id)")
