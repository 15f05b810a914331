"""Atomic checkpoints and resume state.

A checkpoint folder is written under a temporary name and renamed into place, so a run killed mid-save leaves either
the previous checkpoint or the new one, never a half-written folder. Training state (optimizer, scheduler, RNG, step)
sits beside the Hugging Face weights in ``trainer_state.pt``.

A full disk is reported as ``DiskFullError``: which folder, how much space is free, and that the previous version
is intact (the writers here only ever replace a finished folder or file), instead of torch's "enforce fail at
inline_container.cc" line or a bare ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


class DiskFullError(OSError):
    """The disk filled up while a checkpoint, model or run file was written; the message names the folder, the free
    space and what is left intact. An ``OSError`` with errno ENOSPC, so handlers of write errors still see one."""

    def __init__(self, message: str, original: str = ""):
        super().__init__(errno.ENOSPC, message)
        self.original = original  # the first line of the error the writer raised

    def __str__(self) -> str:
        return self.strerror


# How torch and safetensors word a failed write: torch's zip writer checks its position after writing and fails with
# "[enforce fail at inline_container.cc:...] . unexpected pos N vs M" or "PytorchStreamWriter failed writing file";
# safetensors' Rust error carries the OS error ("No space left on device", kind StorageFull, os error 28).
_WRITE_FAILURE_MARKERS = ("No space left on device", "StorageFull", "os error 28", "enforce fail at inline_container",
                          "PytorchStreamWriter failed writing", "file write failed")


def is_disk_full(error: BaseException) -> bool:
    """True for an error that says a write ran out of space (ENOSPC, a disk quota, or torch's and safetensors' own
    words for a failed write), also when it is the cause of ``error``. Never for a Ctrl-C (KeyboardInterrupt) and
    the like, whatever they interrupted."""
    seen = set()
    while isinstance(error, Exception) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(error) for marker in _WRITE_FAILURE_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_space(path: str | Path) -> str:
    """Free space on the disk holding ``path`` (or its nearest existing parent), e.g. "12.3 MiB"."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        size = float(shutil.disk_usage(path).free)
    except OSError:
        return "an unknown amount"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024


def disk_full_error(path: str | Path, error: BaseException, *, action: str = "write",
                    intact: str = "") -> DiskFullError:
    """The ``DiskFullError`` for a failed write to ``path``: the disk's free space now, what is ``intact``, and the
    writer's own first line (torch's and safetensors' words, to search for)."""
    path = Path(path)
    original = error.original if isinstance(error, DiskFullError) else \
        (str(error).strip().splitlines() or [type(error).__name__])[0]
    message = (f"the disk is full: could not {action} {path} ({free_space(path)} free on the disk holding "
               f"{path.parent}){'; ' + intact if intact else ''}. Free some space (or move output_dir to a larger "
               f"disk), then run the same command again to resume. The writer said: {original}")
    return DiskFullError(message, original)


def _what_is_intact(path: Path) -> str:
    """What a failed replacement of ``path`` left: its previous version, or nothing when there was none."""
    if path.exists():
        return f"the previous checkpoint in {path} is intact"
    return f"nothing was written to {path} (there was no previous checkpoint)"


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
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)  # first, so that the free space reported is what is left
        if is_disk_full(error):
            raise disk_full_error(path, error, action="save", intact=_what_is_intact(path)) from error
        raise
    follow_umask(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions the user's umask gives new files: some writers
    (safetensors) create weights readable by their owner only, and a model folder is meant to be shared."""
    mask = os.umask(0)
    os.umask(mask)
    for item in [folder, *folder.rglob("*")]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            intact = f"the previous {path.name} is intact" if path.exists() else ""
            raise disk_full_error(path, error, intact=intact) from error
        raise
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


def save_training_state(folder: str | Path, *, optimizer, scheduler, step: int, extra: dict | None = None,
                        optimizer_state: dict | None = None) -> None:
    """Write ``trainer_state.pt`` into an (already atomic) checkpoint folder (``optimizer_state``: written instead
    of ``optimizer.state_dict()``, e.g. the whole state of a sharded optimizer)."""
    state = {"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
             "step": step, "rng": rng_state(), "extra": extra or {}}
    path = Path(folder) / "trainer_state.pt"
    try:
        torch.save(state, path)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        if is_disk_full(error):
            path.unlink(missing_ok=True)  # a partial file: the space it holds is freed, and the free space is true
            raise disk_full_error(path, error) from error
        raise


def load_training_state(folder: str | Path) -> dict | None:
    recover_dir(folder)
    path = Path(folder) / "trainer_state.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
