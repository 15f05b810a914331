"""Evaluation metrics following the DeepSeek-R1 protocol.

R1 reports pass@1 as the mean correctness of k samples per problem (temperature 0.6,
top-p 0.95) rather than greedy accuracy, because greedy decoding of long reasoning
traces is prone to repetition and varies more from checkpoint to checkpoint. cons@k is
the accuracy of the majority-voted answer over the same k samples.

Everything above the "running a model" marker is a pure function of already-graded
samples, so it can be tested without a model.
"""

from __future__ import annotations

import json
from collections import Counter
from statistics import fmean
from typing import Callable

from r1lab.checkpoint import atomic_write_text
from r1lab.engine import SamplingParams
from r1lab.generation import sample_and_score
from r1lab.rewards import format_reward, language_consistency_reward
from r1lab.tasks import task_metrics


def _check_problems(correct: list[list[bool]]) -> None:
    if not correct:
        raise ValueError("no problems to score")
    if any(len(samples) == 0 for samples in correct):
        raise ValueError("every problem needs at least one sample")


def pass_at_1(correct: list[list[bool]]) -> float:
    """Mean over problems of the share of that problem's samples that are correct.

    Averaging per problem first keeps every problem's weight equal even if the
    number of samples differs between problems.
    """
    _check_problems(correct)
    return fmean(fmean(bool(c) for c in samples) for samples in correct)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so that
    no huge binomial coefficients are formed.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if c < 0:
        raise ValueError(f"c must not be negative, got {c}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of samples n={n}")
    if c > n:
        raise ValueError(f"c={c} correct is more than the number of samples n={n}")
    if n - c < k:
        # Every draw of k samples must contain a correct one.
        return 1.0
    probability_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        probability_all_wrong *= 1.0 - k / i
    return 1.0 - probability_all_wrong


def mean_pass_at_k(correct: list[list[bool]], k: int) -> float:
    """pass@k averaged over problems, each estimated from all of its samples."""
    _check_problems(correct)
    return fmean(pass_at_k(len(samples), sum(bool(c) for c in samples), k) for samples in correct)


def normalize_answer(answer: str | None) -> str | None:
    """The form answers are compared in for voting; empty answers count as missing."""
    if answer is None:
        return None
    stripped = str(answer).strip()
    return stripped or None


def majority_vote(answers: list[str | None]) -> str | None:
    """Most common normalised answer, ties going to the one seen first; None if none."""
    votes = Counter(a for a in map(normalize_answer, answers) if a is not None)
    if not votes:
        return None
    # Counter.most_common keeps first-seen order among equal counts.
    return votes.most_common(1)[0][0]


def cons_at_k(answers: list[list[str | None]], correct: list[list[bool]]) -> float:
    """Share of problems whose majority-voted answer is correct.

    The majority answer is judged by the grade of a sample that produced it, so the
    grader (which may accept equivalent forms) is not needed again here.
    """
    _check_problems(correct)
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answer lists but {len(correct)} correctness lists")
    solved = []
    for problem_answers, problem_correct in zip(answers, correct):
        if len(problem_answers) != len(problem_correct):
            raise ValueError("each problem needs one correctness flag per answer")
        winner = majority_vote(problem_answers)
        solved.append(
            winner is not None
            and any(
                bool(is_correct) and normalize_answer(answer) == winner
                for answer, is_correct in zip(problem_answers, problem_correct)
            )
        )
    return fmean(solved)


def summarize_samples(records: list[dict]) -> dict:
    """Aggregate graded samples into the numbers an evaluation reports.

    Each record: {"problem", "answer", "correct", "format", "length", "truncated"}, optionally "language" (the
    share of the chain of thought's words in the target language, None when no word counts).
    Every problem must have the same number of samples k, otherwise cons@k and
    pass@1 would not mean the same thing across problems.
    """
    if not records:
        raise ValueError("no samples to summarize")
    by_problem: dict[object, list[dict]] = {}
    for record in records:
        by_problem.setdefault(record["problem"], []).append(record)

    sample_counts = {len(samples) for samples in by_problem.values()}
    if len(sample_counts) != 1:
        raise ValueError(f"problems have different numbers of samples: {sorted(sample_counts)}")
    (k,) = sample_counts

    correct = [[bool(r["correct"]) for r in samples] for samples in by_problem.values()]
    answers = [[r["answer"] for r in samples] for samples in by_problem.values()]
    return {
        "pass@1": round(pass_at_1(correct), 4),
        "cons@k": round(cons_at_k(answers, correct), 4),
        "k": k,
        "num_problems": len(by_problem),
        "format_rate": round(fmean(bool(r["format"]) for r in records), 4),
        "length_mean": round(fmean(r["length"] for r in records), 4),
        "truncated_rate": round(fmean(bool(r["truncated"]) for r in records), 4),
        **language_summary([r.get("language") for r in records]),
    }


