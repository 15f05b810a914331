"""Locks between r1lab processes, on files (the ``filelock`` package: an OS lock, released when its process ends,
however it ends).

- A run folder has one writer: a second ``r1lab run`` on the same folder stops at once and names the process that
  holds it (``run_folder_lock``). Everything inside a run folder (its checkpoints, ``done.json``, the temporary
  folders that ``r1lab.checkpoint.recover_dir`` clears) relies on that.
- A shared cache entry (a tiny base model in ``<cache>/tiny-base/<key>``) is built by one process at a time; the others
  wait, then reuse it (``wait_for_lock``). Without it two runs building the same base removed each other's temporary
  folders (README, "Locks and the run record").
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from r1lab.config import ConfigError

RUN_LOCK = ".r1lab.lock"  # in the run folder; its holder is described in RUN_LOCK_OWNER
RUN_LOCK_OWNER = ".r1lab.lock.json"


class RunFolderInUse(ConfigError):
    """Another process is running a recipe in the same run folder. A ``ConfigError``, so that ``r1lab run`` reports it
    in one line (the recipe cannot run as given: it needs another ``name``, or the other run to end)."""


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder for this process, or raise ``RunFolderInUse`` at once (never wait: the other run may take
    hours) with the folder and what is known of the process that holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderInUse(f"run folder {run_dir} is in use by {describe_owner(run_dir)}; wait for it to end, or "
                             f"give this run another folder (name=... or output_dir=...)") from None
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": _command()}
        (run_dir / RUN_LOCK_OWNER).write_text(json.dumps(owner) + "\n")
        yield
    finally:
        (run_dir / RUN_LOCK_OWNER).unlink(missing_ok=True)  # while still held: the next holder writes its own
        lock.release()


def _command() -> str:
    """This process's command line as typed: ``r1lab run ...`` for the CLI, whichever way it was started."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("r1lab", "__main__.py"):
        program = "r1lab"
    return " ".join([program, *sys.argv[1:]])


def describe_owner(run_dir: Path) -> str:
    """"process 1234 on host h (started ..., r1lab run ...)", or "another process" when that is not known."""
    try:
        owner = json.loads((Path(run_dir) / RUN_LOCK_OWNER).read_text())
        return (f"process {owner['pid']} on {owner['host']} (started {owner['started']}: "
                f"{owner.get('command') or 'command unknown'})")
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by another version
        return "another process"


@contextlib.contextmanager
def wait_for_lock(path: str | Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` (its folder is made), waiting as long as another process holds it;
    ``on_wait()`` is called once when it has to wait (to say why the run pauses)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
