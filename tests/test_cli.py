"""Smoke runs of every tiny recipe through the real CLI, and the bad inputs a user meets."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPES = sorted((ROOT / "recipes" / "tiny").glob("*.yaml"))


def r1lab(*args, env_extra=None, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "r1lab", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=600)


# Settings that make a stage take seconds; each stage gets those its kind has.
SHRINK = {"steps": 2, "max_steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16, "eval_every": 1,
          "save_every": 1, "num_prompts": 4, "samples_per_prompt": 2, "few_shot_prompts": 2,
          "add_domain_examples": 4, "domain_pairs": 4, "batch_size": 4, "num_problems": 4, "k": 2}


def shrink_overrides(recipe: Path, tmp_path: Path) -> list[str]:
    """Overrides that keep a recipe's structure but make every stage take seconds."""
    from r1lab.pipeline import STAGE_KINDS

    data = yaml.safe_load(recipe.read_text())
    out = [f"output_dir={tmp_path}", "eval.num_problems=4", "eval.k=2", "eval.quick_problems=4", "eval.quick_k=1",
           "eval.max_new_tokens=16"]
    for name, stage in data["stages"].items():
        if stage["kind"] == "pretrain":
            out += [f"stages.{name}.steps=3", f"stages.{name}.corpus_problems=64", f"stages.{name}.batch_size=4",
                    f"stages.{name}.cache_dir={tmp_path / 'cache'}", f"stages.{name}.hidden_size=32",
                    f"stages.{name}.num_layers=1", f"stages.{name}.intermediate_size=64",
                    f"stages.{name}.num_heads=2"]
        else:
            fields = {f.name for f in dataclasses.fields(STAGE_KINDS[stage["kind"]])}
            out += [f"stages.{name}.{key}={value}" for key, value in SHRINK.items()
                    if key in fields and (key != "few_shot_prompts" or stage.get(key))]
    return out


@pytest.mark.parametrize("recipe", TINY_RECIPES, ids=lambda p: p.stem)
def test_every_tiny_recipe_runs_through_the_cli(recipe, tmp_path):
    result = r1lab("run", recipe, *shrink_overrides(recipe, tmp_path), "name=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "smoke"
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = yaml.safe_load(recipe.read_text())["stages"]
    assert [s["stage"] for s in summary["stages"]] == list(stages)
    for entry in summary["stages"]:
        if entry["kind"] in ("cold_start", "rejection_sampling", "preference_pairs", "reward_model", "check_gate"):
            assert entry["eval"] is None  # a data set, a reward model or a measurement: no task evaluation
            continue
        assert entry["eval"] is not None and 0.0 <= entry["eval"]["pass@1"] <= 1.0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if "reward/mean" in m]
    for key in ["reward/mean", "reward/std", "reward/accuracy", "reward/format", "clip_frac", "entropy",
                "completion/length_mean", "groups/zero_spread_frac", "step_seconds"]:
        assert all(key in m for m in rl), key
    assert (run_dir / "samples.jsonl").read_text().strip()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "training_curves.png").is_file()
    assert (run_dir / "report.html").is_file()
    # the report command renders it again
    assert r1lab("report", run_dir).returncode == 0
    # a second run finds every stage done and changes nothing
    again = r1lab("run", recipe, *shrink_overrides(recipe, tmp_path), "name=smoke")
    assert again.returncode == 0 and "already done" in again.stderr


