"""Rewards: pure functions `(completion, example) -> float | None`, found by name, module or file path.

    score = score_completions(completions, examples, {"accuracy": 1.0, "format": 0.2, "my_rewards.py:brevity": 0.1})
"""

from r1lab.rewards.code import code_reward
from r1lab.rewards.language import language_consistency_reward
from r1lab.rewards.registry import REWARDS, get_reward, register_reward
from r1lab.rewards.rule import accuracy_reward, extract_answer, format_reward, soft_format_reward
from r1lab.rewards.scoring import ScoreResult, score_completions

__all__ = [
    "REWARDS",
    "ScoreResult",
    "accuracy_reward",
    "code_reward",
    "extract_answer",
    "format_reward",
    "get_reward",
    "language_consistency_reward",
    "register_reward",
    "score_completions",
    "soft_format_reward",
]
