"""Sampling for every stage: one generator per stage, and one sample-and-score function.

RL rollouts, evaluation, rejection sampling, cold-start data, preference pairs and the self-check gate all do the
same thing: render each prompt with the template, sample k completions, put the template's prefill back in front
(the rewards see the whole response), then score or verify. ``sample_and_score`` is that one path.

A ``Generator`` wraps the engine a stage samples with. It views or owns the weights it samples with; the policy
tells it after every optimizer step that they changed (``Policy.on_update``), so an engine holding its own copy of
the weights refreshes it once per step and never from inside a trainer's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from r1lab.config import doc
from r1lab.engine import Generation, SamplingParams, make_engine
from r1lab.rewards import ScoreResult, extract_answer, score_completions
from r1lab.tasks import verify


class Generator:
    """Samples completions with one model's weights through a generation engine (``engine``: its name)."""

    def __init__(self, engine: str, model, tokenizer):
        self.engine = make_engine(engine, model, tokenizer)
        self.tokenizer = tokenizer

    def weights_changed(self) -> None:
        """The policy took an optimizer step: an engine with its own copy of the weights refreshes it."""
        self.engine.sync_weights()

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        """``n`` completions per prompt text: result[i][j] is the j-th completion of prompt i."""
        return self.engine.generate(prompts, n, params)


@dataclass
class DataSamplingConfig:
    """What the stages that sample a model to write a data set share (rejection sampling, cold start, preference
    pairs): the model, how many prompts and samples, how to sample, the output file."""

    init: str = doc("", "Model to sample from: an earlier stage's name, a path or hub id (empty: the previous model).")
    num_prompts: int = doc(256, "Training prompts to sample for.")
    samples_per_prompt: int = doc(4, "Completions per prompt (R1: several per prompt).")
    temperature: float = doc(0.7, "Sampling temperature.")
    top_p: float = doc(0.95, "Nucleus sampling.")
    max_new_tokens: int = doc(64, "Longest completion.")
    output: str = doc("data.jsonl", "File name of the data set inside the stage folder.")
    eval: bool = doc(False, "The output is a data file, not a model: nothing to evaluate.")

    def sampling(self, seed: int) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              seed=seed)


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
                     render: Callable[[str], str] | None = None) -> Samples:
    """Render, sample ``n`` completions per example, prefill, then score with ``rewards`` (name -> weight; see
    ``r1lab.rewards.score_completions``) and/or verify each answer with the example's verifier.

    ``render``: prompt -> model input (default ``template.render``; few-shot prompting passes its own).
    """
    render = render or template.render
    groups = generator.generate([render(example["prompt"]) for example in examples], n, params)
    generations = [g for group in groups for g in group]
    flat_examples = [example for example in examples for _ in range(n)]
    responses = [template.prefill + g.text for g in generations]
    samples = Samples(flat_examples, generations, responses, n)
    if rewards is not None:
        samples.scores = score_completions(responses, flat_examples, rewards, rewards_by_task)
    if verify_answers:
        samples.answers = [extract_answer(response) for response in responses]
        samples.correct = [bool(verify(answer, example)) for answer, example in zip(samples.answers, flat_examples)]
    return samples
