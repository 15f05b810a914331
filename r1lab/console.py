"""Progress lines on stderr, rich when it is a terminal."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """``1h 02m``, ``3m 05s``, ``42s``: how long, as a person reads it."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


class Console:
    """What a run prints: stage progress at most every few seconds, with the rate and the time left; warnings in
    yellow."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console as RichConsole  # rich: only when something is printed

        self.console = RichConsole(stderr=True, highlight=False)
        self.quiet = quiet
        self._last = 0.0
        self._first: dict[str, tuple[float, int]] = {}  # stage -> (time, steps done) when its progress began

    def print(self, message: str, style: str | None = None) -> None:
        if not self.quiet:  # markup off: "[stage]" prefixes are text, not rich tags; never cut at 80 columns in a log
            self.console.print(message, style=style, markup=False, soft_wrap=True)

    def progress(self, stage: str, done: int, total: int, text: str, unit: str = "step") -> None:
        now = time.time()
        started, first_done = self._first.setdefault(stage, (now, done))
        if done == total or now - self._last > 5 or done == first_done:
            self._last = now
            pace = ""
            if done > first_done and now > started:  # measured since this process began the stage (resumes too)
                rate = (done - first_done) / (now - started)
                per = f"{rate:.2f} {unit}s/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"
                pace = f"  [{per}, {'done' if done >= total else duration((total - done) / rate) + ' left'}]"
            self.print(f"[{stage}] {done}/{total} {text}{pace}")
