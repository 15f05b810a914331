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
