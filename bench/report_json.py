"""What every benchmark script ends with: its results as one JSON object on stdout, and in a file when asked."""

from __future__ import annotations

import json
from pathlib import Path


def emit(results: dict, out: str = "") -> None:
    text = json.dumps(results, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
