"""Start-up time of the ``r1lab`` command: ``--help``, ``--version``, ``run --help`` and a recipe with a typo (the
config error a new user meets first), each the median of several runs, beside a bare ``python -c pass`` as the
baseline, measured side by side in one script. Aims: --help under 0.3 s, a config error under 1 s.

    python bench/startup.py --out bench/results/startup_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_json import emit  # noqa: E402

TYPO_RECIPE = "name: typo\nstages:\n  grpo:\n    kind: grpo\n    stpes: 3\n"  # 'steps' misspelt


def seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, timeout=120)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    r1lab = [sys.executable, "-m", "r1lab"]
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "typo.yaml"
        recipe.write_text(TYPO_RECIPE)
        results = {
            "python -c pass": seconds([sys.executable, "-c", "pass"], args.runs),
            "r1lab --help": seconds([*r1lab, "--help"], args.runs),
            "r1lab --version": seconds([*r1lab, "--version"], args.runs),
            "r1lab run --help": seconds([*r1lab, "run", "--help"], args.runs),
            "r1lab run <recipe with a typo>": seconds([*r1lab, "run", str(recipe)], args.runs),
            "python -c 'import torch'": seconds([sys.executable, "-c", "import torch"], args.runs),
        }
    emit({"seconds (median of %d runs)" % args.runs: results}, args.out)


if __name__ == "__main__":
    main()
