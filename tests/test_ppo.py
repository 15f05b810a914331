"""PPO: rewards -> advantages (hand numbers, the REINFORCE limit), the KL controller, the value model, a smoke run."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.logprobs import make_batch
from r1lab.advantages import adaptive_kl_coef, ppo_advantages, token_rewards
from r1lab.train.ppo import PPOConfig

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# rows of lengths 3, 1, 2 and 0 in a (4, 3) batch
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)


# --- (a) the test: γ = λ = 1, zero critic, β = 0 is REINFORCE with the outcome reward ----------------------

def test_gamma_lambda_one_zero_critic_is_reinforce():
    outcome = torch.tensor([1.0, 0.0, 1.1, 0.1])
    adv, returns, _ = ppo_advantages(outcome, torch.zeros(4, 3), MASK, gamma=1.0, lam=1.0, kl_coef=0.0,
                                     whiten_advantages=False)
    # every token of a completion gets its outcome as advantage, and the advantage equals the return
    expected = [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.1, 1.1, 0.0], [0.0, 0.0, 0.0]]
    close(adv, expected)
    close(returns, expected)
    assert torch.equal(adv, returns)


def test_gamma_lambda_one_any_critic_gives_monte_carlo_return():
    # with γ = λ = 1 the critic only shifts the advantage: A_t + V_t = R_t = the outcome, whatever V is
    outcome = torch.tensor([1.0, -0.5, 1.1, 0.1])
    values = torch.tensor([[0.3, -0.2, 0.9], [0.7, NAN, NAN], [0.1, 0.4, NAN], [NAN, NAN, NAN]])
    adv, returns, _ = ppo_advantages(outcome, values, MASK, gamma=1.0, lam=1.0, whiten_advantages=False)
    close(returns, outcome[:, None] * MASK)
    close(adv, (outcome[:, None] - torch.nan_to_num(values)) * MASK)


# --- (b) token rewards: outcome on the last token, −β·KL on each ---------------------------------------------------

def test_token_rewards_outcome_on_last_token_and_kl_on_every_token():
    outcome = torch.tensor([1.0, 0.5, -1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, NAN, NAN], [-0.1, 0.5, NAN], [NAN, NAN, NAN]])  # padding: garbage
    # β = 0.5: row 0 [−0.05, −0.1, −0.15 + 1]; row 1 [−0.2 + 0.5]; row 2 [0.05, −0.25 − 1]; row 3 has no tokens
    rewards = token_rewards(outcome, MASK, kl, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1, 0.85], [0.3, 0.0, 0.0], [0.05, -1.25, 0.0], [0.0, 0.0, 0.0]])
    # β = 0: only the outcome, no KL needed
    close(token_rewards(outcome, MASK), [[0, 0, 1.0], [0.5, 0, 0], [0, -1.0, 0], [0, 0, 0]])


def test_token_rewards_mask_with_a_hole_puts_outcome_on_last_masked_in_token():
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # e.g. tool output masked out, then padding
    close(token_rewards(torch.tensor([3.0]), mask), [[0.0, 0.0, 3.0, 0.0]])


def test_token_rewards_needs_kl_when_beta_is_set():
    with pytest.raises(ValueError, match="needs kl"):
        token_rewards(torch.ones(4), MASK, None, kl_coef=0.1)


def test_advantages_hand_gae_with_critic_and_kl():
    # one row of 2 tokens, outcome 1, β = 0.5, KL [0.2, 0]: rewards [−0.1, 1.0]; V = [0.5, 0.2]; γ = 1, λ = 0.5
    # δ_1 = 1.0 + 0 − 0.2 = 0.8; A_1 = 0.8; δ_0 = −0.1 + 0.2 − 0.5 = −0.4; A_0 = −0.4 + 0.5 · 0.8 = 0.0
    # returns = A + V = [0.5, 1.0]
    adv, returns, rewards = ppo_advantages(torch.tensor([1.0]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2),
                                           kl=torch.tensor([[0.2, 0.0]]), kl_coef=0.5, gamma=1.0, lam=0.5,
                                           whiten_advantages=False)
    close(rewards, [[-0.1, 1.0]])
    close(adv, [[0.0, 0.8]])
    close(returns, [[0.5, 1.0]])


def test_advantage_whitening_leaves_returns_alone():
    outcome = torch.tensor([1.0, 0.0, 1.1, 0.1])
    adv, returns, _ = ppo_advantages(outcome, torch.zeros(4, 3), MASK, gamma=1.0, lam=1.0)
    m = MASK.bool()
    assert abs(adv[m].mean().item()) < 1e-6 and abs(adv[m].std().item() - 1.0) < 1e-4
    assert torch.equal(adv[~m], torch.zeros((~m).sum()))
    close(returns, outcome[:, None] * MASK)  # the critic's target is the unwhitened return


# --- (c) adaptive KL coefficient ------------------------------------------------------------------------------

def test_adaptive_kl_hand_numbers():
    # KL 1.8, target 2: e = 1.8/2 − 1 = −0.1; n = 64, horizon 1000: β = 0.1 · (1 − 0.1 · 0.064) = 0.09936
    assert adaptive_kl_coef(0.1, 1.8, 2.0, 1000, 64) == pytest.approx(0.09936)
    # KL 3, target 2: e = 0.5, clipped to 0.2: β = 0.1 · (1 + 0.2 · 0.064) = 0.10128
    assert adaptive_kl_coef(0.1, 3.0, 2.0, 1000, 64) == pytest.approx(0.10128)
    # KL 0 (policy still equals the reference): e = −1, clipped to −0.2: β = 0.05 · (1 − 0.2 · 4/10) = 0.046
    assert adaptive_kl_coef(0.05, 0.0, 0.1, 10, 4) == pytest.approx(0.046)


def test_config_checks():
    with pytest.raises(ValueError, match="target_kl"):
        PPOConfig(kl_coef=0.0, target_kl=1.0)
    with pytest.raises(ValueError, match="gamma and lam"):
        PPOConfig(lam=1.5)
    PPOConfig(group_size=1, prompts_per_step=3, minibatches=2)  # one completion per problem is classic PPO


# --- (d) the value model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model

    path = tmp_path_factory.mktemp("policy") / "tiny"
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    save_model(model, tok, path)
    return path, model.eval(), tok


def test_value_model_alignment_with_the_policy_hidden_states(tiny_policy):
    from r1lab.value_model import init_value_model

    path, policy, tok = tiny_policy
    vm = init_value_model(path)
    batch = make_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], tok.pad_token_id)  # (2, 3 + 3)
    with torch.no_grad():
        values = vm.values(batch)
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                        output_hidden_states=True).hidden_states[-1]
        # completion token j is predicted at position P + j − 1 = 2 + j
        expected = vm.head(hidden[:, 2:5]).squeeze(-1)
        alone = vm.values(make_batch([[8, 9]], [[12, 13, 14]], tok.pad_token_id))  # no padding at all
    assert values.shape == (2, 3) and values.dtype == torch.float32
    close(values, expected, atol=1e-5)  # the backbone is the policy's base transformer, weights included
    close(values[1], alone[0], atol=1e-5)  # left padding does not change a row's values
    assert values.abs().max() < 0.1  # the head starts small


def test_value_model_save_load_round_trip(tiny_policy, tmp_path):
    from r1lab.value_model import HEAD_FILE, init_value_model, load_value_model

    path, _, tok = tiny_policy
    vm = init_value_model(path)
    with torch.no_grad():
        vm.head.weight.normal_()  # something the fresh init would not reproduce
        vm.backbone.norm.weight.mul_(1.5)
    vm.save(tmp_path / "value_model")
    assert (tmp_path / "value_model" / HEAD_FILE).is_file() and (tmp_path / "value_model" / "config.json").is_file()
    again = load_value_model(tmp_path / "value_model")
    batch = make_batch([[5, 6, 7]], [[10, 11, 12, 13]], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(again.values(batch), vm.values(batch))
    # init_value_model on the folder loads it as is too
    with torch.no_grad():
        torch.testing.assert_close(init_value_model(tmp_path / "value_model").values(batch), vm.values(batch))


def test_value_model_from_a_reward_model_keeps_its_score_head(tiny_policy, tmp_path):
    from transformers import Qwen2ForSequenceClassification

    from r1lab.value_model import init_value_model

    path, policy, tok = tiny_policy
    config = policy.config.__class__.from_dict(policy.config.to_dict())
    config.num_labels = 1  # one score (set after: in transformers 5.0 the dict's two default labels win)
    reward_model = Qwen2ForSequenceClassification(config)
    reward_model.save_pretrained(tmp_path / "rm")
    vm = init_value_model(tmp_path / "rm")
    torch.testing.assert_close(vm.head.weight, reward_model.score.weight)
    assert vm.head.bias.item() == 0.0


# --- (e) the ppo stage through the pipeline -----------------------------------------------------------------------

def _recipe(tmp_path, model) -> Path:
    recipe = {
        "name": "ppo", "output_dir": str(tmp_path / "runs"), "model": str(model), "threads": 1,
        "keep_checkpoints": True,  # the test resumes a finished stage from its checkpoint
        "task": {"name": "arithmetic", "options": {"digits": 2}},
        "eval": {"num_problems": 2, "k": 1, "max_new_tokens": 8, "quick_problems": 2, "quick_k": 1},
        "stages": {"ppo": {"kind": "ppo", "steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8,
                           "updates_per_rollout": 2, "minibatches": 2, "kl_coef": 0.05, "target_kl": 0.1,
                           "kl_horizon": 10, "eval_every": 1, "save_every": 1, "samples_every": 1}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _rl_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


def test_ppo_stage_smoke_resume_and_skip(tiny_policy, tmp_path):
    from r1lab.pipeline import run_recipe

    threads = torch.get_num_threads()
    try:
        _smoke_resume_and_skip(run_recipe, _recipe(tmp_path, tiny_policy[0]))
    finally:
        torch.set_num_threads(threads)  # the recipe's threads: 1 would outlive the test


def _smoke_resume_and_skip(run_recipe, recipe):
    from r1lab.value_model import HEAD_FILE

    run_dir = run_recipe(recipe, quiet=True)
    stage_dir = run_dir / "ppo"
    rows = _rl_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ["reward/mean", "reward/accuracy", "reward/format", "clip_frac", "entropy", "loss", "grad_norm",
                "value_loss", "explained_variance", "value_clip_frac", "value_grad_norm", "kl", "kl_coef",
                "returns/mean", "values/mean", "completion/length_mean", "groups/zero_spread_frac", "step_seconds"]:
        assert all(key in r for r in rows), key
    # step 1: the policy is the reference, so the k1 KL is exactly 0 and adaptive β falls 0.05 -> 0.046
    assert rows[0]["kl"] == 0.0 and rows[0]["kl_coef"] == pytest.approx(0.05)
    assert rows[1]["kl_coef"] == pytest.approx(0.046)
    assert (stage_dir / "final" / "value_model" / HEAD_FILE).is_file()
    assert (stage_dir / "checkpoint" / "value_model" / HEAD_FILE).is_file()  # saved with the step-1 checkpoint
    assert json.loads((run_dir / "summary.json").read_text())["stages"][0]["eval"] is not None

    # run again: the stage is done and skipped, nothing is trained or logged
    done = (stage_dir / "done.json").read_text()
    run_recipe(recipe, quiet=True)
    assert len(_rl_rows(run_dir)) == 2 and (stage_dir / "done.json").read_text() == done

    # as if killed after the step-1 checkpoint: the stage resumes at step 2 with the saved β and value model
    (stage_dir / "done.json").unlink()
    shutil.rmtree(stage_dir / "final")
    run_recipe(recipe, quiet=True)
    rows = _rl_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]  # the killed run's step-2 line was dropped before resuming
    assert rows[1]["kl_coef"] == pytest.approx(0.046)
    assert (stage_dir / "final" / "value_model" / HEAD_FILE).is_file()


# --- the benchmark's bookkeeping ---------------------------------------------------------------------------------

def _bench():
    spec = importlib.util.spec_from_file_location("grpo_vs_ppo", ROOT / "bench" / "grpo_vs_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_completions_to_target_and_table():
    bench = _bench()
    evals = [(0, 0.30), (25, 0.40), (50, 0.47), (75, 0.44)]
    # 64 completions a step: 0.45 is first reached at step 50 -> 3,200 completions; 0.9 never
    assert bench.completions_to_target(evals, 0.45, 64) == 3200
    assert bench.completions_to_target(evals, 0.30, 64) == 0
    assert bench.completions_to_target(evals, 0.90, 64) is None
    results = {"grpo": {"peak_rss_mib": 900.0, "seconds_per_step": 2.0, "completions_to_target": 3200,
                        "final_pass@1": 0.5, "base_pass@1": 0.3, "wall_seconds": 400.0},
               "ppo": {"peak_rss_mib": 1500.0, "seconds_per_step": 3.5, "completions_to_target": None,
                       "final_pass@1": 0.55, "base_pass@1": 0.3, "wall_seconds": 400.2}}
    table = bench.markdown_table(results, 0.45).splitlines()
    assert table[0] == "| | GRPO | PPO | better |"
    assert table[2] == "| peak memory, RSS (MiB) | 900 | 1500 | GRPO |"
    assert table[4] == "| completions to held-out pass@1 ≥ 0.45 | 3,200 | not reached | GRPO |"
    assert table[5] == "| final held-out pass@1 | 0.500 | 0.550 | PPO |"
    assert table[7] == "| wall seconds (whole run, evals included) | 400 | 400 | tie |"


def test_ppo_micro_batches_add_up_to_the_whole_minibatch(tiny_policy, tmp_path):
    """PPO now micro-batches through the policy: one sequence at a time gives the weights (policy and critic) of
    whole minibatches (token aggregation: the policy and value losses are token means, weighted by token share)."""
    from safetensors.torch import load_file

    from r1lab.pipeline import run_recipe

    finals = {}
    for name, micro in (("whole", 0), ("micro", 1)):
        recipe = yaml.safe_load(_recipe(tmp_path, tiny_policy[0]).read_text())
        recipe["name"] = name
        # no warmup: it starts at 0, and one step would leave the weights
        recipe["stages"]["ppo"].update({"steps": 1, "micro_batch_size": micro, "eval_every": 0, "eval": False,
                                        "lr": 1e-3, "warmup_steps": 0,
                                        "rewards": {"format_soft": 1.0, "accuracy": 1.0}})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        final = run_recipe(path, quiet=True) / "ppo" / "final"
        finals[name] = {**load_file(final / "model.safetensors"),
                        **{f"value.{k}": v for k, v in load_file(final / "value_model" / "model.safetensors").items()},
                        **{f"head.{k}": v for k, v in load_file(final / "value_model" / "value_head.safetensors").items()}}
    before = load_file(Path(tiny_policy[0]) / "model.safetensors")
    assert any(not torch.equal(before[k], finals["whole"][k]) for k in before), "the step must change the weights"
    for key, value in finals["whole"].items():
        torch.testing.assert_close(finals["micro"][key], value, atol=1e-6, rtol=1e-5)
