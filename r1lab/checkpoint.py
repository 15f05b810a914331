"""Atomic checkpoints and resume state.

A checkpoint folder is written under a temporary name and renamed into place, so a run killed mid-save leaves either
the previous checkpoint or the new one, never a half-written folder. Training state (optimizer, scheduler, RNG, step)
sits beside the Hugging Face weights in ``trainer_state.pt``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def recover_dir(path: str | Path) -> None:
    """Finish or undo a folder replacement a kill interrupted: temporary folders of earlier writers are removed, and
    when ``path`` is missing because the kill fell between moving the old version aside and moving the new one in,
    the old version comes back. Writers of one path are one process at a time (a run)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder; on success it replaces ``path`` (the old one is removed only after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_training_state(folder: str | Path, *, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    """Write ``trainer_state.pt`` into an (already atomic) checkpoint folder."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
             "step": step, "rng": rng_state(), "extra": extra or {}}
    torch.save(state, Path(folder) / "trainer_state.pt")


def load_training_state(folder: str | Path) -> dict | None:
    recover_dir(folder)
    path = Path(folder) / "trainer_state.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
