"""A run that executes model-written code says which isolation the programs get, and stops before any stage when
there is none it may use."""

import pytest
import yaml

from r1lab import pipeline
from r1lab.config import ConfigError
from r1lab.sandbox import SandboxUnavailable


def code_recipe(tmp_path, model, rewards):
    path = tmp_path / "code.yaml"
    path.write_text(yaml.safe_dump({
        "name": "code", "output_dir": str(tmp_path / "runs"), "model": str(model),
        "task": {"name": "arithmetic", "options": {"digits": 1}},
        "stages": {"grpo": {"kind": "grpo", "steps": 1, "prompts_per_step": 1, "group_size": 2, "max_new_tokens": 4,
                            "eval_every": 0, "eval": False, "rewards": rewards}}}))
    return path


def test_no_isolation_stops_the_run_before_any_stage(tmp_path, tiny_checkpoint, monkeypatch):
    def unavailable(limits=None):
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap, or R1LAB_SANDBOX=weak")

    monkeypatch.setattr(pipeline, "sandbox_isolation", unavailable)
    with pytest.raises(ConfigError, match="runs model-written code .* apt-get install bubblewrap"):
        pipeline.run_recipe(code_recipe(tmp_path, tiny_checkpoint, {"accuracy": 1.0, "code": 0.5}), quiet=True)
    assert not (tmp_path / "runs" / "code" / "grpo" / "done.json").exists()


def test_runs_without_code_do_not_ask_for_a_sandbox(tmp_path, tiny_checkpoint):
    run, stages = pipeline.load_recipe(code_recipe(tmp_path, tiny_checkpoint, {"accuracy": 1.0}))
    assert not pipeline._runs_model_written_code(run, stages)
    run, stages = pipeline.load_recipe(code_recipe(tmp_path, tiny_checkpoint, {"accuracy": 1.0, "code": 1.0}))
    assert pipeline._runs_model_written_code(run, stages)