def grpo_recipe(tmp_path, model, *, rewards=None, max_new_tokens=12, task=None):
    recipe = {
        "name": "bad", "output_dir": str(tmp_path / "runs"), "model": str(model),
        "task": task or {"name": "arithmetic", "options": {"digits": 2}},
        "eval": {"num_problems": 4, "k": 2, "max_new_tokens": max_new_tokens, "quick_problems": 4, "quick_k": 1},
        "stages": {"grpo": {"kind": "grpo", "steps": 2, "prompts_per_step": 2, "group_size": 2,
                            "max_new_tokens": max_new_tokens, "eval_every": 0,
                            "rewards": rewards or {"accuracy": 1.0, "format": 0.1}}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def help_config(*kind):
    return subprocess.run([sys.executable, "-m", "r1lab", "run", "--help-config", *kind], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_help_config_lists_every_key_of_a_stage_kind():
    result = help_config("grpo")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "float" in lines["clip_eps"] and "0.2" in lines["clip_eps"]
    assert "kl_coef" in lines and "task.name" in lines and "group_size" in lines
    assert "lora.r" not in lines and "Stage kind 'ppo'" not in result.stdout  # that kind only, no run-level keys


def test_help_config_without_a_kind_lists_run_keys_and_every_kind():
    result = help_config()
    assert result.returncode == 0, result.stderr
    keys = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"lora.r", "eval.k", "filters.min_language_share", "clip_eps"} <= keys
    assert "Stage kind 'ppo'" in result.stdout and "Stage kind 'sft'" in result.stdout


def test_help_config_unknown_kind_names_the_known_ones():
    result = help_config("grpx")
    assert result.returncode != 0
    assert "unknown stage kind 'grpx'" in result.stderr and "grpo" in result.stderr and "ppo" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_is_a_clear_cli_error(tmp_path, tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_checkpoint)
    result = r1lab("run", path, "stages.grpo.learning_rate=1")
    assert result.returncode == 2
    assert "unknown key 'stages.grpo.learning_rate'" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_file(tmp_path, tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_checkpoint,
                       task={"name": "jsonl", "options": {"train_path": str(tmp_path / "missing.jsonl")}})
    result = r1lab("run", path)
    assert result.returncode == 2 and "missing.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_dataset_row_without_answer(tmp_path, tiny_checkpoint):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    path = grpo_recipe(tmp_path, tiny_checkpoint, task={"name": "jsonl", "options": {"train_path": str(data)}})
    result = r1lab("run", path)
    assert result.returncode == 2 and "data.jsonl:2" in result.stderr and "answer" in result.stderr


def test_reward_that_raises_is_counted_and_the_run_goes_on(tmp_path, tiny_checkpoint):
    user = tmp_path / "my_rewards.py"
    user.write_text("def flaky(completion, example):\n    raise RuntimeError('boom')\n")
    path = grpo_recipe(tmp_path, tiny_checkpoint, rewards={"accuracy": 1.0, f"{user}:flaky": 0.5})
    result = r1lab("run", path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "boom" in result.stderr  # the first failure is reported once
    metrics = [json.loads(l) for l in (tmp_path / "runs" / "bad" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/flaky_errors" in m]
    assert len(steps) == 2 and all(m["reward/flaky_errors"] == 4 for m in steps)


def test_completion_length_that_cuts_everything_warns(tmp_path, tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_checkpoint, max_new_tokens=2)
    result = r1lab("run", path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hit max_new_tokens=2" in result.stderr
    # once for the stretch of steps it lasts, naming the step as the progress lines and metrics.jsonl do (1-based)
    warned = [int(line.split("step ")[1].split(":")[0]) for line in result.stderr.splitlines()
              if "hit max_new_tokens" in line]
    logged = [json.loads(l) for l in (tmp_path / "runs" / "bad" / "metrics.jsonl").read_text().splitlines()]
    assert warned == [1] and [row["completion/truncated_frac"] for row in logged if "step_seconds" in row] == [1, 1]
    summary = json.loads((tmp_path / "runs" / "bad" / "summary.json").read_text())
    assert any("max_new_tokens" in w for w in summary["stages"][0]["warnings"])


def test_eval_command_on_a_checkpoint(tmp_path, tiny_checkpoint):
    samples = tmp_path / "samples.jsonl"
    result = r1lab("eval", "--model", tiny_checkpoint, "--task", "arithmetic", "--task-option", "digits=2",
                   "--k", "2", "--num-problems", "3", "--max-new-tokens", "8", "--samples", samples)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["k"] == 2 and out["num_problems"] == 3 and 0 <= out["pass@1"] <= 1
    assert len(samples.read_text().splitlines()) == 6


def test_report_refuses_a_folder_that_is_not_a_run_and_names_a_corrupted_summary(tmp_path):
    (tmp_path / "photos").mkdir()
    result = r1lab("report", tmp_path / "photos")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'photos'} is not a run folder" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"run": ')
    result = r1lab("report", tmp_path / "run")
    assert result.returncode == 1 and (tmp_path / "run" / "report.html").is_file()
    assert f"{tmp_path / 'run' / 'summary.json'} is corrupted" in result.stderr
    assert "running `r1lab run` on the recipe again rewrites it" in result.stderr


def test_version_and_eval_help_describe_themselves():
    from r1lab.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0
    eval_help = next(action for action in parser._subparsers._group_actions[0].choices.items()
                     if action[0] == "eval")[1].format_help()
    for text in ("countdown", "samples per problem", "else 0.6", "runs/<run>/<stage>/final", "a run folder"):
        assert text in " ".join(eval_help.split()), text


def test_dry_run_prints_the_resolved_recipe_and_runs_nothing(tmp_path):
    from r1lab.cli import main
    from r1lab.recipe_file import resolved_recipe

    text = resolved_recipe(str(ROOT / "recipes" / "tiny" / "r1_zero.yaml"),
                           [f"output_dir={tmp_path}", "stages.grpo.steps=7"])
    resolved = yaml.safe_load(text)
    assert resolved["stages"]["grpo"]["steps"] == 7
    assert resolved["stages"]["grpo"]["clip_eps"] == 0.2  # a default the recipe does not write
    assert resolved["eval"]["k"] == 4 and resolved["stages"]["base"]["kind"] == "pretrain"
    assert main(["run", str(ROOT / "recipes" / "tiny" / "r1_zero.yaml"), f"output_dir={tmp_path}", "--dry-run"]) == 0
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written
    assert main(["run", str(ROOT / "recipes" / "tiny" / "r1_zero.yaml"), "stages.grpo.top_p=2", "--dry-run"]) == 2


def test_an_override_without_a_space_after_the_colon_says_how_to_write_it():
    from r1lab.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"write 'stages.grpo.rewards=\{accuracy: 1.0, format: 0.1\}'"):
        apply_overrides({}, ["stages.grpo.rewards={accuracy:1.0,format:0.1}"])
    assert apply_overrides({}, ["stages.grpo.rewards={accuracy: 1.0, my.py:f: 0.5}"]) == {
        "stages": {"grpo": {"rewards": {"accuracy": 1.0, "my.py:f": 0.5}}}}


def test_eval_on_a_run_uses_the_runs_task_template_and_settings(tmp_path):
    """r1lab eval runs/<name>[/<stage>]: the model of the run's last stage (or of the stage), the run's task and
    evaluation settings; options given on the command line win."""
    from r1lab.cli import build_parser
    from r1lab.commands import eval_settings

    run = tmp_path / "runs" / "r"
    for stage, model in (("base", "runs/r/base/model"), ("grpo", "runs/r/grpo/final"), ("data", None)):
        (run / stage).mkdir(parents=True)
        (run / stage / "done.json").write_text(json.dumps({"stage": stage, "kind": "x", "model": model}))
    (run / "summary.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "task": {"name": "countdown", "options": {"numbers": 3}}, "template": {"kind": "plain", "prefill_think": True},
        "eval": {"k": 8, "num_problems": 50, "max_new_tokens": 48, "temperature": 0.6, "top_p": 0.95, "seed": 7},
        "dtype": "float32", "stages": {"base": {}, "grpo": {}, "data": {}}}))
    parse = build_parser().parse_args
    settings = eval_settings(parse(["eval", str(run)]))
    assert settings["model"] == "runs/r/grpo/final" and settings["task"] == "countdown"
    assert settings["task_options"] == {"numbers": 3} and settings["k"] == 8 and settings["max_new_tokens"] == 48
    assert settings["template"] == "plain" and settings["prefill_think"] is True and settings["seed"] == 7
    settings = eval_settings(parse(["eval", str(run / "base"), "--k", "2", "--task", "arithmetic"]))
    assert settings["model"] == "runs/r/base/model" and settings["k"] == 2 and settings["task"] == "arithmetic"
    assert settings["num_problems"] == 50  # not given: still the run's
    settings = eval_settings(parse(["eval", "--model", "m"]))  # no run: the defaults
    assert (settings["model"], settings["task"], settings["k"], settings["max_new_tokens"]) == ("m", "arithmetic", 4, 64)
    with pytest.raises(Exception, match="not a run folder"):
        eval_settings(parse(["eval", str(tmp_path)]))


RECIPE = str(ROOT / "recipes" / "tiny" / "r1_zero.yaml")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"], ["eval", "--help"],
                                  ["run", "--help-config", "grpo"], ["run", RECIPE, "--dry-run", "name=x"]])
