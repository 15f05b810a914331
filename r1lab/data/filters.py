"""Pass-rate filtering (as in open-r1; an offline cousin of DAPO's dynamic sampling, arXiv 2503.14476): keep the
prompts that the current model solves sometimes.

A prompt that the model always solves, or never, gives a GRPO group whose rewards are all equal: zero advantage, no
gradient, wasted rollout time. Sampling k completions per prompt first and keeping those whose pass rate lies
strictly between ``low`` and ``high`` (0.1 and 0.9 by default) spends the RL budget where there is signal.

    kept, stats = filter_by_pass_rate(generator, task, template, k=8, max_prompts=2000)
    write_jsonl(kept, "data/filtered.jsonl")   # then train on it: task {name: dataset, options: {path: ...}}
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from statistics import fmean

from r1lab.engine import SamplingParams
from r1lab.generation import Generator, sample_and_score
from r1lab.rewards.language import language_consistency_reward


def pass_rates(generator: Generator, template, examples: list[dict], k: int, params: SamplingParams,
               batch_prompts: int = 64) -> list[float]:
    """Share of k sampled completions per example whose answer passes the example's verifier."""
    rates = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start:start + batch_prompts]
        batch_params = dataclasses.replace(params, seed=params.seed + start)  # a sampling stream per batch
        samples = sample_and_score(generator, template, chunk, k, batch_params, verify_answers=True,
                                   split_over_ranks=True)
        rates += [fmean(group) for group in samples.groups(samples.correct)]
    return rates


def filter_by_pass_rate(generator: Generator, task, template, examples: list[dict] | None = None, k: int = 8,
                        low: float = 0.1, high: float = 0.9, *, max_prompts: int = 0, split: str = "train",
                        temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                        seed: int = 0) -> tuple[list[dict], dict]:
    """The examples whose pass rate over ``k`` samples is strictly between ``low`` and ``high``, and statistics.

    ``examples``: the prompts to filter (default: ``max_prompts`` (or 256) drawn from ``task``'s ``split``).
    Each kept example gets its ``"pass_rate"``. Sample at the temperature that training will use.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if examples is None:
        examples = task.examples(split, max_prompts or 256, seed=seed)
    elif max_prompts:
        examples = examples[:max_prompts]
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    rates = pass_rates(generator, template, examples, k, params)
    kept = [{**example, "pass_rate": rate} for example, rate in zip(examples, rates) if low < rate < high]
    stats = {
        "prompts": len(examples),
        "kept": len(kept),
        "too_easy": sum(rate >= high for rate in rates),  # solved (nearly) always: no signal
        "too_hard": sum(rate <= low for rate in rates),  # solved (nearly) never: no signal
        "pass_rate_mean": fmean(rates) if rates else 0.0,
        "k": k, "low": low, "high": high,
    }
    return kept, stats


def write_jsonl(examples: list[dict], path: str | Path) -> Path:
    """Write examples as JSON Lines (a file that the ``dataset`` and ``jsonl`` tasks read back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        for example in examples:
            file.write(json.dumps(example, default=str) + "\n")
    return path


# --- readability filters for rejection sampling and cold-start data (DeepSeek-R1 §2.3.1, §2.3.3) ---------------
# R1 drops chains of thought "with mixed languages, long paragraphs, and code blocks" from its SFT data.

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def is_mixed_language(completion: str, language: str = "en", min_share: float = 0.95) -> bool:
    """True when the chain of thought's share of ``language`` words is below ``min_share`` (no words: False)."""
    share = language_consistency_reward(completion, {"language": language})
    return share is not None and share < min_share


def longest_paragraph_words(text: str) -> int:
    """Words in the longest paragraph (paragraphs are separated by blank lines)."""
    return max((len(paragraph.split()) for paragraph in _PARAGRAPH_BREAK.split(text)), default=0)


def has_overlong_paragraph(text: str, max_words: int) -> bool:
    return longest_paragraph_words(text) > max_words


def has_code_block(text: str) -> bool:
    """A Markdown code fence anywhere in the text."""
    return "```" in text


def normalise_text(text: str) -> str:
    """Lower case, whitespace runs collapsed: what counts as "the same text" for deduplication."""
    return " ".join(text.lower().split())


def deduplicate(rows: list[dict], keys: tuple[str, ...] = ("prompt", "completion")) -> tuple[list[dict], int]:
    """The rows whose normalised ``keys`` were not seen before (first one kept), and how many were dropped."""
    seen, kept = set(), []
    for row in rows:
        key = tuple(normalise_text(str(row.get(name, ""))) for name in keys)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)
