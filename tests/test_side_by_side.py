"""Several recipes side by side (r1lab.side_by_side): the core split, the thread file the pipeline obeys, and two
shrunk recipes run at once through the CLI with one report over both."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.recipe_file import split_run_arguments
from r1lab.stage import set_threads
from r1lab.side_by_side import thread_shares
from r1lab.threads import THREADS_FILE_ENV, threads_from_file
from tests.test_cli import ROOT, grpo_recipe, r1lab, shrink_overrides


def test_thread_shares_split_the_cores_evenly_and_give_everyone_one():
    assert thread_shares(2, 2) == [1, 1]
    assert thread_shares(2, 1) == [2]
    assert thread_shares(5, 2) == [3, 2]
    assert thread_shares(16, 3) == [6, 5, 5]
    assert thread_shares(1, 3) == [1, 1, 1]  # more runs than cores: one thread each, never zero
    assert thread_shares(4, 0) == []


def test_threads_from_file(tmp_path):
    path = tmp_path / "threads"
    assert threads_from_file(None) == 0 and threads_from_file(str(path)) == 0  # no parent, or no file yet
    path.write_text("3\n")
    assert threads_from_file(str(path)) == 3
    for broken in ("", "two", "0", "-1"):
        path.write_text(broken)
        assert threads_from_file(str(path)) == 0


def test_the_pipeline_takes_the_parents_share_over_the_recipes_threads(tmp_path, monkeypatch):
    path = tmp_path / "threads"
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    set_threads(2)
    assert torch.get_num_threads() == 2  # no share written yet: the recipe's setting
    path.write_text("1")
    set_threads(2)
    assert torch.get_num_threads() == 1
    path.write_text("2")  # a sibling finished: this run takes its core at its next stage
    set_threads(0)
    assert torch.get_num_threads() == 2


def test_split_run_arguments():
    assert split_run_arguments(["a.yaml", "x=1", "b.yml", "stages.g.steps=2"]) == (
        ["a.yaml", "b.yml"], ["x=1", "stages.g.steps=2"])


def test_report_and_jobs_need_several_recipes(tmp_path):
    result = r1lab("run", ROOT / "recipes/tiny/aha.yaml", "--report", tmp_path / "r")
    assert result.returncode == 2 and "several recipes" in result.stderr


def test_two_recipes_with_the_same_run_folder_are_refused_before_anything_runs(tmp_path):
    recipe = ROOT / "recipes/tiny/aha.yaml"
    result = r1lab("run", recipe, recipe, f"output_dir={tmp_path}")
    assert result.returncode == 2 and "same run folder" in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_bad_key_in_the_second_recipe_fails_before_the_first_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes/tiny/aha.yaml").read_text().replace("name: tiny_aha", "name: x\nnot_a_key: 1"))
    result = r1lab("run", ROOT / "recipes/tiny/r1_zero.yaml", bad, f"output_dir={tmp_path / 'runs'}")
    assert result.returncode == 2 and "not_a_key" in result.stderr
    assert not (tmp_path / "runs").exists()


def _final_weights(run_dir: Path) -> bytes:
    return (run_dir / "grpo" / "final" / "model.safetensors").read_bytes()


def _shrunk_copy(recipe: Path, out_dir: Path) -> Path:
    """The recipe with shrink_overrides applied, written as a file (overrides on the command line go to every
    recipe, and these recipes' stages differ)."""
    from r1lab.config import apply_overrides, read_yaml

    path = out_dir / recipe.name
    path.write_text(yaml.safe_dump(apply_overrides(read_yaml(recipe), shrink_overrides(recipe, out_dir))))
    return path


def test_two_recipes_side_by_side_with_one_report_and_the_results_of_a_run_alone(tmp_path):
    aha = _shrunk_copy(ROOT / "recipes/tiny/aha.yaml", tmp_path)
    r1_zero = _shrunk_copy(ROOT / "recipes/tiny/r1_zero.yaml", tmp_path)
    result = r1lab("run", r1_zero, aha, "--report", tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny_aha | " in result.stderr and "tiny_r1_zero | " in result.stderr  # prefixed progress lines
    for name in ("tiny_aha", "tiny_r1_zero"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["run"] == name and len(summary["stages"]) >= 2

    combined = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [run["run"] for run in combined["runs"]] == ["tiny_r1_zero", "tiny_aha"]
    page = (tmp_path / "demo" / "report.html").read_text()
    assert 'id="run-tiny_r1_zero"' in page and 'id="run-tiny_aha"' in page
    assert "checks per completion" in page  # the aha run's evaluations report its self-checks

    # The same recipe alone, on the recipe's own two threads, ends with the same weights (on this machine torch's
    # CPU kernels give the same numbers whatever the thread count, so sharing the cores changes nothing).
    result = r1lab("run", aha, f"output_dir={tmp_path / 'alone'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final_weights(tmp_path / "alone" / "tiny_aha") == _final_weights(tmp_path / "tiny_aha")


def test_report_command_over_several_runs(tmp_path):
    for name, pass_at_1 in (("a", 0.25), ("b", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"run": name, "stages": [{"stage": "grpo", "kind": "grpo", "eval": {"pass@1": pass_at_1}}]}))
    result = r1lab("report", tmp_path / "a", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip()).read_text()
    assert Path(result.stdout.strip()).parent == tmp_path / "a-b"
    assert "0.2500" in page and "0.5000" in page
    missing = r1lab("report", tmp_path / "a", tmp_path / "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr


@pytest.mark.parametrize("items", [["x=1"]])
def test_run_without_a_recipe_is_a_clear_error(items):
    result = r1lab("run", *items)
    assert result.returncode == 2 and "needs a recipe" in result.stderr


def test_a_recipe_that_fails_leaves_the_other_to_finish_and_the_exit_code_says_so(tmp_path, tiny_checkpoint):
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = grpo_recipe(tmp_path / "good", tiny_checkpoint)
    bad = grpo_recipe(tmp_path / "bad", tiny_checkpoint,
                      task={"name": "jsonl", "options": {"train_path": str(tmp_path / "missing.jsonl")}})
    for path, name in ((good, "good"), (bad, "broken")):
        path.write_text(path.read_text().replace("name: bad", f"name: {name}"))
    result = r1lab("run", good, bad, "--report", tmp_path / "report")
    assert result.returncode == 1
    assert "broken | r1lab: error:" in result.stderr and "missing.jsonl" in result.stderr
    assert f"{bad} failed (exit 2)" in result.stderr
    assert json.loads((tmp_path / "good" / "runs" / "good" / "summary.json").read_text())["stages"][0]["eval"]
    assert "No summary yet" in (tmp_path / "report" / "report.html").read_text()  # the broken run's section


def _children_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")
def test_sigterm_stops_the_children_and_the_run_resumes(tmp_path, tiny_checkpoint):
    import signal
    import subprocess
    import sys
    import time

    recipes = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        path = grpo_recipe(tmp_path / name, tiny_checkpoint)
        data = yaml.safe_load(path.read_text())
        data["name"] = name
        data["stages"]["grpo"].update(steps=40, save_every=1)
        path.write_text(yaml.safe_dump(data))
        recipes.append(path)
    parent = subprocess.Popen([sys.executable, "-m", "r1lab", "run", *map(str, recipes)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    metrics = [tmp_path / name / "runs" / name / "metrics.jsonl" for name in ("first", "second")]
    deadline = time.time() + 120
    while not all(path.is_file() for path in metrics) and time.time() < deadline:
        time.sleep(0.2)
    children = _children_of(parent.pid)
    assert len(children) == 2
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=60)
    assert parent.returncode == 130 and "run the same command again to resume" in stderr
    for pid in children:  # stopped, not left running behind the parent
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    again = r1lab("run", *recipes)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("first", "second"):
        summary = json.loads((tmp_path / name / "runs" / name / "summary.json").read_text())
        assert summary["stages"][0]["eval"] is not None


def test_overrides_addressed_to_one_recipe():
    from r1lab.config import ConfigError
    from r1lab.side_by_side import overrides_for

    recipes = ["recipes/tiny/r1_zero.yaml", "recipes/tiny/ppo.yaml"]
    overrides = ["seed=1", "r1_zero:stages.grpo.steps=5", "ppo:stages.ppo.steps=3",
                 "recipes/tiny/ppo.yaml:eval.k=2", "stages.grpo.rewards.my.py:f=0.5"]
    assert overrides_for(recipes[0], overrides, recipes) == ["seed=1", "stages.grpo.steps=5",
                                                            "stages.grpo.rewards.my.py:f=0.5"]
    assert overrides_for(recipes[1], overrides, recipes) == ["seed=1", "stages.ppo.steps=3", "eval.k=2",
                                                            "stages.grpo.rewards.my.py:f=0.5"]
    with pytest.raises(ConfigError, match="'aha' is not one of the recipes of this command \\(r1_zero, ppo\\)"):
        overrides_for(recipes[0], ["aha:stages.grpo.steps=5"], recipes)
