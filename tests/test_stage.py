"""The stage interface: one resolver of what earlier stages produced, done.json entries of older runs still read,
and the generator a stage builds hears of every optimizer step of its policy."""

import json

import pytest
import torch

from r1lab.config import ConfigError
from r1lab.console import Console
from r1lab.policy import OptimizerSettings
from r1lab.recipe import RunConfig
from r1lab.stage import RunOutputs, Stage, StageOutput, read_done


def write_done(run, name, entry):
    (run / name).mkdir(parents=True)
    (run / name / "done.json").write_text(json.dumps({"stage": name, **entry}))
    return run / name / "done.json"


def test_done_entries_written_before_models_and_data_were_apart_are_read_into_the_new_fields(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    assert read_done(write_done(tmp_path, "rs", {"kind": "rejection_sampling", "checkpoint": str(data)})) == {
        "stage": "rs", "kind": "rejection_sampling", "model": None, "data_file": str(data)}
    rm = read_done(write_done(tmp_path, "rm", {"kind": "reward_model", "checkpoint": "base"}))
    assert rm["model"] == "base" and rm["data_file"] is None and rm["reward_model"] == str(tmp_path / "rm" / "final")


def test_reward_models_are_resolved_by_stage_name(tmp_path):
    write_done(tmp_path, "rm", {"kind": "reward_model", "model": "base", "data_file": None,
                                "reward_model": "runs/x/rm/final"})
    outputs = RunOutputs(tmp_path, "base")
    assert outputs.reward_model("rm") == "runs/x/rm/final"
    assert outputs.reward_model("missing") is None
    assert outputs.model("rm", default="last") == "base"  # the policy passed through the reward-model stage


def test_a_stage_that_is_not_done_yet_is_taken_as_a_path(tmp_path):
    (tmp_path / "half").mkdir()  # a folder without done.json: not an output yet
    outputs = RunOutputs(tmp_path, "base")
    assert outputs.model("half", default="last") == "half"
    with pytest.raises(ConfigError, match="set data: to a JSONL file"):
        outputs.data("")


def test_the_stages_generator_is_refreshed_by_its_policy(tmp_path, tiny_checkpoint):
    run = RunConfig(name="t", output_dir=str(tmp_path), model=str(tiny_checkpoint), device="cpu")
    stage = Stage(name="s", run=run, task=None, init=str(tiny_checkpoint),
                  outputs=RunOutputs(tmp_path / "t", run.model), folder=tmp_path / "t" / "s",
                  device=torch.device("cpu"), console=Console(quiet=True))
    policy = stage.load_policy()
    assert stage.template is not None and stage.template.tokenizer is policy.tokenizer
    generator = stage.generator(policy)
    refreshed = []
    generator.engine.sync_weights = lambda: refreshed.append(True)
    policy.configure_optimizer(OptimizerSettings(lr=1e-3), lambda step: 1.0)
    for _ in range(2):
        policy.optimizer_step()
    assert refreshed == [True, True]
    assert StageOutput(model="x").data_file is None
