"""Seconds of training until held-out pass@1 reaches 0.9 on the embedded R1-Zero task: r1lab against TRL, from the
same tiny base, in one script on one machine.

    .venv/bin/pip install trl==1.16.0
    .venv/bin/python bench/time_to_accuracy.py --out bench/results/time_to_accuracy_cpu.json

The base is the one ``recipes/tiny/r1_zero.yaml`` builds (its ``base`` stage, taken from the model cache when there).
Both trainers then run that recipe's GRPO settings: 8 prompts × G 8, 48 new tokens, temperature 1, lr 1e-4 with 5
warmup steps from 0 and a cosine decay to 10% from the warmup's end (transformers' schedule in both), AdamW betas
(0.9, 0.99), clip 1.0, β 0, advantages not divided by the group
std (TRL: scale_rewards="none"), token-mean loss (TRL: loss_type="dapo"), accuracy 1.0 + format 0.1 scored by
r1lab's rewards in both. Every 25 steps (``--eval-every``) both are evaluated the same way (r1lab's quick
evaluation: 100 held-out problems × 2 samples at T 0.6, top-p 0.95, with r1lab's engine); evaluation time is not
counted. Two seeds each (``--seeds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from report_json import emit  # noqa: E402

RECIPE = ROOT / "recipes" / "tiny" / "r1_zero.yaml"
TARGET = 0.9


def build_base(out: Path) -> str:
    from r1lab.pipeline import run_recipe

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(name="base_only", output_dir=str(out))
    recipe["stages"] = {"base": {**recipe["stages"]["base"], "eval": False}}
    path = out / "base.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(path, quiet=True)
    return json.loads((out / "base_only" / "base" / "done.json").read_text())["model"]


def first_reaching(curve: list[tuple[int, float, float]]) -> dict:
    """(step, pass@1, training seconds so far) -> the first point at or above the target."""
    for step, accuracy, seconds in curve:
        if accuracy >= TARGET:
            return {"step": step, "seconds": round(seconds, 1)}
    return {"step": None, "seconds": None}


def r1lab_run(base: str, seed: int, steps: int, out: Path, eval_every: int) -> dict:
    from r1lab.pipeline import run_recipe

    recipe = yaml.safe_load(RECIPE.read_text())
    grpo = {**recipe["stages"]["grpo"], "init": base, "steps": steps, "eval_every": eval_every, "save_every": 0,
            "eval": False, "samples_every": 0}
    recipe.update(name=f"r1lab_{seed}", output_dir=str(out), seed=seed, model=base, stages={"grpo": grpo})
    path = out / f"r1lab_{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(path, quiet=True)
    rows = [json.loads(line) for line in (out / f"r1lab_{seed}" / "metrics.jsonl").read_text().splitlines()]
    seconds, curve = 0.0, []
    for row in rows:
        seconds += row.get("step_seconds", 0.0)
        if "eval/pass@1" in row and row["step"] > 0:
            curve.append((row["step"], row["eval/pass@1"], seconds))
    return {"curve": curve, **first_reaching(curve),
            "seconds_per_step": round(seconds / max(1, len([r for r in rows if "step_seconds" in r])), 3)}


def trl_run(base: str, seed: int, steps: int, out: Path, eval_every: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.evaluate import evaluate_model
    from r1lab.generation import Generator
    from r1lab.models import load_model, load_tokenizer
    from r1lab.recipe import EvalConfig
    from r1lab.rewards import score_completions
    from r1lab.tasks import TaskConfig, get_task
    from r1lab.templates import PromptTemplate, TemplateConfig

    recipe = yaml.safe_load(RECIPE.read_text())
    grpo = recipe["stages"]["grpo"]
    task_cfg = TaskConfig(**recipe["task"])
    task = get_task(task_cfg.name, **task_cfg.options)
    tokenizer = load_tokenizer(base)
    model, _ = load_model(base)
    template = PromptTemplate(TemplateConfig(**recipe["template"]), tokenizer)
    evaluation = EvalConfig(**recipe["eval"])
    pool = task.examples("train", 4096, seed=seed)
    by_prompt = {template.render(e["prompt"]): e for e in pool}

    def reward(prompts, completions, **_):
        examples = [by_prompt[p] for p in prompts]
        return score_completions([template.prefill + c for c in completions], examples, grpo["rewards"]).total

    curve, clock = [], {"training": 0.0}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock["started"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["training"] += time.perf_counter() - clock["started"]
            if state.global_step % eval_every == 0:
                result = evaluate_model(Generator("auto", model, tokenizer), task, template,
                                        num_problems=evaluation.quick_problems, k=evaluation.quick_k,
                                        temperature=evaluation.temperature, top_p=evaluation.top_p,
                                        max_new_tokens=evaluation.max_new_tokens, seed=evaluation.seed)
                curve.append((state.global_step, result["pass@1"], clock["training"]))

    per_step = grpo["prompts_per_step"] * grpo["group_size"]
    config = GRPOConfig(output_dir=str(out / f"trl_{seed}"), per_device_train_batch_size=per_step,
                        num_generations=grpo["group_size"], max_completion_length=grpo["max_new_tokens"],
                        learning_rate=grpo["lr"], lr_scheduler_type="cosine_with_min_lr",
                        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=grpo["warmup_steps"],
                        adam_beta2=0.99, max_grad_norm=1.0, beta=0.0, scale_rewards="none", loss_type="dapo",
                        num_iterations=1, gradient_checkpointing=False, use_cpu=True, bf16=False, max_steps=steps,
                        report_to="none", save_strategy="no", logging_steps=eval_every, disable_tqdm=True,
                        temperature=grpo["temperature"], seed=seed)
    dataset = Dataset.from_list([{"prompt": p} for p in by_prompt])
    torch.manual_seed(seed)
    GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
                callbacks=[Clock()]).train()
    return {"curve": curve, **first_reaching(curve), "seconds_per_step": round(clock["training"] / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=150, help="GRPO steps of each run (the cosine decays over them)")
    parser.add_argument("--eval-every", type=int, default=25,
                        help="GRPO steps between evaluations (finer: a time to the target less rounded up)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from r1lab.cpu_matmul import onednn_pays
    from r1lab.cpu_memory import keep_freed_memory

    # r1lab's runs set this for the whole process; set from the start, TRL's runs get it too (a like-for-like clock)
    keep_freed_memory()
    results = {"target_pass@1": TARGET, "r1lab_cpu_matmul": "onednn" if onednn_pays() else "blas", "eval_every": args.eval_every, "r1lab": {}, "trl": {}}
    with tempfile.TemporaryDirectory(prefix="r1lab-tta-") as tmp:
        tmp = Path(tmp)
        base = build_base(tmp)
        for seed in map(int, args.seeds.split(",")):
            results["r1lab"][seed] = r1lab_run(base, seed, args.steps, tmp, args.eval_every)
            print("r1lab", seed, results["r1lab"][seed], file=sys.stderr, flush=True)
            results["trl"][seed] = trl_run(base, seed, args.steps, tmp, args.eval_every)
            print("trl", seed, results["trl"][seed], file=sys.stderr, flush=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
