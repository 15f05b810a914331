"""Disjoint train / test splits for tasks, decided by hashing each problem's canonical key.

A problem's split depends only on its key, never on the seed or on how many examples are asked for,
so no test problem can ever appear in a training set drawn with any seed or size.
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Callable

SPLITS = ("train", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")


def check_test_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")


def split_of(key: str, test_fraction: float) -> str:
    """'test' for a stable share `test_fraction` of keys, 'train' for the rest (sha256: same on every machine)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def held_out_split(train_rows: list[dict], test_rows: list[dict] | None, test_fraction: float) -> dict[str, list]:
    """{"train", "test"} rows of a data-file task: the given held-out rows, or else the training rows whose prompt
    hashes into the ``test_fraction`` share (every row of one prompt on the same side)."""
    if test_rows is not None:
        return {"train": train_rows, "test": test_rows}
    rows: dict[str, list] = {"train": [], "test": []}
    for row in train_rows:
        rows[split_of(row["prompt"], test_fraction)].append(row)
    return rows


def split_rng(task_name: str, split: str, seed: int) -> random.Random:
    # A string seed is hashed deterministically by `random` (unlike hash(), which varies per process).
    return random.Random(f"{task_name}:{split}:{seed}")


def draw_examples(
    draw: Callable[[random.Random], dict | None],
    key_of: Callable[[dict], str],
    split: str,
    n: int,
    rng: random.Random,
    test_fraction: float,
) -> list[dict]:
    """Draw `n` examples of `split`, distinct by key while the split has enough problems.

    `draw` returns a candidate example (or None for a rejected draw). When the space is too small for `n`
    distinct problems, the remaining slots repeat problems already found, so callers always get `n`.
    """
    check_split(split)
    if n <= 0:
        return []
    found: list[dict] = []
    seen: set[str] = set()
    # The test split holds ~test_fraction of draws, so a long run of useless draws means the split is
    # (nearly) exhausted: stop searching then instead of drawing forever.
    max_useless_in_a_row = 5_000
    useless_in_a_row = 0
    while len(found) < n and useless_in_a_row < max_useless_in_a_row:
        example = draw(rng)
        key = None if example is None else key_of(example)
        if key is None or key in seen or split_of(key, test_fraction) != split:
            useless_in_a_row += 1
            continue
        useless_in_a_row = 0
        seen.add(key)
        found.append(example)
    if not found:
        raise ValueError(
            f"no {split} problem found in {max_useless_in_a_row} draws: the problem space is too small for this split; "
            "widen the task's options (more digits, numbers or targets) or change test_fraction"
        )
    while len(found) < n:
        found.append(copy.deepcopy(rng.choice(found)))
    return found
