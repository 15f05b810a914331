"""torchrun on this CPU: two processes with gloo give the one-process results (README, "Many processes")."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lab import dist
from r1lab.fsdp import missing_fsdp2_methods

# FSDP2's runs need torch 2.8 or newer (older ones get a clear error, tested below)
FSDP2 = pytest.param("fsdp2", marks=pytest.mark.skipif(bool(missing_fsdp2_methods()),
                                                       reason="parallel: fsdp2 needs torch 2.8 or newer"))

TIMEOUT = 240  # seconds for a two-process run that takes ~6 s on an idle 2-core machine


def _recipe(tmp_path, name: str, model, parallel: str = "ddp", **grpo) -> str:
    stage = {"kind": "grpo", "steps": 2, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 10,
             "eval_every": 0, "save_every": 0, "lr": 1e-3, "eval": False, "log_samples": 16, "samples_every": 1,
             "rewards": {"format_soft": 1.0, "accuracy": 1.0}, **grpo}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "model": str(model),
                                    "threads": 1, "parallel": parallel,
                                    "task": {"name": "arithmetic", "options": {"digits": 1}},
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


def _step_metrics(run_dir) -> list[dict]:
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "step_seconds" in row]


PPO_SETTINGS = {"kind": "ppo", "target_kl": 0.1, "kl_coef": 0.05, "updates_per_rollout": 1, "minibatches": 1}


@pytest.fixture(scope="module")
def ppo_one_process(tmp_path_factory, eos_prone_checkpoint):
    tmp_path = tmp_path_factory.mktemp("ppo_one")
    one = _run(_recipe(tmp_path, "one", eos_prone_checkpoint, **PPO_SETTINGS), 1)
    assert one.returncode == 0, one.stderr[-3000:]
    return tmp_path / "runs" / "one"


@pytest.mark.parametrize("parallel", ["ddp", FSDP2])
def test_ppo_on_two_processes_equals_one_process(tmp_path, eos_prone_checkpoint, ppo_one_process, parallel):
    """PPO splits like GRPO; its advantages are whitened and its adaptive KL measured over every rank's tokens (one
    pass, one minibatch: with more, each rank shuffles its own share, so the minibatches differ from one process');
    under fsdp2 the critic is sharded like the policy."""
    two = _run(_recipe(tmp_path, "two", eos_prone_checkpoint, parallel=parallel, **PPO_SETTINGS), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    for part in ("model.safetensors", "value_model/model.safetensors", "value_model/value_head.safetensors"):
        a, b = load_file(ppo_one_process / "grpo" / "final" / part), load_file(runs / "two" / "grpo" / "final" / part)
        for key in a:
            # 5e-6: the whitening's sums run in another order, and AdamW's first steps (about lr × sign) magnify
            # a rounding difference on a gradient near 0 (1.3e-6 measured on one of 3,360 embedding weights)
            torch.testing.assert_close(b[key], a[key], atol=5e-6, rtol=0, msg=lambda m: f"{part} {key}: {m}")
    for x, y in zip(_step_metrics(ppo_one_process), _step_metrics(runs / "two")):
        for key in ("loss", "kl_coef", "kl/per_completion", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), key


@pytest.mark.parametrize("parallel", ["ddp", FSDP2])
def test_grpo_on_two_processes_equals_one_process(tmp_path, eos_prone_checkpoint, four_steps_straight, parallel):
    grpo_one_process = four_steps_straight  # four steps in one process, the same settings
    two = _run(_recipe(tmp_path, "two", eos_prone_checkpoint, parallel=parallel, steps=4, save_every=2,
                       rewards=_stopping_rewards(tmp_path)), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    a = load_file(grpo_one_process / "grpo" / "final" / "model.safetensors")
    b = load_file(runs / "two" / "grpo" / "final" / "model.safetensors")
    start = load_file(eos_prone_checkpoint / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a), "the steps must move the weights"
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    # every step's loss and rollout metrics are those of the one-process run (rank 0 logs the whole step)
    metrics = {"one": _step_metrics(grpo_one_process), "two": _step_metrics(runs / "two")}
    assert len(metrics["one"]) == len(metrics["two"]) == 4
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


def _fixed_data_recipe(tmp_path, name: str, parallel: str = "ddp") -> str:
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
                                    "parallel": parallel, "task": {"name": "arithmetic", "options": {"digits": 1}}, "stages": stages},
                                   sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def fixed_data_one_process(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fixed_one")
    one = _run(_fixed_data_recipe(tmp_path, "one"), 1)
    assert one.returncode == 0, one.stderr[-3000:]
    return tmp_path / "runs" / "one"


@pytest.mark.parametrize("parallel", ["ddp", FSDP2])
def test_pretraining_sft_dpo_and_reward_model_on_two_processes_equal_one_process(tmp_path, fixed_data_one_process,
                                                                                   parallel):
    two = _run(_fixed_data_recipe(tmp_path, "two", parallel), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    for stage, folder in (("base", "model"), ("sft", "final"), ("dpo", "final"), ("rm", "final")):
        a = load_file(fixed_data_one_process / stage / folder / "model.safetensors")
        b = load_file(runs / "two" / stage / folder / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=lambda m: f"{stage} {key}: {m}")
    one, two = _step_metrics(fixed_data_one_process), _step_metrics(runs / "two")
    assert len(one) == len(two) == 6  # 2 steps per trained stage
    for x, y in zip(one, two):
        for key in ("loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), key
    assert not (runs / ".rank1").exists()


def _data_recipe(tmp_path, name: str, model) -> str:
    """Rejection sampling and preference pairs over 7 and 5 prompts (split 4 + 3 and 3 + 2), then a GRPO step
    whose final evaluation (5 problems × 2 samples) splits too."""
    sampling = {"samples_per_prompt": 3, "max_new_tokens": 10, "temperature": 1.0, "top_p": 1.0}
    stages = {
        "rs": {"kind": "rejection_sampling", "num_prompts": 7, **sampling},
        "pairs": {"kind": "preference_pairs", "num_prompts": 5, "domain_pairs": 2, **sampling},
        "grpo": {"kind": "grpo", "steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 10,
                 "eval_every": 0, "save_every": 0, "eval": True, "rewards": {"format_soft": 1.0}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "model": str(model),
                                    "threads": 1, "task": {"name": "arithmetic", "options": {"digits": 1}},
                                    "eval": {"num_problems": 5, "k": 2, "max_new_tokens": 10},
                                    "stages": stages}, sort_keys=False))
    return str(path)


def test_data_stages_and_evaluations_split_over_ranks_write_what_one_process_writes(tmp_path, eos_prone_checkpoint):
    one = _run(_data_recipe(tmp_path, "one", eos_prone_checkpoint), 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_data_recipe(tmp_path, "two", eos_prone_checkpoint), 2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"
    for stage in ("rs", "pairs"):
        a, b = (json.loads((runs / name / stage / "stats.json").read_text()) for name in ("one", "two"))
        assert a == b and a["sampled"] > 0, (stage, a, b)
    for name in ("data.jsonl", "pairs.jsonl"):
        stage = "rs" if name == "data.jsonl" else "pairs"
        rows = [[{k: v for k, v in json.loads(line).items() if k != "source"}
                 for line in (runs / run / stage / name).read_text().splitlines()] for run in ("one", "two")]
        assert rows[0] == rows[1]
    summaries = [json.loads((runs / name / "summary.json").read_text())["stages"][-1]["eval"] for name in ("one", "two")]
    assert summaries[0] == summaries[1]
    samples = [(runs / name / "grpo" / "eval_samples.jsonl").read_text().splitlines() for name in ("one", "two")]
    assert len(samples[0]) == 10 and samples[0] == samples[1]


def test_prompts_that_cannot_be_split_by_whole_groups_are_refused_before_anything_runs(tmp_path, monkeypatch,
                                                                                        eos_prone_checkpoint):
    from r1lab.config import ConfigError
    from r1lab.pipeline import load_recipe

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for two processes
    with pytest.raises(ConfigError, match=r"stages.grpo.prompts_per_step = 3: cannot be split evenly over 2 "
                                          r"processes .* make it a multiple of 2"):
        load_recipe(_recipe(tmp_path, "odd", eos_prone_checkpoint, prompts_per_step=3))
    load_recipe(_recipe(tmp_path, "even", eos_prone_checkpoint, prompts_per_step=4))


def test_shard_gives_each_rank_whole_equal_parts(monkeypatch):
    monkeypatch.setattr(dist, "_world", dist.World(rank=1, world_size=2))
    assert dist.shard(8) == (4, 8)
    monkeypatch.setattr(dist, "_world", dist.World(rank=0, world_size=2))
    assert dist.shard(8) == (0, 4)
    with pytest.raises(ValueError, match="5 items cannot be split evenly over 2 processes"):
        dist.shard(5)
    monkeypatch.setattr(dist, "_world", dist.World())
    assert dist.shard(5) == (0, 5)


def test_fsdp2_on_a_torch_without_what_it_needs_says_which_torch(monkeypatch):
    from torch.distributed.fsdp import FSDPModule

    from r1lab.fsdp import check_fsdp2_support

    if not missing_fsdp2_methods():
        check_fsdp2_support()  # this torch has what it needs
    monkeypatch.delattr(FSDPModule, "set_force_sum_reduction_for_comms", raising=False)
    with pytest.raises(RuntimeError, match=r"parallel: fsdp2 needs torch 2.8 or newer \(FSDP2's .*"
                                           r"set_force_sum_reduction_for_comms\); this is torch .*parallel: ddp"):
        check_fsdp2_support()


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


def _stopping_rewards(folder) -> dict:
    reward_file = folder / "stopping_reward.py"
    reward_file.write_text(STOPPING_REWARD)
    return {"format_soft": 1.0, "accuracy": 1.0, f"{reward_file}:reward": 1.0}


@pytest.fixture(scope="module")
def four_steps_straight(tmp_path_factory, eos_prone_checkpoint):
    """Four GRPO steps in one process, never stopped."""
    tmp_path = tmp_path_factory.mktemp("straight")
    recipe = _recipe(tmp_path, "straight", eos_prone_checkpoint, steps=4, save_every=2,
                     rewards=_stopping_rewards(tmp_path))
    straight = _run(recipe, 1)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return tmp_path / "runs" / "straight"


@pytest.mark.parametrize("stopped_at, resumed_at, parallel", [(1, 2, "ddp"), pytest.param(2, 1, "fsdp2", marks=FSDP2.marks)])
def test_a_run_stopped_at_one_world_size_resumes_at_another_with_the_same_steps(
        tmp_path, eos_prone_checkpoint, four_steps_straight, stopped_at, resumed_at, parallel):
    recipe = _recipe(tmp_path, "resumed", eos_prone_checkpoint, parallel=parallel, steps=4, save_every=2,
                     rewards=_stopping_rewards(tmp_path))
    runs = tmp_path / "runs"
    killed = _run_killed_after_checkpoint(recipe, runs / "resumed", stopped_at)
    assert killed.returncode != 0 and not (runs / "resumed" / "grpo" / "final").exists()
    resumed = _run(recipe, resumed_at)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(four_steps_straight / "grpo" / "final" / "model.safetensors")
    b = load_file(runs / "resumed" / "grpo" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    straight, resumed_rows = _step_metrics(four_steps_straight), _step_metrics(runs / "resumed")
    assert [row["step"] for row in resumed_rows] == [1, 2, 3, 4]  # steps 1-2 before the kill, 3-4 after: resumed
    for x, y in zip(straight[2:], resumed_rows[2:]):  # the steps after the resume are the uninterrupted run's
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)


def test_sample_and_score_samples_only_this_ranks_part_numbered_by_its_place(monkeypatch):
    """Rank 1 of 2 with 7 prompts × 3: it samples prompts 4-6 as sequences 12-20 of the call, and gets back every
    rank's samples in order (the all-gather is played by a fake here)."""
    from types import SimpleNamespace

    from r1lab import generation
    from r1lab.engine import SamplingParams
    from r1lab.templates import PromptTemplate
    from r1lab.recipe import TemplateConfig

    class Engine:
        calls = []

        def generate(self, prompts, n, params):
            ids = [re.search(r"p\d\d", p).group() for p in prompts]
            self.calls.append((ids, params.first_sequence))
            return [[SimpleNamespace(text=f"<answer>{p}#{i}</answer>") for i in range(n)] for p in ids]

    monkeypatch.setattr(dist, "_world", dist.World(rank=1, world_size=2))
    rank0_part = {}
    monkeypatch.setattr(generation, "all_gather_objects", lambda part: [rank0_part["samples"], part])
    template = PromptTemplate(TemplateConfig())
    examples = [{"prompt": f"p{i:02d}", "answer": str(i)} for i in range(7)]
    engine = Engine()
    rank0_part["samples"] = generation.sample_and_score(engine, template, examples[:4], 3, SamplingParams(seed=5))
    engine.calls.clear()
    samples = generation.sample_and_score(engine, template, examples, 3, SamplingParams(seed=5, first_sequence=0),
                                          split_over_ranks=True)
    (prompts, first), = engine.calls
    assert prompts == ["p04", "p05", "p06"] and first == 12
    assert [e["prompt"] for e in samples.examples] == [f"p{i:02d}" for i in range(7) for _ in range(3)]
    assert len(samples.responses) == 21 and samples.responses[12].endswith("p04#0</answer>")
