"""GRPO versus PPO from one base model: peak memory, seconds per step, completions to a target, final accuracy.

The seed paper says GRPO drops PPO's value model and "significantly reduces training resources"; this measures it.
Both algorithms start from the same checkpoint, on the same task, template, rewards and evaluation, with the same
problems per step, completions per problem and steps (so the same number of generated completions in total; their
per-step problem draws use the same seeds). Each runs in its own process, ``python -m r1lab run RECIPE key=value ...``,
so the memory peaks are separate.

Run (after `r1lab run recipes/tiny/r1_zero.yaml` has built the tiny base model):
    .venv/bin/python bench/grpo_vs_ppo.py --base runs/tiny_r1_zero --out bench/grpo_vs_ppo.json
``--base`` is a checkpoint folder or a run folder (its first pretrain stage's checkpoint is used). Each recipe gives its
algorithm's own settings (lr, μ, ...); run-wide settings (task, template, eval, seed, threads) come from the GRPO
recipe. ``--set key=value`` applies to both runs, ``--grpo-set`` / ``--ppo-set`` to one (keys relative to the stage,
e.g. ``--ppo-set kl_coef=0``).

Measured:
  peak memory       torch.cuda.max_memory_allocated on a GPU; the process's peak RSS (getrusage) always
  seconds per step  mean of the logged ``step_seconds`` (rollout + update; quick evaluations excluded)
  completions       completions generated before the first quick held-out evaluation with pass@1 ≥ target
                    (target: ``--target``, or the base model's pass@1 + ``--target-gain``)
  final pass@1      the stage's full held-out evaluation (R1 protocol: k samples at T = 0.6)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ("grpo", "ppo")


# --- reading a finished run -------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quick_evals(rows: list[dict], stage: str) -> list[tuple[int, float]]:
    """(step, held-out pass@1) of a stage's quick evaluations, by step (step 0: the starting model)."""
    return sorted((r["step"], r["eval/pass@1"]) for r in rows if r.get("stage") == stage and "eval/pass@1" in r)


def completions_to_target(evals: list[tuple[int, float]], target: float, completions_per_step: int) -> int | None:
    """Completions generated before the first evaluation at or above ``target``; None if it is never reached."""
    for step, pass1 in evals:
        if pass1 >= target:
            return step * completions_per_step
    return None


def summarize_run(run_dir: Path, stage: str) -> dict:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    step_rows = [r for r in rows if r.get("stage") == stage and "step_seconds" in r]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    entry = next((s for s in summary.get("stages", []) if s["stage"] == stage), {})
    evals = quick_evals(rows, stage)
    return {
        "steps": len(step_rows),
        "seconds_per_step": statistics.fmean(r["step_seconds"] for r in step_rows) if step_rows else None,
        "quick_evals": evals,
        "base_pass@1": evals[0][1] if evals and evals[0][0] == 0 else None,
        "final_pass@1": (entry.get("eval") or {}).get("pass@1"),
        "stage_seconds": entry.get("seconds"),
    }


# --- running one algorithm --------------------------------------------------------------------------------------

def rl_stage(recipe: dict) -> tuple[str, dict]:
    """The first stage that is not a pretrain stage: (name, settings)."""
    for name, stage in recipe["stages"].items():
        if stage.get("kind") != "pretrain":
            return name, dict(stage)
    raise SystemExit("the recipe has no RL stage")


def resolve_base(base: str) -> str:
    """A checkpoint folder, or a run folder whose first pretrain stage built the base model."""
    summary = Path(base) / "summary.json"
    if summary.is_file():
        for entry in json.loads(summary.read_text())["stages"]:
            if entry["kind"] == "pretrain":
                return entry.get("model") or entry["checkpoint"]  # "checkpoint": runs written before the split
        raise SystemExit(f"{summary} has no pretrain stage; pass the checkpoint folder itself as --base")
    if not (Path(base) / "config.json").is_file():
        raise SystemExit(f"--base {base}: neither a checkpoint (config.json) nor a run folder (summary.json)")
    return base


