"""Runs the stages of a recipe in order, each evaluated, resumable.

A recipe is one YAML file: run-wide settings (model, task, template, evaluation) and an ordered mapping of stages.
Every setting is checked before any stage starts, all problems reported together (``load_recipe``). Each stage
writes ``runs/<name>/<stage>/`` (its checkpoint in Hugging Face format, the settings it ran with in ``config.yaml``,
``done.json`` when finished); a stage that is done is skipped when the run starts again, and an unfinished RL stage
resumes from its last checkpoint. The run folder holds ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``,
``summary.json`` and the plots; one process at a time runs in it (``r1lab.locks``, ``r1lab.run_record``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from r1lab.checkpoint import atomic_write_json, atomic_write_text, recover_dir, seed_everything
from r1lab.config import ConfigError
from r1lab.console import Console
from r1lab.cpu_matmul import choice as cpu_matmul_choice, route_linear_layers
from r1lab.cpu_memory import keep_freed_memory
from r1lab.dist import barrier, init_from_env, world
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.locks import run_folder_lock
from r1lab.models import load_model, resolve_device
from r1lab.recipe import EvalConfig, RunConfig  # noqa: F401  (RunConfig is the recipe's type; re-exported)
from r1lab.recipe_file import load_recipe  # noqa: F401 (read and checked without torch; re-exported)
from r1lab.report import reward_error_totals, write_report
from r1lab.run_record import (MODEL_CARD, drop_log_lines, model_card, read_stage_record, record_differences,
                              run_config_text, stage_record, write_stage_record)
from r1lab.sandbox import SandboxUnavailable, sandbox_isolation
from r1lab.stage_configs import STAGE_KINDS
from r1lab.stage import RunOutputs, Stage, StageOutput, checkpoint_step, read_done, set_threads
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate
from r1lab.trackers import Trackers
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
assert {kind: cls for kind, (cls, _) in STAGES.items()} == STAGE_KINDS  # one list of kinds


def evaluate_checkpoint(run: RunConfig, task, checkpoint: str, device, samples_path: Path | None,
                        progress=None) -> dict:
    """The R1 evaluation (pass@1 over k samples at T=0.6, top-p 0.95, cons@k) of a saved model; ``progress(done,
    total)`` told as samples finish."""
    model, tokenizer = load_model(checkpoint, dtype=run.dtype, device=device)
    route_linear_layers(model)  # for an engine that runs the model's own forward (r1lab.cpu_matmul)
    e = run.eval
    return evaluate_model(Generator(run.engine, model, tokenizer), task, PromptTemplate(run.template, tokenizer),
                          num_problems=e.num_problems, k=e.k, temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens, seed=e.seed, samples_path=samples_path,
                          progress=progress)


def run_recipe(path: str | Path, overrides: list[str] = (), *, quiet: bool = False) -> Path:
    """Run (or resume) every stage of a recipe; returns the run folder. Every setting is checked first; a second
    process on the same run folder stops at once (``r1lab.locks.run_folder_lock``)."""
    run, stages = load_recipe(path, overrides)
    place = init_from_env(run.device, need_group=run.parallel == "fsdp2")  # under torchrun: join the process group (README, "Many processes")
    main_run_dir = Path(run.output_dir) / run.name  # rank 0's: every rank reads finished stages and checkpoints here
    if place.distributed and not place.is_main:  # rank 0 shows progress, logs and writes the run folder
        run.output_dir = str(Path(run.output_dir) / f".rank{place.rank}")
        shutil.rmtree(Path(run.output_dir) / run.name, ignore_errors=True)  # what an interrupted run left
        quiet = True
        logging.getLogger("r1lab").setLevel(logging.ERROR)
    console = Console(quiet)
    if place.distributed:  # the processes of one machine share its cores
        run.threads = max(1, (run.threads or os.cpu_count() or 1) // place.world_size)
    set_threads(run.threads)
    keep_freed_memory()  # no page faults for the tensors every step allocates again (r1lab.cpu_memory)
    seed_everything(run.seed)
    device = resolve_device(run.device)
    if device.type == "cpu" and run.dtype == "float32":
        console.print(f"fp32 matrix products: {cpu_matmul_choice()}")
    run_dir = Path(run.output_dir) / run.name
    with run_folder_lock(run_dir):
        command = " ".join(["r1lab run", str(path), *overrides])
        trackers = Trackers(run.report_to if place.is_main else [], run_dir, run.name, run.tracker_project)
        try:
            result = _run_stages(path, run, stages, console, device, run_dir, command, main_run_dir, trackers)
        finally:
            trackers.close()
            console.close()
    if place.distributed and not place.is_main:  # its results are rank 0's: the scratch folder goes
        shutil.rmtree(Path(run.output_dir), ignore_errors=True)
        return Path(run.output_dir).parent / run.name
    return result


def _run_stages(path: str | Path, run: RunConfig, stages: dict[str, Any], console: Console, device,
                run_dir: Path, command: str, main_run_dir: Path, trackers: Trackers) -> Path:
    """The body of ``run_recipe``, run while this process holds the run folder. Under torchrun the other ranks
    write in their own ``run_dir`` but read which stages are done, their outputs and the checkpoints to resume from
    in rank 0's ``main_run_dir``."""
    # What each stage runs with, taken before the stages resolve their references (reward_model:<stage> -> folder).
    records = {name: stage_record(run, name, cfg) for name, cfg in stages.items()}
    _write_run_config(run, stages, records, run_dir, console)
    for line in trackers.open():  # report_to: rank 0 alone; each gets config.yaml as the run's config
        console.print(line)
    try:
        task = get_task(run.task.name, **run.task.options)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{path}: task: {err}") from err

    if _runs_model_written_code(run, stages):  # say which isolation the programs get, or stop before any stage
        try:
            console.print(f"model-written code runs in: {sandbox_isolation()}")
        except SandboxUnavailable as err:
            raise ConfigError(f"{path}: this recipe runs model-written code (the code verifier or reward), and "
                              f"{err}") from err
    outputs = RunOutputs(main_run_dir, run.model)
    main = world().is_main
    summary = {"run": run.name, "recipe": str(path), "stages": []}
    last_model = run.model  # a stage without init: starts from the last model an earlier stage produced
    for name, cfg in stages.items():
        stage_dir = run_dir / name
        stage_dir.mkdir(exist_ok=True)
        if main:  # a checkpoint a kill left half-replaced is put right before any rank reads it
            recover_dir(stage_dir / "checkpoint")
        barrier()  # under torchrun: rank 0 has written the previous stage's results
        done_file = main_run_dir / name / "done.json"
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
        warnings = _start_record(run_dir, name, records[name], init)
        console.print(f"[{name}] {cfg.kind}", style="bold")
        set_threads(run.threads)
        started = time.time()
        seed_everything(run.seed)
        stage = Stage(name=name, run=run, task=task, init=init, outputs=outputs, folder=stage_dir, device=device,
                      console=console, resume_folder=main_run_dir / name, trackers=trackers)
        for warning in warnings:
            stage.warn(warning)
        output: StageOutput = STAGES[cfg.kind][1](cfg, stage)
        if not main:  # what rank 0 wrote at the same place: the next stages read that
            output = StageOutput(**{key: value and _in_main_run(value, run_dir, main_run_dir)
                                    for key, value in vars(output).items()})
        barrier()  # rank 0's outputs are written before any rank evaluates or reads them
        last_model = output.model or last_model  # a data set is not a model: the next default init skips it
        evaluation = None
        if cfg.eval:
            console.print(f"[{name}] evaluating {last_model} on {run.eval.num_problems} held-out problems, "
                          f"k={run.eval.k}")
            evaluation = evaluate_checkpoint(
                run, task, last_model, device, stage_dir / "eval_samples.jsonl",
                progress=lambda done, total: console.progress(f"{name} eval", done, total, "samples", unit="sample"))
            console.print(f"[{name}] pass@1 {evaluation['pass@1']:.3f}  cons@{evaluation['k']} "
                          f"{evaluation['cons@k']:.3f}  format {evaluation['format_rate']:.3f}  "
                          f"length {evaluation['length_mean']:.1f}")
            stage.log_metrics(getattr(cfg, "steps", 0), {f"final_eval/{k}": v for k, v in evaluation.items()
                                                          if isinstance(v, (int, float))})
        entry = {"stage": name, "kind": cfg.kind, "model": output.model, "data_file": output.data_file,
                 "reward_model": output.reward_model, "eval": evaluation, "seconds": round(time.time() - started, 1),
                 "config_sha256": read_stage_record(stage_dir)[1]}
        if (stage_dir / "stats.json").is_file():  # a data stage: the size of what it wrote goes in the summary
            entry["data"] = json.loads((stage_dir / "stats.json").read_text())
        if (stage_dir / "gate.json").is_file():
            entry["gate"] = json.loads((stage_dir / "gate.json").read_text())
        if stage.warnings:
            entry["warnings"] = stage.warnings[:20]
        reward_errors = reward_error_totals(run_dir, name)
        if reward_errors:  # failed reward calls, summed over the stage's steps (also in the report)
            entry["reward_errors"] = reward_errors
        if output.model and Path(output.model).resolve().is_relative_to(stage_dir.resolve()):
            # a model this stage wrote (not one it passed through): a card so the folder can be shared as it is
            atomic_write_text(Path(output.model) / MODEL_CARD, model_card(
                run=run.name, stage=name, kind=cfg.kind, init=init, command=command,
                settings=records[name]["settings"], evaluation=evaluation, data=getattr(cfg, "data", None) or None))
        atomic_write_json(stage_dir / "done.json", entry)
        if not run.keep_checkpoints:  # done: the optimizer state (~3x the model) is never read again
            shutil.rmtree(stage_dir / "checkpoint", ignore_errors=True)
        summary["stages"].append(entry)
        atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_json(run_dir / "summary.json", summary)
    report = write_report(run_dir)  # renders the plots too
    console.print(f"done: {run_dir}/summary.json, {report}, {run_dir}/training_curves.png", style="bold green")
    return run_dir


