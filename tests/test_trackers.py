"""report_to: the metrics a run writes to metrics.jsonl reach TensorBoard too, read back from its event files."""

import json

import pytest
import yaml

from r1lab.config import ConfigError
from r1lab.pipeline import load_recipe, run_recipe

pytest.importorskip("tensorboard")


def _recipe(tmp_path, model, **run) -> str:
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tracked", "output_dir": str(tmp_path / "runs"), "model": str(model), "threads": 1,
        "task": {"name": "arithmetic", "options": {"digits": 1}}, **run,
        "stages": {"grpo": {"kind": "grpo", "steps": 2, "prompts_per_step": 2, "group_size": 2,
                            "max_new_tokens": 8, "eval_every": 0, "save_every": 0, "eval": False}}}))
    return str(path)


def test_tensorboard_gets_every_logged_metric_and_the_config(tmp_path, tiny_checkpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run_recipe(_recipe(tmp_path, tiny_checkpoint, report_to=["tensorboard"]), quiet=True)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    steps = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "step_seconds" in row]
    assert len(steps) == 2
    for key in ("loss", "reward/mean", "grad_norm"):
        logged = events.Scalars(f"grpo/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in steps], rel=1e-5, abs=1e-6)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: tracked" in config and "kind: grpo" in config


def test_an_unknown_tracker_is_named_with_the_supported_ones(tmp_path, tiny_checkpoint):
    with pytest.raises(ConfigError, match=r"report_to = \[\"wandb\"\]: 'wandb' is not a tracker r1lab reports to; "
                                          r"supported: tensorboard"):
        load_recipe(_recipe(tmp_path, tiny_checkpoint, report_to=["wandb"]))
