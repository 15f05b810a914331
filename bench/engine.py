"""r1lab's own engine against transformers' generate and against TRL, side by side in one script on one machine.

    .venv/bin/pip install trl==1.16.0          # optional: without it the TRL columns are skipped
    .venv/bin/python bench/engine.py --out bench/results/engine_cpu.json

For two Qwen2-shaped models built on the spot (3.3M and 25.4M parameters, the embedded character tokenizer), at the
settings of the TRL baseline (fp32, G = 8, 2 prompts × 8 = 16 completions × 32 new tokens, temperature 1):

* rollout tokens/s: r1lab's ``fast`` engine, r1lab's ``transformers`` engine (``generate``), and TRL's ``generate``
  timed inside its own GRPOTrainer (the model's ``generate`` wrapped with a clock);
* a GRPO step: r1lab (``r1lab run`` of a GRPO stage, engine auto) against TRL's GRPOTrainer at equal settings (β = 0,
  one update per rollout, token-mean loss, no gradient checkpointing in either, lr 1e-6 so the model barely moves).

The first step of every run is left out (warm-up). ``--rounds N`` runs the whole comparison N times, the sizes
alternating, and reports the median of every figure with each ratio's range. Prints one JSON object; --out also
writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from report_json import emit  # noqa: E402
import yaml  # noqa: E402

SIZES = {  # name -> tiny-model shape (hidden, layers, heads, intermediate)
    "3.3M": (256, 4, 4, 768),
    "25.4M": (512, 8, 8, 1408),
}
GROUP, PROMPTS_PER_STEP, NEW_TOKENS = 8, 2, 32


def build(size: str, folder: Path):
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, count_parameters, save_model

    hidden, layers, heads, intermediate = SIZES[size]
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=heads,
                             intermediate_size=intermediate, seed=0)
    save_model(model, tokenizer, folder)
    return model.eval(), tokenizer, count_parameters(model)


def prompts(tokenizer, count: int) -> list[dict]:
    from r1lab.tasks import get_task
    from r1lab.templates import PromptTemplate, TemplateConfig

    template = PromptTemplate(TemplateConfig(), tokenizer)
    examples = get_task("arithmetic").examples("train", count, seed=0)
    return [{"prompt": template.render(e["prompt"]), "answer": e["answer"], "example": e} for e in examples]


def rollout_rate(engine_name: str, model, tokenizer, rows: list[dict], repeats: int) -> dict:
    from r1lab.engine import SamplingParams, make_engine

    engine = make_engine(engine_name, model, tokenizer)
    texts = [r["prompt"] for r in rows]
    seconds, tokens = [], []
    for repeat in range(repeats + 1):
        batch = texts[(repeat * PROMPTS_PER_STEP) % len(texts):][:PROMPTS_PER_STEP]
        started = time.perf_counter()
        out = engine.generate(batch, GROUP, SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, seed=repeat))
        if repeat:  # the first call warms up
            seconds.append(time.perf_counter() - started)
            tokens.append(sum(len(g.completion_ids) for group in out for g in group))
    return {"tokens_per_second": round(sum(tokens) / sum(seconds), 1),
            "seconds_per_call": round(statistics.fmean(seconds), 4), "calls": len(seconds)}


def r1lab_grpo(model_dir: Path, out: Path, steps: int, engine: str) -> dict:
    from r1lab.pipeline import run_recipe

    recipe = {"name": f"grpo-{engine}", "output_dir": str(out), "model": str(model_dir), "engine": engine,
              "task": {"name": "arithmetic"},
              "stages": {"grpo": {"kind": "grpo", "steps": steps, "prompts_per_step": PROMPTS_PER_STEP,
                                  "group_size": GROUP, "max_new_tokens": NEW_TOKENS, "lr": 1e-6,
                                  "warmup_steps": 0, "kl_coef": 0.0, "loss_aggregation": "token",
                                  "eval_every": 0, "save_every": 0, "eval": False, "samples_every": 0,
                                  "rewards": {"accuracy": 1.0, "format": 0.1}}}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"grpo-{engine}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(path, quiet=True)
    lines = [json.loads(line) for line in (out / f"grpo-{engine}" / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [m for m in lines if m.get("stage") == "grpo" and "step_seconds" in m][1:]
    step = statistics.fmean(m["step_seconds"] for m in steps_logged)
    rollout = statistics.fmean(m["rollout_seconds"] for m in steps_logged)
    tokens = statistics.fmean(m["completion/length_mean"] for m in steps_logged) * GROUP * PROMPTS_PER_STEP
    return {"step_seconds": round(step, 4), "rollout_seconds": round(rollout, 4),
            "rollout_tokens_per_second": round(tokens / rollout, 1), "steps": len(steps_logged)}


def trl_grpo(model_dir: Path, rows: list[dict], out: Path, steps: int) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.models import load_model, load_tokenizer
    from r1lab.rewards import score_completions

    tokenizer = load_tokenizer(str(model_dir))
    model, _ = load_model(str(model_dir))
    by_prompt = {r["prompt"]: r["example"] for r in rows}

    def reward(prompts, completions, **_):  # the same rules r1lab scores with
        examples = [by_prompt[p] for p in prompts]
        return score_completions(["<think>" + c if not c.startswith("<think>") else c for c in completions],
                                 examples, {"accuracy": 1.0, "format": 0.1}).total

    generate_seconds, generate_tokens = [], []
    original_generate = model.generate

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        output = original_generate(*args, **kwargs)
        generate_seconds.append(time.perf_counter() - started)
        prompt_width = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        completion = output[:, prompt_width:]
        ended = (completion == tokenizer.eos_token_id).int()
        lengths = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], completion.shape[1]))
        generate_tokens.append(int(lengths.sum()))
        return output

    model.generate = timed_generate
    step_times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.started)

    config = GRPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=GROUP * PROMPTS_PER_STEP,
                        num_generations=GROUP, max_completion_length=NEW_TOKENS, learning_rate=1e-6, beta=0.0,
                        loss_type="dapo", num_iterations=1, gradient_checkpointing=False, use_cpu=True, bf16=False,
                        max_steps=steps, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                        temperature=1.0, seed=0, lr_scheduler_type="constant", warmup_steps=0)
    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    step = statistics.fmean(step_times[1:])
    return {"step_seconds": round(step, 4), "generate_seconds": round(statistics.fmean(generate_seconds[1:]), 4),
            "rollout_tokens_per_second": round(sum(generate_tokens[1:]) / sum(generate_seconds[1:]), 1),
            "steps": len(step_times) - 1}


def measure(size: str, args, have_trl: bool) -> dict:
    """One round for one model: every engine's rollout rate and every GRPO step, side by side."""
    with tempfile.TemporaryDirectory(prefix="r1lab-engine-") as tmp:
        tmp = Path(tmp)
        model, tokenizer, parameters = build(size, tmp / "model")
        rows = prompts(tokenizer, 256)
        entry = {"parameters": parameters, "rollout": {}, "grpo_step": {}}
        for engine in ("fast", "transformers"):
            entry["rollout"][engine] = rollout_rate(engine, model, tokenizer, rows, args.repeats)
            print(size, "rollout", engine, entry["rollout"][engine], file=sys.stderr)
        for engine in ("auto", "transformers"):
            entry["grpo_step"][f"r1lab_{engine}"] = r1lab_grpo(tmp / "model", tmp / "runs", args.steps, engine)
            print(size, "grpo", engine, entry["grpo_step"][f"r1lab_{engine}"], file=sys.stderr)
        if have_trl:
            entry["grpo_step"]["trl"] = trl_grpo(tmp / "model", rows, tmp, args.steps)
            print(size, "grpo trl", entry["grpo_step"]["trl"], file=sys.stderr)
    fast = entry["rollout"]["fast"]["tokens_per_second"]
    ratios = {"rollout_fast_vs_transformers": fast / entry["rollout"]["transformers"]["tokens_per_second"]}
    if have_trl:
        trl_step = entry["grpo_step"]["trl"]
        ratios["rollout_fast_vs_trl_generate"] = fast / trl_step["rollout_tokens_per_second"]
        ratios["grpo_step_trl_over_r1lab"] = trl_step["step_seconds"] / entry["grpo_step"]["r1lab_auto"][
            "step_seconds"]
    entry["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
    return entry


def summary(rounds: list[dict]) -> dict:
    """The median of every figure over the rounds, and each ratio's range (these 2-core VMs vary by ±15% from one
    run to the next, and each library's runs by themselves)."""
    def median(path: list[str]) -> float:
        values = []
        for entry in rounds:
            for key in path:
                entry = entry[key]
            values.append(entry)
        return round(statistics.median(values), 4)

    first = rounds[0]
    return {"parameters": first["parameters"],
            "rollout_tokens_per_second": {e: median(["rollout", e, "tokens_per_second"]) for e in first["rollout"]},
            "grpo_step_seconds": {name: median(["grpo_step", name, "step_seconds"]) for name in first["grpo_step"]},
            "ratios": {k: median(["ratios", k]) for k in first["ratios"]},
            "ratio_ranges": {k: [min(r["ratios"][k] for r in rounds), max(r["ratios"][k] for r in rounds)]
                             for k in first["ratios"]},
            "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--repeats", type=int, default=10, help="timed generate calls per engine")
    parser.add_argument("--steps", type=int, default=9, help="GRPO steps per run (the first is left out)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times the whole comparison runs (the sizes alternating); medians and ranges reported")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    try:
        import trl  # noqa: F401
        have_trl = True
    except ImportError:
        have_trl = False
        print("trl is not installed: its columns are skipped (pip install trl==1.16.0)", file=sys.stderr)
    from r1lab.cpu_matmul import onednn_pays
    from r1lab.cpu_memory import keep_freed_memory

    # r1lab's runs set this for the whole process; set from the start, TRL and the engines timed before r1lab's
    # runs get it too (a like-for-like clock)
    keep_freed_memory()
    results = {"torch_threads": torch.get_num_threads(), "r1lab_cpu_matmul": "onednn" if onednn_pays() else "blas",
               "settings": {
        "dtype": "float32", "group": GROUP, "prompts_per_step": PROMPTS_PER_STEP, "new_tokens": NEW_TOKENS}}
    sizes = args.sizes.split(",")
    rounds = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            rounds[size].append(measure(size, args, have_trl))
    for size in sizes:
        results[size] = summary(rounds[size])
    emit(results, args.out)


if __name__ == "__main__":
    main()
