"""Tasks from real data: local files or Hugging Face hub datasets with a column mapping, and reasoning-gym.

    get_task("dataset", path="data/math_sample.jsonl", verifier="math")
    get_task("dataset", path="openai/gsm8k", config="main", split="train", test_split="test",
             prompt_field="question", answer_field="answer", answer_regex="####\\s*(.+)", verifier="math")
    get_task("reasoning_gym", name="basic_arithmetic", options={"max_terms": 3})

Files: .jsonl / .json are read with the standard library (nested fields such as code tests stay as they are);
.csv and .parquet through the `datasets` loaders; anything else that is not a file is a hub id (needs the network
once, then the `datasets` cache). Every problem names the file or dataset, the row and the column; text files that
are not UTF-8 and CSV rows with a stray quote (which pandas would silently merge or report without the file) are
named by file and line first.

``answer_format`` (an option of both tasks, stamped on every example): "tags_or_boxed" (default) reads a response's
answer from its last <answer>…</answer>, else its last \\boxed{…}; "tags" demands the tags
(``r1lab.tasks.verifiers.extract_answer``).

A reasoning-gym problem without a single reference answer (``propositional_logic``: any valid formula) keeps
``answer: None``; its own scorer decides.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import ClassVar

from r1lab.jsonl_files import DataFileError, utf8_lines
from r1lab.tasks.splits import check_split, check_test_fraction, held_out_split, split_rng
from r1lab.tasks.verifiers import ANSWER_FORMATS, VERIFIERS, check_answer_format, verify

_FILE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError("reading CSV, parquet or hub datasets needs the `datasets` library: "
                          "pip install 'r1lab[hf]'") from error
    return datasets


@contextlib.contextmanager
def _without_progress_bars(datasets):
    """`datasets` draws a tqdm bar for every split it generates ("Generating train split: 2 examples"), on the
    terminal r1lab prints its own progress to: off while r1lab loads, as it was afterwards."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def read_table(path: str, *, split: str = "train", config: str | None = None,
               max_rows: int = 0) -> tuple[list[dict], str]:
    """Rows of a file or hub dataset split as dicts, and a name for messages ("file.csv" or "hub:id[split]")."""
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isfile(path) or suffix in _FILE_LOADERS:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset file not found: {path!r} (resolved to {os.path.abspath(path)})")
        if suffix not in _FILE_LOADERS:
            raise ValueError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(_FILE_LOADERS)}")
        if suffix in (".jsonl", ".json"):
            rows = _read_json_rows(path, max_rows)
        else:
            if suffix == ".csv":
                check_csv(path)
            datasets = _datasets()
            with _without_progress_bars(datasets):
                table = datasets.load_dataset(_FILE_LOADERS[suffix], data_files=path, split="train")
            rows = [dict(row) for row in (table.select(range(min(max_rows, len(table)))) if max_rows else table)]
        return rows, path
    where = f"hub:{path}" + (f"/{config}" if config else "") + f"[{split}]"
    datasets = _datasets()
    try:
        with _without_progress_bars(datasets):
            table = datasets.load_dataset(path, config, split=split)
    except Exception as error:  # offline, unknown id, unknown split: say which and why
        offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: only cached datasets load)" if (
            os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1") else ""
        raise ValueError(f"{where}: cannot load the dataset: {type(error).__name__}: {error}{offline}") from None
    if max_rows:
        table = table.select(range(min(max_rows, len(table))))
    return [dict(row) for row in table], where


def check_csv(path: str) -> None:
    """A ``DataFileError`` naming the file, line and row of the first CSV record that is not UTF-8 or has a quote out
    of place (``"a"b`` or a quote never closed): the `datasets` loader (pandas) would merge such a field into its
    neighbours without a word, or fail naming neither the file nor the line."""
    reader = csv.reader((text for _, text in utf8_lines(path)), strict=True)
    record_start = 1  # the line the record being read starts on (a quoted field may span lines)
    row = 0  # data rows read, as DatasetTask counts them (the header is row 0)
    try:
        for record in reader:
            record_start = reader.line_num + 1
            row += bool(record)  # blank lines are no rows (pandas skips them too)
    except csv.Error as error:
        quoting = "expected after" in str(error) or "end of data" in str(error)
        reason = ("a quoted field is never closed" if "end of data" in str(error)
                  else "a quote in the middle of a field" if quoting else str(error))
        hint = ('; in CSV a field with a quote must be quoted whole, with every quote inside it doubled: '
                '"say ""hi"""' if quoting else "")
        raise DataFileError(f"{path}:{record_start}: {f'row {row}' if row else 'the header'}: {reason}{hint}") \
            from None


