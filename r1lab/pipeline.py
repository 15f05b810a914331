"""Runs the stages of a recipe in order, each evaluated, resumable.

A recipe is one YAML file: run-wide settings (model, task, template, evaluation) and an ordered mapping of stages.
Each stage writes ``runs/<name>/<stage>/`` (its checkpoint in Hugging Face format, ``done.json`` when finished);
a stage that is done is skipped when the run starts again, and an unfinished RL stage resumes from its last
checkpoint. The run folder holds ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``, ``summary.json`` and the plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from r1lab.checkpoint import atomic_write_json, seed_everything
from r1lab.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from r1lab.console import Console
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.models import load_model, resolve_device
from r1lab.recipe import EvalConfig, RunConfig  # noqa: F401  (RunConfig is the recipe's type; re-exported)
from r1lab.report import write_report
from r1lab.stage import RunOutputs, Stage, StageOutput, read_done, set_threads
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate
from r1lab.train import (check_gate, cold_start, dpo, grpo, ppo, preference_pairs, pretrain, rejection_sampling,
                         reward_model, sft)

# kind -> (config class, run(cfg, stage) -> StageOutput). A new stage kind adds one line here.
STAGES: dict[str, tuple[type, Callable]] = {
    "pretrain": (pretrain.PretrainConfig, pretrain.run_stage),
    "grpo": (grpo.GRPOConfig, grpo.train),
    "ppo": (ppo.PPOConfig, ppo.train),
    "sft": (sft.SFTConfig, sft.train),
    "reward_model": (reward_model.RewardModelConfig, reward_model.train),
    "dpo": (dpo.DPOConfig, dpo.train),
    "rejection_sampling": (rejection_sampling.RejectionSamplingConfig, rejection_sampling.run_stage),
    "cold_start": (cold_start.ColdStartConfig, cold_start.run_stage),
    "preference_pairs": (preference_pairs.PreferencePairsConfig, preference_pairs.run_stage),
    "check_gate": (check_gate.CheckGateConfig, check_gate.run_stage),
}
STAGE_KINDS: dict[str, type] = {kind: cls for kind, (cls, _) in STAGES.items()}


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """Read a recipe, apply overrides, check every key; returns the run config and the typed stage configs."""
    data = apply_overrides(read_yaml(path), list(overrides))
    source = str(path)
    run = from_dict(RunConfig, data, where="", source=source)
    stages = {}
    for name, raw in run.stages.items():
        if not isinstance(raw, dict) or "kind" not in raw:
            raise ConfigError(f"{source}: stage '{name}' needs a 'kind' ({', '.join(STAGE_KINDS)})")
        if raw["kind"] not in STAGE_KINDS:
            raise ConfigError(f"{source}: stage '{name}' has unknown kind '{raw['kind']}'; "
                              f"choose one of {', '.join(STAGE_KINDS)}")
        stages[name] = from_dict(STAGE_KINDS[raw["kind"]], raw, where=f"stages.{name}", source=source)
    if not stages:
        raise ConfigError(f"{source}: the recipe has no stages")
    return run, stages


def evaluate_checkpoint(run: RunConfig, task, checkpoint: str, device, samples_path: Path | None) -> dict:
    """The R1 evaluation (pass@1 over k samples at T=0.6, top-p 0.95, cons@k) of a saved model."""
    model, tokenizer = load_model(checkpoint, dtype=run.dtype, device=device)
    e = run.eval
    return evaluate_model(Generator(run.engine, model, tokenizer), task, PromptTemplate(run.template, tokenizer),
                          num_problems=e.num_problems, k=e.k, temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens, seed=e.seed, samples_path=samples_path)


def run_recipe(path: str | Path, overrides: list[str] = (), *, quiet: bool = False) -> Path:
    """Run (or resume) every stage of a recipe; returns the run folder."""
    run, stages = load_recipe(path, overrides)
    console = Console(quiet)
    set_threads(run.threads)
    seed_everything(run.seed)
    device = resolve_device(run.device)
    run_dir = Path(run.output_dir) / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(to_dict(run), sort_keys=False)
    previous = run_dir / "config.yaml"
    if previous.is_file() and previous.read_text() != resolved:
        console.print(f"note: {previous} differs from this recipe; the stages already done are kept "
                      f"(delete {run_dir} to start over)", style="yellow")
    previous.write_text(resolved)
    try:
        task = get_task(run.task.name, **run.task.options)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{path}: task: {err}") from err

    outputs = RunOutputs(run_dir, run.model)
    summary = {"run": run.name, "recipe": str(path), "stages": []}
    last_model = run.model  # a stage without init: starts from the last model an earlier stage produced
    for name, cfg in stages.items():
        stage_dir = run_dir / name
        stage_dir.mkdir(exist_ok=True)
        done_file = stage_dir / "done.json"
        if done_file.is_file():
            entry = read_done(done_file)
            console.print(f"[{name}] already done, skipping ({entry.get('model') or entry.get('data_file')})")
            summary["stages"].append(entry)
            last_model = entry.get("model") or last_model
            continue
        try:
            init = outputs.model(getattr(cfg, "init", ""), default=last_model, stage=name)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
        _resolve_reward_models(cfg, outputs)
        if init == "tiny" and cfg.kind != "pretrain":
            raise ConfigError(f"{path}: stage '{name}' starts from model 'tiny', which a pretrain stage must build "
                              f"first (add a stage with kind: pretrain, or set model: to a checkpoint)")
        console.print(f"[{name}] {cfg.kind}", style="bold")
        set_threads(run.threads)
        started = time.time()
        seed_everything(run.seed)
        stage = Stage(name=name, run=run, task=task, init=init, outputs=outputs, folder=stage_dir, device=device,
                      console=console)
        output: StageOutput = STAGES[cfg.kind][1](cfg, stage)
        last_model = output.model or last_model  # a data set is not a model: the next default init skips it
        evaluation = None
        if cfg.eval:
            console.print(f"[{name}] evaluating {last_model} on {run.eval.num_problems} held-out problems, "
                          f"k={run.eval.k}")
            evaluation = evaluate_checkpoint(run, task, last_model, device, stage_dir / "eval_samples.jsonl")
            console.print(f"[{name}] pass@1 {evaluation['pass@1']:.3f}  cons@{evaluation['k']} "
                          f"{evaluation['cons@k']:.3f}  format {evaluation['format_rate']:.3f}  "
                          f"length {evaluation['length_mean']:.1f}")
            stage.log_metrics(getattr(cfg, "steps", 0), {f"final_eval/{k}": v for k, v in evaluation.items()
                                                          if isinstance(v, (int, float))})
        entry = {"stage": name, "kind": cfg.kind, "model": output.model, "data_file": output.data_file,
                 "reward_model": output.reward_model, "eval": evaluation, "seconds": round(time.time() - started, 1)}
        if (stage_dir / "stats.json").is_file():  # a data stage: the size of what it wrote goes in the summary
            entry["data"] = json.loads((stage_dir / "stats.json").read_text())
        if (stage_dir / "gate.json").is_file():
            entry["gate"] = json.loads((stage_dir / "gate.json").read_text())
        if stage.warnings:
            entry["warnings"] = stage.warnings[:20]
        atomic_write_json(done_file, entry)
        summary["stages"].append(entry)
        atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_json(run_dir / "summary.json", summary)
    report = write_report(run_dir)  # renders the plots too
    console.print(f"done: {run_dir}/summary.json, {report}, {run_dir}/training_curves.png", style="bold green")
    return run_dir


def _resolve_reward_models(cfg, outputs: RunOutputs) -> None:
    """'reward_model:<stage>' in a stage's rewards names the reward model an earlier reward_model stage trained."""
    prefix = "reward_model:"

    def resolve(weights: dict[str, float]) -> dict[str, float]:
        resolved = {}
        for spec, weight in weights.items():
            folder = outputs.reward_model(spec[len(prefix):]) if spec.startswith(prefix) else None
            resolved[f"{prefix}{folder}" if folder else spec] = weight
        return resolved

    if hasattr(cfg, "rewards"):
        cfg.rewards = resolve(cfg.rewards)
    if hasattr(cfg, "rewards_by_task"):
        cfg.rewards_by_task = {task: resolve(weights) for task, weights in cfg.rewards_by_task.items()}
