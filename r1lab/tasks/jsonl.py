"""A task read from JSON Lines files: one {"prompt": ..., "answer": ..., ...} object per line.

Without a test file the rows are split by a hash of their prompt, so the split never depends on row order
and duplicated prompts land on the same side. Every problem in a file is reported as "file:line: what".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from r1lab.jsonl_files import read_jsonl
from r1lab.tasks.splits import check_split, check_test_fraction, held_out_split, split_rng
from r1lab.tasks.verifiers import VERIFIERS, verify


def _read_rows(path: str, prompt_field: str, answer_field: str, default_verifier: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"JSONL task file not found: {path!r} (resolved to {os.path.abspath(path)}); "
            "relative paths are read from the current directory"
        )
    examples = []
    for where, row in read_jsonl(path):  # malformed lines and empty files are errors naming file:line
        keys = ", ".join(sorted(row)) or "none"
        if prompt_field not in row:
            raise ValueError(f"{where}: row has no {prompt_field!r} field (keys: {keys})")
        if answer_field not in row:
            raise ValueError(f"{where}: row has no {answer_field!r} field (keys: {keys})")
        prompt, answer = row[prompt_field], row[answer_field]
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: {prompt_field!r} must be a string, got {type(prompt).__name__}")
        # Numeric answers are common (GSM8K-style files); they are compared as text or numbers anyway.
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(
                f"{where}: {answer_field!r} must be a string or a number, got {type(answer).__name__}"
            )
        # Extra fields stay (a countdown row needs "numbers" and "target"); a row may name its own verifier.
        example = {**row, "prompt": prompt, "answer": answer, "verifier": row.get("verifier", default_verifier)}
        verifier = example["verifier"]
        if verifier not in VERIFIERS:
            known = ", ".join(sorted(VERIFIERS))
            raise ValueError(f"{where}: unknown verifier {verifier!r}; known verifiers: {known}")
        # A reference the verifier rejects would make every completion score 0 without any sign of why.
        try:
            accepted = verify(answer, example)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: the {verifier!r} verifier cannot check this row: {error}") from None
        if not accepted:
            raise ValueError(f"{where}: the reference answer {answer!r} does not pass its own {verifier!r} verifier")
        examples.append(example)
    if not examples:
        raise ValueError(f"{path}: the file has no rows")
    return examples


@dataclass
class JsonlTask:
    """Prompts and reference answers from JSONL files, checked by a named verifier."""

    train_path: str  # JSONL file of training rows (and test rows too when test_path is not given)
    test_path: str | None = None  # JSONL file of held-out rows; None splits train_path by prompt hash
    verifier: str = "exact"  # default verifier for rows without a "verifier" field (see VERIFIERS)
    prompt_field: str = "prompt"  # row key holding the prompt text
    answer_field: str = "answer"  # row key holding the reference answer
    test_fraction: float = 0.1  # share of prompts held out when test_path is None

    name: ClassVar[str] = "jsonl"
    styles: ClassVar[tuple[str, ...]] = ()
    _rows: dict[str, list[dict]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.verifier!r}; known verifiers: {', '.join(sorted(VERIFIERS))}")
        check_test_fraction(self.test_fraction)
        read = lambda path: _read_rows(path, self.prompt_field, self.answer_field, self.verifier)  # noqa: E731
        self._rows = held_out_split(read(self.train_path), read(self.test_path) if self.test_path else None,
                                    self.test_fraction)

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` rows sampled without replacement; every row in file order when n <= 0 or n >= the row count."""
        check_split(split)
        rows = self._rows[split]
        if not rows:
            raise ValueError(
                f"the {split} split of {self.train_path!r} is empty; give test_path or change test_fraction"
            )
        if n <= 0 or n >= len(rows):
            chosen = rows
        else:
            chosen = split_rng(self.name, split, seed).sample(rows, n)
        return [dict(row) for row in chosen]

    def corpus_document(self, example: dict, rng, style: str) -> str:
        raise NotImplementedError(
            "the jsonl task has no pretraining corpus styles: it only holds prompts and answers; "
            "pretrain on a synthetic task (arithmetic, countdown) or supply your own corpus"
        )
