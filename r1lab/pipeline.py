"""Runs the stages of a recipe in order, each evaluated, resumable.

A recipe is one YAML file: run-wide settings (model, task, template, evaluation) and an ordered mapping of stages.
Each stage writes ``runs/<name>/<stage>/`` (its checkpoint in Hugging Face format, ``done.json`` when finished);
a stage that is done is skipped when the run starts again, and an unfinished RL stage resumes from its last
checkpoint. The run folder holds ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``, ``summary.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from r1lab.checkpoint import atomic_dir, atomic_write_json, seed_everything
from r1lab.config import ConfigError, apply_overrides, doc, from_dict, read_yaml, to_dict
from r1lab.lora import LoraConfig
from r1lab.models import load_model, resolve_device, save_model
from r1lab.tasks import TaskConfig
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.train import dpo, grpo, ppo, pretrain, reward_model, sft
from r1lab.train.grpo import GRPOConfig
from r1lab.train.ppo import PPOConfig
from r1lab.train.pretrain import PretrainConfig
from r1lab.train.dpo import DPOConfig
from r1lab.train.reward_model import RewardModelConfig
from r1lab.train import check_gate, cold_start, preference_pairs, rejection_sampling
from r1lab.train.check_gate import CheckGateConfig
from r1lab.train.cold_start import ColdStartConfig
from r1lab.train.preference_pairs import PreferencePairsConfig
from r1lab.train.rejection_sampling import RejectionSamplingConfig
from r1lab.train.sft import SFTConfig

log = logging.getLogger("r1lab")

# kind -> (config class, runner(cfg, ctx) -> checkpoint path). A new trainer adds one line here.
STAGES: dict[str, tuple[type, Callable]] = {
    "pretrain": (PretrainConfig, pretrain.run_stage),
    "grpo": (GRPOConfig, grpo.train),
    "ppo": (PPOConfig, ppo.train),
    "sft": (SFTConfig, sft.train),
    "reward_model": (RewardModelConfig, reward_model.train),
    "dpo": (DPOConfig, dpo.train),
    "rejection_sampling": (RejectionSamplingConfig, rejection_sampling.run_stage),
    "cold_start": (ColdStartConfig, cold_start.run_stage),
    "preference_pairs": (PreferencePairsConfig, preference_pairs.run_stage),
    "check_gate": (CheckGateConfig, check_gate.run_stage),
}
# Stages whose output is a data file (their done.json "checkpoint"), read by later stages with data: <stage name>.
DATA_STAGE_KINDS = ("cold_start", "rejection_sampling", "preference_pairs")
STAGE_KINDS: dict[str, type] = {kind: cls for kind, (cls, _) in STAGES.items()}


@dataclass
class EvalConfig:
    num_problems: int = doc(200, "Held-out problems per evaluation.")
    k: int = doc(4, "Samples per problem: pass@1 is their mean correctness, cons@k their majority vote.")
    temperature: float = doc(0.6, "Sampling temperature (R1 protocol: 0.6).")
    top_p: float = doc(0.95, "Nucleus sampling (R1 protocol: 0.95).")
    max_new_tokens: int = doc(64, "Longest completion during evaluation.")
    seed: int = doc(1234, "Seed of the evaluation sampler and problem draw.")
    quick_problems: int = doc(100, "Problems in the quick evaluations during training.")
    quick_k: int = doc(2, "Samples per problem in the quick evaluations during training.")


@dataclass
class RunConfig:
    name: str = doc("run", "Run name: results go to <output_dir>/<name>/.")
    output_dir: str = doc("runs", "Folder that holds run folders.")
    seed: int = doc(0, "Seed for everything the run samples.")
    model: str = doc("tiny", "Starting model: 'tiny' (built by a pretrain stage), a local path or a hub id.")
    dtype: str = doc("float32", "Model dtype: float32, bfloat16, float16.")
    device: str = doc("auto", "auto (cuda when present), cpu, cuda, cuda:1 ...")
    threads: int = doc(0, "CPU threads for torch (0: torch's default); recipes run side by side get a share of the "
                          "cores instead (r1lab.side_by_side).")
    engine: str = doc("transformers", "Generation engine.")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward (less memory, ~15% slower).")
    lora: LoraConfig = doc(LoraConfig(), "LoRA / QLoRA adapters (peft) for the RL stages; reference = adapters off.")
    task: TaskConfig = doc(TaskConfig(), "The task: prompts, answers and the verifier.")
    template: TemplateConfig = doc(TemplateConfig(), "How prompts are shown to the model.")
    eval: EvalConfig = doc(EvalConfig(), "Held-out evaluation after every stage (R1 protocol).")
    stages: dict[str, dict] = doc({}, "Ordered stages: name -> {kind: pretrain|grpo|ppo, ...settings of that kind}.")


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


class Console:
    """Progress lines on stderr (rich when it is a terminal)."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console as RichConsole

        self.console = RichConsole(stderr=True, highlight=False)
        self.quiet = quiet
        self._last = 0.0

    def print(self, message: str, style: str | None = None) -> None:
        if not self.quiet:  # markup off: "[stage]" prefixes are text, not rich tags
            self.console.print(message, style=style, markup=False)

    def progress(self, stage: str, done: int, total: int, text: str) -> None:
        now = time.time()
        if done == total or now - self._last > 5 or done == 1:
            self._last = now
            self.print(f"[{stage}] {done}/{total} {text}")


