"""The pieces the full R1 recipe adds: domain and mixture tasks, reward routing by task, preference pairs, the
cold_start and preference_pairs stages, and 'reward_model:<stage>' resolved to a stage's trained reward model."""

import json
import random

import pytest
import yaml

from r1lab.rewards import extract_answer, score_completions
from r1lab.tasks import get_task, verify
from r1lab.tasks.domain import DomainTask, corrupted_answer
from r1lab.train.preference_pairs import domain_preference_pairs, pairs_from_samples

GOOD = "<think>sum 1+2=3 so 3</think><answer>3</answer>"
BAD = "<think>sum 1+2=4 so 4</think><answer>4</answer>"


def test_domain_task_answers_verify_and_corruptions_do_not():
    task = DomainTask()
    train, test = task.examples("train", 300, seed=0), task.examples("test", 30, seed=0)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    rng = random.Random(0)
    for example in train:
        document = task.corpus_document(example, rng)
        assert verify(extract_answer(document), example)
        assert not verify(corrupted_answer(example, rng), example)
    assert {e["kind"] for e in train} == {"uppercase", "reverse_words", "count_letters"}
    with pytest.raises(ValueError, match="unknown domain kind"):
        DomainTask(kinds=("poetry",))


def test_mixture_draws_each_part_in_proportion_and_keeps_its_task():
    mixture = get_task("mixture", parts=[{"name": "arithmetic", "options": {"digits": 2}, "weight": 3},
                                         {"name": "domain"}])
    examples = mixture.examples("train", 40, seed=0)
    assert sum(e["task"] == "arithmetic" for e in examples) == 30 and sum(e["task"] == "domain" for e in examples) == 10
    assert examples == mixture.examples("train", 40, seed=0)
    assert mixture.counts(7) == [5, 2]  # 5.25 and 1.75: the larger remainder gets the spare example
    assert all(verify(e["answer"], e) for e in examples)
    with pytest.raises(ValueError, match="weight"):
        get_task("mixture", parts=[{"name": "domain", "weight": 0}])
    with pytest.raises(ValueError, match="mixture needs parts"):
        get_task("mixture")
    with pytest.raises(TypeError, match="no option"):
        get_task("mixture", parts=[{"name": "domain", "options": {"digits": 2}}])


def test_rewards_by_task_routes_each_example_to_its_reward_set():
    examples = [{"prompt": "1+2", "answer": "3", "verifier": "integer", "task": "arithmetic"},
                {"prompt": "uppercase: a b", "answer": "A B", "verifier": "exact", "task": "domain"}]
    judge = lambda completion, example: 0.5  # a stand-in for a reward model
    from r1lab.rewards.registry import REWARDS

    REWARDS["test_judge"] = judge
    try:
        result = score_completions([GOOD, "<think>x</think><answer>A B</answer>"], examples,
                                   {"accuracy": 1.0, "format": 0.1}, {"domain": {"test_judge": 2.0, "format": 0.1}})
    finally:
        del REWARDS["test_judge"]
    assert result.total == [pytest.approx(1.1), pytest.approx(2 * 0.5 + 0.1)]
    assert result.per_reward["accuracy"] == [1.0, None]  # the rule reward is not applied to the domain prompt
    assert result.per_reward["test_judge"] == [None, 0.5]
    assert result.per_reward["format"] == [1.0, 1.0]


def test_pairs_from_samples_choose_correct_over_incorrect():
    examples = [{"prompt": "1+2", "answer": "3", "verifier": "integer"},
                {"prompt": "2+2", "answer": "4", "verifier": "integer"}]
    groups = [[BAD, GOOD, GOOD, BAD], [GOOD, GOOD]]  # the second prompt: no incorrect sample, no pair
    pairs = pairs_from_samples(examples, groups, pairs_per_prompt=5, provenance={"stage": "p"})
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("1+2", GOOD, BAD), ("1+2", GOOD, BAD)]
    assert pairs_from_samples(examples, groups, 1, {})[0]["source"] == {"kind": "sampled"}
    domain = domain_preference_pairs(20, seed=0)
    assert len(domain) == 20 and all(p["chosen"] != p["rejected"] for p in domain)


def _recipe(tmp_path, checkpoint, stages):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "output_dir": str(tmp_path / "runs"), "model": str(checkpoint),
                                    "threads": 1, "task": {"name": "arithmetic", "options": {"digits": 1}},
                                    "eval": {"num_problems": 2, "k": 2, "max_new_tokens": 8, "quick_problems": 2,
                                             "quick_k": 1},
                                    "stages": stages}, sort_keys=False))
    return path


def test_data_stages_rm_routing_and_all_scenario_rl(tmp_path, tiny_checkpoint):
    from r1lab.pipeline import run_recipe

    small = {"max_new_tokens": 8}
    stages = {
        "cold": {"kind": "cold_start", "num_prompts": 2, "samples_per_prompt": 2, "few_shot_from": "model",
                 "few_shot_prompts": 2, "written_rows": 3, **small},
        "pairs": {"kind": "preference_pairs", "num_prompts": 2, "samples_per_prompt": 2, "domain_pairs": 4, **small},
        "rm": {"kind": "reward_model", "init": "model", "data": "pairs", "max_steps": 1, "batch_size": 2,
               "eval_fraction": 0.0},
        "rl": {"kind": "grpo", "init": "model", "steps": 1, "prompts_per_step": 4, "group_size": 2, **small,
               "task": {"name": "mixture", "options": {"parts": [{"name": "arithmetic", "options": {"digits": 1}},
                                                                 {"name": "domain"}]}},
               "rewards_by_task": {"domain": {"reward_model:rm": 1.0}}, "eval_every": 0, "save_every": 0},
    }
    run_dir = run_recipe(_recipe(tmp_path, tiny_checkpoint, stages), quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    by_stage = {entry["stage"]: entry for entry in summary["stages"]}
    cold_rows = (run_dir / "cold" / "data.jsonl").read_text().splitlines()
    assert by_stage["cold"]["data"]["rows"] == len(cold_rows) >= 3  # written rows at least (a random model)
    assert by_stage["cold"]["data"]["written"] == 3
    assert by_stage["pairs"]["data"]["domain_pairs"] == 4 and by_stage["pairs"]["data"]["rows"] >= 4
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if m["stage"] == "rl" and "reward/mean" in m]
    assert rl and any(key.startswith("reward/") and key.endswith("rm/final") for key in rl[0])
    assert "accuracy/task_arithmetic" in rl[0] and "accuracy/task_domain" in rl[0]
    assert by_stage["rl"]["eval"] is not None  # evaluated on the run's task


def test_cold_start_needs_a_model_for_few_shot():
    from r1lab.train.cold_start import ColdStartConfig

    with pytest.raises(ValueError, match="few_shot_from"):
        ColdStartConfig(few_shot_prompts=2)
