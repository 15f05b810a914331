"""The typed interface between the pipeline and a stage: what a stage may read, and what it may do.

A stage kind is a config dataclass and a function ``run(cfg, stage: Stage) -> StageOutput``. Through ``Stage`` it
reads its settings (the run's settings, the task, the model it starts from, the outputs of earlier stages) and acts
(load the policy, build its generator, log metrics and samples, save checkpoints, write data). It never reaches into
the pipeline or into another stage's folder by hand: ``RunOutputs`` is the one place that resolves what earlier
stages produced, with models and data files kept apart in their ``done.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1lab.checkpoint import atomic_write_json, recover_dir
from r1lab.config import ConfigError
from r1lab.console import Console
from r1lab.data.filters import write_jsonl
from r1lab.data.jsonl import DataFileError
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.policy import ModelSettings, Policy
from r1lab.recipe import RunConfig
from r1lab.tasks import TaskConfig, get_task
from r1lab.templates import PromptTemplate
from r1lab.threads import THREADS_FILE_ENV, threads_from_file
from r1lab.trackers import Trackers

log = logging.getLogger("r1lab")


@dataclass
class StageOutput:
    """What a stage produced; written to its ``done.json``."""

    model: str | None = None  # the model a following stage starts from by default (a folder or hub id)
    data_file: str | None = None  # a data file, read by later stages with ``data: <stage name>``
    reward_model: str | None = None  # a reward-model folder, named by later stages as ``reward_model:<stage>``


class RunOutputs:
    """What the finished stages of a run produced, by stage name: the one resolver for models, data files and
    reward models. ``done.json`` keeps them apart (``model``, ``data_file``, ``reward_model``)."""

    def __init__(self, run_folder: Path, run_model: str):
        self.run_folder = Path(run_folder)
        self.run_model = run_model

    def entry(self, stage: str) -> dict | None:
        """The ``done.json`` of a finished stage of this run, None when there is no such finished stage."""
        done = self.run_folder / stage / "done.json" if stage else None
        if done is None or not done.is_file():
            return None
        return read_done(done)

    def model(self, ref: str, *, default: str, stage: str = "") -> str:
        """A model reference: empty -> ``default`` (the last model of the run), "model" -> the run's ``model``, an
        earlier stage's name -> the model it produced, else a path or hub id as given. A data file is refused."""
        if not ref:
            return default
        if ref == "model":
            return self.run_model
        entry = self.entry(ref)
        if entry is not None:
            if entry.get("model") is None:
                raise ConfigError(f"stage '{stage}': {ref!r} is a {entry['kind']} stage whose output is the data "
                                  f"file {entry.get('data_file')}, not a model; read data with data: and start "
                                  f"from a model stage")
            return entry["model"]
        if os.path.isfile(ref):
            raise ConfigError(f"stage '{stage}': {ref!r} is a file, not a model folder")
        return ref

    def data(self, ref: str, *, stage: str = "") -> str:
        """A data reference: a file path, or the data file an earlier stage of this run wrote."""
        where = f"stage '{stage}': " if stage else ""
        if not ref:
            raise DataFileError(f"{where}set data: to a JSONL file or to the name of an earlier stage that wrote one")
        if os.path.isfile(ref):
            return ref
        entry = self.entry(ref)
        if entry is not None:
            if entry.get("data_file") and os.path.isfile(entry["data_file"]):
                return entry["data_file"]
            raise DataFileError(f"{where}data: stage '{ref}' produced {entry.get('model')!r}, which is not a data "
                                f"file")
        raise DataFileError(f"{where}data file not found: {ref!r} (resolved to {os.path.abspath(ref)}); relative "
                            f"paths are read from the current directory, stage names from {self.run_folder}")

    def reward_model(self, ref: str) -> str | None:
        """The reward-model folder a ``reward_model`` stage named ``ref`` trained, None when ``ref`` names none."""
        entry = self.entry(ref)
        return entry.get("reward_model") if entry else None


