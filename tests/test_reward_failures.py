"""Rewards that fail are visible during RL: a warning when a reward fails on most of a step's completions, and the run
stops when one fails on every completion for several steps in a row (r1lab.rollout.check_reward_errors)."""

from pathlib import Path

import pytest
import torch

from r1lab.engine import Generation
from r1lab.logprobs import make_batch
from r1lab.rewards import ScoreResult
from r1lab.rewards.scoring import RewardFailedError
from r1lab.rollout import (REWARD_FAILURE_STOP_STEPS, Rollout, check_reward_errors, concat_rollouts, select_groups,
                           warn_if_truncated)
from r1lab.stage_configs import GRPOConfig


class FakeStage:
    """What check_reward_errors uses of a Stage: its name, its folder and warn."""

    def __init__(self, folder: Path, name: str = "grpo"):
        self.name, self.folder, self.warnings = name, folder, []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def scores(failures: int, scored: int = 8, spec: str = "my_rewards.py:flaky") -> ScoreResult:
    first = {spec: "KeyError: 'tests'"} if failures else {}
    return ScoreResult(total=[0.0] * scored, per_reward={spec: [None] * scored}, errors={spec: failures},
                       scored={spec: scored}, first_errors=first)


def test_completions_cut_off_warn_once_per_stretch_of_steps(tmp_path):
    stage, cfg = FakeStage(tmp_path / "a"), GRPOConfig(max_new_tokens=8, truncation_warning=0.5)
    for step, cut_off in enumerate([0.75, 1.0, 0.5, 0.75]):  # 0.5 is not more than the threshold: the stretch ends
        warn_if_truncated(stage, cfg, step, {"completion/truncated_frac": cut_off})
    assert [message.split(" of completions")[0] for message in stage.warnings] == ["step 1: 75%", "step 4: 75%"]


def test_a_reward_failing_on_most_completions_warns_once_per_stretch(tmp_path):
    stage = FakeStage(tmp_path / "a")
    for step, failures in enumerate([4, 5, 6, 0, 7]):  # 4 of 8 is not more than half
        check_reward_errors(stage, step, scores(failures))
    assert stage.warnings == [
        "step 2: reward 'flaky' failed on 5 of 8 completions (counted as 0); first error: KeyError: 'tests'",
        "step 5: reward 'flaky' failed on 7 of 8 completions (counted as 0); first error: KeyError: 'tests'",
    ]


def test_a_reward_failing_on_every_completion_for_three_steps_stops_the_run(tmp_path):
    stage = FakeStage(tmp_path / "b")
    assert REWARD_FAILURE_STOP_STEPS == 3
    check_reward_errors(stage, 10, scores(8))
    check_reward_errors(stage, 11, scores(8))
    with pytest.raises(RewardFailedError) as caught:
        check_reward_errors(stage, 12, scores(8))
    assert str(caught.value) == (
        "stage 'grpo': reward 'flaky' failed on every completion for 3 steps in a row (steps 11-13, 8 of 8 at the "
        "last); its first error: KeyError: 'tests'. Fix the reward (its traceback was logged at its first failure) "
        "or take it out of rewards, then run the same command again to resume from the last checkpoint")
    assert len(stage.warnings) == 1  # the warning came at the first failing step


def test_a_step_that_works_or_a_gap_restarts_the_count(tmp_path):
    stage = FakeStage(tmp_path / "c")
    for step, failures in [(0, 8), (1, 8), (2, 7), (3, 8), (4, 8), (6, 8), (7, 8)]:  # 7 of 8, then a gap at 5
        check_reward_errors(stage, step, scores(failures))
    other_stage = FakeStage(tmp_path / "d", name="ppo")  # each stage counts its own steps
    check_reward_errors(other_stage, 8, scores(8))
    with pytest.raises(RewardFailedError, match=r"stage 'grpo': reward 'flaky' .* \(steps 7-9,"):
        check_reward_errors(stage, 8, scores(8))


def test_a_reward_that_scored_nothing_is_not_failing(tmp_path):
    stage = FakeStage(tmp_path / "e")
    for step in range(5):  # rewards_by_task: this reward applies to no example of the batch
        check_reward_errors(stage, step, scores(0, scored=0))
    assert stage.warnings == []


def _rollout(failures: int, first_error: str) -> Rollout:
    spec = "flaky"
    generations = [Generation([1, 2], [3, 4], "text", False) for _ in range(2)]
    result = ScoreResult(total=[0.0, 0.0], per_reward={spec: [None, None]}, errors={spec: failures},
                         scored={spec: 2}, first_errors={spec: first_error} if failures else {})
    return Rollout([{"prompt": "p"}] * 2, generations, ["text"] * 2, result, torch.zeros(2),
                   make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations], 0), 2)


def test_joined_and_selected_rollouts_keep_the_failure_counts_and_the_first_error():
    joined = concat_rollouts([_rollout(0, ""), _rollout(2, "ValueError: one"), _rollout(1, "ValueError: two")], 0)
    assert joined.scores.errors == {"flaky": 3} and joined.scores.scored == {"flaky": 6}
    assert joined.scores.first_errors == {"flaky": "ValueError: one"}
    kept = select_groups(joined, torch.tensor([True, False, False]))  # dynamic sampling keeps the first group only
    assert kept.scores.errors == {"flaky": 3} and kept.scores.scored == {"flaky": 6}  # every completion was scored
    assert kept.scores.first_errors == {"flaky": "ValueError: one"}
