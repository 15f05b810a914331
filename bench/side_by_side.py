"""Two recipes one after the other (each on all the cores) against the same two side by side (r1lab.side_by_side),
in one script on one machine: wall time of each way, the ratio, and whether the results are the same.

    .venv/bin/python bench/side_by_side.py                       # shortened r1_zero and aha recipes (~10 minutes)
    .venv/bin/python bench/side_by_side.py --full                # the demo's two recipes, r1.yaml and aha.yaml (~50)

Each way starts from an empty model cache, so both build their base models. Prints one JSON line; --out also writes
it to a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = {  # recipe -> overrides that keep its shape (pretrain, then RL) at a few minutes
    "recipes/tiny/r1_zero.yaml": ["stages.base.steps=200", "stages.grpo.steps=30", "stages.grpo.eval_every=15"],
    "recipes/tiny/aha.yaml": ["stages.base.steps=200", "stages.grpo.steps=20", "stages.grpo.eval_every=10"],
}
FULL = {"recipes/tiny/r1.yaml": [], "recipes/tiny/aha.yaml": []}


def _r1lab(args: list[str], cache: Path) -> float:
    env = {**os.environ, "R1LAB_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "r1lab", "run", "--quiet", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"r1lab run {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.time() - started


def _weights_digest(run_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(run_dir.rglob("final/model.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _run_with_overrides(recipe: str, overrides: list[str], out: Path) -> Path:
    """The recipe with its overrides written into a copy (command-line overrides would reach every recipe)."""
    import yaml

    from r1lab.config import apply_overrides, read_yaml

    path = out / Path(recipe).name
    data = apply_overrides(read_yaml(ROOT / recipe), overrides + [f"output_dir={out / 'runs'}"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the demo's recipes, unshortened")
    parser.add_argument("--out", default="", help="also write the JSON line here")
    args = parser.parse_args()
    recipes = FULL if args.full else SHORT
    sys.path.insert(0, str(ROOT))
    from r1lab.side_by_side import available_cores

    with tempfile.TemporaryDirectory(prefix="r1lab-bench-") as tmp:
        ways = {}
        for way in ("one_after_the_other", "side_by_side"):
            out = Path(tmp) / way
            (out / "cache").mkdir(parents=True)
            copies = [str(_run_with_overrides(recipe, overrides, out)) for recipe, overrides in recipes.items()]
            if way == "side_by_side":
                seconds = {"all": _r1lab(copies + ["--report", str(out / "report")], out / "cache")}
            else:
                seconds = {Path(copy).stem: _r1lab([copy], out / "cache") for copy in copies}
                seconds["all"] = sum(seconds.values())
            ways[way] = {"seconds": {k: round(v, 1) for k, v in seconds.items()},
                         "weights": {run.name: _weights_digest(run) for run in sorted((out / "runs").iterdir())}}
    before, after = ways["one_after_the_other"], ways["side_by_side"]
    result = {"recipes": {recipe: overrides for recipe, overrides in recipes.items()}, "cores": available_cores(),
              **ways, "speedup": round(before["seconds"]["all"] / after["seconds"]["all"], 3),
              "same_weights": before["weights"] == after["weights"]}
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