def read_done(path: Path) -> dict:
    """A stage's ``done.json``; entries written before models and data were kept apart (one "checkpoint" field)
    are read into the new fields."""
    entry = json.loads(Path(path).read_text())
    if "checkpoint" in entry and "model" not in entry:
        output = entry.pop("checkpoint")
        is_data = bool(output) and os.path.isfile(output)
        entry["model"], entry["data_file"] = (None, output) if is_data else (output, None)
        if entry.get("kind") == "reward_model":
            entry["reward_model"] = str(Path(path).parent / "final")
    return entry


def checkpoint_step(folder: Path) -> int | None:
    """The step of the resumable checkpoint in ``folder`` (a stage's ``checkpoint``), None when there is none. Its
    tensors are memory-mapped, not read, so this costs little even for a large model's optimizer state."""
    recover_dir(folder)  # as loading it would: a kill between two renames leaves the previous checkpoint aside
    path = Path(folder) / "trainer_state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # a file in torch's legacy format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state["step"])


def set_threads(run_threads: int) -> None:
    """torch's CPU threads: the share a side-by-side parent gives this run (read again before every stage and every
    few seconds during one, so a run takes the cores a finished sibling left), else the recipe's ``threads``."""
    threads = threads_from_file(os.environ.get(THREADS_FILE_ENV)) or run_threads
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


