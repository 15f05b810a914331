"""The thread-share file between a side-by-side parent and its child runs (``r1lab run A.yaml B.yaml``).

The parent (``r1lab.side_by_side``) writes each child's share of the CPU cores, a plain integer, to a small file and
passes its path in ``R1LAB_THREADS_FILE``; the child's pipeline reads it before every stage and every few seconds
during one, so a run takes the cores a finished sibling left. This module is only the file protocol (no torch):
applying the number (``torch.set_num_threads``) is the pipeline's job (``r1lab.stage``):

    threads = threads_from_file(os.environ.get(THREADS_FILE_ENV)) or run_threads  # else the recipe's setting
"""

from __future__ import annotations

import os
from pathlib import Path

THREADS_FILE_ENV = "R1LAB_THREADS_FILE"


def threads_from_file(path: str | None) -> int:
    """The thread count a side-by-side parent gave this process (0: none given, or unreadable)."""
    if not path:
        return 0
    try:
        value = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return 0
    return value if value > 0 else 0


def write_threads_file(path: str | Path, threads: int) -> None:
    """Write a child's share atomically (a child never reads a half-written number)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(threads))
    os.replace(tmp, path)
