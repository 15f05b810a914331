"""What a run prints, on stderr: on a terminal a live bar per loop (rich) with the rate and the time left; into a file
or a pipe a line at most every few seconds, never wrapped."""

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
    """What a run prints: the progress of each long loop (stage steps, samples) with the rate and the time left, as a
    live bar on a terminal and as a line at most every 5 seconds otherwise; warnings in yellow. ``close`` ends the
    bars (``run_recipe`` and ``r1lab eval`` call it however they end)."""

    def __init__(self, quiet: bool = False, live: bool | None = None):
        from rich.console import Console as RichConsole  # rich: only when something is printed

        self.console = RichConsole(stderr=True, highlight=False)
        self.quiet = quiet
        self.live = self.console.is_terminal if live is None else live  # bars only where someone watches
        self._bars = None  # rich.progress.Progress while a loop runs on a terminal
        self._bar_of: dict[str, int] = {}  # loop -> its bar (a rich task id)
        self._last = 0.0
        self._first: dict[str, tuple[float, int]] = {}  # stage -> (time, steps done) when its progress began

    def print(self, message: str, style: str | None = None) -> None:
        if not self.quiet:  # markup off: "[stage]" prefixes are text, not rich tags; never cut at 80 columns in a log
            self.console.print(message, style=style, markup=False, soft_wrap=True)  # above the bars while they run

    def progress(self, stage: str, done: int, total: int, text: str, unit: str = "step") -> None:
        now = time.time()
        started, first_done = self._first.setdefault(stage, (now, done))
        pace = ""
        if done > first_done and now > started:  # measured since this process began the stage (resumes too)
            rate = (done - first_done) / (now - started)
            per = f"{rate:.2f} {unit}s/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"
            pace = f"[{per}, {'done' if done >= total else duration((total - done) / rate) + ' left'}]"
        line = f"[{stage}] {done}/{total} {text}" + (f"  {pace}" if pace else "")
        if self.quiet:
            return
        if not self.live:
            if done == total or now - self._last > 5 or done == first_done:
                self._last = now
                self.print(line)
            return
        self._show_bar(stage, done, total, text, pace)
        if done >= total:  # the bar goes; its last state stays as a line in the scrollback
            self._bars.remove_task(self._bar_of.pop(stage))
            self.print(line)
            if not self._bar_of:
                self.close()

    def _show_bar(self, stage: str, done: int, total: int, text: str, pace: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if self._bars is None:
            self._bars = Progress(TextColumn("[{task.fields[stage]}]", markup=False), BarColumn(bar_width=24),
                                  MofNCompleteColumn(), TextColumn("{task.fields[text]}", markup=False),
                                  TextColumn("{task.fields[pace]}", markup=False), console=self.console,
                                  transient=True)
            self._bars.start()
        if stage not in self._bar_of:
            self._bar_of[stage] = self._bars.add_task("", total=total, stage=stage, text=text, pace=pace)
        self._bars.update(self._bar_of[stage], completed=done, total=total, text=text, pace=pace)

    def close(self) -> None:
        """Ends the live bars (the loops they showed ended or were stopped)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars, self._bar_of = None, {}