def _in_main_run(path: str, run_dir: Path, main_run_dir: Path) -> str:
    """``path`` inside this rank's ``run_dir``, as the same place in rank 0's ``main_run_dir`` (else unchanged)."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(run_dir.resolve()):
        return str(main_run_dir / resolved.relative_to(run_dir.resolve()))
    return path


def _write_run_config(run: RunConfig, stages: dict[str, Any], records: dict[str, dict], run_dir: Path,
                      console: Console) -> None:
    """The run's config.yaml (``r1lab.run_record.run_config_text``), and a note for every stage already done with
    other settings than this recipe's: it is kept, and its own config.yaml says what it ran with."""
    done_records, differing = {}, {}
    for name in stages:
        stage_dir = run_dir / name
        if not (stage_dir / "done.json").is_file():
            continue
        recorded, sha = read_stage_record(stage_dir)
        done_records[name] = recorded
        if recorded is None:
            continue
        if read_done(stage_dir / "done.json").get("config_sha256") not in (None, sha):
            console.print(f"[{name}] note: {stage_dir / 'config.yaml'} was changed after the stage ran (its sha256 "
                          f"differs from the one in done.json)", style="yellow")
        lines = record_differences(recorded, records[name])
        if lines:
            differing[name] = lines
            console.print(f"[{name}] note: already done with other settings than this recipe's; kept, and its results "
                          f"are those of the settings in {stage_dir / 'config.yaml'} (delete {stage_dir} to run it "
                          f"again with this recipe's): " + "; ".join(lines), style="yellow")
    atomic_write_text(run_dir / "config.yaml", run_config_text(run, stages, done_records, differing))


