"""Experiment trackers: ``report_to: [tensorboard, wandb, trackio]`` (any subset) sends every stage's metrics (the
lines of ``metrics.jsonl``, held-out evaluations included), the resolved recipe and sample completions to each, under
the usual names: ``<stage>/<metric>`` by the stage's step, the recipe as the run's config, ``<stage>/samples`` as a
table. Only rank 0 reports (README, "Experiment trackers").

A resumed run goes on in the same wandb / trackio run: their ids are kept in ``<run>/trackers.json``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import numbers
import os
from pathlib import Path

import yaml

from r1lab.config import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio")
SAMPLE_COLUMNS = ("step", "prompt", "completion", "answer", "reward", "truncated")
IDS_FILE = "trackers.json"


def missing_tracker_packages(names: list[str]) -> list[str]:
    """The trackers among ``names`` whose package is not installed (checked without importing it)."""
    return [name for name in names if name in TRACKERS and importlib.util.find_spec(name) is None]


def _scalars(stage: str, metrics: dict) -> dict[str, float]:
    return {f"{stage}/{key}": float(value) for key, value in metrics.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)}


def _sample_table(step: int, rows: list[dict]) -> list[list]:
    return [[step, row.get("prompt"), row.get("completion"), None if row.get("answer") is None else str(row["answer"]),
             row.get("reward"), row.get("truncated")] for row in rows]


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, project: str, config: dict, ids: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise ImportError("report_to: [tensorboard] needs tensorboard: pip install 'r1lab[tensorboard]'") from error
        self.where = f"{run_dir / 'tensorboard'} (tensorboard --logdir {run_dir.parent})"
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{yaml.safe_dump(config, sort_keys=False)}\n```")
        self.writer.flush()

    def log(self, stage: str, step: int, metrics: dict) -> None:
        for key, value in _scalars(stage, metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_samples(self, stage: str, step: int, rows: list[dict]) -> None:
        blocks = [f"**reward {row.get('reward')}**, answer `{row.get('answer')}`"
                  f"{', truncated' if row.get('truncated') else ''}\n\n```\n{row.get('prompt')}{row.get('completion')}"
                  f"\n```" for row in rows]  # markdown: TensorBoard's text tab renders it
        self.writer.add_text(f"{stage}/samples", "\n\n".join(blocks), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run in ``<run>/wandb``: online when logged in, offline with ``WANDB_MODE=offline`` (``wandb sync``
    uploads it later). Each stage has its own step axis (``<stage>/step``), since every stage counts from 1."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, project: str, config: dict, ids: dict):
        import wandb

        self.wandb = wandb
        try:
            self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), config=config,
                                  id=ids.get("wandb"), resume="allow" if ids.get("wandb") else None,
                                  settings=wandb.Settings(console="off", silent=True))
        except wandb.errors.UsageError as error:  # not logged in, no WANDB_MODE: say both ways out
            raise ConfigError(f"report_to: [wandb]: {error} (or set WANDB_MODE=offline to write the run to "
                              f"{run_dir / 'wandb'} and `wandb sync` it later)") from None
        ids["wandb"] = self.run.id
        self.stages: set[str] = set()
        mode = "offline, in " + str(run_dir / "wandb") if self.run.settings.mode == "offline" else self.run.url
        self.where = f"project {project}, run {self.run.id} ({mode})"

    def _axis(self, stage: str) -> None:
        if stage not in self.stages:
            self.stages.add(stage)
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")

    def log(self, stage: str, step: int, metrics: dict) -> None:
        self._axis(stage)
        self.run.log({**_scalars(stage, metrics), f"{stage}/step": step})

    def log_samples(self, stage: str, step: int, rows: list[dict]) -> None:
        self._axis(stage)
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=_sample_table(step, rows))
        self.run.log({f"{stage}/samples": table, f"{stage}/step": step})

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A trackio run in its local store (``$TRACKIO_DIR``, by default ``~/.cache/huggingface/trackio``; ``trackio
    show --project <project>`` opens the dashboard)."""

    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, project: str, config: dict, ids: dict):
        import trackio
        from trackio.utils import TRACKIO_DIR

        with contextlib.redirect_stdout(io.StringIO()):  # its banner would land in the middle of r1lab's output
            self.run = trackio.init(project=project, name=run_name, config=config,
                                    resume="allow" if ids.get("trackio") else "never",
                                    auto_log_cpu=False, auto_log_gpu=False)
        self.trackio = trackio
        ids["trackio"] = self.run.id
        self.where = f"project {project}, run {run_name} in {TRACKIO_DIR} (trackio show --project {project})"

    def log(self, stage: str, step: int, metrics: dict) -> None:
        self.run.log(_scalars(stage, metrics), step=step)

    def log_samples(self, stage: str, step: int, rows: list[dict]) -> None:
        table = self.trackio.Table(columns=list(SAMPLE_COLUMNS), data=_sample_table(step, rows))
        self.run.log({f"{stage}/samples": table}, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.trackio.finish()  # the current run, which init made ours; else trackio finishes it again at exit


_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


class Trackers:
    """The trackers a recipe's ``report_to`` names, for one run folder (none on ranks other than 0). ``open`` once
    the resolved recipe (``<run>/config.yaml``) is written: each tracker gets it as its config, and the wandb /
    trackio runs of an earlier, interrupted attempt are resumed."""

    def __init__(self, names: list[str] = (), run_dir: Path | None = None, run_name: str = "",
                 project: str = "r1lab"):
        self.names, self.run_dir, self.run_name, self.project = list(dict.fromkeys(names)), run_dir, run_name, project
        self.opened: list = []

    def open(self) -> list[str]:
        """Opens every tracker (RunConfig checked that each one's package is installed); returns a line per tracker
        saying where it writes."""
        if not self.names:
            return []
        ids_path = Path(self.run_dir) / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
        config = yaml.safe_load((Path(self.run_dir) / "config.yaml").read_text())
        try:
            for name in self.names:
                self.opened.append(_CLASSES[name](Path(self.run_dir), self.run_name, self.project, config, ids))
        except BaseException:
            self.close()
            raise
        partial = ids_path.with_suffix(".partial")  # replaced in one step: a kill leaves the old file or the new
        partial.write_text(json.dumps(ids, indent=1) + "\n")
        os.replace(partial, ids_path)
        return [f"{tracker.name}: {tracker.where}" for tracker in self.opened]

    def log(self, stage: str, step: int, metrics: dict) -> None:
        for tracker in self.opened:
            tracker.log(stage, step, metrics)

    def log_samples(self, stage: str, step: int, rows: list[dict]) -> None:
        for tracker in self.opened:
            tracker.log_samples(stage, step, rows)

    def close(self) -> None:
        opened, self.opened = self.opened, []
        for tracker in opened:
            tracker.close()
