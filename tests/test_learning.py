"""The tiny model really learns under GRPO: held-out pass@1 rises from the base model (slow: a few minutes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_r1_zero_recipe_learns_on_cpu(tmp_path):
    # The demo recipe itself (its base model: with fewer pretraining steps the skill has not appeared yet) with
    # 40 RL steps instead of 200.
    overrides = [f"output_dir={tmp_path}", "name=learn", "stages.grpo.steps=40",
                 "stages.grpo.eval_every=0", f"stages.base.cache_dir={tmp_path / 'cache'}", "eval.num_problems=100"]
    result = subprocess.run([sys.executable, "-m", "r1lab", "run", "recipes/tiny/r1_zero.yaml", *overrides],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {s["stage"]: s["eval"] for s in json.loads((tmp_path / "learn" / "summary.json").read_text())["stages"]}
    base, rl = stages["base"], stages["grpo"]
    assert rl["pass@1"] >= base["pass@1"] + 0.25, (base, rl)
    assert rl["format_rate"] >= 0.9, rl
    # accuracy and format are logged separately, so a format-only collapse would show in the metrics
    metrics = [json.loads(l) for l in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if m.get("stage") == "grpo" and "reward/accuracy" in m][-5:]
    mean = lambda key: sum(m[key] for m in last) / len(last)  # training rollouts sample at T = 1.0: noisier
    assert mean("reward/accuracy") > 0.3 and mean("reward/format") > 0.8, last