def test_help_and_version_answer_without_importing_torch_or_transformers(argv):
    """What keeps `r1lab --help` near 0.1 s (bench/startup.py measures it): the commands, which need torch, are
    imported only once the command line is parsed."""
    probe = ("import sys\nfrom r1lab.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))" % argv)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_mistake_in_a_recipe_is_reported_without_importing_torch(tmp_path):
    """A misspelt key is named before torch loads (bench/startup.py: 0.2 s instead of 2.6 s)."""
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("name: typo\nstages:\n  grpo:\n    kind: grpo\n    stpes: 3\n")
    probe = ("import sys\nfrom r1lab.cli import main\ncode = main(['run', %r])\n"
             "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))" % str(recipe))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "2 []", result.stdout + result.stderr
    assert "unknown key 'stages.grpo.stpes'" in result.stderr


def test_a_stage_warning_is_printed_once(tmp_path, tiny_checkpoint):
    rows = [{"prompt": f"{i}+1", "completion": f"<answer>{i + 1}</answer>"} for i in range(6)]
    rows.append({"prompt": "9+9", "completion": "<think>" + "9+9=18 " * 40 + "</think><answer>18</answer>"})
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "warns.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "warns", "output_dir": str(tmp_path / "runs"), "model": str(tiny_checkpoint), "threads": 1,
        "task": {"name": "arithmetic", "options": {"digits": 1}},
        "stages": {"sft": {"kind": "sft", "data": str(data), "max_length": 64, "max_steps": 1, "batch_size": 4,
                           "eval": False, "eval_fraction": 0.0, "micro_batch_tokens": 0}}}))
    result = subprocess.run([sys.executable, "-m", "r1lab", "run", str(recipe)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("longer than max_length=64 tokens and were dropped") == 1, result.stderr


def test_eval_on_a_run_reproduces_the_runs_own_evaluation(tmp_path, tiny_checkpoint):
    """Same model, task, template, settings, seed and engine as the held-out evaluation after the run's last stage:
    the same numbers, not ones a little off."""
    run_dir = tmp_path / "runs" / "bad"
    assert r1lab("run", grpo_recipe(tmp_path, tiny_checkpoint)).returncode == 0
    recorded = json.loads((run_dir / "summary.json").read_text())["stages"][-1]["eval"]
    result = r1lab("eval", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads(result.stdout)
    assert "engine auto" in result.stderr
    assert {key: evaluated[key] for key in ("pass@1", "cons@k", "format_rate", "length_mean")} == {
        key: recorded[key] for key in ("pass@1", "cons@k", "format_rate", "length_mean")}
