"""The generation-engine interface: prompts in, G sampled completions per prompt out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 64
    seed: int = 0
    first_sequence: int = 0  # id of the call's first sequence in the random numbers: a rank sampling part of a
    # step's prompts draws the numbers the whole step would give them in one process (r1lab's own engine)
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)  # told (finished, total)
    # as completions finish, for a long call's progress line (evaluation, data stages)

    def report(self, finished: int, total: int) -> None:
        if self.progress is not None:
            self.progress(finished, total)


@dataclass
class Generation:
    """One sampled completion. ``completion_ids`` ends with EOS unless the completion was cut at max_new_tokens.
    ``logprobs``: the logprob of each completion token under the distribution the engine sampled it from (after
    temperature, top-k, top-p), one per completion token."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    truncated: bool
    logprobs: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        """``n`` completions for each prompt: result[i][j] is the j-th completion of prompt i."""
        ...

    def sync_weights(self) -> None:
        """Called once after every optimizer step, through the stage's ``Generator`` (engines holding their own copy
        of the weights refresh it)."""
        ...
