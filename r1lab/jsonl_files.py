"""Reading JSON Lines files of objects, with errors that name the file and line: the one reader every layer uses.

    for where, row in read_jsonl("data.jsonl"):   # where: "data.jsonl:3"
        ...

A low-level module (it imports only ``r1lab.config``), so that tasks (``r1lab.tasks.jsonl``) and data sets
(``r1lab.data.jsonl``, which adds the SFT and preference-row readers) both read files the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1lab.config import ConfigError


class DataFileError(ConfigError):
    """A data file that cannot be used; the message names the file (and line) and what is wrong.

    A ``ConfigError``, so the CLI reports it in one line with exit status 2 instead of a traceback.
    """


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """``("file:line", row)`` for every non-empty line of a JSON Lines file of objects."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataFileError(f"data file not found: {path!r} (resolved to {os.path.abspath(path)})")
    rows = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            rows.append((where, row))
    if not rows:
        raise DataFileError(f"{path}: the file has no rows")
    return rows