def write_recipe(algorithm: str, algo_recipe: Path, shared: dict, rewards: dict, out_dir: Path) -> Path:
    """The bench's recipe for one algorithm: the shared run-wide settings and that algorithm's RL stage only."""
    _, stage = rl_stage(yaml.safe_load(algo_recipe.read_text()))
    if stage["kind"] != algorithm:
        raise SystemExit(f"{algo_recipe}: its RL stage is '{stage['kind']}', expected '{algorithm}'")
    stage.pop("init", None)
    stage["rewards"] = rewards
    recipe = {**shared, "stages": {algorithm: stage}}
    path = out_dir / f"{algorithm}.yaml"
    path.write_text(f"# written by bench/grpo_vs_ppo.py from {algo_recipe}\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_algorithm(recipe: Path, overrides: list[str], stats_path: Path) -> float:
    """``python -m r1lab run`` in a child process of its own (so its memory peak is its own); returns wall seconds."""
    started = time.time()
    result = subprocess.run([sys.executable, __file__, "--child", str(stats_path), str(recipe), *overrides],
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"the run of {recipe} failed (exit {result.returncode})")
    return time.time() - started


def child(stats_path: str, run_args: list[str]) -> int:
    """Inside the child: run the r1lab CLI in this process, then record its peaks."""
    import resource
    import runpy

    sys.argv = ["r1lab", "run", *run_args]
    code = 0
    try:
        runpy.run_module("r1lab", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    stats = {"peak_rss_mib": maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        stats["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        stats["device"] = torch.cuda.get_device_name()
    else:
        stats["device"] = "cpu"
    Path(stats_path).write_text(json.dumps(stats))
    return code


# --- the table --------------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "not reached"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(results: dict, target: float) -> str:
    """Rows: the measured quantities; columns: the algorithms and which one is better."""
    gpu = all("cuda_peak_mib" in r for r in results.values())
    rows = [("peak GPU memory allocated (MiB)" if gpu else "peak memory, RSS (MiB)",
             "cuda_peak_mib" if gpu else "peak_rss_mib", min, 0),
            ("seconds per step", "seconds_per_step", min, 2),
            (f"completions to held-out pass@1 ≥ {target:.2f}", "completions_to_target", min, 0),
            ("final held-out pass@1", "final_pass@1", max, 3),
            ("starting pass@1 (quick eval)", "base_pass@1", None, 3),
            ("wall seconds (whole run, evals included)", "wall_seconds", min, 0)]
    names = list(results)
    lines = ["| | " + " | ".join(n.upper() for n in names) + " | better |", "|---|" + "---|" * (len(names) + 1)]
    for label, key, best, digits in rows:
        values = {n: results[n].get(key) for n in names}
        cells = [_fmt(v, digits) for v in values.values()]
        present = {n: v for n, v in values.items() if v is not None}
        if best is None or not present:
            winner = "" if best is None else "neither"
        elif len(set(cells)) == 1:  # equal as printed
            winner = "tie"
        else:
            winner = best(present, key=present.get).upper()
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {winner} |")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base checkpoint folder, or a run folder that built one")
    parser.add_argument("--grpo-recipe", default=str(ROOT / "recipes/tiny/r1_zero.yaml"))
    parser.add_argument("--ppo-recipe", default=str(ROOT / "recipes/tiny/ppo.yaml"))
    parser.add_argument("--steps", type=int, help="RL steps of both (default: the GRPO recipe's)")
    parser.add_argument("--prompts-per-step", type=int, help="problems per step of both (default: GRPO recipe's)")
    parser.add_argument("--group-size", type=int, help="completions per problem of both (default: GRPO recipe's)")
    parser.add_argument("--eval-every", type=int, help="quick held-out evaluation every N steps (default: GRPO's)")
    parser.add_argument("--target", type=float, help="held-out pass@1 to reach (default: base + --target-gain)")
    parser.add_argument("--target-gain", type=float, default=0.15, help="target above the base model's pass@1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for both runs (run-wide keys, e.g. eval.num_problems=50)")
    parser.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="GRPO stage override")
    parser.add_argument("--ppo-set", action="append", default=[], metavar="KEY=VALUE", help="PPO stage override")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_grpo_vs_ppo"),
                        help="run folders go here (emptied first)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "grpo_vs_ppo.json"), help="JSON file for the results")
    args = parser.parse_args(argv)

    base = str(Path(resolve_base(args.base)).resolve())
    grpo_recipe = yaml.safe_load(Path(args.grpo_recipe).read_text())
    _, grpo_stage = rl_stage(grpo_recipe)
    shared = {k: v for k, v in grpo_recipe.items() if k not in ("stages", "name", "output_dir", "model")}
    shared["model"] = base
    steps = args.steps or grpo_stage.get("steps", 200)
    prompts = args.prompts_per_step or grpo_stage.get("prompts_per_step", 16)
    group = args.group_size or grpo_stage.get("group_size", 8)
    eval_every = args.eval_every if args.eval_every is not None else grpo_stage.get("eval_every", 25)
    rewards = grpo_stage.get("rewards", {"accuracy": 1.0, "format": 0.1})
    out_dir = Path(args.output_dir).resolve()
    if out_dir.exists():
        print(f"emptying {out_dir}", file=sys.stderr)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    results = {}
    for algorithm, algo_recipe, extra in (("grpo", args.grpo_recipe, args.grpo_set),
                                          ("ppo", args.ppo_recipe, args.ppo_set)):
        recipe = write_recipe(algorithm, Path(algo_recipe), shared, rewards, out_dir)
        s = f"stages.{algorithm}."
        overrides = [f"output_dir={out_dir}", f"name={algorithm}", f"{s}steps={steps}",
                     f"{s}prompts_per_step={prompts}", f"{s}group_size={group}", f"{s}eval_every={eval_every}",
                     f"{s}save_every=0", *args.set, *(s + item for item in extra)]
        print(f"== {algorithm}: python -m r1lab run {recipe} {' '.join(overrides)}", file=sys.stderr)
        stats_path = out_dir / f"{algorithm}_peaks.json"
        wall = run_algorithm(recipe, overrides, stats_path)
        results[algorithm] = {**summarize_run(out_dir / algorithm, algorithm),
                              **json.loads(stats_path.read_text()), "wall_seconds": wall}

    base_pass = results["grpo"]["base_pass@1"]
    if args.target is not None:
        target = args.target
    elif base_pass is not None:
        target = min(1.0, base_pass + args.target_gain)
    else:
        raise SystemExit("no step-0 quick evaluation to set the target from: pass --target or --eval-every > 0")
    per_step = prompts * group
    for result in results.values():
        result["completions_to_target"] = completions_to_target(result["quick_evals"], target, per_step)
    table = markdown_table(results, target)
    device = results["grpo"].get("device", "cpu")
    header = (f"GRPO vs PPO on {device}: {steps} steps × {prompts} problems × {group} completions "
              f"= {steps * per_step:,} completions each; base {base}")
    print(header + "\n\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "header": header, "table": table, "target": target, "base": base, "steps": steps,
        "prompts_per_step": prompts, "group_size": group, "completions_per_step": per_step,
        "command": " ".join([Path(sys.executable).name, "bench/grpo_vs_ppo.py", *argv]), "results": results,
    }, indent=2) + "\n")
    print(f"\nwritten: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