def _read_json_rows(path: str, max_rows: int) -> list[dict]:
    lines = [line for _, line in utf8_lines(path)]
    text = "".join(lines)
    if path.lower().endswith(".json") and text.lstrip().startswith("["):  # one JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") \
                from None
    else:
        rows = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") \
                        from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} is a {type(row).__name__}, not an object")
    return rows[:max_rows] if max_rows else rows


@dataclass
class DatasetTask:
    """Prompts and reference answers from a JSONL / CSV / parquet file or a hub dataset, checked by a verifier."""

    path: str  # file (.jsonl, .json, .csv, .parquet) or hub dataset id ("openai/gsm8k")
    split: str = "train"  # hub split for training rows (files have one split)
    config: str | None = None  # hub subset / configuration ("main" for gsm8k)
    test_path: str | None = None  # file or hub id of held-out rows (default: `path` when test_split is given)
    test_split: str | None = None  # hub split of held-out rows; with neither test option, `path` is split by hash
    prompt_field: str = "prompt"  # column holding the prompt
    answer_field: str = "answer"  # column holding the reference answer (optional for the code verifier)
    fields: dict[str, str] = field(default_factory=dict)  # more columns under other names: {example key: column}
    answer_regex: str | None = None  # reference = group 1 of this search in the answer (gsm8k: "####\\s*(.+)")
    verifier: str = "exact"  # verifier for rows without a "verifier" column: math, multiple_choice, code, ...
    test_fraction: float = 0.1  # share of prompts held out when there is no separate test data
    max_rows: int = 0  # read at most this many rows per split (0: all)
    check_references: bool = True  # every reference must pass its own verifier (catches a wrong column mapping)
    answer_format: str = "tags_or_boxed"  # where a response's answer is read: tags_or_boxed, or tags only

    name: ClassVar[str] = "dataset"
    styles: ClassVar[tuple[str, ...]] = ()
    _rows: dict[str, list[dict]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.verifier!r}; known verifiers: {', '.join(sorted(VERIFIERS))}")
        check_answer_format(self.answer_format)
        check_test_fraction(self.test_fraction)
        separate = self.test_path is not None or self.test_split is not None
        test = self._load(self.test_path or self.path, self.test_split or self.split) if separate else None
        self._rows = held_out_split(self._load(self.path, self.split), test, self.test_fraction)

    def _load(self, path: str, split: str) -> list[dict]:
        rows, where = read_table(path, split=split, config=self.config, max_rows=self.max_rows)
        if not rows:
            raise ValueError(f"{where}: no rows")
        columns = sorted(rows[0])
        needed = {"prompt": self.prompt_field, **self.fields}
        if self.verifier != "code":
            needed["answer"] = self.answer_field
        for key, column in needed.items():
            if column not in rows[0]:
                raise ValueError(f"{where}: no column {column!r} (for {key!r}); columns: {', '.join(columns)}")
        pattern = re.compile(self.answer_regex) if self.answer_regex else None
        return [self._example(row, number, where, pattern) for number, row in enumerate(rows, start=1)]

    def _example(self, row: dict, number: int, where: str, pattern) -> dict:
        at = f"{where}: row {number}"
        prompt = row.get(self.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{at}: column {self.prompt_field!r} must be a non-empty string, got {prompt!r}")
        answer = row.get(self.answer_field, "" if self.verifier == "code" else None)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(f"{at}: column {self.answer_field!r} must be a string or a number, got {answer!r}")
        if pattern is not None:
            match = pattern.search(answer)
            if match is None:
                raise ValueError(f"{at}: answer_regex {pattern.pattern!r} finds nothing in {answer[-80:]!r}")
            answer = (match.group(1) if match.groups() else match.group(0)).strip()
        missing = [column for column in self.fields.values() if column not in row]
        if missing:
            raise ValueError(f"{at}: no column {missing[0]!r}; columns: {', '.join(sorted(row))}")
        example = {**row, **{key: row[column] for key, column in self.fields.items()},
                   "prompt": prompt, "answer": answer, "verifier": row.get("verifier") or self.verifier,
                   "answer_format": row.get("answer_format") or self.answer_format}
        if example["verifier"] not in VERIFIERS:
            raise ValueError(f"{at}: unknown verifier {example['verifier']!r}; known: {', '.join(sorted(VERIFIERS))}")
        if example["answer_format"] not in ANSWER_FORMATS:
            raise ValueError(f"{at}: unknown answer_format {example['answer_format']!r}; known: "
                             f"{', '.join(ANSWER_FORMATS)}")
        if self.check_references and answer:
            try:
                accepted = verify(answer, example)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{at}: the {example['verifier']!r} verifier cannot check this row: {error}") \
                    from None
            if not accepted:
                raise ValueError(f"{at}: the reference answer {answer[:80]!r} does not pass its own "
                                 f"{example['verifier']!r} verifier (check answer_field / answer_regex)")
        return example

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` rows sampled without replacement; every row in order when n <= 0 or n >= the row count."""
        check_split(split)
        rows = self._rows[split]
        if not rows:
            raise ValueError(f"the {split} split of {self.path!r} is empty; give test_path / test_split or change "
                             f"test_fraction")
        chosen = rows if n <= 0 or n >= len(rows) else split_rng(self.name, split, seed).sample(rows, n)
        return [dict(row) for row in chosen]

    def corpus_document(self, example: dict, rng, style: str) -> str:
        raise NotImplementedError("the dataset task has no pretraining corpus: it only holds prompts and answers")


# --- reasoning-gym ---


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError("the reasoning_gym task needs reasoning-gym: pip install 'r1lab[gym]'") from error
    return reasoning_gym


_SCORERS: dict[str, object] = {}


def _scorer(name: str, options: dict):
    """One dataset object per (name, options) that scores answers (its config can change the scoring)."""
    key = json.dumps([name, options], sort_keys=True, default=str)
    if key not in _SCORERS:
        _SCORERS[key] = _reasoning_gym().create_dataset(name, size=1, seed=0, **options)
    return _SCORERS[key]


def reasoning_gym_verifier(answer_text: str, example: dict) -> bool:
    """reasoning-gym's own scorer gives full marks (it returns a score in [0, 1]; partial credit counts as wrong)."""
    dataset = _scorer(example["rg_dataset"], example.get("rg_options") or {})
    return float(dataset.score_answer(answer=answer_text, entry=example["rg_entry"])) >= 1.0


@dataclass
class ReasoningGymTask:
    """Procedurally generated problems of one reasoning-gym dataset, scored by its own verifier."""

    name: str  # reasoning-gym dataset name: "basic_arithmetic", "leg_counting", "countdown", ...
    options: dict = field(default_factory=dict)  # the dataset's config, e.g. {"max_terms": 3}
    test_size: int = 200  # held-out problems, generated with their own seed; train drops any with the same question
    seed: int = 0  # generation seed of the held-out set (training sets derive theirs from the call's seed)
    answer_format: str = "tags_or_boxed"  # where a response's answer is read: tags_or_boxed, or tags only

    styles: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.test_size < 1:
            raise ValueError(f"test_size must be at least 1, got {self.test_size}")
        check_answer_format(self.answer_format)
        try:
            _scorer(self.name, self.options)
        except ImportError:
            raise
        except Exception as error:  # unknown name or option: reasoning-gym's own message
            raise ValueError(f"reasoning-gym dataset {self.name!r} with options {self.options}: {error}") from None
        self._test = self._generate(self.test_size, seed=1_000_003 + self.seed)
        self._test_questions = {example["prompt"] for example in self._test}

    def _generate(self, size: int, seed: int) -> list[dict]:
        """Problems as examples; one without a single right answer (``entry["answer"]`` None, as in
        ``propositional_logic``) keeps ``answer: None`` rather than the text "None": reasoning-gym's scorer judges
        its answers on its own."""
        dataset = _reasoning_gym().create_dataset(self.name, size=size, seed=seed, **self.options)
        return [{"prompt": entry["question"],
                 "answer": None if entry.get("answer") is None else str(entry["answer"]),
                 "verifier": "reasoning_gym", "answer_format": self.answer_format, "task": "reasoning_gym",
                 "rg_dataset": self.name, "rg_options": dict(self.options), "rg_entry": entry}
                for entry in (dataset[i] for i in range(size))]

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict]:
        check_split(split)
        if split == "test":
            rows = self._test
            return [dict(r) for r in (rows if n <= 0 or n >= len(rows) else
                                      split_rng("reasoning_gym", split, seed).sample(rows, n))]
        if n <= 0:
            return []
        train = [e for e in self._generate(n + self.test_size, seed=seed) if e["prompt"] not in self._test_questions]
        if not train:
            raise ValueError(f"reasoning-gym {self.name!r}: every generated problem is also a test problem; "
                             "widen the dataset's options or lower test_size")
        return [dict(train[i % len(train)]) for i in range(n)]

    def corpus_document(self, example: dict, rng, style: str) -> str:
        raise NotImplementedError("the reasoning_gym task has no pretraining corpus")
