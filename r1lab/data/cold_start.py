"""Cold-start data (DeepSeek-R1 §2.3.1): a few readable long-CoT examples before reasoning RL.

Two sources, both kept only when correct (and, for model outputs, readable; see r1lab.data.rejection):
- R1-Zero outputs, rewritten in the R1 output format "reasoning, then a summary": the reasoning, a one-sentence
  summary closing the think block, then the answer block (``rewrite_with_summary``).
- few-shot prompting of a base model with k worked long-CoT examples before the question (``few_shot_long_cot``).

Deviation: R1 also prompted for reflection and verification and had people clean the outputs; here the summary is
a template sentence.
"""

from __future__ import annotations

import random

from r1lab.data.rejection import ReadabilityFilters, rejection_sample
from r1lab.engine import SamplingParams
from r1lab.rewards import extract_answer
from r1lab.rewards.language import think_text


def rewrite_with_summary(completion: str) -> str | None:
    """``<think>R In short, the answer is A.</think><answer>A</answer>``; None without a think or answer block.

    R1's readable format is "reasoning, then a summary". The summary closes the think block rather than standing
    between the blocks, so that the rows still earn the strict ``format`` reward that the RL stages after the cold
    start use (a summary between the blocks would teach a format that reward scores 0).
    """
    thought, answer = think_text(completion), extract_answer(completion)
    if thought is None or answer is None:
        return None
    return f"<think>{thought.strip()} In short, the answer is {answer}.</think><answer>{answer}</answer>"


def cold_start_from_outputs(rows: list[dict]) -> list[dict]:
    """Rejection-sampled R1-Zero rows (already correct and readable) rewritten as reasoning then a summary."""
    rewritten = []
    for row in rows:
        completion = rewrite_with_summary(row["completion"])
        if completion is not None:
            rewritten.append({**row, "completion": completion,
                              "source": {**row.get("source", {}), "rewritten": "reasoning_then_summary"}})
    return rewritten


def few_shot_prompt(template, shots: list[tuple[str, str]], prompt: str) -> str:
    """k solved examples (prompt and full response each), one per line, then the question to answer."""
    return "\n".join([template.corpus_text(p, response) for p, response in shots] + [template.render(prompt)])


def few_shot_long_cot(generator, task, template, examples: list[dict], n: int, params: SamplingParams, *,
                      k: int = 2, style: str = "worked_words", filters: ReadabilityFilters | None = None,
                      provenance: dict | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    """Few-shot long-CoT generation: the shots are the task's ``style`` worked solutions of training problems not
    in ``examples``; only correct, readable completions are kept (rows and stats as in ``rejection_sample``)."""
    rng = random.Random(seed)
    asked = {example["prompt"] for example in examples}
    pool = [e for e in task.examples("train", len(examples) + 4 * k + 8, seed=seed + 1) if e["prompt"] not in asked]
    shots = [(e["prompt"], task.corpus_document(e, rng, style)) for e in pool[:k]]
    return rejection_sample(generator, task, template, examples, n, params, filters=filters,
                            provenance={**(provenance or {}), "few_shot": k},
                            render=lambda prompt: few_shot_prompt(template, shots, prompt))
