"""Rejection sampling (DeepSeek-R1 §2.3.3): N samples per prompt from a checkpoint; the correct, readable ones kept.

Correct: the rule verifier of the example (``r1lab.tasks.verify`` on the answer block), or a ``judge`` callable where
no rule exists (R1 used DeepSeek-V3 as the judge). Readable: no mixed-language chain of thought, no overlong
paragraph, no code block (``ReadabilityFilters``); then duplicates are dropped. Each kept row records where it came
from, so a data set can be traced back to the checkpoint, stage, sample and temperature that produced it.

    rows, stats = rejection_sample(generator, task, template, examples, n=4, params=SamplingParams(temperature=0.7),
                                   provenance={"checkpoint": path, "stage": "reasoning_rl"})
    write_jsonl(rows, "data.jsonl")   # {prompt, completion, answer, source}: an SFT data set
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from r1lab.data.filters import deduplicate, has_code_block, has_overlong_paragraph, is_mixed_language
from r1lab.engine import SamplingParams
from r1lab.generation import Generator, sample_and_score
from r1lab.rewards import extract_answer
from r1lab.tasks import verify
from r1lab.stage_configs import ReadabilityFilters

Judge = Callable[[str, str, dict], bool]  # (prompt, completion, example) -> correct?


def readability_problem(completion: str, filters: ReadabilityFilters) -> str | None:
    """The name of the first readability filter that drops ``completion``, None when it passes them all."""
    if filters.min_language_share > 0 and is_mixed_language(completion, filters.language, filters.min_language_share):
        return "mixed_language"
    if filters.max_paragraph_words > 0 and has_overlong_paragraph(completion, filters.max_paragraph_words):
        return "overlong_paragraph"
    if filters.drop_code_blocks and has_code_block(completion):
        return "code_block"
    return None


def rule_judge(prompt: str, completion: str, example: dict) -> bool:
    """Correct when the last answer block passes the example's verifier."""
    return verify(extract_answer(completion), example)


def rejection_sample(generator: Generator, task, template, examples: list[dict], n: int, params: SamplingParams, *,
                     judge: Judge | None = None, filters: ReadabilityFilters | None = None,
                     provenance: dict | None = None, render: Callable[[str], str] | None = None,
                     batch_prompts: int = 64) -> tuple[list[dict], dict]:
    """Sample ``n`` completions per example and keep the correct, readable, distinct ones.

    ``judge``: decides correctness (default: the rule verifier). ``render``: prompt text -> model input (default:
    ``template.render``; few-shot prompting passes its own). ``provenance`` goes into each row's ``source``.
    Returns the rows ``{prompt, completion, answer, source}`` and stats: ``sampled == correct + incorrect`` and
    ``correct == kept + sum(dropped.values())``.
    """
    judge = judge or rule_judge
    filters = filters or ReadabilityFilters()
    render = render or template.render
    dropped = {"mixed_language": 0, "overlong_paragraph": 0, "code_block": 0, "duplicate": 0}
    sampled = correct = 0
    rows = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start:start + batch_prompts]
        offset = start * n  # the progress this batch reports counts from the samples before it
        batch_params = dataclasses.replace(  # a sampling stream per batch
            params, seed=params.seed + start,
            progress=params.progress and (lambda done, _, offset=offset: params.report(offset + done,
                                                                                         len(examples) * n)))
        samples = sample_and_score(generator, template, chunk, n, batch_params, render=render,
                                   split_over_ranks=True)
        for position, (example, completion) in enumerate(zip(samples.examples, samples.responses)):
            sampled += 1
            if not judge(example["prompt"], completion, example):
                continue
            correct += 1
            problem = readability_problem(completion, filters)
            if problem:
                dropped[problem] += 1
                continue
            rows.append({"prompt": example["prompt"], "completion": completion, "answer": example.get("answer"),
                         "source": {**(provenance or {}), "sample_index": position % n,
                                    "temperature": params.temperature}})
    if filters.deduplicate:
        rows, dropped["duplicate"] = deduplicate(rows)
    stats = {"prompts": len(examples), "samples_per_prompt": n, "sampled": sampled, "correct": correct,
             "incorrect": sampled - correct, "kept": len(rows), "dropped": dropped}
    return rows, stats
