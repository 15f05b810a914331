"""Several recipes at once, one child process each, the CPU cores shared out between them.

``r1lab run A.yaml B.yaml`` runs both recipes side by side and writes one report over both (the demo runs the R1
pipeline and the aha recipe this way). Why side by side: a tiny model does not keep two CPU cores busy, least of all
while it generates (on the 2-core reference machine a generation step takes 0.68 s on two threads, 0.83 s on one),
so two recipes on one core each finish sooner than one after the other on two.

Each child is a plain ``r1lab run`` of one recipe: its own run folder, resumable as usual, and the same results as
when it runs alone (on the reference machine bit for bit: torch's CPU kernels give the same numbers on one thread
as on two). The cores are shared through a small file per child (``R1LAB_THREADS_FILE``) that the pipeline reads
before every stage and every few seconds during one, so when one recipe ends the others take its cores. Each
child's progress lines are prefixed with its run name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from r1lab.config import ConfigError
from r1lab.pipeline import load_recipe
from r1lab.recipe_file import overrides_for  # noqa: F401 (also imported from here)
from r1lab.report import write_combined_report
# The thread-share file protocol lives in r1lab.threads (the pipeline reads it); its names stay importable from here.
from r1lab.threads import THREADS_FILE_ENV, threads_from_file, write_threads_file

__all__ = ["THREADS_FILE_ENV", "available_cores", "run_side_by_side", "thread_shares", "threads_from_file"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_shares(cores: int, running: int) -> list[int]:
    """Threads for each of ``running`` children on ``cores`` cores: an even split, the remainder to the first ones,
    at least one each."""
    if running <= 0:
        return []
    base, extra = divmod(max(cores, 1), running)
    return [max(1, base + (1 if i < extra else 0)) for i in range(running)]


@dataclass
class _Child:
    recipe: str
    name: str
    run_dir: Path
    threads_file: Path
    process: subprocess.Popen | None = None


def _relay(child: _Child, lock: threading.Lock) -> None:
    """Copy a child's output lines to stderr, prefixed with its run name."""
    assert child.process is not None and child.process.stdout is not None
    for line in child.process.stdout:
        with lock:
            sys.stderr.write(f"{child.name} | {line}")
            sys.stderr.flush()


def run_side_by_side(recipes: list[str], overrides: list[str], *, jobs: int | None = None, report_dir: str = "",
                     quiet: bool = False, poll_seconds: float = 0.5) -> int:
    """Run ``recipes`` (each with ``overrides``; ``NAME:key=value`` ones only for the recipe NAME, see
    ``overrides_for``) as child processes, at most ``jobs`` at once (None or 0,
    the command's default when --jobs is left out: all; below 0 is an error), then write one report over their runs.
    Returns 0 when every recipe finished, else 1 (the others still run to their end; each failed one resumes when run
    again). Each child holds its run folder (``r1lab.locks``); children that need the same tiny base model build it
    once (the first builds, the others wait and reuse it)."""
    # Every recipe is read and checked before anything starts, so a typo in the second does not surface minutes in;
    # the problems of all of them are reported together.
    if jobs is not None and jobs < 0:
        raise ConfigError(f"--jobs = {jobs} (command line): must be at least 1, the number of recipes run at once "
                          f"(or left out: all {len(recipes)} at once)")
    configs, errors = [], []
    for recipe in recipes:
        try:
            configs.append(load_recipe(recipe, overrides_for(recipe, overrides, recipes))[0])
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))
    run_dirs = [Path(run.output_dir) / run.name for run in configs]
    if len(set(run_dirs)) < len(run_dirs):
        raise ConfigError("two recipes write the same run folder (" + ", ".join(map(str, run_dirs)) + "); "
                          "give them different names")
    jobs = jobs or len(recipes)  # None or 0: --jobs left out
    fixed_threads = any(item.split("=", 1)[0].strip() == "threads" for item in overrides)
    cores = available_cores()
    report_dir = report_dir or str(Path(configs[0].output_dir) / "-".join(run.name for run in configs))

    control = Path(tempfile.mkdtemp(prefix="r1lab-side-by-side-"))
    children = [_Child(recipe, run.name, run_dir, control / f"{i}.threads")
                for i, (recipe, run, run_dir) in enumerate(zip(recipes, configs, run_dirs))]
    pending, running, relays = list(children), [], []
    lock = threading.Lock()
    print(f"r1lab: running {len(children)} recipes side by side ({min(jobs, len(children))} at once) on "
          f"{cores} cores", file=sys.stderr)
    previous_sigterm = _stop_children_on_sigterm(running)
    try:
        reshare = True  # on the first pass, and whenever a child ends: start what fits, split the cores again
        while pending or running:
            if reshare:
                while pending and len(running) < jobs:
                    running.append(pending.pop(0))
                for child, threads in zip(running, thread_shares(cores, len(running))):
                    if not fixed_threads:
                        write_threads_file(child.threads_file, threads)
                    if child.process is None:  # after its share is written: it reads it as it starts
                        child.process = _start(child, overrides_for(child.recipe, overrides, recipes), quiet)
                        relays.append(threading.Thread(target=_relay, args=(child, lock), daemon=True))
                        relays[-1].start()
            time.sleep(poll_seconds)
            ended = [child for child in running if child.process.poll() is not None]
            for child in ended:
                running.remove(child)
            reshare = bool(ended)
    except KeyboardInterrupt:
        # Ctrl-C reached the children too (one process group): give them time to stop where they are (every stage
        # resumes), then stop the ones that did not get it.
        for child in running:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.process.terminate()
                    child.process.wait()
        raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        for relay in relays:
            relay.join(timeout=5)
        for path in control.iterdir():
            path.unlink()
        control.rmdir()

    failed = [child for child in children if child.process.returncode != 0]
    report = write_combined_report([child.run_dir for child in children], report_dir)
    for child in failed:
        print(f"r1lab: {child.recipe} failed (exit {child.process.returncode}); its output above says why, and "
              f"running the same command again resumes it", file=sys.stderr)
    print(f"done: {report} (one report over {', '.join(str(c.run_dir) for c in children)})", file=sys.stderr)
    return 1 if failed else 0


def _stop_children_on_sigterm(running: list[_Child]):
    """A SIGTERM to the parent (a job scheduler, ``kill``) stops the running children too, then ends the parent as
    Ctrl-C does. Returns the handler it replaced (None where signals cannot be set: not the main thread)."""
    def stop(signum, frame):
        for child in running:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


def _start(child: _Child, overrides: list[str], quiet: bool) -> subprocess.Popen:
    # COLUMNS: rich would wrap the child's lines at 80 columns on a pipe; the prefix is added here, unwrapped.
    env = {**os.environ, THREADS_FILE_ENV: str(child.threads_file), "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
    command = [sys.executable, "-m", "r1lab", "run", child.recipe, *overrides] + (["--quiet"] if quiet else [])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
