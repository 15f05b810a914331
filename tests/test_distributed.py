"""torchrun on this CPU: two processes with gloo give the one-process results (README, "Many processes")."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lab import dist

TIMEOUT = 240  # seconds for a two-process run that takes ~6 s on an idle 2-core machine


def _recipe(tmp_path, name: str, model, **grpo) -> str:
    stage = {"kind": "grpo", "steps": 2, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 10,
             "eval_every": 0, "save_every": 0, "lr": 1e-3, "eval": False, "log_samples": 16, "samples_every": 1,
             "rewards": {"format_soft": 1.0, "accuracy": 1.0}, **grpo}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "model": str(model),
                                    "threads": 1, "task": {"name": "arithmetic", "options": {"digits": 1}},
                                    "stages": {"grpo": stage}}))
    return str(path)


def _run(recipe: str, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    return subprocess.run([*launcher, "-m", "r1lab", "run", recipe, "--quiet"], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def eos_prone_checkpoint(tmp_path_factory):
    """A tiny random model that ends completions at very different lengths (so ranks hold uneven token counts)."""
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.model.norm.weight.sign() * 0.5
    path = tmp_path_factory.mktemp("model") / "eos_prone"
    save_model(model, tok, path)
    return path


def test_grpo_on_two_processes_equals_one_process(tmp_path, eos_prone_checkpoint):
    one = _run(_recipe(tmp_path, "one", eos_prone_checkpoint), 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_recipe(tmp_path, "two", eos_prone_checkpoint), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    a = load_file(runs / "one" / "grpo" / "final" / "model.safetensors")
    b = load_file(runs / "two" / "grpo" / "final" / "model.safetensors")
    start = load_file(eos_prone_checkpoint / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a), "the steps must move the weights"
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    # every step's loss and rollout metrics are those of the one-process run (rank 0 logs the whole step)
    metrics = {name: [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()
                      if '"step_seconds"' in line] for name in ("one", "two")}
    for x, y in zip(metrics["one"], metrics["two"]):
        for key in ("loss", "reward/mean", "completion/length_mean", "grad_norm", "entropy"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), key
    # the ranks held different numbers of completion tokens (rank 0: the first 2 prompts × G, rank 1: the others)
    samples = [json.loads(line) for line in (runs / "two" / "samples.jsonl").read_text().splitlines()]
    first_step = [s for s in samples if s["step"] == 1]
    assert len(first_step) == 16
    per_rank = [sum(len(s["completion"]) for s in first_step[:8]), sum(len(s["completion"]) for s in first_step[8:])]
    assert per_rank[0] != per_rank[1]
    assert not (runs / ".rank1").exists()  # the other rank's scratch folder is gone; rank 0 wrote the run


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _fixed_data_recipe(tmp_path, name: str) -> str:
    """Pretraining, SFT, DPO and a reward model, each with batches that two ranks split unevenly (5 = 3 + 2)."""
    sft_rows = [{"prompt": f"{i}+{j}", "completion": f"<think>{i}+{j}={i + j}</think> <answer>{i + j}</answer>"}
                for i in range(6) for j in range(3)]
    pairs = [{"prompt": f"{i}+1", "chosen": f"<think>{i}+1={i + 1}</think> <answer>{i + 1}</answer>",
              "rejected": f"<answer>{i + 7}0</answer>"} for i in range(12)]
    fixed = {"max_steps": 2, "batch_size": 5, "lr": 1e-3, "eval": False, "eval_fraction": 0.2, "save_every": 0}
    stages = {
        "base": {"kind": "pretrain", "cache_dir": str(tmp_path / f"cache-{name}"), "steps": 3, "batch_size": 5,
                 "corpus_problems": 64, "hidden_size": 32, "num_layers": 1, "intermediate_size": 64,
                 "num_heads": 2, "block_size": 64, "eval": False},
        "sft": {"kind": "sft", "data": _write_jsonl(tmp_path / "sft.jsonl", sft_rows), "micro_batch_tokens": 0,
                **fixed},
        "dpo": {"kind": "dpo", "data": _write_jsonl(tmp_path / "pairs.jsonl", pairs), "micro_batch_size": 2,
                **fixed},
        "rm": {"kind": "reward_model", "init": "sft", "data": str(tmp_path / "pairs.jsonl"), "micro_batch_size": 2,
               **fixed},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "threads": 1,
                                    "task": {"name": "arithmetic", "options": {"digits": 1}}, "stages": stages},
                                   sort_keys=False))
    return str(path)


def test_pretraining_sft_dpo_and_reward_model_on_two_processes_equal_one_process(tmp_path):
    one = _run(_fixed_data_recipe(tmp_path, "one"), 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_fixed_data_recipe(tmp_path, "two"), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    for stage, folder in (("base", "model"), ("sft", "final"), ("dpo", "final"), ("rm", "final")):
        a = load_file(runs / "one" / stage / folder / "model.safetensors")
        b = load_file(runs / "two" / stage / folder / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=lambda m: f"{stage} {key}: {m}")
    metrics = {name: [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()
                      if '"step_seconds"' in line] for name in ("one", "two")}
    assert len(metrics["one"]) == len(metrics["two"]) == 6  # sft, dpo, rm: 2 steps each
    for x, y in zip(metrics["one"], metrics["two"]):
        for key in ("loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), (x.get("stage"), key)
    assert not (runs / ".rank1").exists()


def test_prompts_that_cannot_be_split_by_whole_groups_are_refused(tmp_path, eos_prone_checkpoint):
    two = _run(_recipe(tmp_path, "odd", eos_prone_checkpoint, prompts_per_step=3), 2)
    assert two.returncode != 0
    assert "stage 'grpo': 3 prompts_per_step cannot be split evenly over 2 processes" in two.stderr


def test_shard_gives_each_rank_whole_equal_parts(monkeypatch):
    monkeypatch.setattr(dist, "_world", dist.World(rank=1, world_size=2))
    assert dist.shard(8) == (4, 8)
    monkeypatch.setattr(dist, "_world", dist.World(rank=0, world_size=2))
    assert dist.shard(8) == (0, 4)
    with pytest.raises(ValueError, match="5 items cannot be split evenly over 2 processes"):
        dist.shard(5)
    monkeypatch.setattr(dist, "_world", dist.World())
    assert dist.shard(5) == (0, 5)


KILLING_REWARD = """
import os, signal

