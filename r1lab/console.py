"""Progress lines on stderr, rich when it is a terminal."""

from __future__ import annotations

import time


class Console:
    """What a run prints: stage progress at most every few seconds, warnings in yellow."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console as RichConsole  # rich: only when something is printed

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
