"""Weighted sum of several rewards over a batch, robust to rewards that fail.

A user's reward that raises or returns NaN must not stop a training run: the value counts as 0 in the total,
the failures are counted per reward (a metric to log), and the first failure of each reward is logged once.
``ScoreResult`` keeps, per reward, how many completions it scored and its first error of the batch, so that the
rollout can warn when a reward fails often and stop a run whose reward never works (``r1lab.rollout``).

What counts as a reward's failure: any exception it raises, ``SystemExit`` (a reward that calls ``sys.exit`` or
parses arguments) and other ``BaseException``s included, which would otherwise end the run without a word. The one
exception is a stop the user asked for: a ``KeyboardInterrupt`` (or any exception) raised by a signal handler because
Ctrl-C (SIGINT) or SIGTERM arrived while the rewards ran is re-raised, so Ctrl-C during scoring still stops the run. A
``KeyboardInterrupt`` the reward raised itself, with no signal, is a failure like any other. Signals can be watched
only from the main thread; elsewhere every ``KeyboardInterrupt`` is taken as the user's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import signal
import threading
from dataclasses import dataclass, field

from r1lab.config import ConfigError
from r1lab.rewards.registry import get_reward

logger = logging.getLogger("r1lab")
_already_warned: set[str] = set()

# The signals a user stops a run with; an exception raised while one of them arrived is theirs, not the reward's.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RewardFailedError(ConfigError):
    """A reward failed on every completion for several steps in a row; the message names it and its first error.
    A ``ConfigError``: the CLI reports it in one line (the traceback was logged at the reward's first failure)."""


@dataclass
class ScoreResult:
    total: list[float]  # weighted sum per completion; None and failures count as 0
    per_reward: dict[str, list[float | None]]  # each reward's raw value per completion (None: n/a or failed)
    errors: dict[str, int]  # per reward, how many completions it failed on (raised, non-number, NaN/inf)
    scored: dict[str, int] = field(default_factory=dict)  # per reward, how many completions it was asked to score
    first_errors: dict[str, str] = field(default_factory=dict)  # per reward, its first failure in this batch


def concat_scores(parts: list[ScoreResult]) -> ScoreResult:
    """The scores of several batches of completions as one (in order): lists joined, counts summed, each reward's
    earliest first error kept. A batch that a reward did not score holds None for it."""
    keys = list(dict.fromkeys(k for p in parts for k in p.per_reward))
    per_reward = {k: [v for p in parts for v in p.per_reward.get(k, [None] * len(p.total))] for k in keys}
    errors = {k: sum(p.errors.get(k, 0) for p in parts) for k in dict.fromkeys(k for p in parts for k in p.errors)}
    scored = {k: sum(p.scored.get(k, 0) for p in parts) for k in dict.fromkeys(k for p in parts for k in p.scored)}
    first_errors: dict[str, str] = {}
    for p in parts:
        first_errors = {**p.first_errors, **first_errors}
    return ScoreResult(total=[t for p in parts for t in p.total], per_reward=per_reward, errors=errors,
                       scored=scored, first_errors=first_errors)


def _warn_once(spec: str, message: str, *args, exc_info: BaseException | None = None) -> None:
    if spec in _already_warned:
        return
    _already_warned.add(spec)
    logger.warning(
        f"reward %r {message}; counted as 0 (later failures of this reward are only counted)",
        spec,
        *args,
        exc_info=exc_info,
    )


class _StopSignalWatch:
    """Tells whether a stop signal (Ctrl-C, SIGTERM) arrived during a reward's call: while active, it wraps the
    Python handlers of those signals so that they note the arrival, then do what they did (raise KeyboardInterrupt,
    for Ctrl-C)."""

    def __init__(self):
        self.watching = False  # False off the main thread: signal handlers cannot be set there
        self.arrived = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        self.arrived = True
        return self._previous[signum](signum, frame)

    @contextlib.contextmanager
    def active(self):
        try:
            if threading.current_thread() is threading.main_thread():
                for signum in _STOP_SIGNALS:
                    previous = signal.getsignal(signum)
                    if callable(previous):  # SIG_DFL and SIG_IGN raise nothing in Python: nothing to tell apart
                        self._previous[signum] = previous
                        signal.signal(signum, self._handler)
                self.watching = True
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()
            self.watching = False

    def before_call(self) -> None:
        self.arrived = False

    def is_users_stop(self, error: BaseException) -> bool:
        """True when ``error`` must end the run: a stop signal arrived during the call, or a KeyboardInterrupt that
        cannot be told apart from one (off the main thread)."""
        return self.arrived or (isinstance(error, KeyboardInterrupt) and not self.watching)


def _describe(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, SystemExit):
        text = f"{error.code} (the reward called sys.exit)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def score_completions(completions: list[str], examples: list[dict], rewards: dict[str, float],
                      rewards_by_task: dict[str, dict[str, float]] | None = None) -> ScoreResult:
    """Score each completion against its example with every reward spec, weighted by `rewards[spec]`.

    `rewards_by_task`: examples whose "task" field is a key here are scored with that reward set instead (R1's
    all-scenario RL: rule rewards for reasoning prompts, a reward model for general ones); a reward outside an
    example's set is None for it.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples; they must pair up")
    by_task = rewards_by_task or {}
    weight_sets = [by_task.get(example.get("task"), rewards) for example in examples]
    specs = list(dict.fromkeys([*rewards, *(spec for weights in by_task.values() for spec in weights)]))
    functions = {spec: get_reward(spec) for spec in specs}
    result = ScoreResult(total=[0.0] * len(completions), per_reward={}, errors={})
    with _StopSignalWatch().active() as stop_signals:
        for spec in specs:
            _score_one_reward(spec, functions[spec], completions, examples, weight_sets, result, stop_signals)
    return result


def _score_one_reward(spec: str, function, completions: list[str], examples: list[dict],
                      weight_sets: list[dict[str, float]], result: ScoreResult, stop_signals: _StopSignalWatch) -> None:
    values: list[float | None] = []
    failures = scored = 0
    first_error = ""

    def fail(description: str) -> None:
        nonlocal failures, first_error
        failures += 1
        first_error = first_error or description
        values.append(None)

    for index, (completion, example) in enumerate(zip(completions, examples)):
        if spec not in weight_sets[index]:
            values.append(None)
            continue
        scored += 1
        stop_signals.before_call()
        try:
            value = function(completion, example)
        except BaseException as error:  # SystemExit and the like too: see the module docstring
            if stop_signals.is_users_stop(error):
                raise
            _warn_once(spec, "raised %s: %s on completion %d", type(error).__name__, error, index, exc_info=error)
            fail(_describe(error))
            continue
        if value is None:
            values.append(None)
            continue
        if not isinstance(value, numbers.Real):
            _warn_once(spec, "returned a %s (%r), not a number", type(value).__name__, value)
            fail(f"returned a {type(value).__name__} ({value!r:.80}), not a number")
            continue
        value = float(value)
        if not math.isfinite(value):
            _warn_once(spec, "returned %s on completion %d", value, index)
            fail(f"returned {value}")
            continue
        values.append(value)
        result.total[index] += weight_sets[index][spec] * value
    result.per_reward[spec] = values
    result.errors[spec] = failures
    result.scored[spec] = scored
    if first_error:
        result.first_errors[spec] = first_error
