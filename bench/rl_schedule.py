"""The RL stages' learning-rate schedule on the embedded R1-Zero task: r1lab's old one, transformers' (now r1lab's),
and each of their two differences alone, over several seeds.

    .venv/bin/python bench/rl_schedule.py --out bench/results/rl_schedule_cpu.json      # 10 seeds: ~17 minutes

The runs are ``bench/time_to_accuracy.py``'s r1lab runs (the tiny R1-Zero base, that recipe's GRPO settings, 150
steps, a quick held-out evaluation every 5 steps), with the schedule swapped in:

* ``old``: r1lab's RL schedule until 2026-11-29 (``r1lab.policy.warmup_then_decay``): the first step at 1/warmup of
  the peak, the cosine counted from step 0;
* ``first_step_at_zero``: the warmup from 0 at the first step, the cosine still from step 0;
* ``cosine_after_warmup``: the old warmup, the cosine from the warmup's end;
* ``transformers``: both (``r1lab.policy.warmup_from_zero_then_decay``, what TRL's GRPOTrainer runs).

Per schedule and seed: the first step at which held-out pass@1 reaches 0.9 and pass@1 at the last step; per
schedule their means and the seeds ending below 0.97. Prints one JSON object; --out also writes it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report_json import emit  # noqa: E402

SCHEDULES = ("old", "first_step_at_zero", "cosine_after_warmup", "transformers")


def schedule(name: str):
    """A factory with ``warmup_then_decay``'s signature for the schedule ``name`` (cosine decay to 10%)."""
    from r1lab.policy import warmup_from_zero_then_decay, warmup_then_decay

    if name == "old":
        return warmup_then_decay
    if name == "transformers":
        return warmup_from_zero_then_decay

    def make(total_steps: int, warmup_steps: int, decay: str):
        if decay != "cosine":
            raise ValueError("this benchmark compares cosine schedules")

        def factor(step: int) -> float:
            if name == "first_step_at_zero":
                warm = min(1.0, step / max(1, warmup_steps))
                return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))))
            if step < warmup_steps:  # cosine_after_warmup
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated: " + ", ".join(SCHEDULES))
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    import r1lab.rollout as rollout
    import time_to_accuracy
    from r1lab.cpu_memory import keep_freed_memory

    keep_freed_memory()
    results = {"steps": args.steps, "eval_every": args.eval_every, "target_pass@1": time_to_accuracy.TARGET}
    with tempfile.TemporaryDirectory(prefix="r1lab-schedule-") as tmp:
        tmp = Path(tmp)
        base = time_to_accuracy.build_base(tmp)
        for name in args.schedules.split(","):
            rollout.warmup_from_zero_then_decay = schedule(name)  # what start_online_rl builds the schedule with
            (tmp / name).mkdir()
            runs = {}
            for seed in (int(s) for s in args.seeds.split(",")):
                run = time_to_accuracy.r1lab_run(base, seed, args.steps, tmp / name, args.eval_every)
                runs[seed] = {"step": run["step"], "final_pass@1": run["curve"][-1][1]}
                print(name, seed, runs[seed], file=sys.stderr, flush=True)
            finals = [r["final_pass@1"] for r in runs.values()]
            reached = [r["step"] for r in runs.values() if r["step"] is not None]
            results[name] = {"runs": runs, "mean_final_pass@1": round(statistics.fmean(finals), 4),
                             "seeds_below_0.97": sum(f < 0.97 for f in finals),
                             "mean_steps_to_target": round(statistics.fmean(reached), 1) if reached else None,
                             "seeds_not_reaching": len(finals) - len(reached)}
    emit(results, args.out)


if __name__ == "__main__":
    main()
