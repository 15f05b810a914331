"""Non-reasoning "domain" rows for SFT data sets (DeepSeek-R1 §2.3.3), from the `domain` task (r1lab.tasks.domain).

    domain_examples(2, seed=0)
    # [{"prompt": "uppercase: red fox", "completion": "<think>each letter in capitals</think><answer>RED FOX</answer>",
    #   "answer": "RED FOX", "source": {"generator": "domain", "kind": "uppercase"}}, ...]
"""

from __future__ import annotations

from r1lab.tasks.domain import DOMAIN_KINDS, DomainTask


def domain_examples(n: int, seed: int = 0, kinds: tuple[str, ...] = tuple(DOMAIN_KINDS)) -> list[dict]:
    """``n`` training-split rows ``{prompt, completion, answer, source}`` written without a verifier or a model."""
    task = DomainTask(kinds=tuple(kinds))
    return [{"prompt": ex["prompt"], "completion": task.corpus_document(ex, None), "answer": ex["answer"],
             "source": {"generator": "domain", "kind": ex["kind"]}} for ex in task.examples("train", n, seed=seed)]
