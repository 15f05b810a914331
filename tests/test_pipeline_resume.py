"""The whole R1 pipeline survives a kill at any point: recipes/tiny/r1.yaml (shrunk to seconds per stage) is killed
with SIGKILL once during every stage and restarted each time; it must end with the same evaluations, data sets and
weights as an uninterrupted run."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from test_cli import ROOT, shrink_overrides

RECIPE = ROOT / "recipes" / "tiny" / "r1.yaml"


def _command(tmp_path: Path, name: str) -> list[str]:
    # one thread: the same floating-point sums in every run
    # each run its own folder and model cache: the killed run builds its base models too
    return [sys.executable, "-m", "r1lab", "run", str(RECIPE), *shrink_overrides(RECIPE, tmp_path / name),
            f"name={name}", "threads=1"]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _results(root: Path, name: str) -> dict:
    """What must not depend on kills: every stage's evaluation and data stats, and a hash of every file a stage
    produced (final weights; data sets, with the run's own folder in their provenance written as <root>)."""
    run_dir = root / name / name
    summary = json.loads((run_dir / "summary.json").read_text())

    def digest(path: Path) -> str:
        content = path.read_bytes()
        if path.suffix == ".jsonl":
            content = content.replace(str(root / name).encode(), b"<root>")
        return hashlib.sha256(content).hexdigest()

    out = {}
    for entry in summary["stages"]:
        stage_dir = run_dir / entry["stage"]
        files = sorted(p for p in stage_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".jsonl")
                       and "checkpoint" not in p.parts and p.name != "eval_samples.jsonl")
        out[entry["stage"]] = {"eval": entry["eval"], "data": entry.get("data"),
                               "files": {str(p.relative_to(stage_dir)): digest(p) for p in files}}
    return out


@pytest.mark.slow
def test_r1_pipeline_killed_in_every_stage_ends_like_an_uninterrupted_run(tmp_path):
    reference = subprocess.run(_command(tmp_path, "straight"), capture_output=True, text=True, env=_env(),
                               cwd=ROOT, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _results(tmp_path, "straight")
    summary = json.loads((tmp_path / "straight" / "straight" / "summary.json").read_text())
    # A kill lands at a random point, but early enough that the stage cannot have finished before it (shrunk
    # stages take 0.1-1 s): within 30% of the stage's time in the uninterrupted run after its start, 10% after an
    # RL stage's first step.
    kinds = {name: stage["kind"] for name, stage in yaml.safe_load(RECIPE.read_text())["stages"].items()}
    latest_kill = {entry["stage"]: (0.1 if kinds[entry["stage"]] in ("grpo", "ppo") else 0.3) * entry["seconds"]
                   for entry in summary["stages"]}

    rng = random.Random(0)
    killed_in: list[str] = []
    for attempt in range(len(kinds) + 1):  # a restart per stage, plus the last run
        process = subprocess.Popen(_command(tmp_path, "killed"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   text=True, env=_env(), cwd=ROOT)
        killed = False
        for line in process.stderr:
            stage = line[1:line.index("]")] if line.startswith("[") and "]" in line else None
            if stage not in kinds or stage in killed_in:
                continue
            # RL stages are killed after their step-1 checkpoint (they resume from it), the others as they start
            trigger = (f"[{stage}] step 1:" if kinds[stage] in ("grpo", "ppo") else f"[{stage}] {kinds[stage]}")
            if line.startswith(trigger):
                time.sleep(rng.uniform(0.0, latest_kill[stage]))
                process.send_signal(signal.SIGKILL)
                killed_in.append(stage)
                killed = True
                break
        process.wait(timeout=900)
        if killed:
            assert not (tmp_path / "killed" / "killed" / killed_in[-1] / "done.json").is_file(), \
                f"stage {killed_in[-1]} finished before the kill landed"
        if not killed:
            assert process.returncode == 0, f"the run failed after being killed in {killed_in}"
            break
    stages = [s for s in expected]
    assert killed_in == stages  # every stage was interrupted once
    assert _results(tmp_path, "killed") == expected
    # the log holds each line once, as the uninterrupted run's: a restarted stage drops what its killed attempt wrote
    # after its last checkpoint (r1lab.run_record.drop_log_lines)
    assert _logged(tmp_path, "killed") == _logged(tmp_path, "straight")
    assert max(_logged(tmp_path, "killed").values()) == 1


def _logged(root: Path, name: str) -> Counter:
    """(stage, step, keys) of every metrics.jsonl line of a run (a reward model's key holds the run's folder, written
    as <run>)."""
    lines = (root / name / name / "metrics.jsonl").read_text().splitlines()
    return Counter((m["stage"], m["step"], tuple(sorted(key.replace(str(root / name / name), "<run>") for key in m)))
                   for m in map(json.loads, lines))