@dataclass
class Stage:
    """What the pipeline hands a stage. Read: ``name``, ``run`` (run-wide settings), ``task`` (the run's task, used
    for evaluation and as the default source of prompts), ``init`` (the model this stage starts from), ``outputs``
    (earlier stages' results), ``folder``. Do: the methods below."""

    name: str
    run: RunConfig
    task: Any
    init: str
    outputs: RunOutputs
    folder: Path
    device: torch.device
    console: Console
    resume_folder: Path | None = None  # where a resume reads the checkpoint: rank 0's stage folder (None: folder)
    trackers: Trackers = field(default_factory=Trackers)  # report_to (r1lab.trackers); none on other ranks
    template: PromptTemplate | None = None  # set once the stage's tokenizer is known (load_policy, use_tokenizer)
    warnings: list[str] = field(default_factory=list)
    _threads_checked_at: float = 0.0

    @property
    def run_folder(self) -> Path:
        """The run folder this process writes (under torchrun, another rank's is its scratch folder)."""
        return self.folder.parent

    @property
    def checkpoint_dir(self) -> Path:
        """The stage's resumable checkpoint (written every ``save_every`` steps, read when the run starts again)."""
        return self.folder / "checkpoint"

    @property
    def resume_dir(self) -> Path:
        """The checkpoint a resumed stage reads: ``checkpoint_dir``, or under torchrun rank 0's, for every rank."""
        return (self.resume_folder or self.folder) / "checkpoint"

    @property
    def final_dir(self) -> Path:
        return self.folder / "final"

    # --- models and sampling ---------------------------------------------------------------------------------------

    def model_settings(self) -> ModelSettings:
        return ModelSettings(dtype=self.run.dtype, precision=self.run.precision, parallel=self.run.parallel,
                             gradient_checkpointing=self.run.gradient_checkpointing, lora=self.run.lora)

    def load_policy(self, *, trainable: bool = True) -> Policy:
        """The policy: the stage's last resumable checkpoint if any, else its ``init`` model; LoRA adapters when the
        run asks (only for stages that train: ``trainable``)."""
        settings = self.model_settings()
        if not trainable:
            settings = ModelSettings(dtype=self.run.dtype)
        policy = Policy.load(self.init, settings, self.device, resume_from=self.resume_dir if trainable else None)
        self.use_tokenizer(policy.tokenizer)
        if policy.resume:
            self.log(f"resuming at step {policy.resume_step}")
        return policy

    def load_model(self, ref: str) -> Policy:
        """Another model to sample from (e.g. few-shot prompting of the base): a stage name, "model" or a path."""
        return Policy.load(self.outputs.model(ref, default=self.init, stage=self.name), ModelSettings(self.run.dtype),
                           self.device)

    def use_tokenizer(self, tokenizer) -> PromptTemplate:
        if self.template is None or self.template.tokenizer is None:
            self.template = PromptTemplate(self.run.template, tokenizer)
        return self.template

    def generator(self, policy: Policy) -> Generator:
        """The generator that samples with ``policy``'s weights; told after every optimizer step that they changed."""
        generator = Generator(self.run.engine, policy.sampling_model, policy.tokenizer, dtype=policy.compute_dtype)
        policy.on_update(generator.weights_changed)
        return generator

    def prompt_task(self, override: TaskConfig):
        """The task a stage draws its training prompts from: ``override`` when it names one, else the run's task."""
        if not override.name:
            return self.task
        try:
            return get_task(override.name, **override.options)
        except (TypeError, ValueError, FileNotFoundError) as err:
            raise ConfigError(f"stage '{self.name}': task: {err}") from err

    def quick_eval(self, generator: Generator, step: int) -> dict:
        """The quick held-out evaluation during training (``eval.quick_problems`` × ``eval.quick_k``), logged."""
        e = self.run.eval
        result = evaluate_model(generator, self.task, self.template, num_problems=e.quick_problems, k=e.quick_k,
                                temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                                seed=e.seed)
        self.log_metrics(step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        self.log(f"step {step}: held-out pass@1 {result['pass@1']:.3f} format {result['format_rate']:.2f}")
        return result

    # --- what a stage writes ---------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        self.console.print(f"[{self.name}] {message}")

    def warn(self, message: str) -> None:
        log.warning(message, extra={"shown_by_console": True})  # for log handlers; the terminal gets it once, below
        self.console.print(f"[{self.name}] warning: {message}", style="yellow")
        self.warnings.append(message)

    def log_metrics(self, step: int, metrics: dict) -> None:
        record = {"stage": self.name, "step": step, **{k: _round(v) for k, v in metrics.items()}}
        with open(self.run_folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.trackers.log(self.name, step, metrics)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Completions worth reading (prompt, completion, answer, reward ...): to samples.jsonl and the trackers."""
        with open(self.run_folder / "samples.jsonl", "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        self.trackers.log_samples(self.name, step, rows)

    def progress(self, done: int, total: int, text: str, unit: str = "step") -> None:
        self.console.progress(self.name, done, total, text, unit=unit)
        if time.time() - self._threads_checked_at > 5:  # side by side: take a finished sibling's cores mid-stage
            self._threads_checked_at = time.time()
            set_threads(self.run.threads)

    def sample_progress(self, done: int, total: int) -> None:
        """A data stage's sampling progress (``SamplingParams.progress``): completions finished so far."""
        self.progress(done, total, "samples", unit="sample")

    def write_data(self, rows: list[dict], stats: dict, file_name: str, metrics: dict | None = None) -> StageOutput:
        """A data stage's output: ``<stage>/<file_name>`` (JSONL) and ``<stage>/stats.json`` with ``rows`` set; the
        row count (and ``metrics``) logged."""
        stats["rows"] = len(rows)
        path = write_jsonl(rows, self.folder / file_name)
        atomic_write_json(self.folder / "stats.json", stats)
        self.log_metrics(0, {**(metrics or {}), "data/rows": len(rows)})
        return StageOutput(data_file=str(path))

    def save_checkpoint(self, policy: Policy, step: int, *, extra: dict | None = None, write_more=None) -> None:
        """A resumable checkpoint of ``policy`` at ``step`` in ``<stage>/checkpoint`` (``Policy.save_checkpoint``)."""
        policy.save_checkpoint(self.checkpoint_dir, step, extra=extra, write_more=write_more)

    def save_final(self, policy: Policy) -> StageOutput:
        """The trained policy in ``<stage>/final``: the stage's output model."""
        return StageOutput(model=policy.save_final(self.final_dir, {"stage": self.name, "run": self.run.name}))


def _round(value):
    return round(value, 6) if isinstance(value, float) else value
