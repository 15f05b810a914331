"""Experiment trackers: ``report_to: [tensorboard]`` sends every stage's metrics (the lines of ``metrics.jsonl``) and
the resolved recipe to TensorBoard, in ``<run>/tensorboard/``, under the usual names: ``<stage>/<metric>`` scalars
by the stage's step, the config as text. Only rank 0 reports (README, "Experiment trackers")."""

from __future__ import annotations

import numbers
from pathlib import Path

TRACKERS = ("tensorboard",)  # wandb and trackio are not supported yet


class TensorBoardTracker:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise ImportError("report_to: [tensorboard] needs tensorboard: pip install 'r1lab[tensorboard]'") from error
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, stage: str, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{stage}/{key}", float(value), global_step=step)
        self.writer.flush()

    def log_config(self, text: str) -> None:
        self.writer.add_text("config", f"```\n{text}\n```")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_trackers(names: list[str], run_dir: Path) -> list:
    """The trackers a recipe's ``report_to`` names, writing under ``run_dir``."""
    return [TensorBoardTracker(Path(run_dir) / "tensorboard") for name in names if name == "tensorboard"]
