"""The run folder is the record of a run (r1lab.run_record): each stage keeps the settings it ran with, a rerun with a
changed recipe cannot make the run describe results it did not produce, the base model a run built is in the run
folder, and the logs hold no line twice after a resume."""

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import yaml

from r1lab.config import to_dict
from r1lab.pipeline import load_recipe, run_recipe
from r1lab.run_record import drop_log_lines, record_differences, stage_record
from r1lab.stage import checkpoint_step
from tests.test_cli import grpo_recipe
from tests.test_locks import TINY_BASE


def _set(path: Path, **stage_settings) -> Path:
    data = yaml.safe_load(path.read_text())
    data["stages"]["grpo"].update(stage_settings)
    data["keep_checkpoints"] = True  # these tests resume a finished stage from its checkpoint
    path.write_text(yaml.safe_dump(data))
    return path


def _metric_keys(run_dir: Path) -> Counter:
    """(stage, step, keys) of every metrics line: what a resumed run must log once each, as an uninterrupted one."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return Counter((m["stage"], m["step"], tuple(sorted(m))) for m in map(json.loads, lines))


def test_each_stage_keeps_every_setting_it_ran_with_and_done_json_its_hash(tmp_path, tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_checkpoint)
    run_dir = run_recipe(path, quiet=True)
    run, stages = load_recipe(path)
    text = (run_dir / "grpo" / "config.yaml").read_text()
    record = yaml.safe_load(text)
    assert record["settings"] == to_dict(stages["grpo"])  # every field, defaults too
    assert record["run"] == {key: value for key, value in to_dict(run).items() if key != "stages"}
    assert record["init"] == str(tiny_checkpoint)
    done = json.loads((run_dir / "grpo" / "done.json").read_text())
    assert done["config_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    top = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert top["stages"]["grpo"] == to_dict(stages["grpo"]) and top["eval"]["k"] == 2


def test_a_rerun_with_changed_settings_keeps_the_done_stage_and_its_record_and_says_what_differs(
        tmp_path, tiny_checkpoint, capsys):
    path = grpo_recipe(tmp_path, tiny_checkpoint)
    run_dir = run_recipe(path, quiet=True)
    record_before = (run_dir / "grpo" / "config.yaml").read_bytes()
    weights_before = (run_dir / "grpo" / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()

    run_recipe(_set(path, lr=1e-3), ["eval.k=3", "threads=1"])
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps lines at the terminal's width
    assert "[grpo] note: already done with other settings than this recipe's; kept" in err
    assert "stages.grpo.lr: 0.0001 (ran with) -> 0.001 (this recipe)" in err
    assert "eval.k: 2 (ran with) -> 3 (this recipe)" in err and "threads" not in err  # threads: not what it computes
    assert (run_dir / "grpo" / "config.yaml").read_bytes() == record_before  # the stage's record stays the truth
    assert (run_dir / "grpo" / "final" / "model.safetensors").read_bytes() == weights_before
    top_text = (run_dir / "config.yaml").read_text()
    top = yaml.safe_load(top_text)
    assert top["stages"]["grpo"]["lr"] == 1e-4  # the section of a done stage is what it ran with
    assert top["eval"]["k"] == 3  # the run-level settings are the latest recipe's ...
    assert "# Stage 'grpo' was done earlier with other settings" in top_text  # ... and the header says which differ
    assert "#   eval.k: 2 (ran with) -> 3 (this recipe)" in top_text


def test_a_resumed_stage_logs_every_step_once(tmp_path, tiny_checkpoint):
    path = _set(grpo_recipe(tmp_path, tiny_checkpoint), steps=4, save_every=2, eval_every=2)
    run_dir = run_recipe(path, quiet=True)
    expected = _metric_keys(run_dir)
    assert checkpoint_step(run_dir / "grpo" / "checkpoint") == 2
    # as if killed during its final evaluation: steps 3 and 4 and the evaluation were logged, the stage is not done,
    # and the last line was cut short
    (run_dir / "grpo" / "done.json").unlink()
    shutil.rmtree(run_dir / "grpo" / "final")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"stage": "grpo", "step": 4, "reward/me')
    with open(run_dir / "samples.jsonl") as f:
        samples_before = f.read()

    run_recipe(path, quiet=True)
    assert _metric_keys(run_dir) == expected  # the same lines as the uninterrupted run: none twice, none lost
    assert max(_metric_keys(run_dir).values()) == 1
    assert (run_dir / "samples.jsonl").read_text() == samples_before  # samples of steps 3-4 dropped, then written again


def test_a_stage_resumed_with_other_settings_says_so(tmp_path, tiny_checkpoint):
    path = _set(grpo_recipe(tmp_path, tiny_checkpoint), steps=4, save_every=2)
    run_dir = run_recipe(path, quiet=True)
    (run_dir / "grpo" / "done.json").unlink()
    run_recipe(_set(path, lr=2e-4), quiet=True)
    done = json.loads((run_dir / "grpo" / "done.json").read_text())
    assert any(w.startswith("resuming from the step-2 checkpoint, made with other settings (its first 2 steps ran "
                            "with them): stages.grpo.lr: 0.0001 (ran with) -> 0.0002 (this recipe)")
               for w in done["warnings"])
    assert yaml.safe_load((run_dir / "grpo" / "config.yaml").read_text())["settings"]["lr"] == 2e-4


def test_drop_log_lines(tmp_path):
    rows = [{"stage": "a", "step": 1}, {"stage": "b", "step": 0}, {"stage": "b", "step": 1},
            {"stage": "b", "step": 3}, {"stage": "b", "step": 1, "final_eval/pass@1": 0.5}, {"stage": "a", "step": 9}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"stage": "b", "st')
    assert drop_log_lines(tmp_path, "b", after_step=1) == 3  # step 3, the final evaluation, the cut line
    assert [json.loads(line) for line in path.read_text().splitlines()] == [rows[i] for i in (0, 1, 2, 5)]
    assert drop_log_lines(tmp_path, "b", after_step=1) == 0
    assert drop_log_lines(tmp_path, "b", after_step=-1) == 2  # starting afresh: every line of the stage goes
    assert [json.loads(line) for line in path.read_text().splitlines()] == [rows[0], rows[5]]


def test_record_differences_ignore_where_and_on_how_many_cores(tmp_path, tiny_checkpoint):
    run, stages = load_recipe(grpo_recipe(tmp_path, tiny_checkpoint))
    before = stage_record(run, "grpo", stages["grpo"])
    run.threads, run.name, run.output_dir = 7, "elsewhere", "other"
    assert record_differences(before, stage_record(run, "grpo", stages["grpo"])) == []
    stages["grpo"].rewards = {"accuracy": 1.0}
    assert record_differences(before, stage_record(run, "grpo", stages["grpo"])) == [
        "stages.grpo.rewards.format: 0.1 (ran with) -> (not set) (this recipe)"]


def test_the_base_model_a_run_built_is_in_the_run_folder(tmp_path):
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump({"name": "b", "output_dir": str(tmp_path / "runs"),
                                      "task": {"name": "arithmetic", "options": {"digits": 2}},
                                      "stages": {"base": {"kind": "pretrain", "cache_dir": str(tmp_path / "cache"),
                                                          **TINY_BASE}}}))
    run_dir = run_recipe(recipe, quiet=True)
    done = json.loads((run_dir / "base" / "done.json").read_text())
    assert done["model"] == str(run_dir / "base" / "model")
    [entry] = [p for p in (tmp_path / "cache" / "tiny-base").iterdir() if p.is_dir()]
    weights = (entry / "model.safetensors").read_bytes()
    assert (run_dir / "base" / "model" / "model.safetensors").read_bytes() == weights
    shutil.rmtree(tmp_path / "cache")  # the run keeps the base it used whatever happens to the cache
    assert (run_dir / "base" / "model" / "config.json").is_file()


def test_a_finished_stage_has_a_model_card_and_no_optimizer_state(tmp_path, tiny_checkpoint):
    """<stage>/final/README.md describes the model (base, command, settings, held-out results) in the Hugging Face
    format; <stage>/checkpoint (weights + optimizer state) is removed once the stage is done, unless kept."""
    spec = {"name": "card", "output_dir": str(tmp_path / "runs"), "model": str(tiny_checkpoint),
            "task": {"name": "arithmetic", "options": {"digits": 1}},
            "eval": {"num_problems": 2, "k": 1, "max_new_tokens": 4},
            "stages": {"grpo": {"kind": "grpo", "steps": 2, "prompts_per_step": 1, "group_size": 2,
                                "max_new_tokens": 4, "eval_every": 0, "save_every": 1}}}
    for keep in (False, True):
        path = tmp_path / f"card_{keep}.yaml"
        path.write_text(yaml.safe_dump({**spec, "name": f"card_{keep}", "keep_checkpoints": keep}))
        run_dir = run_recipe(path, quiet=True)
        assert (run_dir / "grpo" / "checkpoint").exists() == keep
    card = (run_dir / "grpo" / "final" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and "grpo" in metadata["tags"]
    assert f"r1lab run {path}" in card and "| pass@1 |" in card and "clip_eps: 0.2" in card
