"""Supervised and preference data from JSON Lines files; every problem is reported as "file:line: what".

SFT rows (``kind: sft``):
    {"prompt": "...", "completion": "..."}
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}  (chat template)
Preference rows (``kind: reward_model``, ``kind: dpo``):
    {"prompt": "...", "chosen": "...", "rejected": "..."}
Other fields (the provenance a rejection sampler writes, for example) are kept and ignored by the trainers.

The held-out split hashes the prompt (``r1lab.tasks.splits.split_of``), so every row of one prompt (several sampled
completions of it) lands on the same side and the eval loss never sees a training prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

# DataFileError and read_jsonl live in the low-level r1lab.jsonl_files (tasks read files too); imported from here
# as well by the trainers and tests.
from r1lab.jsonl_files import DataFileError, read_jsonl
from r1lab.tasks.splits import split_of


def _text_field(where: str, row: dict, name: str, hint: str) -> str:
    if name not in row:
        keys = ", ".join(sorted(row)) or "none"
        raise DataFileError(f"{where}: row has no {name!r} field (keys: {keys}); {hint}")
    value = row[name]
    if not isinstance(value, str):
        raise DataFileError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value


def _messages(where: str, messages) -> list[dict]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataFileError(f"{where}: 'messages' must be a list of at least two messages (the prompt turns, then "
                            f"the assistant's answer)")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataFileError(f"{where}: messages[{i}] must be an object with 'role' and 'content' strings")
    if messages[-1]["role"] != "assistant":
        raise DataFileError(f"{where}: the last message must have role 'assistant' (the completion that is "
                            f"learned), got {messages[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


SFT_HINT = "SFT rows need 'prompt' and 'completion' strings, or 'messages' with template.kind: chat"
PAIR_HINT = "preference rows need 'prompt', 'chosen' and 'rejected' strings"


def read_sft_examples(path: str | Path, *, chat: bool = False) -> list[dict]:
    """SFT rows as ``{"prompt", "completion", "where"}`` or, for chat rows, ``{"messages", "where"}``.

    ``chat``: the run's template is the tokenizer's chat template; only then are ``messages`` rows accepted.
    """
    examples = []
    for where, row in read_jsonl(path):
        if "messages" in row:
            if not chat:
                raise DataFileError(f"{where}: 'messages' rows need template.kind: chat (a chat model); with the "
                                    f"r1_zero or plain template give 'prompt' and 'completion'")
            examples.append({"messages": _messages(where, row["messages"]), "where": where})
        else:
            examples.append({"prompt": _text_field(where, row, "prompt", SFT_HINT),
                             "completion": _text_field(where, row, "completion", SFT_HINT), "where": where})
    return examples


def read_preference_pairs(path: str | Path) -> list[dict]:
    """Preference rows as ``{"prompt", "chosen", "rejected", "where"}``."""
    return [{name: _text_field(where, row, name, PAIR_HINT) for name in ("prompt", "chosen", "rejected")}
            | {"where": where} for where, row in read_jsonl(path)]


def prompt_key(example: dict) -> str:
    """What decides an example's split: its prompt (for chat rows, every turn before the answer)."""
    if "messages" in example:
        return json.dumps(example["messages"][:-1], sort_keys=True)
    return example["prompt"]


def split_held_out(examples: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a stable share ``fraction`` of prompts is held out (0: none)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(examples), []
    train, held_out = [], []
    for example in examples:
        (held_out if split_of(prompt_key(example), fraction) == "test" else train).append(example)
    if not train:
        raise DataFileError(f"eval_fraction={fraction} held out every prompt of the data; lower it")
    return train, held_out