def reward(completion, example):
    if os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies while scoring its first rollout: inside a step
    return 0.0
"""


def test_a_rank_killed_mid_step_ends_the_job_naming_it(tmp_path, eos_prone_checkpoint):
    reward_file = tmp_path / "killing_reward.py"
    reward_file.write_text(KILLING_REWARD)
    recipe = _recipe(tmp_path, "killed", eos_prone_checkpoint, steps=4, rewards={f"{reward_file}:reward": 1.0})
    started = time.monotonic()
    two = _run(recipe, 2)
    seconds = time.monotonic() - started
    assert two.returncode != 0
    assert seconds < 60, seconds  # rank 0 was waiting for rank 1 in a collective: torchrun ended it
    assert "rank: 1" in two.stderr and "SIGKILL" in two.stderr, two.stderr[-2000:]


STOPPING_REWARD = """
import os, signal
from pathlib import Path

def reward(completion, example):
    checkpoint = os.environ.get("STOP_ONCE_SAVED")
    if checkpoint and (Path(checkpoint) / "trainer_state.pt").is_file():
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the step after the checkpoint, as a crash would
    return 0.0
"""


def _run_killed_after_checkpoint(recipe: str, run_dir, processes: int) -> subprocess.CompletedProcess:
    env = {"STOP_ONCE_SAVED": str(run_dir / "grpo" / "checkpoint")}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return _run(recipe, processes)
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.mark.parametrize("stopped_at, resumed_at", [(2, 1), (1, 2)])
def test_a_run_stopped_at_one_world_size_resumes_at_another_with_the_same_steps(tmp_path, eos_prone_checkpoint,
                                                                                 stopped_at, resumed_at):
    reward_file = tmp_path / "stopping_reward.py"
    reward_file.write_text(STOPPING_REWARD)
    rewards = {"format_soft": 1.0, "accuracy": 1.0, f"{reward_file}:reward": 1.0}
    straight = _run(_recipe(tmp_path, "straight", eos_prone_checkpoint, steps=4, save_every=2, rewards=rewards), 1)
    assert straight.returncode == 0, straight.stderr[-3000:]
    recipe = _recipe(tmp_path, "resumed", eos_prone_checkpoint, steps=4, save_every=2, rewards=rewards)
    runs = tmp_path / "runs"
    killed = _run_killed_after_checkpoint(recipe, runs / "resumed", stopped_at)
    assert killed.returncode != 0 and not (runs / "resumed" / "grpo" / "final").exists()
    resumed = _run(recipe, resumed_at)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(runs / "straight" / "grpo" / "final" / "model.safetensors")
    b = load_file(runs / "resumed" / "grpo" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    rows = {name: [row for row in map(json.loads, (runs / name / "metrics.jsonl").read_text().splitlines())
                   if "step_seconds" in row] for name in ("straight", "resumed")}
    assert [row["step"] for row in rows["resumed"]] == [1, 2, 3, 4]  # steps 1-2 before the kill, 3-4 after: resumed
    steps = {name: {row["step"]: row for row in rows[name]} for name in rows}
    for step in (3, 4):  # the steps after the resume are those of the uninterrupted run
        assert steps["resumed"][step]["loss"] == pytest.approx(steps["straight"][step]["loss"], abs=1e-5)