def _start_record(run_dir: Path, name: str, record: dict, init: str) -> list[str]:
    """What a stage does before it starts: drop the log lines its killed attempt wrote after the checkpoint it resumes
    from, and write its config.yaml. Returns the warnings to give when it resumes with other settings."""
    stage_dir = run_dir / name
    resume_step = checkpoint_step(stage_dir / "checkpoint")
    drop_log_lines(run_dir, name, resume_step if resume_step is not None else -1)
    warnings = []
    recorded, _ = read_stage_record(stage_dir)
    if resume_step is not None and recorded is not None:
        lines = record_differences(recorded, record)
        if lines:
            warnings.append(f"resuming from the step-{resume_step} checkpoint, made with other settings (its first "
                            f"{resume_step} steps ran with them): " + "; ".join(lines))
    write_stage_record(stage_dir, record, init)
    return warnings


def _runs_model_written_code(run: RunConfig, stages: dict[str, Any]) -> bool:
    """Whether a stage scores with the code reward or a task checks answers with the code verifier."""
    tasks = [run.task] + [cfg.task for cfg in stages.values() if getattr(cfg, "task", None) is not None]
    specs = [spec for cfg in stages.values() for spec in getattr(cfg, "rewards", {})]
    specs += [spec for cfg in stages.values() for weights in getattr(cfg, "rewards_by_task", {}).values()
              for spec in weights]
    return "code" in specs or any(task.options.get("verifier") == "code" for task in tasks)


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