def language_summary(shares: list[float | None]) -> dict:
    """language_consistency: mean share of chain-of-thought words in the target language over the completions
    that have words that count; language_mixed_rate: the share of those completions with any word of another
    language. Both None when no completion has a word that counts (a task without reasoning words)."""
    counted = [share for share in shares if share is not None]
    if not counted:
        return {"language_consistency": None, "language_mixed_rate": None}
    return {"language_consistency": round(fmean(counted), 4),
            "language_mixed_rate": round(fmean(share < 1.0 for share in counted), 4)}


def reference_fields(example: dict) -> dict:
    """The reference answer a sample line shows: ``{"reference": answer}``, or for a problem without one (a
    reasoning-gym dataset such as propositional_logic, with many right answers) ``reference: null`` and a note
    saying who judged the answer, never an invented "None"."""
    if example.get("answer") is not None:
        return {"reference": example["answer"]}
    verifier = example.get("verifier", "?")
    judge = "reasoning-gym's own scorer" if verifier == "reasoning_gym" else f"the {verifier!r} verifier"
    return {"reference": None, "reference_note": f"no single reference answer: scored by {judge}"}


# --- running a model ---
# Everything below runs a model: sampling k completions per held-out problem and grading them.


def evaluate_model(generator, task, template, *, num_problems: int, k: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int, samples_path=None, split: str = "test",
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """pass@1 over k samples, cons@k, unbiased pass@k, format rate, lengths, language consistency and the task's
    own metrics (``r1lab.tasks.task_metrics``) on ``num_problems`` held-out problems. ``progress(done, total)`` is
    told as samples finish (from 0; under torchrun, this rank's part).

    ``samples_path``: where to write a JSONL line per sample (prompt, completion, reference, answer, correct; a
    problem without a reference gets ``reference: null`` and a ``reference_note``, see ``reference_fields``).
    """
    examples = task.examples(split, num_problems, seed=seed)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                            progress=progress)
    samples = sample_and_score(generator, template, examples, k, params, verify_answers=True,
                               split_over_ranks=True)  # under torchrun: each rank its part
    records, lines = [], []
    for index, (example, generation, response, answer, correct) in enumerate(zip(
            samples.examples, samples.generations, samples.responses, samples.answers, samples.correct)):
        problem = index // k
        records.append({"problem": problem, "answer": answer, "correct": correct,
                        "format": format_reward(response, example) == 1.0,
                        "length": len(generation.completion_ids), "truncated": generation.truncated,
                        "language": language_consistency_reward(response, example)})
        if samples_path is not None:
            lines.append(json.dumps({"problem": problem, "prompt": example["prompt"], "completion": response,
                                     **reference_fields(example), "answer": answer, "correct": correct}))
    if samples_path is not None:
        atomic_write_text(samples_path, "\n".join(lines) + "\n")
    summary = summarize_samples(records)
    summary.update({"temperature": temperature, "top_p": top_p})
    summary.update({key: round(value, 4) if isinstance(value, float) else value
                    for key, value in task_metrics(task, samples.examples, samples.responses).items()})
    # unbiased pass@k (1 − C(n−c, k) / C(n, k)) for k = 2, 4, 8, ... up to the number of samples, and that number
    by_problem = samples.groups(samples.correct)
    n = summary["k"]
    for size in sorted({2**i for i in range(1, n.bit_length()) if 2**i <= n} | ({n} if n > 1 else set())):
        summary[f"pass@{size}"] = round(mean_pass_at_k(by_problem, size), 4)
    return summary
