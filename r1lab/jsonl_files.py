"""Reading JSON Lines files of objects, with errors that name the file and line: the one reader every layer uses.
A line that is not UTF-8 is named too (``utf8_lines``, which the CSV and JSON readers of ``r1lab.tasks`` share).

    for where, row in read_jsonl("data.jsonl"):   # where: "data.jsonl:3"
        ...

A low-level module (it imports only ``r1lab.config``), so that tasks (``r1lab.tasks.jsonl``) and data sets
(``r1lab.data.jsonl``, which adds the SFT and preference-row readers) both read files the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from r1lab.config import ConfigError

UTF8_BOM = "\ufeff"


class DataFileError(ConfigError):
    """A data file that cannot be used; the message names the file (and line) and what is wrong.

    A ``ConfigError``, so the CLI reports it in one line with exit status 2 instead of a traceback.
    """


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every line of a UTF-8 text file, line endings kept (a byte-order mark at the start
    is dropped). A line that is not UTF-8 is a ``DataFileError`` naming the file, the line and the byte, where
    Python's own decoder would name neither the file nor the line."""
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                byte, position = raw[error.start], error.start + 1
                raise DataFileError(f"{path}:{line_number}: not UTF-8 text (byte 0x{byte:02x} at position {position} "
                                    f"of the line); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            yield line_number, text.removeprefix(UTF8_BOM) if line_number == 1 else text


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """``("file:line", row)`` for every non-empty line of a JSON Lines file of objects."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataFileError(f"data file not found: {path!r} (resolved to {os.path.abspath(path)})")
    rows = []
    for line_number, line in utf8_lines(path):
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
