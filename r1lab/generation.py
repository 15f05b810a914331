"""Sampling for every stage: one generator per stage, and one sample-and-score function.

RL rollouts, evaluation, rejection sampling, cold-start data, preference pairs and the self-check gate all do the
same thing: render each prompt with the template, sample k completions, put the template's prefill back in front
(the rewards see the whole response), then score or verify. ``sample_and_score`` is that one path.

A ``Generator`` wraps the engine a stage samples with. It views or owns the weights it samples with; the policy
tells it after every optimizer step that they changed (``Policy.on_update``), so an engine holding its own copy of
the weights refreshes it once per step and never from inside a trainer's loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from r1lab.dist import all_gather_objects, share, world
from r1lab.encoding import context_length, warn_if_prompts_exceed_context
from r1lab.engine import Generation, SamplingParams, make_engine
from r1lab.rewards import ScoreResult, extract_answer, score_completions
from r1lab.rewards.scoring import concat_scores
from r1lab.tasks import verify
from r1lab.stage_configs import DataSamplingConfig


class Generator:
    """Samples completions with one model's weights through a generation engine (``engine``: its name)."""

    def __init__(self, engine: str, model, tokenizer, *, dtype=None):
        """``dtype``: what to sample in when it differs from the weights' (bf16 under ``precision: bf16-mixed``)."""
        self.engine = make_engine(engine, model, tokenizer, dtype=dtype)
        self.tokenizer = tokenizer

    def weights_changed(self) -> None:
        """The policy took an optimizer step: an engine with its own copy of the weights refreshes it."""
        self.engine.sync_weights()

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        """``n`` completions per prompt text: result[i][j] is the j-th completion of prompt i."""
        return self.engine.generate(prompts, n, params)


def sampling_params(cfg: DataSamplingConfig, seed: int,
                    progress: Callable[[int, int], None] | None = None) -> SamplingParams:
    """How a data stage samples (its temperature, top-p and length) with ``seed``; ``progress(done, total)`` told as
    completions finish."""
    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=seed,
                          progress=progress)


@dataclass
class Samples:
    """k completions per example, flattened: the k samples of one example are consecutive."""

    examples: list[dict]  # (B,) the example each completion answers
    generations: list[Generation]  # (B,)
    responses: list[str]  # (B,) prefill + completion text: what the rewards and verifiers see
    group_size: int
    scores: ScoreResult | None = None  # rewards, when asked for
    answers: list[str | None] | None = None  # the answer block of each response, when verified
    correct: list[bool] | None = None  # the task's verifier on that answer, when verified

    def groups(self, values: list) -> list[list]:
        """``values`` (B,) cut into one list per example."""
        k = self.group_size
        return [values[i:i + k] for i in range(0, len(values), k)]


def sample_and_score(generator: Generator, template, examples: list[dict], n: int, params: SamplingParams, *,
                     rewards: dict[str, float] | None = None,
                     rewards_by_task: dict[str, dict[str, float]] | None = None, verify_answers: bool = False,
                     render: Callable[[str], str] | None = None, split_over_ranks: bool = False) -> Samples:
    """Render, sample ``n`` completions per example, prefill, then score with ``rewards`` (name -> weight; see
    ``r1lab.rewards.score_completions``) and/or verify each answer with the example's verifier.

    ``render``: prompt -> model input (default ``template.render``; few-shot prompting passes its own).
    ``split_over_ranks``: under torchrun every rank calls this with the same ``examples``, samples and scores its own
    contiguous part of them (numbered in the random streams by its place in the whole call, so r1lab's engine draws
    what one process would) and gets every rank's samples back, in order.
    """
    if split_over_ranks and world().distributed:
        start, stop = share(len(examples))
        part = sample_and_score(generator, template, examples[start:stop], n,
                                replace(params, first_sequence=params.first_sequence + start * n), rewards=rewards,
                                rewards_by_task=rewards_by_task, verify_answers=verify_answers, render=render)
        return concat_samples(all_gather_objects(part), n)
    if not examples:
        return Samples([], [], [], n, score_completions([], [], rewards, rewards_by_task) if rewards is not None
                       else None, [] if verify_answers else None, [] if verify_answers else None)
    render = render or template.render
    prompts = [render(example["prompt"]) for example in examples]
    params.report(0, len(prompts) * n)  # a progress line's clock starts with the call
    if isinstance(generator, Generator):  # tests pass scripted engines, which have no model
        warn_if_prompts_exceed_context(generator.tokenizer, context_length(getattr(generator.engine, "model", None)),
                                       prompts, params.max_new_tokens)
    groups = generator.generate(prompts, n, params)
    generations = [g for group in groups for g in group]
    flat_examples = [example for example in examples for _ in range(n)]
    responses = [template.prefill + g.text for g in generations]
    samples = Samples(flat_examples, generations, responses, n)
    if rewards is not None:
        samples.scores = score_completions(responses, flat_examples, rewards, rewards_by_task)
    if verify_answers:
        samples.answers = [extract_answer(response, example) for response, example in zip(responses, flat_examples)]
        samples.correct = [bool(verify(answer, example)) for answer, example in zip(samples.answers, flat_examples)]
    return samples


def concat_samples(parts: list[Samples], n: int) -> Samples:
    """Several ``Samples`` of ``n`` completions per example as one, in order."""
    def joined(name: str):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else [x for v in values for x in v]

    scores = [p.scores for p in parts]
    return Samples(joined("examples"), joined("generations"), joined("responses"), n,
                   None if any(s is None for s in scores) else concat_scores(scores), joined("answers"),
                   joined("correct"))