@dataclass
class StageContext:
    """What a trainer gets from the pipeline: where to read and write, and how to log."""

    run: RunConfig
    name: str
    run_dir: Path
    stage_dir: Path
    init_checkpoint: str
    task: Any
    template: PromptTemplate | None
    device: torch.device
    console: Console
    warnings: list[str] = field(default_factory=list)
    threads_checked_at: float = 0.0

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoint"

    @property
    def final_dir(self) -> Path:
        return self.stage_dir / "final"

    def load_policy(self):
        """The model to train: the stage's last resumable checkpoint if any, else its init checkpoint."""
        if self.run.lora.enabled:  # the base from init_checkpoint, the adapter from checkpoint/adapter if resuming
            from r1lab.lora import load_lora_policy

            model, tokenizer = load_lora_policy(self.run, self.init_checkpoint, self.checkpoint_dir, self.device)
        else:
            source = self.checkpoint_dir if (self.checkpoint_dir / "config.json").is_file() else self.init_checkpoint
            model, tokenizer = load_model(str(source), dtype=self.run.dtype, device=self.device)
            if self.run.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.template is None or self.template.tokenizer is None:
            self.template = PromptTemplate(self.run.template, tokenizer)
        return model, tokenizer

    def log(self, message: str) -> None:
        self.console.print(f"[{self.name}] {message}")

    def warn(self, message: str) -> None:
        log.warning(message)
        self.console.print(f"[{self.name}] warning: {message}", style="yellow")
        self.warnings.append(message)

    def log_metrics(self, step: int, metrics: dict) -> None:
        record = {"stage": self.name, "step": step, **{k: _round(v) for k, v in metrics.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_samples(self, lines: list[str]) -> None:
        with open(self.run_dir / "samples.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in lines))

    def progress(self, done: int, total: int, text: str) -> None:
        self.console.progress(self.name, done, total, text)
        if time.time() - self.threads_checked_at > 5:  # side by side: take a finished sibling's cores mid-stage
            self.threads_checked_at = time.time()
            _set_threads(self.run)

    def write_data(self, rows: list[dict], stats: dict, file_name: str, metrics: dict | None = None) -> str:
        """A data stage's output: ``<stage>/<file_name>`` (JSONL) and ``<stage>/stats.json`` with ``rows`` set; the
        row count (and ``metrics``) logged. Returns the data file's path, the stage's output."""
        from r1lab.data.filters import write_jsonl

        stats["rows"] = len(rows)
        path = write_jsonl(rows, self.stage_dir / file_name)
        atomic_write_json(self.stage_dir / "stats.json", stats)
        self.log_metrics(0, {**(metrics or {}), "data/rows": len(rows)})
        return str(path)

    def checkpoint_of(self, ref: str) -> str:
        """What an earlier stage of this run produced (by name), the run's model for "model", else ``ref`` itself
        (a path or hub id)."""
        if ref == "model":
            return self.run.model
        done = self.run_dir / ref / "done.json"
        if ref and done.is_file():
            return json.loads(done.read_text())["checkpoint"]
        return ref

    def prompt_task(self, override: TaskConfig):
        """The task a stage draws its training prompts from: ``override`` when it names one, else the run's task."""
        if not override.name:
            return self.task
        from r1lab.tasks import get_task

        try:
            return get_task(override.name, **override.options)
        except (TypeError, ValueError, FileNotFoundError) as err:
            raise ConfigError(f"stage '{self.name}': task: {err}") from err

    def quick_eval(self, engine, step: int) -> dict:
        from r1lab.evaluate import evaluate_model

        e = self.run.eval
        result = evaluate_model(engine, self.task, self.template, num_problems=e.quick_problems, k=e.quick_k,
                                temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                                seed=e.seed)
        self.log_metrics(step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        self.log(f"step {step}: held-out pass@1 {result['pass@1']:.3f} format {result['format_rate']:.2f}")
        return result

    def save_checkpoint(self, model, tokenizer, write_state: Callable[[Path], None]) -> None:
        """A resumable checkpoint: weights and training state renamed into place together."""
        with atomic_dir(self.checkpoint_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if getattr(tokenizer, "_r1lab_tiny", False):
                (tmp / "r1lab_tiny.json").write_text("{}")
            write_state(tmp)

    def save_final(self, model, tokenizer) -> str:
        save_model(model, tokenizer, self.final_dir, extra={"stage": self.name, "run": self.run.name})
        return str(self.final_dir)


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def _stage_entry(name: str, kind: str, checkpoint: str | None, evaluation: dict | None, seconds: float) -> dict:
    return {"stage": name, "kind": kind, "checkpoint": checkpoint, "eval": evaluation, "seconds": round(seconds, 1)}


def evaluate_checkpoint(run: RunConfig, task, checkpoint: str, device, samples_path: Path | None) -> dict:
    """The R1 evaluation (pass@1 over k samples at T=0.6, top-p 0.95, cons@k) of a saved model."""
    from r1lab.engine import make_engine
    from r1lab.evaluate import evaluate_model

    model, tokenizer = load_model(checkpoint, dtype=run.dtype, device=device)
    template = PromptTemplate(run.template, tokenizer)
    e = run.eval
    return evaluate_model(make_engine(run.engine, model, tokenizer), task, template, num_problems=e.num_problems,
                          k=e.k, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                          seed=e.seed, samples_path=samples_path)


def run_recipe(path: str | Path, overrides: list[str] = (), *, quiet: bool = False) -> Path:
    """Run (or resume) every stage of a recipe; returns the run folder."""
    from r1lab.report import write_report
    from r1lab.tasks import get_task

    run, stages = load_recipe(path, overrides)
    console = Console(quiet)
    _set_threads(run)
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

    summary = {"run": run.name, "recipe": str(path), "stages": []}
    checkpoint = run.model
    for name, cfg in stages.items():
        stage_dir = run_dir / name
        stage_dir.mkdir(exist_ok=True)
        done_file = stage_dir / "done.json"
        if done_file.is_file():
            entry = json.loads(done_file.read_text())
            console.print(f"[{name}] already done, skipping (checkpoint {entry['checkpoint']})")
            summary["stages"].append(entry)
            if entry["kind"] not in DATA_STAGE_KINDS:
                checkpoint = entry["checkpoint"] or checkpoint
            continue
        init = _resolve_init(getattr(cfg, "init", ""), checkpoint, summary, run.model)
        _resolve_reward_models(cfg, summary, run_dir)
        if os.path.isfile(init):
            raise ConfigError(f"{path}: stage '{name}' init: {getattr(cfg, 'init', '')!r} is the data file {init}, "
                              f"not a model; read data with data: and start from a model stage with init:")
        if init == "tiny" and cfg.kind != "pretrain":
            raise ConfigError(f"{path}: stage '{name}' starts from model 'tiny', which a pretrain stage must build "
                              f"first (add a stage with kind: pretrain, or set model: to a checkpoint)")
        console.print(f"[{name}] {cfg.kind}", style="bold")
        _set_threads(run)
        started = time.time()
        seed_everything(run.seed)
        ctx = StageContext(run=run, name=name, run_dir=run_dir, stage_dir=stage_dir, init_checkpoint=init,
                           task=task, template=None, device=device, console=console)
        output = str(STAGES[cfg.kind][1](cfg, ctx))
        if cfg.kind not in DATA_STAGE_KINDS:  # a data set is not a model: the next stage's default init skips it
            checkpoint = output
        evaluation = None
        if cfg.eval:
            console.print(f"[{name}] evaluating {checkpoint} on {run.eval.num_problems} held-out problems, "
                          f"k={run.eval.k}")
            evaluation = evaluate_checkpoint(run, task, checkpoint, device, stage_dir / "eval_samples.jsonl")
            console.print(f"[{name}] pass@1 {evaluation['pass@1']:.3f}  cons@{evaluation['k']} "
                          f"{evaluation['cons@k']:.3f}  format {evaluation['format_rate']:.3f}  "
                          f"length {evaluation['length_mean']:.1f}")
            ctx.log_metrics(getattr(cfg, "steps", 0), {f"final_eval/{k}": v for k, v in evaluation.items()
                                                        if isinstance(v, (int, float))})
        entry = _stage_entry(name, cfg.kind, output, evaluation, time.time() - started)
        if (stage_dir / "stats.json").is_file():  # a data stage: the size of what it wrote goes in the summary
            entry["data"] = json.loads((stage_dir / "stats.json").read_text())
        if (stage_dir / "gate.json").is_file():
            entry["gate"] = json.loads((stage_dir / "gate.json").read_text())
        if ctx.warnings:
            entry["warnings"] = ctx.warnings[:20]
        atomic_write_json(done_file, entry)
        summary["stages"].append(entry)
        atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_json(run_dir / "summary.json", summary)
    report = write_report(run_dir)  # renders the plots too
    console.print(f"done: {run_dir}/summary.json, {report}, {run_dir}/training_curves.png", style="bold green")
    return run_dir


def _set_threads(run: RunConfig) -> None:
    """torch's CPU threads: the share a side-by-side parent gives this run (r1lab.side_by_side; read again before
    every stage and every few seconds during one, so a run takes the cores a finished sibling left), else the
    recipe's ``threads``."""
    from r1lab.side_by_side import THREADS_FILE_ENV, threads_from_file

    threads = threads_from_file(os.environ.get(THREADS_FILE_ENV)) or run.threads
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def _resolve_reward_models(cfg, summary: dict, run_dir: Path) -> None:
    """'reward_model:<stage>' in a stage's rewards names the reward model an earlier reward_model stage trained."""
    trained = {e["stage"]: run_dir / e["stage"] / "final" for e in summary["stages"] if e["kind"] == "reward_model"}
    prefix = "reward_model:"

    def resolve(weights: dict[str, float]) -> dict[str, float]:
        return {(f"{prefix}{trained[spec[len(prefix):]]}" if spec.startswith(prefix) and spec[len(prefix):] in trained
                 else spec): weight for spec, weight in weights.items()}

    if hasattr(cfg, "rewards"):
        cfg.rewards = resolve(cfg.rewards)
    if hasattr(cfg, "rewards_by_task"):
        cfg.rewards_by_task = {task: resolve(weights) for task, weights in cfg.rewards_by_task.items()}


def _resolve_init(init: str, previous: str, summary: dict, run_model: str) -> str:
    """A stage starts from an earlier stage (by name), the run's ``model`` (``init: model``; e.g. a distillation
    student after a data stage), a path or hub id, or by default the last model an earlier stage produced (data
    stages are skipped)."""
    if not init:
        return previous
    if init == "model":
        return run_model
    for entry in summary["stages"]:
        if entry["stage"] == init:
            return entry["checkpoint"]
    return init
